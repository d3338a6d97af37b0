"""roi_boxes: every level's mask_boxes in one op, equal bit for bit to mask_boxes (the reference
and the per-level kernels) level by level, for edge-case and random maps, growing and shrinking
resizes, thresholds, dilations, dtypes and strided maps; boxes worked out by hand; a level's
skipped rows and columns; bad input; torch.library checks."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from walnet import ops
from walnet.ops import reference

import bad_input
from bad_input import BadInput
from conftest import DEVICES, FLOAT_DTYPES, require_kernel
from rcm_inputs import box_cases, fg_probs, gen

#: (mask size, level sizes): the pyramid of a 224^2 input in both orders, growing and shrinking
#: at once, odd and non-square maps, 1x1 maps and levels, eight levels.
LEVEL_SETS = [
    ((56, 56), [(56, 56), (28, 28), (14, 14), (7, 7)]),
    ((56, 56), [(7, 7), (14, 14), (28, 28), (56, 56)]),
    ((14, 14), [(56, 56), (28, 28), (14, 14), (7, 7)]),
    ((17, 23), [(9, 5), (40, 31), (17, 23), (1, 1), (3, 50)]),
    ((9, 30), [(28, 15), (9, 30)]),
    ((20, 12), [(20, 12)]),
    ((1, 1), [(7, 5), (1, 1)]),
    ((6, 4), [(1, 1), (6, 4), (12, 8), (5, 3), (2, 7), (13, 13), (4, 6), (3, 3)]),
]
DILATIONS = (0.0, 1 / 7, 0.5, 3.0, 50.0)


def _ids(case):
    (h, w), sizes = case
    return f"{h}x{w}-to-" + ",".join(f"{a}x{b}" for a, b in sizes)


def _raw(prob, sizes, threshold, dilation):
    """The op itself (on CUDA whatever the preview setting)."""
    return torch.ops.walnet.roi_boxes(prob, [h for h, _ in sizes], [w for _, w in sizes], threshold, dilation)


def _stacked(prob, sizes, threshold, dilation, backend):
    """mask_boxes level by level, stacked to [N, L, 4]."""
    return torch.stack([ops.mask_boxes(prob, s, threshold, dilation, backend=backend) for s in sizes], dim=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", LEVEL_SETS, ids=_ids)
def test_roi_boxes_equals_mask_boxes(device, case):
    require_kernel(device)
    (h, w), sizes = case
    prob64 = fg_probs(h, w, seed=h * 100 + w).to(device)
    for prob, threshold, dilation in box_cases(prob64, FLOAT_DTYPES, DILATIONS):
        got = _raw(prob, sizes, threshold, dilation)
        assert got.dtype == torch.int32 and got.shape == (len(prob), len(sizes), 4)
        assert torch.equal(got, _stacked(prob, sizes, threshold, dilation, "reference")), (prob.dtype, threshold,
                                                                                            dilation)
        assert torch.equal(got, _stacked(prob, sizes, threshold, dilation, "kernel"))
    for prob in (prob64.to(dtype) for dtype in FLOAT_DTYPES):
        with ops.preview_kernels(True):
            assert torch.equal(ops.roi_boxes(prob[:, None], sizes, backend="kernel"),
                               reference.roi_boxes(prob, sizes, 0.5, 1 / 7))


@pytest.mark.parametrize("device", DEVICES)
def test_roi_boxes_infinite_dilation(device):
    """Any non-negative dilation, +inf included, gives what mask_boxes gives: the map (or the full
    map without foreground)."""
    require_kernel(device)
    prob = fg_probs(20, 12, seed=5).float().to(device)
    sizes = [(20, 12), (9, 31), (3, 3)]
    for dilation in (float("inf"), 1e300, 1e10):
        got = _raw(prob, sizes, 0.5, dilation)
        for level, (h, w) in enumerate(sizes):
            assert torch.equal(got[:, level], torch.ops.walnet.mask_boxes(prob, h, w, 0.5, dilation))
            assert got[:, level].tolist() == [[0, 0, h - 1, w - 1]] * len(prob)


@pytest.mark.parametrize("device", DEVICES)
def test_roi_boxes_strided_maps(device):
    """The channel view of a softmax (what roi_crop passes) and a transposed map are read through
    their strides, with the boxes of their contiguous copies."""
    require_kernel(device)
    g = gen(3)
    logits = torch.randn(5, 2, 21, 18, generator=g).to(device) * 3
    prob = torch.softmax(logits, dim=1)[:, 1]
    assert not prob.is_contiguous()
    sizes = [(21, 18), (42, 36), (11, 9), (5, 5)]
    want = _raw(prob.contiguous(), sizes, 0.5, 1 / 7)
    assert torch.equal(_raw(prob, sizes, 0.5, 1 / 7), want)
    transposed = prob.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(_raw(transposed, sizes, 0.5, 1 / 7), want)
    assert torch.equal(want, reference.roi_boxes(prob, sizes, 0.5, 1 / 7))


@pytest.mark.parametrize("device", DEVICES)
def test_roi_boxes_level_skips_its_unread_rows_and_columns(device):
    """Foreground in a row the level reads but a column it skips (and the other way round) is no
    foreground at that level: 9 -> 4 reads rows and columns 0, 2, 4, 6 only. The resized mask
    written out by F.interpolate is the definition."""
    require_kernel(device)
    prob = torch.zeros(3, 9, 9, device=device)
    prob[0, 4, 1] = prob[0, 1, 6] = 1.0  # neither pixel is read at 4x4
    prob[1, 4, 1] = prob[1, 1, 6] = prob[1, 6, 2] = 1.0  # (6, 2) is
    prob[2, 3, 3] = 1.0
    sizes = [(4, 4), (9, 9), (4, 9), (9, 4)]
    got = _raw(prob, sizes, 0.5, 0.0)
    for level, size in enumerate(sizes):
        for i in range(3):
            mask = torch.nn.functional.interpolate((prob[i] >= 0.5)[None, None].float(), size=size)[0, 0] > 0
            ys, xs = torch.where(mask)
            want = ([0, 0, size[0] - 1, size[1] - 1] if len(ys) == 0
                    else [int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())])
            assert got[i, level].tolist() == want, (i, size)
    assert got[0, 0].tolist() == [0, 0, 3, 3]  # no foreground at 4x4: the full map
    assert got[1, 0].tolist() == [3, 1, 3, 1]  # only (6, 2): row 6 -> 3, column 2 -> 1


def test_roi_boxes_hand_computed():
    """Boxes worked out by hand (the values of test_mask_boxes' hand-computed cases)."""
    require_kernel("cpu")
    p = torch.zeros(2, 56, 56)
    p[0, 10, 20] = 1.0  # r = W/7: 8 at 56^2, 4 at 28^2; 56 -> 28 reads 2i, so (10, 20) -> (5, 10)
    p[1, 11, 21] = 1.0  # never read at 28^2: the full map there
    got = ops.roi_boxes(p, [(56, 56), (28, 28)], backend="kernel").tolist()
    assert got == [[[2, 12, 18, 28], [1, 6, 9, 14]], [[3, 13, 19, 29], [0, 0, 27, 27]]]
    q = torch.zeros(1, 14, 14)
    q[0, 3, 5] = 1.0  # 14 -> 56: rows 12..15, columns 20..23, r = 8; 14 -> 14 at dilation 0
    assert ops.roi_boxes(q, [(56, 56)], backend="kernel").tolist() == [[[4, 12, 23, 31]]]
    assert ops.roi_boxes(q, [(14, 14), (56, 56)], dilation=0.0, backend="kernel").tolist() == [
        [[3, 5, 3, 5], [12, 20, 15, 23]]]


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    sizes=st.lists(st.tuples(st.integers(1, 90), st.integers(1, 90)), min_size=1, max_size=8),
    density=st.sampled_from([0.0, 0.002, 0.02, 0.2, 1.0]),
    threshold=st.sampled_from([0.5, 0.25, 0.75]),
    dilation=st.sampled_from([0.0, 1 / 7, 0.3, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_roi_boxes_random_maps(n, h, w, sizes, density, threshold, dilation, seed):
    """Sparse to full random foreground, any level sizes: the boxes of mask_boxes."""
    g = gen(seed)
    fg = torch.rand(n, h, w, generator=g) < density
    u = torch.rand(n, h, w, generator=g)
    prob = torch.where(fg, threshold + (1 - threshold) * u, 0.99 * threshold * u)
    got = _raw(prob, sizes, threshold, dilation)
    assert torch.equal(got, reference.roi_boxes(prob, sizes, threshold, dilation))


@pytest.mark.parametrize("device", DEVICES)
def test_roi_boxes_large_map(device):
    """A map whose rows plus columns exceed the CUDA kernel's shared-memory read tables (32768):
    the kernel then finds the levels of a row or column where it needs them."""
    require_kernel(device)
    prob = torch.zeros(2, 3, 40000, device=device)
    prob[0, 1, 31337] = 1.0
    prob[1, 2, 5] = prob[1, 0, 39999] = 1.0
    sizes = [(3, 40000), (6, 1000), (2, 77777), (1, 1)]
    assert torch.equal(_raw(prob, sizes, 0.5, 0.01), reference.roi_boxes(prob, sizes, 0.5, 0.01))


# --- bad input ----------------------------------------------------------------------------


def _bad_cases():
    p = torch.rand(2, 12, 10)
    nan = p.clone()
    nan[1, 3, 4] = float("nan")
    nine = [(4, 4)] * 9
    return [
        BadInput("nan", (nan, [(6, 5)]), ValueError, "fg_prob"),
        BadInput("integer map", ((p > 0.5).int(), [(6, 5)]), TypeError, "fg_prob"),
        BadInput("2-D map", (p[0], [(6, 5)]), ValueError, "fg_prob"),
        BadInput("empty batch", (p[:0], [(6, 5)]), ValueError, "fg_prob"),
        BadInput("one size, not a list", (p, (6, 5)), TypeError, "sizes"),
        BadInput("sizes not a list", (p, 6), TypeError, "sizes"),
        BadInput("no levels", (p, []), ValueError, "sizes"),
        BadInput("nine levels", (p, nine), ValueError, "sizes"),
        BadInput("size zero", (p, [(6, 5), (6, 0)]), ValueError, r"sizes\[1\]"),
        BadInput("size of floats", (p, [(6.0, 5.0)]), TypeError, r"sizes\[0\]"),
        BadInput("size too large", (p, [(2**31, 4)]), ValueError, r"sizes\[0\]"),
        BadInput("negative dilation", (p, [(6, 5)], 0.5, -0.1), ValueError, "dilation"),
        BadInput("nan threshold", (p, [(6, 5)], float("nan")), ValueError, "threshold"),
    ]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", bad_input.params(_bad_cases()))
def test_bad_input_roi_boxes(case, backend):
    case.check(ops.roi_boxes, backend=backend)


@pytest.mark.parametrize("device", DEVICES)
def test_raw_op_refuses_bad_arguments(device):
    """A direct call checks its arguments in C++ before any kernel runs."""
    require_kernel(device)
    p = torch.rand(2, 12, 10, device=device)
    cases = [
        ((p, [6, 5], [6], 0.5, 0.0), "widths must have one entry per level"),
        ((p, [], [], 0.5, 0.0), "heights must hold 1 to 8 levels"),
        ((p, [4] * 9, [4] * 9, 0.5, 0.0), "heights must hold 1 to 8 levels"),
        ((p, [6, -1], [5, 5], 0.5, 0.0), "size must be positive"),
        ((p, [6], [2**31], 0.5, 0.0), "below 2\\^31"),
        ((p, [6], [5], 0.5, float("nan")), "roi_boxes: dilation must be >= 0"),
        ((p[0], [6], [5], 0.5, 0.0), "prob must be \\[N,H,W\\]"),
        ((p.int(), [6], [5], 0.5, 0.0), "prob must be a floating tensor"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.walnet.roi_boxes(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_kernel(device)
    prob = fg_probs(20, 12).float().to(device)
    torch.library.opcheck(torch.ops.walnet.roi_boxes.default, (prob, [10, 40, 20], [6, 24, 12], 0.5, 1 / 7))
    torch.library.opcheck(torch.ops.walnet.roi_boxes.default, (prob.double(), [7], [3], 0.3, 0.0))
    strided = torch.softmax(torch.stack([prob, 1 - prob], 1), dim=1)[:, 1].half().requires_grad_()
    torch.library.opcheck(torch.ops.walnet.roi_boxes.default, (strided, [20, 5], [12, 5], 0.5, 0.25))
