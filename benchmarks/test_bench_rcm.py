"""pytest-benchmark suite of the RCM (run: make bench). Groups compare walnet's batched roi_crop
("dilated_crop" kernel; its one-pass and per-level paths), the authors' per-sample loop and
torchvision's roi_align (on the same, precomputed boxes) over the four encoder levels of a 224^2
input at N=8."""
from __future__ import annotations

import pytest
import torch

from benchmarks.common import DEVICES, RCM_BATCHES, authors_rcm, rcm_inputs, synced
from benchmarks.rcm_table import contenders, forward_backward
from walnet import ops

N = RCM_BATCHES[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["one-pass", "per-level", "authors", "roi_align"])
@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
def test_roi_crop(benchmark, device, impl, pass_):
    levels, seg = rcm_inputs(N, device)
    path, fn = contenders(seg, levels)[impl]
    benchmark.group = f"roi_crop {device} N={N} {pass_}"
    step = (lambda: fn(levels)) if pass_ == "forward" else forward_backward(fn, levels)
    with path():
        out = benchmark(synced(step, device))
    assert [tuple(o.shape) for o in out] == [tuple(f.shape) for f in levels]


@pytest.mark.parametrize("device", DEVICES)
def test_walnet_equals_authors(device):
    """The contenders compute the same thing: walnet's kernel and the authors' loop agree bitwise."""
    levels, seg = rcm_inputs(N, device, seed=1)
    for got, want in zip(ops.roi_crop(levels, seg, "dilated_crop", backend="kernel"), authors_rcm(levels, seg)):
        assert torch.equal(got, want)
