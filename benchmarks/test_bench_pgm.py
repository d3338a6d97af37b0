"""pytest-benchmark suite of the PGM (run: make bench). Groups compare the fused kernel, the
reference ops and the authors' per-sample path on the same inputs."""
from __future__ import annotations

import pytest
import torch

from benchmarks.common import PGM_CONFIGS, paper_pseudo_mask, pgm_inputs
from walnet import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["kernel", "reference", "paper"])
@pytest.mark.parametrize("config", PGM_CONFIGS, ids=lambda c: f"{c[0]}x{c[1]}")
def test_pseudo_mask(benchmark, device, impl, config):
    n, size = config
    a1, a2, a3, lab = pgm_inputs(n, size, device)
    benchmark.group = f"pseudo_mask {device} N={n} {size}x{size}"

    def run():
        if impl == "paper":
            out = paper_pseudo_mask(a1, a2, a3, lab)
        else:
            out = ops.pseudo_mask(a1, a2, a3, lab, backend=impl)
        _sync(device)
        return out

    out = benchmark(run)
    assert out.shape == (n, size, size)
