"""pytest-benchmark suite of the PGM (run: make bench). Groups compare the fused kernel, the
reference ops and the authors' per-sample path on the same inputs."""
from __future__ import annotations

import pytest

from benchmarks.common import DEVICES, PGM_CONFIGS, paper_pseudo_mask, pgm_inputs, synced
from walnet import ops



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["kernel", "reference", "paper"])
@pytest.mark.parametrize("config", PGM_CONFIGS, ids=lambda c: f"{c[0]}x{c[1]}")
def test_pseudo_mask(benchmark, device, impl, config):
    n, size = config
    a1, a2, a3, lab = pgm_inputs(n, size, device)
    benchmark.group = f"pseudo_mask {device} N={n} {size}x{size}"

    if impl == "paper":
        fn = lambda: paper_pseudo_mask(a1, a2, a3, lab)  # noqa: E731
    else:
        fn = lambda: ops.pseudo_mask(a1, a2, a3, lab, backend=impl)  # noqa: E731
    out = benchmark(synced(fn, device))
    assert out.shape == (n, size, size)
