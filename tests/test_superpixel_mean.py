"""superpixel_mean: each pixel gets its segment's mean, within the fixed-point sums' bound of the
float64 reference at every magnitude and dtype, constant on each segment; bad input."""
from __future__ import annotations

import pytest
import torch

from walnet import ops
from walnet.ops import reference

import bad_input
from bad_input import BadInput
from conftest import DEVICES, FLOAT_DTYPES, require_kernel
from pgm_inputs import LABEL_KINDS, segment_labels, small_inputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", LABEL_KINDS)
@pytest.mark.parametrize("magnitude", [1.0, 1e-30, 1e30])
def test_superpixel_mean_matches_reference(device, dtype, kind, magnitude):
    require_kernel(device)
    if dtype in (torch.float16, torch.bfloat16) and magnitude != 1.0:
        pytest.skip("out of half-precision range")
    n, h, w = 5, 21, 34
    g = torch.Generator().manual_seed(1)
    values = ((torch.randn(n, h, w, generator=g, dtype=torch.float64) + 0.3) * magnitude).to(dtype).to(device)
    labels = segment_labels(kind, n, h, w, device=device, seed=2)
    out = ops.superpixel_mean(values, labels, backend="kernel")
    assert out.dtype == dtype and out.shape == values.shape
    expected = reference._segment_mean64(values, labels)
    max_abs = values.double().abs().flatten(1).amax(1)[:, None, None]
    # Fixed-point sums err by < 1e-13 * max|v| per sample; then one rounding to the output dtype.
    eps = torch.finfo(dtype).eps if dtype != torch.float64 else 0.0
    bound = 1e-13 * max_abs + eps * expected.abs()
    assert ((out.double() - expected).abs() <= bound).all()


@pytest.mark.parametrize("device", DEVICES)
def test_superpixel_mean_is_constant_on_segments(device):
    require_kernel(device)
    labels = segment_labels("felzenszwalb", 4, 56, 56, device=device)
    values = torch.rand(4, 56, 56, device=device)
    out = ops.superpixel_mean(values, labels)
    for i in range(4):
        for seg in labels[i].unique()[:20]:
            sel = labels[i] == seg
            assert torch.unique(out[i][sel]).numel() == 1
            torch.testing.assert_close(out[i][sel][0], values[i][sel].double().mean().float(), rtol=1e-6, atol=0)


# --- bad input ----------------------------------------------------------------------------


def _bad_cases():
    a1, _, _, lab = small_inputs()
    bad = a1.clone()
    bad[0, 0, 0] = float("nan")
    return [
        BadInput("integer values", (lab, lab), TypeError, "values"),
        BadInput("flat values", (a1.flatten(1), lab), ValueError, "values"),
        BadInput("float labels", (a1, lab.double()), TypeError, "labels"),
        BadInput("negative labels", (a1, -lab - 1), ValueError, "labels"),
        BadInput("labels batch", (a1, lab[1:]), ValueError, "labels"),
        BadInput("nan values", (bad, lab), ValueError, "values"),
    ]


@pytest.mark.parametrize("case", bad_input.params(_bad_cases()))
def test_bad_input_superpixel_mean(case):
    case.check(ops.superpixel_mean)
