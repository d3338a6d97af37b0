"""Preview kernels: CUDA kernels whose logic is proven on the CPU but that have not yet run on a GPU.

A preview kernel's round or tile logic is written once and run step for step by its CPU kernel,
so the CPU tests prove what it computes; what only a GPU can show (memory ordering, shared-memory
limits, speed) waits for ``make device-check PARTS=kernels``. Until that has passed on a GPU, a
preview kernel never runs by default: the confirmed kernel it replaces does. Opt in with
``WALNET_PREVIEW_KERNELS=1`` in the environment (read at import), with
:func:`set_preview_kernels`, or for a block with :func:`preview_kernels`. On the CPU the new code
paths are not previews: they run by default.

:data:`PREVIEW` names each preview kernel and what runs while it is off. A kernel leaves it (and
becomes the default) once the device check has passed on a GPU.
"""
from __future__ import annotations

import os

from walnet.ops._switch import Switch

__all__ = ["PREVIEW", "preview_kernels", "preview_kernels_enabled", "set_preview_kernels"]

#: Preview CUDA kernels: name -> what it is, and what runs instead while previews are off.
PREVIEW = {
    "felzenszwalb": "the warp-per-image Kruskal of algorithm='reservations' (while off, CUDA's 'auto' runs "
                    "'block', the 1,024-thread block per image)",
    "roi_crop": "the one-pass multi-level RCM: the boxes of every level in one launch, the crop of every level in "
                "one launch and its backward in one (while off, CUDA runs mask_boxes and crop_resize per level)",
}

_PREVIEW = Switch(os.environ.get("WALNET_PREVIEW_KERNELS", "0") not in ("", "0"))


def set_preview_kernels(enabled: bool) -> None:
    """Let walnet ops run the preview CUDA kernels of :data:`PREVIEW` (default off, or on where
    ``WALNET_PREVIEW_KERNELS=1`` was set at import)."""
    _PREVIEW.set(enabled)


def preview_kernels(enabled: bool = True):
    """Within the block (``with preview_kernels():``), preview CUDA kernels are allowed (or
    not); the previous setting is restored afterwards."""
    return _PREVIEW.scoped(enabled)


def preview_kernels_enabled() -> bool:
    """Whether the preview CUDA kernels may run."""
    return _PREVIEW.enabled
