"""What the tests share: the devices and dtypes the op tests run on, the check that the kernel
under test was built, a call spy and an unwritable folder. The inputs of each op family live in
pgm_inputs.py and rcm_inputs.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from walnet import ops

HAS_CUDA = torch.cuda.is_available()

#: Devices every kernel test runs on; CUDA cases are skipped without a GPU.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")),
]

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def require_kernel(device: str) -> None:
    """Kernel-vs-reference tests are meaningless (and must not pass vacuously) without a kernel."""
    if device not in ops.built_backends():
        pytest.fail(f"walnet was built without {device} kernels: {ops.built_backends()}")


def spy_on(monkeypatch, owner, name: str) -> list:
    """Replaces ``owner.<name>`` (for the test) by a wrapper that records every call's positional
    arguments in the returned list and then calls the original."""
    calls = []
    real = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only one, or for root (whom modes
    do not stop) a sysfs folder."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no folder root cannot write here")
    return Path("/sys/kernel")
