"""Public Felzenszwalb op (DESIGN.md §4): scikit-image's superpixels, exactly, for a batch.

The CPU kernel runs skimage's algorithm bit for bit (with a stable edge sort: equal to skimage
wherever edge weights do not tie, and to skimage with a stable argsort always), images in
parallel. ``backend="parallel"`` runs the GPU's algorithm (Kruskal by deterministic
reservations) on the CPU; it gives the same labels.
"""
from __future__ import annotations

import functools
import numbers

import torch

from walnet.ops import _checks, _library, reference

__all__ = ["felzenszwalb", "segment_counts"]

BACKENDS = ("auto", "exact", "parallel", "reference")


@functools.lru_cache(maxsize=64)
def _cached_weights(sigma: float) -> tuple[float, ...]:
    return tuple(reference.gaussian_weights(sigma))


@torch.compiler.assume_constant_result
def _weights(sigma: float) -> list[float]:
    # numpy's exp (scipy's weights) can differ from C's exp in the last bit, so the weights are
    # made by numpy here and passed to the kernels; constant for torch.compile.
    return list(_cached_weights(sigma))


def _check_images(images) -> torch.Tensor:
    _checks.check_tensor(images, "images")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [N,C,H,W], got {tuple(images.shape)}")
    if min(images.shape[1:]) == 0:
        raise ValueError(f"images must have C, H and W >= 1, got {tuple(images.shape)}")
    return images.detach()


def felzenszwalb(
    images: torch.Tensor,
    scale: float = 64.0,
    sigma: float = 0.5,
    min_size: int = 10,
    *,
    backend: str = "auto",
    return_rounds: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Felzenszwalb-Huttenlocher superpixels of a batch, identical to
    ``skimage.segmentation.felzenszwalb(image, scale, sigma, min_size, channel_axis=-1)``.

    Args:
        images: [N,C,H,W] float tensor. Values are used as given (float64): skimage rescales uint8
            images by 1/255 first, so pass ``u8.double() / 255``-style values to match it.
        scale: higher means larger segments (skimage divides it by 255).
        sigma: Gaussian smoothing before segmenting (scipy's kernel, reflect borders).
        min_size: segments smaller than this are merged into a neighbour.
        backend: "auto" (the kernel for the device), "exact" (sequential Kruskal), "parallel"
            (deterministic reservations, the GPU's algorithm), or "reference" (slow Python spec).
        return_rounds: also return int32 [N,2], the reservation rounds of the merge and min_size
            passes (0 for the sequential algorithm).

    Returns:
        int32 [N,H,W] labels, numbered 0..n_i-1 per image in raster order of first appearance.
        Use :func:`segment_counts` for n_i without a host sync.
    """
    images = _check_images(images)
    scale = _checks.check_real(scale, "scale")
    sigma = _checks.check_real(sigma, "sigma")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral):
        raise TypeError(f"min_size must be an int, got {type(min_size).__name__}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    n, _, h, w = images.shape
    device = images.device
    if n == 0:
        empty = torch.empty(0, h, w, dtype=torch.int32, device=device)
        return (empty, torch.empty(0, 2, dtype=torch.int32, device=device)) if return_rounds else empty
    _checks.check_values({"images": images})
    x = images.to(torch.float64)
    if backend == "reference" or not _library.has_kernel("felzenszwalb", "cpu"):
        labels = reference.felzenszwalb(x, scale, sigma, int(min_size)).to(device)
        rounds = torch.zeros(n, 2, dtype=torch.int32, device=device)
    else:
        args = (_weights(sigma), scale / 255.0, int(min_size), backend == "parallel")
        # The CUDA kernel takes up to 64 Gaussian taps (sigma <= 15.6) as a kernel argument.
        if _library.has_kernel("felzenszwalb", device.type) and (device.type == "cpu" or len(args[0]) <= 64):
            labels, rounds = torch.ops.walnet.felzenszwalb(x, *args)
        else:  # no kernel for this device: the CPU kernel, through a host copy
            labels, rounds = (t.to(device) for t in torch.ops.walnet.felzenszwalb(x.cpu(), *args))
    return (labels, rounds) if return_rounds else labels


def segment_counts(labels: torch.Tensor) -> torch.Tensor:
    """Number of segments of each image of a [N,H,W] label batch from :func:`felzenszwalb`
    (labels are 0..n_i-1), as an int64 [N] tensor on the labels' device (no host sync)."""
    _checks.check_tensor(labels, "labels")
    if labels.dim() != 3 or labels.shape[1] * labels.shape[2] == 0:
        raise ValueError(f"labels must have shape [N,H,W] with H, W >= 1, got {tuple(labels.shape)}")
    if labels.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=labels.device)
    return labels.flatten(1).amax(dim=1).long() + 1
