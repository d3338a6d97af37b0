"""The build: the CPU kernels always load, and the CUDA kernels are compiled in wherever nvcc and a
CUDA build of torch are present."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

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
    reason = _library._load()
    assert "out of date" in reason and "walnet::mask_boxes, walnet::felzenszwalb" in reason
    assert "make build" in reason
    monkeypatch.undo()
    assert _library._load() is None


def _nvcc_present():
    return shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


@pytest.mark.skipif(os.environ.get("WALNET_CUDA") == "0", reason="CUDA build disabled by WALNET_CUDA=0")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch is not a CUDA build")
@pytest.mark.skipif(not _nvcc_present(), reason="no CUDA toolkit here")
def test_cuda_kernels_built_when_nvcc_present():
    """nvcc is here and torch is a CUDA build, so the CUDA objects must have been compiled in."""
    assert "cuda" in ops.built_backends()
