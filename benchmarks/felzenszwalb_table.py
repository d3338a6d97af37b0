"""Prints the Felzenszwalb ratio table: walnet.ops.felzenszwalb on a batch vs
skimage.segmentation.felzenszwalb called once per image, as users call it (numpy's own argsort,
unpatched). Run: python benchmarks/felzenszwalb_table.py [--device cuda] [--threads K].

Columns, old and new side by side: on CUDA "block" (the 1,024-thread block per image) and
"reservations" (the warp per image, a preview kernel: this script turns preview kernels on), with
the default round rules and with the chain rule off; on the CPU "sequential" (the CPU's own) and
the two GPU algorithms as the CPU emulates them. For the reservation algorithms: the mean rounds per
image (merge pass + min_size pass) and the time per round (the batch's time over the rounds of
its images, which run concurrently on a GPU).

Settings: scale=64, sigma=0.5, min_size=10 (the PGM's). Shapes: 8 x 56² (the PGM's batch), 64 x 224²,
1 x 512², and on CUDA 4096 x 56² (a saturated GPU; skimage's time there is 512 times its 8 x 56²).
Images: skimage.data's shipped RGB photos (astronaut, chelsea, coffee, colorwheel,
hubble_deep_field, immunohistochemistry, retina, rocket, stereo_motorcycle, logo), random square
crops (40% to 100% of the shorter side, some mirrored) resized to the size with anti-aliasing
and rounded to uint8; 1 x 512² is astronaut itself. skimage gets the uint8 H x W x 3 arrays;
walnet gets them as one float64 [N,3,H,W] tensor u / 255 (skimage's own conversion) already on
the device, so the columns compare the segmentation, not the host-to-device copy.

Rows are measured at --threads (default 1) and, unless --no-all-threads, at all cores. skimage is
single-threaded: it is timed once per shape, under --threads, and compared to both rows. All rows
of one run come from the same machine and process."""
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
#: A saturated GPU: timed on CUDA only, skimage's time scaled from the first config's.
FZ_SATURATED = (4096, 56)
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


#: (column name, algorithm, round rules) of the table, per device type.
COLUMNS = {
    "cpu": [("sequential", "sequential", None), ("reservations", "reservations", None),
            ("block", "block", None)],
    "cuda": [("block", "block", None), ("reservations", "reservations", None),
             ("reservations, no chain", "reservations", ops.RoundRules(chain=False))],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, threads_help="CPU threads of the first rows (default 1)")
    parser.add_argument("--all-threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads of the second rows (default: all cores)")
    parser.add_argument("--no-all-threads", action="store_true", help="only measure at --threads")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    on_cuda = args.device.startswith("cuda")
    if on_cuda:
        ops.set_preview_kernels(True)  # the warp kernel is a preview kernel until a GPU confirms it
    thread_counts = [args.threads]
    if not args.no_all_threads and args.all_threads != args.threads:
        thread_counts.append(args.all_threads)
    torch.set_num_threads(args.threads)
    columns = COLUMNS["cuda" if on_cuda else "cpu"]
    scale, sigma, min_size = FZ_PARAMS
    print(f"felzenszwalb on {args.device}: {machine(args.device)}")
    print(f"torch {torch.__version__}, walnet backends {sorted(ops.built_backends())}; "
          f"scale={scale:g}, sigma={sigma:g}, min_size={min_size}; skimage once per image, single-threaded\n")
    timed = [c for c in columns if c[1] != "sequential"]
    header = ["N x size", "threads", *[f"{c[0]} (ms)" for c in columns], "skimage (ms)",
              *[f"skimage / {c[0]}" for c in columns], *[f"rounds/image {c[0]}" for c in timed],
              *[f"µs/round {c[0]}" for c in timed]]
    print("| " + " | ".join(header) + " |")
    print("|---|---:|" + "---:|" * (len(header) - 2))
    configs = FZ_CONFIGS + ([FZ_SATURATED] if on_cuda else [])
    sk_per_image = {}
    for n, size in configs:
        u, x = fz_inputs(n, size, args.device)
        run = dict(min_run_time=args.min_run_time)
        torch.set_num_threads(args.threads)
        if (n, size) == FZ_SATURATED:
            sk = sk_per_image[size] * n
        else:
            sk = median_ms(lambda: skimage_per_image(u), threads=args.threads, **run)
            sk_per_image.setdefault(size, sk / n)
        rounds = {}
        for name, algorithm, rules in timed:
            _, r = ops.felzenszwalb(x, scale, sigma, min_size, algorithm=algorithm, rules=rules, return_rounds=True)
            rounds[name] = float(r.double().sum(1).mean())
        for threads in thread_counts:
            torch.set_num_threads(threads)
            ms = {name: median_ms(lambda a=a, r=r: ops.felzenszwalb(x, scale, sigma, min_size, algorithm=a, rules=r),
                                  threads=threads, **run)
                  for name, a, r in columns}
            cells = [f"{ms[c[0]]:.3f}" for c in columns] + [f"{sk:.1f}"] + [f"{sk / ms[c[0]]:.1f}×" for c in columns]
            cells += [f"{rounds[c[0]]:.1f}" for c in timed] + [f"{1e3 * ms[c[0]] / rounds[c[0]]:.2f}" for c in timed]
            print(f"| {n} x {size}² | {threads} | " + " | ".join(cells) + " |", flush=True)
    torch.set_num_threads(args.threads)


if __name__ == "__main__":
    main()
