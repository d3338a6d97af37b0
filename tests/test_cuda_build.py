"""What the compiled CUDA kernels are, read from the built extension without a GPU: the warp
Felzenszwalb kernel (every instantiation, sm_90) fits sm_90's shared memory with the plan of
warp_rounds.h, spills no registers, has no block barrier (its rounds synchronise the warp only)
and bids with shared-memory atomics (no global atomics), and feeds its ring with asynchronous
copies. Runs wherever the build has CUDA kernels; it reads them with cuobjdump (the
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm packages of requirements-dev.txt)."""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from walnet import ops
from walnet.ops.felzenszwalb import SM90_SHARED_BYTES, warp_plan

pytestmark = pytest.mark.skipif("cuda" not in ops.built_backends(), reason="this build has no CUDA kernels")

WARP_KERNEL = "kruskal_warp_kernel"
#: sm_90 reserves 1 KiB of shared memory per block, which cuobjdump counts in SHARED.
RESERVED_SHARED = 1024


def _tool_dir() -> Path:
    """The folder of cuobjdump and nvdisasm: the pip packages' (nvidia/cu13/bin), else the PATH's."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")  # the namespace of the pip CUDA packages
    for base in (spec.submodule_search_locations or []) if spec else []:
        for found in sorted(Path(base).glob("*/bin/cuobjdump")):
            if (found.parent / "nvdisasm").exists():
                return found.parent
    on_path = shutil.which("cuobjdump")
    if on_path and shutil.which("nvdisasm"):
        return Path(on_path).parent
    pytest.fail("cuobjdump and nvdisasm are needed to check the CUDA build: pip install -r requirements-dev.txt "
                "(nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm)")


def _cuobjdump(*args: str) -> str:
    tools = _tool_dir()
    from walnet import _C

    env = dict(os.environ, PATH=f"{tools}{os.pathsep}{os.environ.get('PATH', '')}", NVDISASM_PATH=str(tools))
    result = subprocess.run([str(tools / "cuobjdump"), *args, "-arch", "sm_90", _C.__file__], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@functools.lru_cache(maxsize=None)
def _resources() -> dict[str, dict[str, int]]:
    """Resource usage of every sm_90 kernel: mangled name -> {"REG": .., "STACK": .., ...}."""
    out = {}
    for name, usage in re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", _cuobjdump("-res-usage")):
        out[name] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", usage)}
    return out


@functools.lru_cache(maxsize=None)
def _sass() -> dict[str, list[str]]:
    """The sm_90 SASS of every kernel: mangled name -> opcodes (with their modifiers)."""
    out = {}
    for block in re.split(r"\n\s*Function : ", _cuobjdump("-sass"))[1:]:
        name, body = block.split("\n", 1)
        out[name.strip()] = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)", body)
    return out


def _warp_kernels(table: dict) -> dict:
    found = {name: v for name, v in table.items() if WARP_KERNEL in name}
    assert len(found) == 3, f"expected the 3 instantiations of {WARP_KERNEL} (shared, split, global), got {list(found)}"
    return found


def test_the_warp_kernel_spills_nothing_and_fits_shared_memory():
    resources = _resources()
    plain = [v for name, v in resources.items() if "smooth_kernel" in name]
    assert plain and all(v["SHARED"] == RESERVED_SHARED for v in plain), "no static shared memory reads as 1 KiB"
    largest = {layout: warp_plan(1, n, SM90_SHARED_BYTES)[1]
               for layout, n in (("shared", 1), ("split", 1))}
    for n in range(1, 70000, 97):  # the largest plan of each layout
        layout, nbytes = warp_plan(1, n, SM90_SHARED_BYTES)
        largest[layout] = max(largest.get(layout, 0), nbytes)
    for name, usage in _warp_kernels(resources).items():
        assert usage["LOCAL"] == 0 and usage["STACK"] == 0, f"{name} spills registers: {usage}"
        assert usage["REG"] <= 128, f"{name} uses {usage['REG']} registers"
        static = usage["SHARED"] - RESERVED_SHARED
        assert static + max(largest.values()) <= SM90_SHARED_BYTES, (name, usage, largest)


def test_the_warp_kernel_syncs_the_warp_only_and_bids_in_shared_memory():
    for name, opcodes in _warp_kernels(_sass()).items():
        kinds = {op.split(".")[0] for op in opcodes}
        assert "BAR" not in kinds, f"{name} has a block barrier"
        assert "WARPSYNC" in kinds, f"{name} does not synchronise its warp"
        assert {"ATOMS.CAS", "ATOMS.OR"} <= set(opcodes), f"{name}: the bids are not shared-memory atomics"
        assert not kinds & {"ATOM", "ATOMG", "RED", "REDG"}, f"{name} has global or generic atomics: {kinds}"
        assert "LDGSTS" in kinds, f"{name} does not prefetch its edges with asynchronous copies"
        assert "LDL" not in kinds and "STL" not in kinds, f"{name} uses local memory"
