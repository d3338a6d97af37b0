"""Public PGM ops (docs/design.md §4): fused attention, per-superpixel mean, pseudo mask.

Each wrapper validates its input (clear errors before any kernel runs), then calls the compiled
kernel for the tensors' device, or the reference in walnet.ops.reference where none is built
(``backend="reference"`` or ``WALNET_FORCE_REFERENCE=1`` force the reference). The PGM has no
gradient: inputs are detached. The ops' fake kernels (for torch.compile) are registered here.
"""
from __future__ import annotations

import torch

from walnet.ops import _checks, _library, reference
from walnet.ops._dispatch import use_kernel

__all__ = ["fuse_attention", "superpixel_mean", "pseudo_mask"]


def _attention_maps(a1, a2, a3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates the three attention maps; returns them as [N,H,W] tensors of one dtype."""
    maps = [_checks.as_map(a, name) for a, name in ((a1, "a1"), (a2, "a2"), (a3, "a3"))]
    m1 = maps[0]
    for m, name in zip(maps[1:], ("a2", "a3")):
        _checks.check_same_device(m, name, m1, "a1")
        _checks.check_same_batch(m, name, m1, "a1")
        if m.shape[1] > m1.shape[1] or m.shape[2] > m1.shape[2]:
            raise ValueError(
                f"{name} ({m.shape[1]}x{m.shape[2]}) must not be larger than a1 ({m1.shape[1]}x{m1.shape[2]}): "
                "a1 is the finest map and sets the output size"
            )
    dtype = torch.promote_types(torch.promote_types(maps[0].dtype, maps[1].dtype), maps[2].dtype)
    return tuple(m.to(dtype) for m in maps)


def fuse_attention(a1: torch.Tensor, a2: torch.Tensor, a3: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Fused attention map B of paper Eq. 1.

    Args:
        a1: finest attention map, [N,H,W] or [N,1,H,W]; sets the output size.
        a2, a3: coarser maps of the same batch (no larger than a1), nearest-upsampled to H x W.
        backend: "auto" (kernel if built for the device, else reference), "kernel" or "reference".

    Returns:
        [N,H,W] float32 (float64 for float64 maps): the per-sample min-max normalised product of
        the min-max normalised maps. A sample whose maps or product are constant carries no
        information and is all zeros (:func:`pseudo_mask` marks it 255).
    """
    a1, a2, a3 = _attention_maps(a1, a2, a3)
    _checks.check_values({"a1": a1, "a2": a2, "a3": a3})
    if use_kernel("fuse_attention", a1.device, backend):
        return torch.ops.walnet.fuse_attention(a1, a2, a3)
    return reference.fuse_attention(a1, a2, a3)


def superpixel_mean(values: torch.Tensor, labels: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Replaces every pixel by the mean of `values` over its superpixel (paper Eq. 2).

    Args:
        values: [N,H,W] or [N,1,H,W] floating tensor.
        labels: integer tensor of the same shape; per-sample segment ids in [0, H*W).
        backend: "auto", "kernel" or "reference".

    Returns:
        [N,H,W] tensor of the dtype of `values`. The kernels sum in 64-bit fixed point, so the
        result is bitwise deterministic and equal across CPU and CUDA.
    """
    values = _checks.as_map(values, "values")
    labels = _checks.as_labels(labels, values, "values")
    _checks.check_values({"values": values}, labels)
    if use_kernel("superpixel_mean", values.device, backend):
        return torch.ops.walnet.superpixel_mean(values, labels)
    return reference.superpixel_mean(values, labels)


def pseudo_mask(
    a1: torch.Tensor,
    a2: torch.Tensor,
    a3: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.18,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """PGM pseudo mask from three attention maps and superpixel labels, in one fused kernel.

    Fuses the maps as :func:`fuse_attention` (without materialising the upsampled maps), takes
    the mean of B over each superpixel and binarises it: 1 where the mean is >= `threshold`.

    Args:
        a1, a2, a3: attention maps as for :func:`fuse_attention`.
        labels: superpixel labels [N,H,W] (or [N,1,H,W]) at a1's size, integers in [0, H*W).
        threshold: binarisation threshold (paper: 0.18).
        backend: "auto", "kernel" or "reference".

    Returns:
        uint8 [N,H,W] with values in {0, 1, 255}; 255 (``walnet.ops.IGNORE_INDEX``) fills every
        sample whose fused map carries no information, so ``CrossEntropyLoss(ignore_index=255)``
        skips it instead of training on NaN.
    """
    a1, a2, a3 = _attention_maps(a1, a2, a3)
    labels = _checks.as_labels(labels, a1, "a1")
    _checks.check_values({"a1": a1, "a2": a2, "a3": a3}, labels)
    threshold = _checks.check_real(threshold, "threshold")
    if use_kernel("pseudo_mask", a1.device, backend):
        return torch.ops.walnet.pseudo_mask(a1, a2, a3, labels, threshold)
    return reference.pseudo_mask(a1, a2, a3, labels, threshold)


if _library.LOADED:

    @torch.library.register_fake("walnet::fuse_attention")
    def _fuse_attention_fake(a1, a2, a3):
        return a1.new_empty(a1.shape, dtype=reference.opmath_dtype(a1))

    @torch.library.register_fake("walnet::superpixel_mean")
    def _superpixel_mean_fake(values, labels):
        return torch.empty_like(values, memory_format=torch.contiguous_format)

    @torch.library.register_fake("walnet::pseudo_mask")
    def _pseudo_mask_fake(a1, a2, a3, labels, threshold):
        return a1.new_empty(a1.shape, dtype=torch.uint8)
