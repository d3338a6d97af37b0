"""benchmarks/sanitize_ops.py, the program device_check.sh runs under compute-sanitizer, works: on
the CPU every op's output equals itself, and a wrong output is reported (exit status 1)."""
from __future__ import annotations

import sys

import torch

from benchmarks import sanitize_ops

from conftest import require_kernel


def test_runs_every_op_on_the_cpu(monkeypatch, capsys):
    require_kernel("cpu")
    monkeypatch.setattr(sys, "argv", ["sanitize_ops.py", "--device", "cpu"])
    assert sanitize_ops.main() == 0
    out = capsys.readouterr().out
    for op in ("fuse_attention", "superpixel_mean", "pseudo_mask", "mask_boxes", "roi_crop[3]",
               "felzenszwalb rgb reservations[1]", "felzenszwalb gray block[1]", "crop_resize bilinear backward",
               "felzenszwalb reservations global layout[1]",
               "pseudo_mask bad labels", "crop_resize_backward bad boxes", "roi_boxes", "crop_levels[3]",
               "crop_levels_backward[1]", "roi_crop one-pass[0]", "crop_levels bad boxes[2]",
               "crop_levels_backward bad boxes[3]", "roi_boxes wide map", "crop_levels wide level",
               "crop_levels_backward wide level"):
        assert f"ok      {op} " in out, op
    assert "61 of 61 outputs on cpu equal" in out


def test_reports_a_difference(monkeypatch, capsys):
    require_kernel("cpu")
    real = sanitize_ops._run_ops
    calls = []

    def second_run_differs(x):
        out = real(x)
        calls.append(1)
        if len(calls) == 2:
            out["pseudo_mask"] = torch.zeros_like(out["pseudo_mask"])
        return out

    monkeypatch.setattr(sanitize_ops, "_run_ops", second_run_differs)
    monkeypatch.setattr(sys, "argv", ["sanitize_ops.py", "--device", "cpu"])
    assert sanitize_ops.main() == 1
    assert "DIFFERS pseudo_mask" in capsys.readouterr().out
