"""Prints the RCM ratio table: walnet's batched roi_crop ("dilated_crop", kernel) vs the authors'
per-sample loop vs torchvision's roi_align given the same boxes, forward and forward+backward over
the four encoder levels of a 224^2 input. Run: python benchmarks/rcm_table.py [--device cuda]
[--threads K]. All rows of one run come from the same machine and process.

roi_align is timed on precomputed boxes (from walnet.ops.mask_boxes), so its column is the
crop-resize alone; walnet and the authors' loop also find the boxes. roi_align (aligned=False,
sampling_ratio=1) samples bilinearly: it does comparable work, not the same arithmetic."""
from __future__ import annotations

import argparse
import os
import sys

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


def contenders(seg_logits, levels):
    """name -> function(levels) returning the list of transformed levels."""
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

    return {"walnet": walnet, "authors": authors, "roi_align": torchvision_roi_align}


def forward_backward(fn, levels):
    """A closure running fn forward and backward (the gradient of sum(outputs) to the levels)."""
    leaves = [f.detach().requires_grad_() for f in levels]

    def run():
        out = fn(leaves)
        return torch.autograd.grad(sum(o.sum() for o in out), leaves)

    return run


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
    parser.add_argument(
        "--no-value-checks", action="store_true", help="run walnet without its NaN check (sync-free on CUDA)"
    )
    parser.add_argument("--per-level", action="store_true", help="also time crop_resize per level against a clone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.no_value_checks:
        ops.set_value_checks(False)
    levels_text = ", ".join(f"{c}x{s}²" for c, s in RCM_LEVELS)
    print(f"roi_crop (dilated_crop) on {args.device}: {machine(args.device)}")
    print(f"torch {torch.__version__}, walnet backends {sorted(ops.built_backends())}; levels {levels_text}")
    print("roi_align: crop-resize only, on boxes computed beforehand\n")
    print("| N | pass | walnet (ms) | authors (ms) | roi_align (ms) | authors / walnet | roi_align / walnet |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    run = dict(min_run_time=args.min_run_time, threads=args.threads)
    for n in RCM_BATCHES:
        levels, seg = rcm_inputs(n, args.device)
        fns = contenders(seg, levels)
        for label in ("forward", "forward+backward"):
            if label == "forward":
                ms = {name: median_ms(lambda fn=fn: fn(levels), **run) for name, fn in fns.items()}
            else:
                ms = {name: median_ms(forward_backward(fn, levels), **run) for name, fn in fns.items()}
            w, a, r = ms["walnet"], ms["authors"], ms["roi_align"]
            print(f"| {n} | {label} | {w:.3f} | {a:.3f} | {r:.3f} | {a / w:.1f}× | {r / w:.1f}× |")
    if args.per_level:
        per_level(RCM_BATCHES[0], args.device, **run)


if __name__ == "__main__":
    main()
