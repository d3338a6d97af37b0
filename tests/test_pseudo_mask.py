"""pseudo_mask: the PGM's {0, 1, 255} mask, equal to the reference spec wherever a segment mean is
not within rounding of the threshold, on the pyramid's shapes, every dtype and label kind and
random shapes; the 255 rule for degenerate samples; bad input."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from walnet import ops
from walnet.ops import reference

import bad_input
from conftest import DEVICES, FLOAT_DTYPES, require_kernel
from pgm_inputs import LABEL_KINDS, SHAPES, attention_maps, map_bad_cases, segment_labels, small_inputs


def _check_mask(mask, a1, a2, a3, labels, threshold):
    """mask must equal the reference except where the reference segment mean is within 1e-6 of
    the threshold (float rounding may then go either way)."""
    expected = reference.pseudo_mask(a1, a2, a3, labels, threshold)
    assert mask.dtype == torch.uint8 and mask.shape == expected.shape
    fused, _ = reference._fuse(a1, a2, a3)
    mean = reference._segment_mean64(fused, labels)
    differ = mask.cpu() != expected.cpu()
    near = (mean.cpu() - threshold).abs() <= 1e-6
    assert not (differ & ~near).any(), f"{int((differ & ~near).sum())} pixels differ from the reference"
    assert set(mask.unique().tolist()) <= {0, 1, 255}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", LABEL_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}-{s[1][0]}x{s[1][1]}")
def test_pseudo_mask_matches_reference(device, dtype, kind, shape):
    require_kernel(device)
    n, s1, s2, s3 = shape
    a1, a2, a3 = attention_maps(n, s1, s2, s3, dtype=dtype, device=device, seed=7 * n)
    labels = segment_labels(kind, n, *s1, device=device, seed=n)
    for threshold in (0.18, 0.05, 0.5):
        mask = ops.pseudo_mask(a1, a2, a3, labels, threshold, backend="kernel")
        _check_mask(mask, a1, a2, a3, labels, threshold)


def test_pseudo_mask_is_not_trivial():
    """The random cases above must exercise both classes, or the comparison proves little."""
    a1, a2, a3 = attention_maps(8, (56, 56), (28, 28), (14, 14), seed=3)
    mask = ops.pseudo_mask(a1, a2, a3, segment_labels("felzenszwalb", 8, 56, 56), 0.05)
    assert 0.01 < mask.float().mean().item() < 0.99


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    f2=st.integers(1, 4),
    f3=st.integers(1, 9),
    threshold=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_pseudo_mask_random_shapes(n, h, w, f2, f3, threshold, seed):
    s2 = (max(1, h // f2), max(1, (w + f2 - 1) // f2))
    s3 = (max(1, h // f3), max(1, w // f3))
    a1, a2, a3 = attention_maps(n, (h, w), s2, s3, seed=seed)
    labels = segment_labels("random", n, h, w, seed=seed)
    mask = ops.pseudo_mask(a1, a2, a3, labels, threshold, backend="kernel")
    _check_mask(mask, a1, a2, a3, labels, threshold)
    assert torch.equal(ops.fuse_attention(a1, a2, a3, backend="kernel"), reference.fuse_attention(a1, a2, a3))


# --- degenerate maps: the 255 rule ------------------------------------------------------


def _one_hot(n, h, w, y, x):
    t = torch.zeros(n, h, w)
    t[:, y, x] = 1.0
    return t


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_degenerate_samples_get_ignore_index(device, backend):
    require_kernel(device)
    n = 6
    a1, a2, a3 = attention_maps(n, (16, 16), (8, 8), (4, 4), device=device, seed=5)
    a1, a2, a3 = a1.clone(), a2.clone(), a3.clone()
    a1[0] = 0.25  # constant finest map
    a2[1] = 0.0  # all-zero map
    a3[2] = 7.0  # constant coarse map
    a1[3] = _one_hot(1, 16, 16, 0, 0)[0].to(device)  # one-hot a1 with a3 zero there: product all 0
    a3[3] = 1.0
    a3[3, 0, 0] = 0.0
    a1[4] = _one_hot(1, 16, 16, 15, 15)[0].to(device)  # one-hot everywhere at one place: informative
    a2[4] = _one_hot(1, 8, 8, 7, 7)[0].to(device)
    a3[4] = _one_hot(1, 4, 4, 3, 3)[0].to(device)
    labels = segment_labels("random", n, 16, 16, device=device)
    degenerate = torch.tensor([True, True, True, True, False, False])

    fused = ops.fuse_attention(a1, a2, a3, backend=backend)
    mask = ops.pseudo_mask(a1, a2, a3, labels, backend=backend)
    assert not torch.isnan(fused).any()
    assert (fused[degenerate] == 0).all()
    assert (mask[degenerate] == ops.IGNORE_INDEX).all()
    assert not (mask[~degenerate] == ops.IGNORE_INDEX).any()
    # Sample 4: B is one-hot at (15, 15) (the only pixel where all three maps are 1).
    expected_b = _one_hot(1, 16, 16, 15, 15)[0].to(device)
    assert torch.equal(fused[4], expected_b)
    loss = torch.nn.functional.cross_entropy(
        torch.randn(n, 2, 16, 16, device=device), mask.long(), ignore_index=ops.IGNORE_INDEX
    )
    assert torch.isfinite(loss)


@pytest.mark.parametrize("device", DEVICES)
def test_all_samples_degenerate(device):
    require_kernel(device)
    a = torch.ones(3, 8, 8, device=device)
    labels = segment_labels("one", 3, 8, 8, device=device)
    assert (ops.pseudo_mask(a, a[:, :4, :4], a[:, :2, :2], labels) == 255).all()
    assert (ops.fuse_attention(a, a, a) == 0).all()


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", bad_input.params(map_bad_cases()))
def test_bad_input_pseudo_mask(case):
    case.check(ops.pseudo_mask)


def test_bad_threshold_and_backend():
    a1, a2, a3, lab = small_inputs()
    with pytest.raises(ValueError, match="threshold"):
        ops.pseudo_mask(a1, a2, a3, lab, float("nan"))
    with pytest.raises(TypeError, match="threshold"):
        ops.pseudo_mask(a1, a2, a3, lab, "0.18")
    with pytest.raises(ValueError, match="backend"):
        ops.pseudo_mask(a1, a2, a3, lab, backend="triton")
