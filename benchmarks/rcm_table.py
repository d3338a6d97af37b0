"""Prints the RCM ratio tables: walnet's batched roi_crop ("dilated_crop", kernel) on its one-pass
path (one roi_boxes and one crop_levels for the four levels; preview kernels on CUDA) and on its
per-level path (mask_boxes and crop_resize per level, what CUDA runs while preview kernels are off)
vs the authors' per-sample loop vs torchvision's roi_align given the same boxes, forward and
forward+backward over the four encoder levels of a 224^2 input; then both walnet paths' forward
against a clone of the four levels (the copy floor of any op that writes the cropped maps).
Run: python benchmarks/rcm_table.py [--device cuda] [--threads K]. All rows of one run come from
the same machine and process. walnet runs without its value checks (sync-free on CUDA) unless
--value-checks.

roi_align is timed on precomputed boxes (from walnet.ops.mask_boxes), so its column is the
crop-resize alone; walnet and the authors' loop also find the boxes. roi_align (aligned=False,
sampling_ratio=1) samples bilinearly: it does comparable work, not the same arithmetic."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    RCM_BATCHES,
    RCM_LEVELS,
    add_timing_arguments,
    authors_rcm,
    machine,
    median_ms,
    rcm_inputs,
    roi_align_rois,
)
from walnet import ops  # noqa: E402
from walnet.ops import rcm  # noqa: E402


def one_pass_path():
    """roi_crop's one-pass path: on CUDA it needs the preview kernels (the CPU runs it anyway)."""
    return ops.preview_kernels(True)


def per_level_path():
    """roi_crop's per-level path (mask_boxes and crop_resize per level): what CUDA runs while the
    preview kernels are off, and what the CPU ran before the one-pass ops."""
    return mock.patch.object(rcm, "_one_pass", lambda device: False)


def contenders(seg_logits, levels):
    """name -> (path, function(levels) returning the list of transformed levels): `path()` is the
    context to time the function in."""
    from torchvision.ops import roi_align

    prob = torch.softmax(seg_logits.float(), dim=1)[:, 1]
    rois = [roi_align_rois(ops.mask_boxes(prob, tuple(f.shape[-2:]))) for f in levels]

    def walnet(lv):
        return ops.roi_crop(lv, seg_logits, "dilated_crop", backend="kernel")

    def authors(lv):
        return authors_rcm(lv, seg_logits)

    def torchvision_roi_align(lv):
        return [
            roi_align(f, r, output_size=tuple(f.shape[-2:]), spatial_scale=1.0, sampling_ratio=1, aligned=False)
            for f, r in zip(lv, rois)
        ]

    return {
        "one-pass": (one_pass_path, walnet),
        "per-level": (per_level_path, walnet),
        "authors": (contextlib.nullcontext, authors),
        "roi_align": (contextlib.nullcontext, torchvision_roi_align),
    }


def forward_backward(fn, levels):
    """A closure running fn forward and backward (the gradient of sum(outputs) to the levels)."""
    leaves = [f.detach().requires_grad_() for f in levels]

    def run():
        out = fn(leaves)
        return torch.autograd.grad(sum(o.sum() for o in out), leaves)

    return run


def timed(path, run, min_run_time: float, threads: int) -> float:
    with path():
        return median_ms(run, min_run_time, threads)


def copy_floor(device: str, min_run_time: float, threads: int) -> None:
    """Both walnet paths' forward beside a clone of the four levels together (the same bytes
    written, the four results alive at once as the op's are)."""
    print("\nforward against the copy floor (ms)\n")
    print("| N | one-pass | per-level | clone of the levels | one-pass / clone | per-level / clone |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in RCM_BATCHES:
        levels, seg = rcm_inputs(n, device)
        fns = contenders(seg, levels)
        ms = {name: timed(fns[name][0], lambda fn=fns[name][1]: fn(levels), min_run_time, threads)
              for name in ("one-pass", "per-level")}
        clone = median_ms(lambda: [f.clone() for f in levels], min_run_time, threads)
        o, p = ms["one-pass"], ms["per-level"]
        print(f"| {n} | {o:.3f} | {p:.3f} | {clone:.3f} | {o / clone:.2f}× | {p / clone:.2f}× |")


def per_level(n: int, device: str, min_run_time: float, threads: int) -> None:
    """crop_resize alone per level (forward, nearest backward) beside a clone of the level:
    the copy is the floor of any op that writes the cropped map."""
    levels, seg = rcm_inputs(n, device)
    prob = torch.softmax(seg.float(), dim=1)[:, 1]
    print(f"\ncrop_resize per level, N = {n} (ms)\n")
    print("| level | forward | backward | clone |")
    print("|---|---:|---:|---:|")
    totals = [0.0, 0.0, 0.0]
    for f in levels:
        h, w = f.shape[-2:]
        boxes = ops.mask_boxes(prob, (h, w))
        grad = torch.randn_like(f)
        fwd = median_ms(lambda: ops.crop_resize(f, boxes), min_run_time, threads)
        bwd = median_ms(lambda: torch.ops.walnet.crop_resize_backward(grad, boxes, h, w, False), min_run_time, threads)
        copy = median_ms(f.clone, min_run_time, threads)
        print(f"| {f.shape[1]}x{h}² | {fwd:.3f} | {bwd:.3f} | {copy:.3f} |")
        totals = [t + v for t, v in zip(totals, (fwd, bwd, copy))]
    print("| all four | " + " | ".join(f"{t:.3f}" for t in totals) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser)
    parser.add_argument("--value-checks", action="store_true", help="run walnet with its NaN check (a host sync on "
                        "CUDA)")
    parser.add_argument("--per-level", action="store_true", help="also time crop_resize per level against a clone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ops.set_value_checks(args.value_checks)
    levels_text = ", ".join(f"{c}x{s}²" for c, s in RCM_LEVELS)
    print(f"roi_crop (dilated_crop) on {args.device}: {machine(args.device)}")
    print(f"torch {torch.__version__}, walnet backends {sorted(ops.built_backends())}; levels {levels_text}; "
          f"value checks {'on' if args.value_checks else 'off'}")
    print("roi_align: crop-resize only, on boxes computed beforehand\n")
    print("| N | pass | one-pass (ms) | per-level (ms) | authors (ms) | roi_align (ms) | per-level / one-pass "
          "| authors / one-pass | roi_align / one-pass |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    run = dict(min_run_time=args.min_run_time, threads=args.threads)
    for n in RCM_BATCHES:
        levels, seg = rcm_inputs(n, args.device)
        fns = contenders(seg, levels)
        for label in ("forward", "forward+backward"):
            ms = {}
            for name, (path, fn) in fns.items():
                step = (lambda fn=fn: fn(levels)) if label == "forward" else forward_backward(fn, levels)
                ms[name] = timed(path, step, **run)
            o, p, a, r = ms["one-pass"], ms["per-level"], ms["authors"], ms["roi_align"]
            print(f"| {n} | {label} | {o:.3f} | {p:.3f} | {a:.3f} | {r:.3f} | {p / o:.2f}× | {a / o:.1f}× "
                  f"| {r / o:.1f}× |")
    copy_floor(args.device, **run)
    if args.per_level:
        per_level(RCM_BATCHES[0], args.device, **run)


if __name__ == "__main__":
    main()
