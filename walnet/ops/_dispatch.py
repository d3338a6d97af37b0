"""Chooses, per call, which implementation of an op runs: a compiled kernel or the reference.

Every public op takes ``backend``: "auto" runs the compiled kernel for the inputs' device where
this build has one (and the reference otherwise, or everywhere under
``WALNET_FORCE_REFERENCE=1``); "kernel" insists on a compiled kernel (RuntimeError if none);
"reference" always runs walnet.ops.reference. CUDA kernels run only on GPUs whose arch the
build compiled; on another GPU "kernel" is an error naming the archs, "auto" warns and runs the
reference. See docs/design.md §2 and §8.
"""
from __future__ import annotations

import warnings

import torch

from walnet.ops import _checks, _library


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def kernel_device(op: str, device: torch.device, backend: str, *, host_fallback: bool = False) -> torch.device | None:
    """The device whose compiled kernel of `op` runs for inputs on `device`, or None to run the
    reference.

    host_fallback: where `device` has no kernel of `op` but the CPU has, run the CPU kernel
    (through a host copy) rather than the reference. Only Felzenszwalb asks for this: its
    reference is plain Python, per image, thousands of times slower than its CPU kernel.
    """
    _checks.check_backend(backend)
    if backend == "reference" or (backend == "auto" and _library.force_reference()):
        return None
    if _library.has_kernel(op, device.type):
        arch_error = _library.cuda_arch_error(_cuda_index(device)) if device.type == "cuda" else None
        if arch_error is None:
            return device
        if backend == "kernel":
            raise RuntimeError(arch_error)
        fallback = "the CPU kernel" if host_fallback and _library.has_kernel(op, "cpu") else "the reference"
        warnings.warn(f"{arch_error}; walnet runs {fallback} instead", RuntimeWarning, stacklevel=3)
    if host_fallback and _library.has_kernel(op, "cpu"):
        return torch.device("cpu")
    if backend == "kernel":
        why = f" ({_library.LOAD_ERROR})" if _library.LOAD_ERROR else ""
        raise RuntimeError(
            f"backend='kernel' but this build of walnet has no {device.type} kernel for {op}{why}; "
            f"built backends: {sorted(_library.built_backends())}"
        )
    return None


def use_kernel(op: str, device: torch.device, backend: str) -> bool:
    """True to run the compiled kernel of `op` on `device`, False for the reference."""
    return kernel_device(op, device, backend) is not None
