"""Prints the PGM ratio table: walnet's fused pseudo_mask kernel vs the reference ops vs the
authors' "paper path" (per-sample loop, loop over segments). Run: python benchmarks/pgm_table.py
[--device cuda] [--threads K]. All rows of one run come from the same machine and process."""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (  # noqa: E402
    PGM_CONFIGS,
    add_timing_arguments,
    machine,
    median_ms,
    paper_pseudo_mask,
    pgm_inputs,
)
from walnet import ops  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_timing_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"pseudo_mask on {args.device}: {machine(args.device)}")
    print(f"torch {torch.__version__}, walnet backends {sorted(ops.built_backends())}\n")
    print("| N x size | kernel (ms) | reference ops (ms) | paper path (ms) | ref / kernel | paper / kernel |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, size in PGM_CONFIGS:
        a1, a2, a3, lab = pgm_inputs(n, size, args.device)
        run = dict(min_run_time=args.min_run_time, threads=args.threads)
        kernel = median_ms(lambda: ops.pseudo_mask(a1, a2, a3, lab, backend="kernel"), **run)
        ref = median_ms(lambda: ops.pseudo_mask(a1, a2, a3, lab, backend="reference"), **run)
        paper = median_ms(lambda: paper_pseudo_mask(a1, a2, a3, lab), **run)
        print(f"| {n} x {size}² | {kernel:.3f} | {ref:.3f} | {paper:.1f} | {ref / kernel:.1f}× | {paper / kernel:.0f}× |")


if __name__ == "__main__":
    main()
