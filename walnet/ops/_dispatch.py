"""Chooses, per call, between a compiled kernel and the reference implementation."""
from __future__ import annotations

import torch

from walnet.ops import _checks, _library


def use_kernel(op: str, device: torch.device, backend: str) -> bool:
    """True to run the compiled kernel of `op` on `device`, False for the reference.

    backend: "reference" always uses the reference; "kernel" requires the kernel (RuntimeError
    if this build lacks it); "auto" uses it when built, unless WALNET_FORCE_REFERENCE=1.
    """
    _checks.check_backend(backend)
    if backend == "reference":
        return False
    available = _library.has_kernel(op, device.type)
    if backend == "kernel" and not available:
        why = f" ({_library.LOAD_ERROR})" if _library.LOAD_ERROR else ""
        raise RuntimeError(
            f"backend='kernel' but this build of walnet has no {device.type} kernel for {op}{why}; "
            f"built backends: {sorted(_library.built_backends())}"
        )
    return available and (backend == "kernel" or not _library.force_reference())
