"""The build: the CPU kernels always load, and the CUDA kernels are compiled in wherever nvcc and a
CUDA build of torch are present."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import walnet
from walnet import ops
from walnet.ops import _library


def test_cpu_kernels_built():
    assert _library.LOAD_ERROR is None, _library.LOAD_ERROR
    assert "cpu" in ops.built_backends()
    assert _library.LOADED


def test_out_of_date_build_is_not_used(monkeypatch):
    """A library built from older sources that lacks an op is refused as a whole, with a reason
    that names the missing op and the fix (every op then runs its reference)."""
    monkeypatch.setattr(_library, "_defined", lambda op: op not in ("felzenszwalb", "mask_boxes"))
    reason = _library._load(_library.BUILD_INFO)
    assert "out of date" in reason and "walnet::mask_boxes, walnet::felzenszwalb" in reason
    assert "make build" in reason
    monkeypatch.undo()
    assert _library._load(_library.BUILD_INFO) is None


def test_build_record_matches_the_running_torch():
    """The build wrote what it was compiled for next to the extension, and it is this torch."""
    info = _library.BUILD_INFO
    assert info is not None, f"{_library.BUILD_INFO_PATH} is missing"
    assert info["torch"] == torch.__version__
    assert info["walnet"] == walnet.__version__
    assert ("cuda" in ops.built_backends()) == (info["cuda"] is not None) == bool(info["cuda_archs"])


def test_another_torch_is_refused_before_loading():
    reason = _library._load({"torch": "2.6.0+cpu"}, torch_version="2.14.1+cu130")
    assert "built against torch 2.6.0+cpu but torch 2.14.1+cu130 is installed" in reason
    assert "pip install --no-build-isolation" in reason
    # the same release for another CUDA is tried (a real mismatch then fails to load, and says so)
    running = torch.__version__.split("+")[0]
    assert _library._load({"torch": running + "+cu999"}) is None


def test_an_extension_that_fails_to_load_warns_loudly():
    """Importing walnet with an extension that cannot load warns once, naming the reason and the
    fix, and every op then runs its reference (no silent fallback)."""
    code = ("import sys; sys.modules['walnet._C'] = None\n"
            "import walnet, torch\n"
            "print(sorted(walnet.built_backends()))\n"
            "a = torch.rand(1, 4, 4)\n"
            "print(walnet.ops.fuse_attention(a, a, a).shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "torch.Size([1, 4, 4])"]
    assert out.stderr.count("RuntimeWarning: walnet runs every op on its slow pure-PyTorch reference") == 1
    assert "walnet._C failed to load" in out.stderr and "pip install --no-build-isolation" in out.stderr


def _nvcc_present():
    return shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


@pytest.mark.skipif(os.environ.get("WALNET_CUDA") == "0", reason="CUDA build disabled by WALNET_CUDA=0")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch is not a CUDA build")
@pytest.mark.skipif(not _nvcc_present(), reason="no CUDA toolkit here")
def test_cuda_kernels_built_when_nvcc_present():
    """nvcc is here and torch is a CUDA build, so the CUDA objects must have been compiled in."""
    assert "cuda" in ops.built_backends()


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_shared_headers_compile_as_cxx17(tmp_path):
    """The host/device headers without ATen compile as C++17, the standard torch builds
    extensions with before 2.13 (pyproject admits torch >= 2.6): every template instantiated."""
    csrc = Path(__file__).resolve().parent.parent / "csrc"
    source = tmp_path / "headers.cpp"
    source.write_text(
        '#include "common/warp.h"\n#include "felzenszwalb/felzenszwalb.h"\n#include "felzenszwalb/warp_rounds.h"\n'
        "namespace fz = walnet::fz;\n"
        "template <typename Index> void run(Index* parent, Index* size, float* tau) {\n"
        "  fz::WarpScratch scratch{};\n  fz::SortedEdge edges[1] = {{0, 1, 0.5}};\n"
        "  int32_t labels[2], rounds[2];\n"
        "  fz::segment_warp(walnet::warp::Warp{}, scratch, fz::Forest<Index>{parent, size, tau}, edges, 2, 1, 0.1, 2,\n"
        "                   fz::RoundRules{64, true, true, true}, labels, rounds);\n}\n"
        "template void run<uint16_t>(uint16_t*, uint16_t*, float*);\n"
        "template void run<int32_t>(int32_t*, int32_t*, float*);\n"
    )
    result = subprocess.run(["c++", "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", "-I", str(csrc), str(source)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
