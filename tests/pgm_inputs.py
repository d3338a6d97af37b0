"""Inputs of the PGM op tests (fuse_attention, superpixel_mean, pseudo_mask): attention maps as
the gates produce them, segment labels (real Felzenszwalb superpixels among them), the shapes the
kernels are checked on, and the bad inputs the map arguments must refuse."""
from __future__ import annotations

import functools

import numpy as np
import torch

from bad_input import BadInput

#: (N, a1 size, a2 size, a3 size): the paper's 56/28/14 pyramid, odd and non-square maps,
#: equal sizes (no upsampling), ratios that are not powers of two, and a 224^2 input.
SHAPES = [
    (1, (56, 56), (28, 28), (14, 14)),
    (2, (17, 23), (9, 11), (5, 4)),
    (7, (13, 9), (13, 9), (13, 9)),
    (64, (8, 8), (4, 4), (2, 2)),
    (3, (31, 45), (10, 7), (3, 5)),
    (2, (224, 224), (112, 112), (56, 56)),
]
#: The kinds of segment_labels.
LABEL_KINDS = ["one", "each", "random", "felzenszwalb"]


def attention_maps(n, size1, size2, size3, *, dtype=torch.float32, device="cpu", seed=0):
    """Random positive attention-like maps with a blob, as the gates produce (sum-normalised)."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for h, w in (size1, size2, size3):
        a = torch.rand(n, h, w, generator=g, dtype=torch.float64) ** 3
        a = a / a.flatten(1).sum(1)[:, None, None]
        maps.append(a.to(dtype=dtype, device=device))
    return maps


@functools.lru_cache(maxsize=None)
def _felzenszwalb_labels(n, h, w, seed):
    """skimage's superpixels (the PGM's setting) of noise images; cached: skimage is slow."""
    from skimage.segmentation import felzenszwalb

    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w), dtype=np.int32)
    for i in range(n):
        img = rng.random((h, w, 3))
        out[i] = felzenszwalb(img, scale=64, sigma=0.5, min_size=10)
    return torch.from_numpy(out)


def segment_labels(kind, n, h, w, *, device="cpu", seed=0, dtype=torch.int32):
    """Per-sample segment ids in [0, h*w): 'one' segment, 'each' pixel its own (permuted),
    'random' ids from a few segments, or real 'felzenszwalb' superpixels of noise images."""
    g = torch.Generator().manual_seed(seed)
    if kind == "one":
        lab = torch.zeros(n, h, w, dtype=torch.int64)
    elif kind == "each":
        lab = torch.stack([torch.randperm(h * w, generator=g).reshape(h, w) for _ in range(n)])
    elif kind == "random":
        k = max(1, min(h * w, 12))
        lab = torch.randint(0, k, (n, h, w), generator=g)
    elif kind == "felzenszwalb":
        lab = _felzenszwalb_labels(n, h, w, seed)
    else:
        raise ValueError(kind)
    return lab.to(dtype=dtype, device=device)


def small_inputs(n=2, h=16, w=12):
    """Maps A1..A3 at (h, w), half and quarter size, and random segment labels at A1's size."""
    a1, a2, a3 = attention_maps(n, (h, w), (h // 2, w // 2), (h // 4, w // 4), seed=1)
    return a1, a2, a3, segment_labels("random", n, h, w)


def map_bad_cases():
    """Bad (a1, a2, a3, labels) of pseudo_mask; those not naming labels are bad for fuse_attention too."""
    a1, a2, a3, lab = small_inputs()
    nan = a2.clone()
    nan[0, 1, 1] = float("nan")
    inf = a3.clone()
    inf[1, 0, 0] = float("inf")
    return [
        BadInput("rank a1", (a1[0], a2, a3, lab), ValueError, "a1"),
        BadInput("channels a2", (a1, torch.stack([a2, a2], 1), a3, lab), ValueError, "a2"),
        BadInput("batch a3", (a1, a2, a3[:1], lab), ValueError, "a3"),
        BadInput("empty batch", (a1[:0], a2[:0], a3[:0], lab[:0]), ValueError, "a1"),
        BadInput("integer map", (a1, (a2 * 100).long(), a3, lab), TypeError, "a2"),
        BadInput("not a tensor", (a1.numpy(), a2, a3, lab), TypeError, "a1"),
        BadInput("a2 larger", (a1, torch.rand(2, 32, 24), a3, lab), ValueError, "a2"),
        BadInput("a3 wider", (a1, a2, torch.rand(2, 4, 13), lab), ValueError, "a3"),
        BadInput("nan", (a1, nan, a3, lab), ValueError, "a2"),
        BadInput("inf", (a1, a2, inf, lab), ValueError, "a3"),
        BadInput("device mix", (a1, a2.to("meta"), a3, lab), ValueError, "a2"),
        BadInput("float labels", (a1, a2, a3, lab.float()), TypeError, "labels"),
        BadInput("bool labels", (a1, a2, a3, lab > 3), TypeError, "labels"),
        BadInput("negative labels", (a1, a2, a3, lab - 1), ValueError, "labels"),
        BadInput("labels >= H*W", (a1, a2, a3, lab + 16 * 12), ValueError, "labels"),
        BadInput("labels shape", (a1, a2, a3, lab[:, :8]), ValueError, "labels"),
        BadInput("labels device", (a1, a2, a3, lab.to("meta")), ValueError, "labels"),
    ]
