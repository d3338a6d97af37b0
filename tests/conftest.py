"""Shared fixtures and input generators for the op tests."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from walnet import ops

HAS_CUDA = torch.cuda.is_available()

#: Devices every kernel test runs on; CUDA cases are skipped without a GPU.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")),
]

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def require_kernel(device: str) -> None:
    """Kernel-vs-reference tests are meaningless (and must not pass vacuously) without a kernel."""
    if device not in ops.built_backends():
        pytest.fail(f"walnet was built without {device} kernels: {ops.built_backends()}")


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
