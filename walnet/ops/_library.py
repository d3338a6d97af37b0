"""Loads the compiled operators (walnet._C) and answers which kernels this build has.

Which kernels exist is asked of the dispatcher itself, so the answer is exactly what the loaded
library registered, whatever the build flags were. A library that is missing, or built from
older sources that lack one of :data:`OPS`, is not used at all: every op then runs its
reference, and ``backend="kernel"`` says why. Each op's fake (meta) kernel and autograd formula
are registered next to its wrapper (walnet/ops/pgm.py, rcm.py, felzenszwalb.py), when
:data:`LOADED`.
"""
from __future__ import annotations

import os

import torch

#: Every operator of the walnet library (schemas in csrc/walnet.cpp).
OPS = (
    "fuse_attention",
    "superpixel_mean",
    "pseudo_mask",
    "mask_boxes",
    "crop_resize",
    "crop_resize_backward",
    "felzenszwalb",
)


def _defined(op: str) -> bool:
    try:
        getattr(torch.ops.walnet, op)
    except (AttributeError, RuntimeError):
        return False
    return True


def _load() -> str | None:
    """Imports the extension (which runs its TORCH_LIBRARY registrations); the reason it cannot
    be used, or None."""
    try:
        from walnet import _C  # noqa: F401
    except ImportError as exc:  # not built
        return str(exc)
    missing = [op for op in OPS if not _defined(op)]
    if missing:
        return f"walnet._C is out of date (it lacks walnet::{', walnet::'.join(missing)}); rebuild it: make build"
    return None


#: Why the compiled library is not used (None when it is).
LOAD_ERROR: str | None = _load()
LOADED = LOAD_ERROR is None

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
