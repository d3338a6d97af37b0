"""fuse_attention: the fused attention map B, bitwise equal to the reference spec in every dtype
and on the shapes of the pyramid and odd ones; bad input."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from walnet import ops
from walnet.ops import reference

import bad_input
from conftest import DEVICES, FLOAT_DTYPES, require_kernel
from pgm_inputs import SHAPES, attention_maps, map_bad_cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}-{s[1][0]}x{s[1][1]}")
def test_fuse_attention_bitwise_equals_reference(device, dtype, shape):
    require_kernel(device)
    n, s1, s2, s3 = shape
    a1, a2, a3 = attention_maps(n, s1, s2, s3, dtype=dtype, device=device, seed=n)
    out = ops.fuse_attention(a1, a2, a3, backend="kernel")
    expected = reference.fuse_attention(a1, a2, a3)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(out, expected)
    # B is a min-max normalised map: exactly 0 and 1 appear in each informative sample.
    assert torch.equal(out.flatten(1).amin(1), torch.zeros(n, dtype=out.dtype, device=device))
    assert torch.equal(out.flatten(1).amax(1), torch.ones(n, dtype=out.dtype, device=device))


# --- bad input ----------------------------------------------------------------------------


#: The map cases of pseudo_mask's bad input, called with (a1, a2, a3) only.
_BAD_CASES = [dataclasses.replace(c, args=c.args[:3]) for c in map_bad_cases() if "labels" not in c.names]


@pytest.mark.parametrize("case", bad_input.params(_BAD_CASES))
def test_bad_input_fuse_attention(case):
    case.check(ops.fuse_attention)
