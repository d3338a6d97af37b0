"""Prints the Felzenszwalb ratio table: walnet.ops.felzenszwalb on a batch (the "sequential"
algorithm and "reservations", Kruskal by deterministic reservations) vs
skimage.segmentation.felzenszwalb called once per image, as users call it (numpy's own argsort,
unpatched). Run: python benchmarks/felzenszwalb_table.py [--device cuda] [--threads K].

Settings: scale=64, sigma=0.5, min_size=10 (the PGM's). Shapes: 8 x 56², 64 x 224², 1 x 512².
Images: skimage.data's shipped RGB photos (astronaut, chelsea, coffee, colorwheel,
hubble_deep_field, immunohistochemistry, retina, rocket, stereo_motorcycle, logo), random square
crops (40% to 100% of the shorter side, some mirrored) resized to the size with anti-aliasing
and rounded to uint8; 1 x 512² is astronaut itself. skimage gets the uint8 H x W x 3 arrays;
walnet gets them as one float64 [N,3,H,W] tensor u / 255 (skimage's own conversion) already on
the device, so the columns compare the segmentation, not the host-to-device copy.

Rows are measured at --threads (default 1) and, unless --no-all-threads, at all cores. skimage is
single-threaded: it is timed once per shape, under --threads, and compared to both rows.
The rounds column is the mean per image of the reservation rounds of the merge pass / the
min_size pass (return_rounds=True, algorithm="reservations"). All rows of one run come from the same
machine and process."""
from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import add_timing_arguments, machine, median_ms  # noqa: E402
from walnet import ops  # noqa: E402

#: (N, size) of the table; the pytest-benchmark suite uses the first.
FZ_CONFIGS = [(8, 56), (64, 224), (1, 512)]
#: The PGM's setting: (scale, sigma, min_size).
FZ_PARAMS = (64.0, 0.5, 10)
RGB_NAMES = ["astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry", "retina",
             "rocket", "stereo_motorcycle", "logo"]


@functools.lru_cache(maxsize=None)
def _photos() -> tuple:
    import skimage.data

    out = []
    for name in RGB_NAMES:
        try:
            img = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001  a data file this skimage build does not ship
            continue
        img = img[0] if isinstance(img, tuple) else img
        out.append(np.ascontiguousarray(img[..., :3]))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def fz_images_u8(n: int, size: int, seed: int = 0) -> np.ndarray:
    """[N, size, size, 3] uint8: crops of skimage's shipped photos resized to size (see the
    module docstring); 1 x 512 is astronaut unchanged."""
    from skimage.transform import resize

    photos = _photos()
    if n == 1 and size == 512 and photos[0].shape[:2] == (512, 512):
        return photos[0][None].copy()
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(min(img.shape[:2]) * (1.0 if i < len(photos) else rng.uniform(0.4, 1.0)))
        y = int(rng.integers(0, img.shape[0] - side + 1))
        x = int(rng.integers(0, img.shape[1] - side + 1))
        crop = img[y : y + side, x : x + side]
        step = side // (2 * size)
        if step > 1:
            crop = crop[::step, ::step]
        if rng.random() < 0.3:
            crop = crop[:, ::-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = resize(crop, (size, size, 3), anti_aliasing=True)
        out[i] = np.clip(np.round(r * 255), 0, 255).astype(np.uint8)
    return out


def fz_inputs(n: int, size: int, device: str = "cpu", seed: int = 0):
    """(uint8 images for skimage [N,H,W,3] numpy, walnet's float64 [N,3,H,W] tensor u / 255)."""
    u = fz_images_u8(n, size, seed)
    x = (torch.from_numpy(u).double() * (1.0 / 255)).permute(0, 3, 1, 2).contiguous().to(device)
    return u, x


def skimage_per_image(images_u8: np.ndarray, scale=FZ_PARAMS[0], sigma=FZ_PARAMS[1], min_size=FZ_PARAMS[2]):
    """The users' path: skimage once per image of the batch."""
    from skimage.segmentation import felzenszwalb

    return [felzenszwalb(img, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1) for img in images_u8]


def walnet_algorithms(device: str) -> list[str]:
    """The algorithms the device's kernel runs ("auto" is the device's own)."""
    return ["sequential", "reservations"] if device == "cpu" else ["auto", "reservations"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, threads_help="CPU threads of the first rows (default 1)")
    parser.add_argument("--all-threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads of the second rows (default: all cores)")
    parser.add_argument("--no-all-threads", action="store_true", help="only measure at --threads")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    thread_counts = [args.threads]
    if not args.no_all_threads and args.all_threads != args.threads:
        thread_counts.append(args.all_threads)
    torch.set_num_threads(args.threads)
    algorithms = walnet_algorithms(args.device)
    scale, sigma, min_size = FZ_PARAMS
    print(f"felzenszwalb on {args.device}: {machine(args.device)}")
    print(f"torch {torch.__version__}, walnet backends {sorted(ops.built_backends())}; "
          f"scale={scale:g}, sigma={sigma:g}, min_size={min_size}; skimage once per image, single-threaded\n")
    names = [f"walnet {a} (ms)" for a in algorithms]
    ratios = [f"skimage / {a}" for a in algorithms]
    header = ["N x size", "threads", *names, "skimage (ms)", *ratios, "rounds merge / min_size"]
    print("| " + " | ".join(header) + " |")
    print("|---|---:|" + "---:|" * (2 * len(algorithms) + 2))
    for n, size in FZ_CONFIGS:
        u, x = fz_inputs(n, size, args.device)
        run = dict(min_run_time=args.min_run_time)
        torch.set_num_threads(args.threads)
        sk = median_ms(lambda: skimage_per_image(u), threads=args.threads, **run)
        _, rounds = ops.felzenszwalb(x, scale, sigma, min_size, algorithm="reservations", return_rounds=True)
        mean_rounds = rounds.double().mean(0).tolist()
        for threads in thread_counts:
            torch.set_num_threads(threads)
            ms = [
                median_ms(lambda a=a: ops.felzenszwalb(x, scale, sigma, min_size, algorithm=a), threads=threads, **run)
                for a in algorithms
            ]
            cells = " | ".join(f"{m:.3f}" for m in ms)
            rcells = " | ".join(f"{sk / m:.1f}×" for m in ms)
            print(f"| {n} x {size}² | {threads} | {cells} | {sk:.1f} | {rcells} | "
                  f"{mean_rounds[0]:.1f} / {mean_rounds[1]:.1f} |", flush=True)
    torch.set_num_threads(args.threads)


if __name__ == "__main__":
    main()
