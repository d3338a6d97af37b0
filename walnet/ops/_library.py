"""Loads the compiled operators (walnet._C) and registers their fake kernels.

Which backends exist is asked of the dispatcher itself, so the answer is exactly what the
loaded library registered, whatever the build flags were.
"""
from __future__ import annotations

import os

import torch

try:  # importing the extension runs its TORCH_LIBRARY registrations
    from walnet import _C  # noqa: F401

    LOAD_ERROR: str | None = None
except ImportError as exc:  # not built: every op falls back to the reference
    LOAD_ERROR = str(exc)

OPS = ("fuse_attention", "superpixel_mean", "pseudo_mask")


def _registered_kernels() -> frozenset[tuple[str, str]]:
    if LOAD_ERROR is not None:
        return frozenset()
    return frozenset(
        (op, dev)
        for op in OPS
        for dev in ("cpu", "cuda")
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"walnet::{op}", dev.upper())
    )


# Asked once at import (registrations are static), which also keeps has_kernel traceable by
# torch.compile.
_KERNELS = _registered_kernels()


def has_kernel(op: str, device_type: str) -> bool:
    """True when walnet::<op> has a kernel registered for this device type ("cpu", "cuda")."""
    return (op, device_type) in _KERNELS


def built_backends() -> set[str]:
    """The device types for which this build of walnet has compiled kernels, e.g. {"cpu", "cuda"}."""
    return {dev for dev in ("cpu", "cuda") if all(has_kernel(op, dev) for op in OPS)}


def force_reference() -> bool:
    """WALNET_FORCE_REFERENCE=1 makes backend="auto" use the reference ops everywhere."""
    return os.environ.get("WALNET_FORCE_REFERENCE", "0") not in ("", "0")


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if LOAD_ERROR is None:

    @torch.library.register_fake("walnet::fuse_attention")
    def _fuse_attention_fake(a1, a2, a3):
        return a1.new_empty(a1.shape, dtype=_opmath(a1.dtype))

    @torch.library.register_fake("walnet::superpixel_mean")
    def _superpixel_mean_fake(values, labels):
        return torch.empty_like(values, memory_format=torch.contiguous_format)

    @torch.library.register_fake("walnet::pseudo_mask")
    def _pseudo_mask_fake(a1, a2, a3, labels, threshold):
        return a1.new_empty(a1.shape, dtype=torch.uint8)
