"""Backend choice of the op wrappers: "reference" and WALNET_FORCE_REFERENCE=1 run the pure-PyTorch
spec, "auto" runs the kernel, an explicit "kernel" wins over the environment, and "auto" falls
back to the reference where no kernel was built for the device."""
from __future__ import annotations

import pytest
import torch

from walnet import ops
from walnet.ops import _library, reference

from conftest import spy_on
from pgm_inputs import small_inputs


def test_reference_backend_and_force_env(monkeypatch):
    a1, a2, a3, lab = small_inputs()
    calls = spy_on(monkeypatch, reference, "pseudo_mask")
    ops.pseudo_mask(a1, a2, a3, lab, backend="reference")
    assert len(calls) == 1
    ops.pseudo_mask(a1, a2, a3, lab)  # auto: the kernel
    assert len(calls) == 1
    monkeypatch.setenv("WALNET_FORCE_REFERENCE", "1")
    ops.pseudo_mask(a1, a2, a3, lab)
    assert len(calls) == 2
    ops.pseudo_mask(a1, a2, a3, lab, backend="kernel")  # explicit kernel wins
    assert len(calls) == 2


def test_fallback_without_kernel(monkeypatch):
    a1, a2, a3, lab = small_inputs()
    monkeypatch.setattr(_library, "has_kernel", lambda op, dev: False)
    assert torch.equal(ops.pseudo_mask(a1, a2, a3, lab), reference.pseudo_mask(a1, a2, a3, lab))
    with pytest.raises(RuntimeError, match="no cpu kernel"):
        ops.pseudo_mask(a1, a2, a3, lab, backend="kernel")
