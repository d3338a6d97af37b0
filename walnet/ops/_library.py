"""Loads the compiled operators (walnet._C) and answers which kernels this build has.

The extension is tied to the torch it was compiled against (it links libtorch's C++ symbols), so
the build records that torch, its CUDA version and the compiled GPU archs in
``walnet/_build.json``. The library is used only when it loads, defines every op of :data:`OPS`
and was built for the running torch; otherwise every op runs its reference and importing walnet
warns once, naming the reason and the fix (docs/design.md §8). Which kernels exist is asked of
the dispatcher itself. Each op's fake kernel and autograd formula are registered next to its
wrapper (walnet/ops/pgm.py, rcm.py, felzenszwalb.py), when :data:`LOADED`.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

#: Every operator of the walnet library (schemas in csrc/walnet.cpp).
OPS = (
    "fuse_attention",
    "superpixel_mean",
    "pseudo_mask",
    "mask_boxes",
    "crop_resize",
    "crop_resize_backward",
    "roi_boxes",
    "crop_levels",
    "crop_levels_backward",
    "felzenszwalb",
)

#: What the build recorded (see setup.py); None for a build without the record.
BUILD_INFO_PATH = Path(__file__).resolve().parent.parent / "_build.json"

_REBUILD = ("rebuild walnet against the installed torch: `pip install --no-build-isolation --force-reinstall "
            "--no-deps .` in the source tree (or `make build` there)")


def read_build_info(path: Path = BUILD_INFO_PATH) -> dict | None:
    """The build record next to the extension, or None where there is none."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _defined(op: str) -> bool:
    try:
        getattr(torch.ops.walnet, op)
    except (AttributeError, RuntimeError):
        return False
    return True


def _load(build_info: dict | None, torch_version: str = torch.__version__) -> str | None:
    """Imports the extension (which runs its TORCH_LIBRARY registrations) where it was built for
    `torch_version`; returns why it cannot be used, or None."""
    built_for = (build_info or {}).get("torch")
    if built_for is not None and built_for.split("+")[0] != torch_version.split("+")[0]:
        # Loading it would resolve libtorch symbols of another release: refuse before importing.
        # (The same release built for another CUDA, "+cu128" vs "+cu130", is tried: if its CUDA
        # libraries differ, the import fails and says so below.)
        return f"walnet._C was built against torch {built_for} but torch {torch_version} is installed; {_REBUILD}"
    try:
        from walnet import _C  # noqa: F401
    except ImportError as exc:
        if "No module named" in str(exc):
            return f"walnet._C is not built; {_REBUILD}"
        return f"walnet._C failed to load ({exc}); {_REBUILD}"
    missing = [op for op in OPS if not _defined(op)]
    if missing:
        return f"walnet._C is out of date (it lacks walnet::{', walnet::'.join(missing)}); rebuild it: make build"
    return None


BUILD_INFO = read_build_info()
#: Why the compiled library is not used (None when it is).
LOAD_ERROR: str | None = _load(BUILD_INFO)
LOADED = LOAD_ERROR is None
if not LOADED:
    warnings.warn(f"walnet runs every op on its slow pure-PyTorch reference: {LOAD_ERROR}", RuntimeWarning,
                  stacklevel=2)

# Asked once at import (registrations are static), which also keeps has_kernel traceable by
# torch.compile.
_KERNELS = frozenset(
    (op, dev)
    for op in (OPS if LOADED else ())
    for dev in ("cpu", "cuda")
    if torch._C._dispatch_has_kernel_for_dispatch_key(f"walnet::{op}", dev.upper())
)


def has_kernel(op: str, device_type: str) -> bool:
    """True when walnet::<op> has a kernel registered for this device type ("cpu", "cuda")."""
    return (op, device_type) in _KERNELS


def built_backends() -> set[str]:
    """The device types for which this build of walnet has compiled kernels of every op, e.g.
    {"cpu", "cuda"}. (has_kernel answers per op; see walnet.ops._dispatch for what runs where a
    kernel is missing.)"""
    return {dev for dev in ("cpu", "cuda") if all(has_kernel(op, dev) for op in OPS)}


def force_reference() -> bool:
    """WALNET_FORCE_REFERENCE=1 makes backend="auto" use the reference ops everywhere."""
    return os.environ.get("WALNET_FORCE_REFERENCE", "0") not in ("", "0")


def _version(arch: str) -> tuple[int, int]:
    major, minor = arch.split(".")
    return int(major), int(minor)


def runs_on(capability: tuple[int, int], sass: list[str], ptx: list[str]) -> bool:
    """Whether code compiled for the archs `sass` (machine code, "X.Y") and `ptx` (PTX, "X.Y")
    runs on a GPU of compute `capability`: machine code for X.Y runs on X.Z with Z >= Y; PTX for
    X.Y is compiled by the driver for any later GPU."""
    major, minor = capability
    return any(m == major and n <= minor for m, n in map(_version, sass)) or any(
        (m, n) <= (major, minor) for m, n in map(_version, ptx)
    )


def constant_result(fn):
    """``torch.compiler.assume_constant_result(fn)`` without its import of torch._dynamo (a
    second of CPU, the most of ``import walnet.ops``): the mark that torch's decorator sets, which
    dynamo reads where it meets a call of `fn` while compiling (tests/test_import_light.py checks
    that the mark is torch's)."""
    fn._dynamo_marked_constant = True
    return fn


_ARCH_ERRORS: dict[int, str | None] = {}


@constant_result
def cuda_arch_error(index: int) -> str | None:
    """Why this build's CUDA kernels cannot run on GPU `index` (its arch was not compiled), or
    None. Asked of the driver once per GPU (no host synchronisation)."""
    if index not in _ARCH_ERRORS:
        sass, ptx = (BUILD_INFO or {}).get("cuda_archs"), (BUILD_INFO or {}).get("cuda_ptx", [])
        capability = torch.cuda.get_device_capability(index)
        error = None
        if sass is not None and not runs_on(capability, sass, ptx):
            name = torch.cuda.get_device_name(index)
            compiled = ", ".join([f"sm_{a.replace('.', '')}" for a in sass] + [f"compute_{a.replace('.', '')}"
                                                                               for a in ptx])
            arch = f"{capability[0]}.{capability[1]}"
            error = (f"walnet's CUDA kernels were compiled for {compiled}, which cannot run on {name} (compute "
                     f"capability {arch}); rebuild with TORCH_CUDA_ARCH_LIST={arch} (or without "
                     "TORCH_CUDA_ARCH_LIST, for every arch of the installed torch)")
        _ARCH_ERRORS[index] = error
    return _ARCH_ERRORS[index]


def build_info() -> dict:
    """What this install of walnet is and can run: its version, the running torch and CUDA, what
    the extension was compiled for (torch, CUDA, GPU archs, OpenMP), the device types with
    kernels, why the extension is not used (None when it is), and the visible GPUs."""
    from walnet._version import __version__

    info = BUILD_INFO or {}
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            gpus.append({"name": torch.cuda.get_device_name(i), "capability": f"{major}.{minor}",
                         "kernels_run": has_kernel("pseudo_mask", "cuda") and cuda_arch_error(i) is None})
    return {
        "walnet": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "built_for_torch": info.get("torch"),
        "built_for_cuda": info.get("cuda"),
        "cuda_archs": info.get("cuda_archs", []),
        "cuda_ptx": info.get("cuda_ptx", []),
        "openmp": info.get("openmp"),
        "backends": sorted(built_backends()),
        "load_error": LOAD_ERROR,
        "gpus": gpus,
    }
