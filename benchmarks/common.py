"""Inputs and baselines shared by the benchmark suites and the ratio-table scripts."""
from __future__ import annotations

import functools
import platform

import numpy as np
import torch
import torch.nn.functional as F

#: (N, H) of the PGM benchmarks: 56^2 maps (a 224^2 input) at three batch sizes, and 224^2 maps.
PGM_CONFIGS = [(8, 56), (32, 56), (256, 56), (8, 224)]


@functools.lru_cache(maxsize=None)
def _labels_cpu(n: int, size: int, seed: int) -> torch.Tensor:
    """Felzenszwalb superpixels (scale=64, sigma=0.5, min_size=10, the PGM's setting) of smooth
    random images, so segment counts are those the PGM really sees."""
    from skimage.filters import gaussian
    from skimage.segmentation import felzenszwalb

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), dtype=np.int32)
    base = [gaussian(rng.random((size, size, 3)), sigma=size / 56, channel_axis=-1) for _ in range(min(n, 16))]
    for i in range(n):
        out[i] = felzenszwalb(base[i % len(base)], scale=64, sigma=0.5, min_size=10)
    return torch.from_numpy(out)


def pgm_inputs(n: int, size: int, device: str = "cpu", seed: int = 0):
    """Attention maps A1..A3 (size, size/2, size/4) and superpixel labels at A1's size."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for s in (size, size // 2, size // 4):
        a = torch.rand(n, s, s, generator=g) ** 3
        maps.append((a / a.flatten(1).sum(1)[:, None, None]).to(device))
    return (*maps, _labels_cpu(n, size, seed).to(device))


def paper_pseudo_mask(a1, a2, a3, labels, threshold: float = 0.18) -> torch.Tensor:
    """The authors' approach: a Python loop over the batch with per-sample min-max normalisation,
    then a Python loop over each sample's segment labels with boolean masks."""
    n, h, w = a1.shape
    a2 = F.interpolate(a2[:, None], size=(h, w), mode="nearest")[:, 0]
    a3 = F.interpolate(a3[:, None], size=(h, w), mode="nearest")[:, 0]
    out = torch.zeros(n, h, w, device=a1.device)
    for i in range(n):
        fused = torch.ones(h, w, device=a1.device)
        for a in (a1[i], a2[i], a3[i]):
            fused = fused * (a - a.min()) / (a.max() - a.min())
        fused = (fused - fused.min()) / (fused.max() - fused.min())
        seg = labels[i]
        mean = torch.zeros_like(fused)
        for s in torch.unique(seg):
            sel = seg == s
            mean[sel] = fused[sel].mean()
        out[i] = (mean >= threshold).float()
    return out


def machine(device: str = "cpu") -> str:
    """One line naming the machine a table was measured on."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"
