"""PGM ops (fuse_attention, superpixel_mean, pseudo_mask): kernels vs the reference spec."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from walnet import ops
from walnet.ops import reference

from conftest import DEVICES, FLOAT_DTYPES, attention_maps, require_kernel, segment_labels

# (N, a1 size, a2 size, a3 size): the paper's 56/28/14 pyramid, odd and non-square maps,
# equal sizes (no upsampling), ratios that are not powers of two, and a 224^2 input.
SHAPES = [
    (1, (56, 56), (28, 28), (14, 14)),
    (2, (17, 23), (9, 11), (5, 4)),
    (7, (13, 9), (13, 9), (13, 9)),
    (64, (8, 8), (4, 4), (2, 2)),
    (3, (31, 45), (10, 7), (3, 5)),
    (2, (224, 224), (112, 112), (56, 56)),
]
LABEL_KINDS = ["one", "each", "random", "felzenszwalb"]


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


# --- determinism and layouts ------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    require_kernel(device)
    a1, a2, a3 = attention_maps(32, (56, 56), (28, 28), (14, 14), device=device, seed=11)
    labels = segment_labels("felzenszwalb", 32, 56, 56, device=device, seed=1)
    values = torch.randn(32, 56, 56, dtype=torch.float64, device=device)
    runs = []
    threads = torch.get_num_threads()
    try:
        for nt in (threads, 1, threads):
            torch.set_num_threads(nt)
            runs.append(
                (
                    ops.fuse_attention(a1, a2, a3),
                    ops.superpixel_mean(values, labels),
                    ops.pseudo_mask(a1, a2, a3, labels),
                )
            )
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for x, y in zip(runs[0], other):
            assert torch.equal(x, y)


@pytest.mark.parametrize("device", DEVICES)
def test_layouts(device):
    """[N,1,H,W], channels_last and non-contiguous inputs give the contiguous result."""
    require_kernel(device)
    a1, a2, a3 = attention_maps(4, (20, 24), (10, 12), (5, 6), device=device, seed=2)
    labels = segment_labels("felzenszwalb", 4, 20, 24, device=device)
    expected = ops.pseudo_mask(a1, a2, a3, labels)
    expected_mean = ops.superpixel_mean(a1, labels)

    cl = [a[:, None].contiguous(memory_format=torch.channels_last) for a in (a1, a2, a3)]
    assert torch.equal(ops.pseudo_mask(*cl, labels[:, None]), expected)
    # transposed storage and strided slices
    t = [a.transpose(1, 2).contiguous().transpose(1, 2) for a in (a1, a2, a3)]
    assert not t[0].is_contiguous()
    assert torch.equal(ops.pseudo_mask(*t, labels.transpose(1, 2).contiguous().transpose(1, 2)), expected)
    wide = torch.zeros(4, 20, 48, device=device)
    wide[:, :, ::2] = a1
    assert torch.equal(ops.fuse_attention(wide[:, :, ::2], a2, a3), ops.fuse_attention(a1, a2, a3))
    assert torch.equal(ops.superpixel_mean(wide[:, :, ::2], labels.long()), expected_mean)
    # mixed map dtypes are promoted
    assert torch.equal(ops.pseudo_mask(a1, a2.double(), a3.half(), labels),
                       ops.pseudo_mask(a1.double(), a2.double(), a3.half().double(), labels))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    require_kernel("cuda")
    a1, a2, a3 = attention_maps(16, (56, 56), (28, 28), (14, 14), seed=4)
    labels = segment_labels("felzenszwalb", 16, 56, 56)
    values = torch.randn(16, 56, 56)
    cpu = (ops.fuse_attention(a1, a2, a3), ops.superpixel_mean(values, labels), ops.pseudo_mask(a1, a2, a3, labels))
    gpu = (
        ops.fuse_attention(a1.cuda(), a2.cuda(), a3.cuda()),
        ops.superpixel_mean(values.cuda(), labels.cuda()),
        ops.pseudo_mask(a1.cuda(), a2.cuda(), a3.cuda(), labels.cuda()),
    )
    for c, g in zip(cpu, gpu):
        assert torch.equal(c, g.cpu())
