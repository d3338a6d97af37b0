"""pytest-benchmark suite of the Felzenszwalb op (run: make bench). One group at 8 x 56² (scale
64, sigma 0.5, min_size 10, the PGM's setting) compares walnet's algorithms on the batch ("sequential" is the
device's own on CUDA; "reservations" runs there as a preview kernel) with skimage called once per image
(inputs: see benchmarks/felzenszwalb_table.py)."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from benchmarks.common import DEVICES, synced
from benchmarks.felzenszwalb_table import FZ_CONFIGS, FZ_PARAMS, fz_inputs, skimage_per_image
from walnet import ops

N, SIZE = FZ_CONFIGS[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["sequential", "reservations", "block", "skimage"])
def test_felzenszwalb(benchmark, device, impl):
    if impl == "skimage" and device != "cpu":
        pytest.skip("skimage runs on the CPU")
    if impl == "sequential" and device != "cpu":
        impl = "auto"  # the device's own algorithm
    u, x = fz_inputs(N, SIZE, device)
    benchmark.group = f"felzenszwalb N={N} {SIZE}x{SIZE}"

    if impl == "skimage":
        fn = lambda: skimage_per_image(u)  # noqa: E731
    else:
        fn = lambda: ops.felzenszwalb(x, *FZ_PARAMS, algorithm=impl)  # noqa: E731
    with ops.preview_kernels(True):
        out = benchmark(synced(fn, device))
    assert len(out) == N and tuple(out[0].shape) == (SIZE, SIZE)


@pytest.mark.parametrize("algorithm", ["sequential", "reservations", "block"])
def test_walnet_equals_skimage(algorithm):
    """The contenders compute the same thing: walnet equals skimage (with a stable argsort, which
    is walnet's tie rule) on the benchmark images."""
    real = np.argsort
    u, x = fz_inputs(N, SIZE)
    with mock.patch("numpy.argsort", lambda a, *args, **kw: real(a, kind="stable")):
        want = np.stack(skimage_per_image(u))
    got = ops.felzenszwalb(x, *FZ_PARAMS, algorithm=algorithm)
    assert np.array_equal(got.numpy(), want)
