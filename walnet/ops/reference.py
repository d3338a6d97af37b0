"""Pure-PyTorch reference of every walnet op: the specification.

Readable and vectorised over the batch (no Python loop over samples). The compiled kernels are
tested against these functions, and the public wrappers fall back to them where no kernel is
built for a device. Inputs are assumed validated (see the wrappers in walnet.ops).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fuse_attention", "superpixel_mean", "pseudo_mask", "IGNORE_INDEX"]

#: Pseudo-mask value of a sample whose fused attention carries no information; it is skipped by
#: ``CrossEntropyLoss(ignore_index=255)``.
IGNORE_INDEX = 255


def _opmath(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if the maps are float64, else float32 (half precision is computed in float32)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float64 if dtype == torch.float64 else torch.float32


def _minmax_normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(x - min) / (max - min)`` of [N,H,W] maps, and whether each sample is
    informative: all values finite and ``max - min`` finite and > 0."""
    flat = x.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    span = hi - lo
    ok = torch.isfinite(flat).all(dim=1) & (span > 0) & torch.isfinite(span)
    return (x - lo[:, None, None]) / span[:, None, None], ok


def _fuse(a1: torch.Tensor, a2: torch.Tensor, a3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: B and a per-sample flag telling whether B is informative (else B is set to 0)."""
    dtype = _opmath(a1, a2, a3)
    size = tuple(a1.shape[-2:])
    ok = torch.ones(a1.shape[0], dtype=torch.bool, device=a1.device)
    product = None
    for a in (a1, a2, a3):
        a = a.to(dtype)
        if tuple(a.shape[-2:]) != size:
            a = F.interpolate(a[:, None], size=size, mode="nearest")[:, 0]
        normalised, good = _minmax_normalise(a)
        ok &= good
        product = normalised if product is None else product * normalised
    fused, good = _minmax_normalise(product)
    ok &= good
    return torch.where(ok[:, None, None], fused, torch.zeros_like(fused)), ok


def fuse_attention(a1: torch.Tensor, a2: torch.Tensor, a3: torch.Tensor) -> torch.Tensor:
    """Fused attention map B (DESIGN.md §3, steps 3; paper Eq. 1).

    a1 [N,H,W] sets the size; a2, a3 [N,h,w] (h <= H, w <= W) are nearest-upsampled to it. Each
    map is min-max normalised per sample, the three are multiplied, and the product is min-max
    normalised again. A sample in which any of these maps is constant or non-finite carries no
    information: its B is all zeros. Output dtype: float64 for float64 maps, else float32.
    """
    return _fuse(a1, a2, a3)[0]


def _segment_mean64(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-label mean of [N,H,W] values, accumulated in float64."""
    n, h, w = values.shape
    offsets = torch.arange(n, device=values.device)[:, None] * (h * w)
    index = (labels.reshape(n, -1).long() + offsets).reshape(-1)
    flat = values.reshape(-1).double()
    sums = torch.zeros(n * h * w, dtype=torch.float64, device=values.device).index_add_(0, index, flat)
    counts = torch.zeros_like(sums).index_add_(0, index, torch.ones_like(flat))
    return (sums[index] / counts[index]).reshape(n, h, w)


def superpixel_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each pixel gets the mean of `values` over its segment (paper Eq. 2).

    values [N,H,W] float, labels [N,H,W] integer in [0, H*W), segments numbered per sample.
    The output has the dtype of `values`.
    """
    return _segment_mean64(values, labels).to(values.dtype)


def pseudo_mask(
    a1: torch.Tensor, a2: torch.Tensor, a3: torch.Tensor, labels: torch.Tensor, threshold: float = 0.18
) -> torch.Tensor:
    """PGM pseudo mask (DESIGN.md §3, steps 3-5): uint8 [N,H,W] in {0, 1, 255}.

    1 where the superpixel mean of the fused map B is >= threshold, else 0; every pixel of a
    sample whose B carries no information is IGNORE_INDEX (255).
    """
    fused, ok = _fuse(a1, a2, a3)
    mask = (_segment_mean64(fused, labels) >= threshold).to(torch.uint8)
    return torch.where(ok[:, None, None], mask, torch.full_like(mask, IGNORE_INDEX))
