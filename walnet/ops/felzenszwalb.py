"""Public Felzenszwalb op (docs/design.md §6): scikit-image's superpixels, exactly, for a batch.

A drop-in for ``skimage.segmentation.felzenszwalb``: the same defaults, the same parameters
(``scale=0`` included) and the same labels — bit for bit wherever edge weights do not tie, and
equal to skimage with a stable argsort always. Three algorithms give these labels: "sequential"
(skimage's Kruskal; the CPU kernel's, images in parallel across threads), "reservations" (Kruskal
by deterministic reservations in warp rounds, the CUDA warp kernel's) and "block" (the same in
1,024-edge rounds, the CUDA block kernel's). The CPU kernel runs all three, the GPU algorithms
with the very code the CUDA kernels run, so that they are tested on every machine. The op's fake
kernel (for torch.compile) is registered here.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers

import torch

from walnet.ops import _checks, _library, reference
from walnet.ops._dispatch import kernel_device
from walnet.ops._preview import preview_kernels_enabled

__all__ = ["ALGORITHMS", "STATE_LAYOUTS", "RoundRules", "felzenszwalb", "segment_counts", "warp_plan"]

#: "auto": the device's own ("sequential" on the CPU; on CUDA "reservations" where preview
#: kernels are on, else "block").
ALGORITHMS = ("auto", "sequential", "reservations", "block")


@dataclasses.dataclass(frozen=True)
class RoundRules:
    """The rules of ``algorithm="reservations"``: they change how many rounds run, never the labels.

    Attributes:
        window: sorted edges per round, 32 or 64 (one or two per lane of the warp).
        compact: the window holds the first ``window`` undecided edges; False: the positions
            from the first undecided edge on, decided ones included.
        prefilter: the min_size pass first drops, for good, every edge whose two sides are one
            component or both have ``min_size`` pixels (they can never merge again).
        chain: the leaf-chain commit: the winner of a round goes on deciding the next edges of
            its smaller component while no other edge can precede them (docs/design.md §6).
    """

    window: int = 64
    compact: bool = True
    prefilter: bool = True
    chain: bool = True

    def __post_init__(self):
        window = self.window
        if isinstance(window, bool) or not isinstance(window, numbers.Integral) or int(window) not in (32, 64):
            raise ValueError(f"RoundRules.window must be 32 or 64, got {window!r}")
        object.__setattr__(self, "window", int(window))
        for name in ("compact", "prefilter", "chain"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"RoundRules.{name} must be a bool, got {getattr(self, name)!r}")

#: Largest smoothing sigma (a kernel radius of 4 * sigma taps; scipy would build it as well).
MAX_SIGMA = 1e5

#: The CUDA kernel takes the Gaussian kernel as a launch argument of at most this many taps
#: (sigma <= 15.6); a wider one runs on the CPU kernel.
_CUDA_MAX_TAPS = 64


@functools.lru_cache(maxsize=64)
def _cached_weights(sigma: float) -> tuple[float, ...]:
    return tuple(reference.gaussian_weights(sigma))


@_library.constant_result
def _weights(sigma: float) -> list[float]:
    # numpy's exp (scipy's weights) can differ from C's exp in the last bit, so the weights are
    # made by numpy here and passed to the kernels; constant for torch.compile.
    return list(_cached_weights(sigma))


def _resolve_algorithm(algorithm: str, run_on: torch.device | None) -> str:
    """The algorithm that runs for `algorithm` on the kernel of `run_on` (None: the reference,
    which runs the sequential algorithm whatever is asked), or an error where that kernel cannot
    run it: "sequential" is CPU-only, and CUDA's "reservations" is a preview kernel."""
    device_type = "cpu" if run_on is None else run_on.type
    if algorithm == "auto":
        if device_type == "cpu":
            return "sequential"
        return "reservations" if preview_kernels_enabled() else "block"
    if algorithm == "sequential" and device_type != "cpu":
        raise ValueError(
            f"algorithm='sequential' runs on the CPU only; the {device_type} kernel runs 'reservations' or 'block' "
            "(same labels): pass algorithm='auto', or a CPU tensor"
        )
    if algorithm == "reservations" and device_type == "cuda" and not preview_kernels_enabled():
        raise ValueError(
            "algorithm='reservations' on CUDA runs the warp kernel, a preview kernel not yet confirmed on a GPU: "
            "turn preview kernels on (walnet.ops.set_preview_kernels(True) or WALNET_PREVIEW_KERNELS=1), or pass "
            "algorithm='auto' or 'block'"
        )
    return algorithm


def _checked(images, scale, sigma, min_size, algorithm, rules) -> tuple[torch.Tensor, float, float, int]:
    """The arguments of :func:`felzenszwalb`, checked (an error naming the first bad one)."""
    images = _checks.as_features(images, "images", empty_batch=True).detach()
    scale = _checks.check_real(scale, "scale", min_value=0)
    sigma = _checks.check_real(sigma, "sigma", min_value=0)
    if sigma > MAX_SIGMA:
        raise ValueError(f"sigma must be at most {MAX_SIGMA:g} (a Gaussian that wide has millions of taps), "
                         f"got {sigma}")
    min_size = _checks.check_int(min_size, "min_size", min_value=0)
    _checks.check_choice(algorithm, "algorithm", ALGORITHMS)
    if rules is not None and not isinstance(rules, RoundRules):
        raise TypeError(f"rules must be a walnet.ops.RoundRules, got {type(rules).__name__}")
    return images, scale, sigma, min_size


def felzenszwalb(
    images: torch.Tensor,
    scale: float = 1.0,
    sigma: float = 0.8,
    min_size: int = 20,
    *,
    algorithm: str = "auto",
    rules: RoundRules | None = None,
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
            deterministic reservations in warp rounds), "block" (the same in rounds of a 1,024-edge
            window) or "auto" (the device's own: "sequential" on the CPU; on CUDA "reservations"
            where preview kernels are on, see :func:`walnet.ops.set_preview_kernels`, else
            "block"). All give the same labels; the reference always runs the sequential
            algorithm. On CUDA, "reservations" is a preview kernel: it runs only where preview
            kernels are on.
        rules: the :class:`RoundRules` of "reservations" (default ``RoundRules()``); they change
            the round counts, never the labels.
        backend: "auto" (the compiled kernel; for a device without one, the CPU kernel through a
            host copy), "kernel" (a compiled kernel or an error) or "reference" (slow Python).
        return_rounds: also return int32 [N,2], the reservation rounds of the merge and min_size
            passes (0 where the sequential algorithm ran). The CPU and CUDA kernels report the
            same counts for the same algorithm and rules.

    Returns:
        int32 [N,H,W] labels, numbered 0..n_i-1 per image in raster order of first appearance.
        Use :func:`segment_counts` for n_i without a host sync.

    The defaults are skimage's (scale=1, sigma=0.8, min_size=20); WAL-Net's PGM passes its own
    (64, 0.5, 10).
    """
    images, scale, sigma, min_size = _checked(images, scale, sigma, min_size, algorithm, rules)
    device = images.device
    run_on = kernel_device("felzenszwalb", device, backend, host_fallback=True)
    if device.type == "meta" and run_on is not None:
        run_on = device  # no data to copy to the host: the op's fake kernel gives the shapes
    weights = _weights(sigma)
    if run_on is not None and run_on.type == "cuda" and len(weights) > _CUDA_MAX_TAPS:
        run_on = torch.device("cpu") if _library.has_kernel("felzenszwalb", "cpu") else None
    algorithm = _resolve_algorithm(algorithm, run_on)
    if rules is not None and algorithm != "reservations":
        raise ValueError(f"rules apply to algorithm='reservations' only, not {algorithm!r}")
    rules = rules or RoundRules()
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
        # Any min_size above the image's pixel count merges alike; the kernels take an int32.
        kernel_min_size = min(min_size, _checks.MAX_SIZE)
        labels, rounds = torch.ops.walnet.felzenszwalb(x.to(run_on), weights, scale / 255.0, kernel_min_size,
                                                       algorithm, rules.window, rules.compact, rules.prefilter,
                                                       rules.chain)
        labels, rounds = labels.to(device), rounds.to(device)
    return (labels, rounds) if return_rounds else labels


#: Where the CUDA warp kernel ("reservations") keeps an image's union-find state: parent, size
#: and threshold in shared memory; parent and size there and the thresholds in global memory; or
#: all in global memory (images too large for shared memory).
STATE_LAYOUTS = ("shared", "split", "global")

#: Dynamic shared memory a block may have on sm_90 (H100, H200): 227 KiB.
SM90_SHARED_BYTES = 232448


def warp_plan(height: int, width: int, shared_limit: int | None = None) -> tuple[str, int]:
    """How the CUDA warp kernel lays out an image of height x width: (one of
    :data:`STATE_LAYOUTS`, dynamic shared memory per block in bytes). ``shared_limit`` defaults
    to the current CUDA device's limit where there is one, else sm_90's; the CPU kernel runs the
    index type of sm_90's layout."""
    height = _checks.check_int(height, "height", min_value=1)
    width = _checks.check_int(width, "width", min_value=1)
    if shared_limit is None:
        props = torch.cuda.get_device_properties(torch.cuda.current_device()) if torch.cuda.is_available() else None
        shared_limit = getattr(props, "shared_memory_per_block_optin", SM90_SHARED_BYTES)
    shared_limit = _checks.check_int(shared_limit, "shared_limit", min_value=0)
    if not _library.LOADED:
        raise RuntimeError(f"warp_plan needs the compiled library: {_library.LOAD_ERROR}")
    layout, shared_bytes = torch.ops.walnet.felzenszwalb_plan(height * width, shared_limit)
    return STATE_LAYOUTS[layout], shared_bytes


def segment_counts(labels: torch.Tensor) -> torch.Tensor:
    """Number of segments of each image of a [N,H,W] label batch from :func:`felzenszwalb`
    (labels are 0..n_i-1), as an int64 [N] tensor on the labels' device (no host sync where the
    value checks are off, see :func:`walnet.ops.set_value_checks`). Labels that are not integers
    are a TypeError; labels outside [0, H*W) a ValueError (a value check)."""
    _checks.check_tensor(labels, "labels")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 3 or labels.shape[1] * labels.shape[2] == 0:
        raise ValueError(f"labels must have shape [N,H,W] with H, W >= 1, got {tuple(labels.shape)}")
    if labels.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=labels.device)
    _checks.check_values({}, labels)
    return labels.flatten(1).amax(dim=1).long() + 1


if _library.LOADED:

    @torch.library.register_fake("walnet::felzenszwalb")
    def _felzenszwalb_fake(images, weights, k, min_size, algorithm, window, compact, prefilter, chain,
                           shared_limit=0):
        n, _, h, w = images.shape
        return images.new_empty((n, h, w), dtype=torch.int32), images.new_empty((n, 2), dtype=torch.int32)
