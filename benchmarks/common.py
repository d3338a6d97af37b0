"""What the benchmark suites and the ratio-table scripts share: the timing helper and the table
scripts' timing options, the devices, and the inputs and baselines of each op."""
from __future__ import annotations

import argparse
import functools
import platform

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

#: Devices of the pytest-benchmark suites: the CPU, and CUDA where a GPU is present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def synced(fn, device: str):
    """fn as one benchmark round: a closure returning fn()'s result once the device's queued work
    is done, so a round times the work, not only its launch."""

    def run():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def median_ms(fn, min_run_time: float, threads: int) -> float:
    """Median time of fn() in milliseconds (torch.utils.benchmark's blocked_autorange for at least
    min_run_time seconds at `threads` CPU threads), after one untimed call: a warm-up that also
    pays CUDA's lazy initialisation."""
    fn()
    timer = Timer("fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def add_timing_arguments(parser: argparse.ArgumentParser, threads_help: str = "CPU threads for every contender"):
    """The options every ratio table takes: --device, --threads and --min-run-time."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")


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


# --- RCM ----------------------------------------------------------------------------------

#: (C, size) of the four encoder levels the RCM crops for a 224^2 input (ResNet-50 widths).
RCM_LEVELS = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
#: Batch sizes of the RCM tables (the pytest-benchmark suite uses the first).
RCM_BATCHES = [8, 32]


def rcm_inputs(n: int, device: str = "cpu", seed: int = 0, levels=RCM_LEVELS, seg_size: int = 56):
    """The four level feature maps [N,C,s,s] and segmentation logits [N,2,seg_size,seg_size]
    whose foreground is one noisy elliptical blob per sample (10% to 60% of the side, anywhere,
    sometimes touching a border), as a trained decoder would predict."""
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(n, c, s, s, generator=g).to(device) for c, s in levels]
    yy = torch.arange(seg_size, dtype=torch.float32)[:, None]
    xx = torch.arange(seg_size, dtype=torch.float32)[None, :]
    logits = torch.empty(n, 2, seg_size, seg_size)
    for i in range(n):
        cy, cx = (torch.rand(2, generator=g) * seg_size).tolist()
        ry, rx = ((0.05 + 0.25 * torch.rand(2, generator=g)) * seg_size).tolist()
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        noise = torch.randn(2, seg_size, seg_size, generator=g)
        logits[i, 0] = noise[0]
        logits[i, 1] = noise[0] + torch.where(inside, 3.0, -3.0) + 0.5 * noise[1]
    return features, logits.to(device)


def authors_rcm(features_list, seg_logits, threshold: float = 0.5):
    """The authors' RCM ("dilated_crop"), step for step as in their published model code
    (a610lab/WAL-Net, model_file/model_our.py, region_crop_module; rewritten here, device-
    agnostic), called once per level: softmax of the segmentation, threshold to a 0/1 mask,
    nearest-resize the batch's masks to the level, a zero-filled output; then a Python loop over
    the batch that finds the box with torch.where and four int() reads of its min/max (host
    syncs), dilates it by r = W/7 with int() truncation and clamping, slices the crop,
    nearest-resizes it back to the level's size and copies it into the output. A sample without
    foreground keeps its features."""
    out = []
    for f in features_list:
        n, _, h, w = f.shape
        r = w / 7
        prob = torch.softmax(seg_logits, 1)[:, 1:2]
        mask = prob.clone()
        mask[mask < threshold] = 0
        mask[mask >= threshold] = 1.0
        mask = F.interpolate(mask, size=(h, w), mode="nearest")
        result = torch.zeros(f.shape, dtype=f.dtype, device=f.device)
        for i in range(n):
            ys, xs = torch.where(mask[i, 0] == 1)
            if len(ys) == 0:
                result[i] = f[i]
                continue
            y1, x1, y2, x2 = int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())
            y1, x1 = max(int(y1 - r), 0), max(int(x1 - r), 0)
            y2, x2 = min(int(y2 + r), h - 1), min(int(x2 + r), w - 1)
            crop = f[i : i + 1, :, y1 : y2 + 1, x1 : x2 + 1]
            result[i] = F.interpolate(crop, size=(h, w), mode="nearest")[0]
        out.append(result)
    return out


def roi_align_rois(boxes: torch.Tensor) -> torch.Tensor:
    """walnet's inclusive int boxes [N,4] (y1, x1, y2, x2) as torchvision roi_align's float rois
    [N,5] (batch_index, x1, y1, x2 + 1, y2 + 1): the same pixels, as a continuous box."""
    b = boxes.to(torch.float32)
    index = torch.arange(len(b), device=b.device, dtype=torch.float32)
    return torch.stack([index, b[:, 1], b[:, 0], b[:, 3] + 1, b[:, 2] + 1], dim=1)
