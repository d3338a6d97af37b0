"""Public Felzenszwalb op (docs/design.md §6): scikit-image's superpixels, exactly, for a batch.

A drop-in for ``skimage.segmentation.felzenszwalb``: the same defaults, the same parameters
(``scale=0`` included) and the same labels — bit for bit wherever edge weights do not tie, and
equal to skimage with a stable argsort always. Two algorithms give these labels: "sequential"
(skimage's Kruskal; the CPU kernel's, images in parallel across threads) and "reservations"
(Kruskal by deterministic reservations, the CUDA kernel's, which the CPU kernel also runs so
that it is tested on every machine). The op's fake kernel (for torch.compile) is registered here.
"""
from __future__ import annotations

import functools

import torch

from walnet.ops import _checks, _library, reference
from walnet.ops._dispatch import kernel_device

__all__ = ["ALGORITHMS", "felzenszwalb", "segment_counts"]

#: "auto": the device's own ("sequential" on the CPU, "reservations" on CUDA).
ALGORITHMS = ("auto", "sequential", "reservations")

#: Largest smoothing sigma (a kernel radius of 4 * sigma taps; scipy would build it as well).
MAX_SIGMA = 1e5

#: The CUDA kernel takes the Gaussian kernel as a launch argument of at most this many taps
#: (sigma <= 15.6); a wider one runs on the CPU kernel.
_CUDA_MAX_TAPS = 64


@functools.lru_cache(maxsize=64)
def _cached_weights(sigma: float) -> tuple[float, ...]:
    return tuple(reference.gaussian_weights(sigma))


@torch.compiler.assume_constant_result
def _weights(sigma: float) -> list[float]:
    # numpy's exp (scipy's weights) can differ from C's exp in the last bit, so the weights are
    # made by numpy here and passed to the kernels; constant for torch.compile.
    return list(_cached_weights(sigma))


def felzenszwalb(
    images: torch.Tensor,
    scale: float = 1.0,
    sigma: float = 0.8,
    min_size: int = 20,
    *,
    algorithm: str = "auto",
    backend: str = "auto",
    return_rounds: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Felzenszwalb-Huttenlocher superpixels of a batch, identical to
    ``skimage.segmentation.felzenszwalb(image, scale, sigma, min_size, channel_axis=-1)``.

    Args:
        images: [N,C,H,W] float tensor. Values are used as given (float64): skimage rescales uint8
            images by 1/255 first, so pass ``u8.double() / 255``-style values to match it.
        scale: higher means larger segments (skimage divides it by 255); 0 skips the merging
            pass, so only segments smaller than ``min_size`` are merged (as in skimage).
        sigma: Gaussian smoothing before segmenting (scipy's kernel, reflect borders).
        min_size: segments smaller than this are merged into a neighbour.
        algorithm: "sequential" (skimage's Kruskal; CPU only), "reservations" (Kruskal by
            deterministic reservations, the GPU's) or "auto" (the device's own). All give the
            same labels; the reference always runs the sequential algorithm.
        backend: "auto" (the compiled kernel; for a device without one, the CPU kernel through a
            host copy), "kernel" (a compiled kernel or an error) or "reference" (slow Python).
        return_rounds: also return int32 [N,2], the reservation rounds of the merge and min_size
            passes (0 where the sequential algorithm ran).

    Returns:
        int32 [N,H,W] labels, numbered 0..n_i-1 per image in raster order of first appearance.
        Use :func:`segment_counts` for n_i without a host sync.

    The defaults are skimage's (scale=1, sigma=0.8, min_size=20); WAL-Net's PGM passes its own
    (64, 0.5, 10).
    """
    images = _checks.as_features(images, "images", empty_batch=True).detach()
    scale = _checks.check_real(scale, "scale", min_value=0)
    sigma = _checks.check_real(sigma, "sigma", min_value=0)
    if sigma > MAX_SIGMA:
        raise ValueError(f"sigma must be at most {MAX_SIGMA:g} (a Gaussian that wide has millions of taps), "
                         f"got {sigma}")
    min_size = _checks.check_int(min_size, "min_size", min_value=0)
    _checks.check_choice(algorithm, "algorithm", ALGORITHMS)
    device = images.device
    run_on = kernel_device("felzenszwalb", device, backend, host_fallback=True)
    weights = _weights(sigma)
    if run_on is not None and run_on.type == "cuda" and len(weights) > _CUDA_MAX_TAPS:
        run_on = torch.device("cpu") if _library.has_kernel("felzenszwalb", "cpu") else None
    if algorithm == "sequential" and run_on is not None and run_on.type != "cpu":
        raise ValueError(
            f"algorithm='sequential' runs on the CPU only; the {run_on.type} kernel runs 'reservations' "
            "(same labels): pass algorithm='auto' or 'reservations', or a CPU tensor"
        )
    n, _, h, w = images.shape
    if n == 0:
        empty = torch.empty(0, h, w, dtype=torch.int32, device=device)
        return (empty, torch.empty(0, 2, dtype=torch.int32, device=device)) if return_rounds else empty
    _checks.check_values({"images": images})
    x = images.to(torch.float64)
    if run_on is None:
        labels = reference.felzenszwalb(x, scale, sigma, min_size).to(device)
        rounds = torch.zeros(n, 2, dtype=torch.int32, device=device)
    else:
        reservations = algorithm == "reservations" or (algorithm == "auto" and run_on.type != "cpu")
        # Any min_size above the image's pixel count merges alike; the kernels take an int32.
        kernel_min_size = min(min_size, _checks.MAX_SIZE)
        labels, rounds = torch.ops.walnet.felzenszwalb(x.to(run_on), weights, scale / 255.0, kernel_min_size,
                                                       reservations)
        labels, rounds = labels.to(device), rounds.to(device)
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


if _library.LOADED:

    @torch.library.register_fake("walnet::felzenszwalb")
    def _felzenszwalb_fake(images, weights, k, min_size, reservations):
        n, _, h, w = images.shape
        return images.new_empty((n, h, w), dtype=torch.int32), images.new_empty((n, 2), dtype=torch.int32)
