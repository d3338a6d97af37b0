"""mask_boxes: the boxes of the thresholded foreground map, kernel vs the reference spec, an
independent per-sample loop and boxes worked out by hand; bad input; torch.library checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from walnet import ops
from walnet.ops import reference

import bad_input
from bad_input import BadInput
from conftest import DEVICES, FLOAT_DTYPES, HAS_CUDA, require_kernel
from rcm_inputs import box_cases, fg_probs

#: (mask size, target size): equal, the pyramid's downsampling, upsampling, odd/non-square maps.
MASK_RESIZES = [
    ((56, 56), (56, 56)),
    ((56, 56), (28, 28)),
    ((56, 56), (14, 14)),
    ((56, 56), (7, 7)),
    ((14, 14), (56, 56)),
    ((17, 23), (9, 5)),
    ((17, 23), (40, 31)),
    ((20, 12), (20, 12)),
    ((9, 30), (28, 15)),
    ((1, 1), (7, 5)),
    ((6, 4), (1, 1)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("resize", MASK_RESIZES, ids=lambda r: f"{r[0][0]}x{r[0][1]}-to-{r[1][0]}x{r[1][1]}")
def test_mask_boxes_equals_reference(device, resize):
    require_kernel(device)
    (h, w), size = resize
    prob64 = fg_probs(h, w, seed=h * 100 + w).to(device)
    for prob, threshold, dilation in box_cases(prob64, FLOAT_DTYPES, (0.0, 1 / 7, 0.5, 3.0)):
        out = ops.mask_boxes(prob, size, threshold, dilation, backend="kernel")
        expected = reference.mask_boxes(prob, size, threshold, dilation)
        assert out.dtype == torch.int32 and out.device == prob.device
        assert torch.equal(out, expected), (prob.dtype, threshold, dilation, out, expected)
    for prob in (prob64.to(dtype) for dtype in FLOAT_DTYPES):
        # [N,1,h,w] and non-contiguous maps give the same boxes
        assert torch.equal(ops.mask_boxes(prob[:, None], size, backend="kernel"), reference.mask_boxes(prob, size))
        t = prob.transpose(1, 2).contiguous().transpose(1, 2)
        assert torch.equal(ops.mask_boxes(t, size, backend="kernel"), reference.mask_boxes(prob, size))


def _loop_mask_boxes(prob, size, threshold, dilation):
    """Independent per-sample oracle: torch.where on the resized mask, Python int() truncation."""
    H, W = size
    r = W * dilation
    out = []
    for p in prob:
        m = F.interpolate((p >= threshold)[None, None].float(), size=size, mode="nearest")[0, 0]
        ys, xs = torch.where(m > 0)
        if len(ys) == 0:
            out.append([0, 0, H - 1, W - 1])
            continue
        y1, y2, x1, x2 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        out.append([max(int(y1 - r), 0), max(int(x1 - r), 0), min(int(y2 + r), H - 1), min(int(x2 + r), W - 1)])
    return torch.tensor(out, dtype=torch.int32)


@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("resize", MASK_RESIZES[:6], ids=lambda r: f"{r[0][0]}x{r[0][1]}-to-{r[1][0]}x{r[1][1]}")
def test_mask_boxes_equals_loop(backend, resize):
    if backend == "kernel":
        require_kernel("cpu")
    (h, w), size = resize
    prob = fg_probs(h, w, seed=7).float()
    for threshold, dilation in [(0.5, 1 / 7), (0.5, 0.0), (0.3, 0.25)]:
        out = ops.mask_boxes(prob, size, threshold, dilation, backend=backend)
        assert torch.equal(out, _loop_mask_boxes(prob, size, threshold, dilation))


@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_mask_boxes_hand_computed(backend):
    """Expected boxes worked out by hand from the definition."""
    if backend == "kernel":
        require_kernel("cpu")

    def boxes(prob, size, dilation=1 / 7, threshold=0.5):
        return ops.mask_boxes(prob, size, threshold, dilation, backend=backend).tolist()

    def one_pixel(h, w, y, x, value=1.0):
        p = torch.zeros(1, h, w)
        p[0, y, x] = value
        return p

    # 56x56, one pixel at (10, 20): r = 56/7 = 8 -> (10-8, 20-8, 10+8, 20+8)
    assert boxes(one_pixel(56, 56, 10, 20), (56, 56)) == [[2, 12, 18, 28]]
    assert boxes(one_pixel(56, 56, 10, 20), (56, 56), dilation=0) == [[10, 20, 10, 20]]
    # clamping at the borders
    assert boxes(one_pixel(56, 56, 0, 0), (56, 56)) == [[0, 0, 8, 8]]
    assert boxes(one_pixel(56, 56, 55, 55), (56, 56)) == [[47, 47, 55, 55]]
    assert boxes(one_pixel(56, 56, 3, 52), (56, 56)) == [[0, 44, 11, 55]]
    # no foreground -> the full map; the threshold is inclusive
    assert boxes(torch.zeros(1, 56, 56), (56, 56)) == [[0, 0, 55, 55]]
    assert boxes(one_pixel(56, 56, 10, 20, value=0.5), (56, 56), dilation=0) == [[10, 20, 10, 20]]
    assert boxes(one_pixel(56, 56, 10, 20, value=0.49), (56, 56), dilation=0) == [[0, 0, 55, 55]]
    # 56 -> 28 (nearest: output i reads input 2i): (10, 20) is output (5, 10); r = 28/7 = 4
    assert boxes(one_pixel(56, 56, 10, 20), (28, 28)) == [[1, 6, 9, 14]]
    # (11, 21) is never read by the 2x downsampling: no foreground at 28^2
    assert boxes(one_pixel(56, 56, 11, 21), (28, 28)) == [[0, 0, 27, 27]]
    # 14 -> 56 (each input pixel becomes a 4x4 block): (3, 5) -> rows 12..15, cols 20..23; r = 8
    assert boxes(one_pixel(14, 14, 3, 5), (56, 56)) == [[4, 12, 23, 31]]
    # non-square: r uses W for both axes, W = 35 -> r = 5
    assert boxes(one_pixel(20, 35, 10, 17), (20, 35)) == [[5, 12, 15, 22]]
    # truncation toward zero: W = 10 -> r = 1.43; y: int(4 - 1.43) = 2, int(4 + 1.43) = 5;
    # x: int(5 - 1.43) = 3, int(5 + 1.43) = 6
    assert boxes(one_pixel(10, 10, 4, 5), (10, 10)) == [[2, 3, 5, 6]]
    # int(1 - 1.43) = int(-0.43) = 0 (not -1 then clamped: same box, but y2 = int(2.43) = 2)
    assert boxes(one_pixel(10, 10, 1, 1), (10, 10)) == [[0, 0, 2, 2]]
    # tight box of two pixels, dilation 1/4 of W = 12 -> r = 3
    p = one_pixel(12, 12, 2, 9)
    p[0, 6, 4] = 1
    assert boxes(p, (12, 12), dilation=0.25) == [[0, 1, 9, 11]]
    # a batch mixes both cases
    p = torch.cat([one_pixel(56, 56, 10, 20), torch.zeros(1, 56, 56)])
    assert boxes(p, (56, 56)) == [[2, 12, 18, 28], [0, 0, 55, 55]]


# --- bad input ----------------------------------------------------------------------------


def _bad_cases():
    p = torch.rand(2, 12, 10)
    nan = p.clone()
    nan[1, 3, 4] = float("nan")
    inf = p.clone()
    inf[0, 0, 0] = float("-inf")
    return [
        BadInput("nan", (nan, (6, 5)), ValueError, "fg_prob"),
        BadInput("inf", (inf, (6, 5)), ValueError, "fg_prob"),
        BadInput("integer map", ((p > 0.5).int(), (6, 5)), TypeError, "fg_prob"),
        BadInput("two channels", (torch.stack([p, p], 1), (6, 5)), ValueError, "fg_prob"),
        BadInput("2-D map", (p[0], (6, 5)), ValueError, "fg_prob"),
        BadInput("empty batch", (p[:0], (6, 5)), ValueError, "fg_prob"),
        BadInput("size int", (p, 6), TypeError, "size"),
        BadInput("size zero", (p, (6, 0)), ValueError, "size"),
        BadInput("size pair of floats", (p, (6.0, 5.0)), TypeError, "size"),
        BadInput("negative dilation", (p, (6, 5), 0.5, -0.1), ValueError, "dilation"),
        BadInput("nan dilation", (p, (6, 5), 0.5, float("nan")), ValueError, "dilation"),
        BadInput("nan threshold", (p, (6, 5), float("nan")), ValueError, "threshold"),
        BadInput("string threshold", (p, (6, 5), "0.5"), TypeError, "threshold"),
    ]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", bad_input.params(_bad_cases()))
def test_bad_input_mask_boxes(case, backend):
    case.check(ops.mask_boxes, backend=backend)


def test_direct_op_call_checks_fg_prob():
    """torch.ops.walnet.mask_boxes called without the wrapper must still refuse a map with
    channels."""
    require_kernel("cpu")
    with pytest.raises(RuntimeError):
        torch.ops.walnet.mask_boxes(torch.rand(2, 3, 4, 5), 4, 4, 0.5, 0.1)


# --- torch.library integration ------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_kernel(device)
    prob = fg_probs(20, 12).float().to(device)
    torch.library.opcheck(torch.ops.walnet.mask_boxes.default, (prob, 10, 6, 0.5, 1 / 7))
    torch.library.opcheck(torch.ops.walnet.mask_boxes.default, (prob.double(), 40, 24, 0.3, 0.0))
    torch.library.opcheck(torch.ops.walnet.mask_boxes.default, (prob.half().requires_grad_(), 20, 12, 0.5, 0.25))


# --- CUDA == CPU --------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_equals_cpu():
    require_kernel("cuda")
    require_kernel("cpu")
    for (h, w), size in MASK_RESIZES:
        prob = fg_probs(h, w, seed=1).float()
        for dilation in (0.0, 1 / 7):
            gpu = ops.mask_boxes(prob.cuda(), size, 0.5, dilation).cpu()
            assert torch.equal(ops.mask_boxes(prob, size, 0.5, dilation), gpu)
