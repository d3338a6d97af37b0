"""crop_levels and crop_levels_backward: every level's nearest crop back to its own size in one op,
equal bit for bit to crop_resize per level (the kernel, the reference and F.interpolate of each
box), forward and backward; contiguous and channels_last levels mixed, every dtype, 1-pixel and
full boxes, N = 1..8; the inverted reader tables through one-hot gradients; gradcheck and
gradgradcheck; bad input; torch.library checks."""
from __future__ import annotations

import pytest
import torch

from walnet import ops
from walnet.ops import reference

import bad_input
from bad_input import BadInput
from conftest import DEVICES, FLOAT_DTYPES, require_kernel
from rcm_inputs import edge_case_boxes, feature_maps, gen, interpolate_crops

#: Sets of levels (C, H, W): the pyramid of a 224^2 input, odd and non-square maps with 1-pixel
#: sides, one level, eight levels.
LEVEL_SETS = {
    "pyramid": [(3, 56, 56), (4, 28, 28), (5, 14, 14), (6, 7, 7)],
    "odd": [(2, 17, 23), (3, 9, 5), (2, 1, 9), (1, 12, 1)],
    "one": [(3, 20, 20)],
    "eight": [(2, 6, 4), (1, 1, 1), (3, 13, 13), (2, 4, 6), (1, 3, 3), (2, 8, 12), (1, 2, 7), (4, 5, 5)],
}
CL = torch.channels_last


def _boxes(levels, n_random=4, seed=0, device="cpu"):
    """int32 [N, L, 4]: per level the edge cases of rcm_inputs (full map, 1x1 corners and centre,
    edge strips, quarters) and random boxes, N = 14 + n_random."""
    return torch.stack([edge_case_boxes(h, w, n_random, seed=seed + i, device=device)
                        for i, (_, h, w) in enumerate(levels)], dim=1)


def _features(levels, n, *, dtype=torch.float32, device="cpu", layouts=None, seed=0):
    """One map per level; layouts[i] True: channels_last."""
    out = []
    for i, (c, h, w) in enumerate(levels):
        f = feature_maps(n, c, h, w, dtype=dtype, device=device, seed=seed + 7 * i)
        out.append(f.contiguous(memory_format=CL) if layouts and layouts[i % len(layouts)] else f)
    return out


def _layout(t):
    """The strides of the dimensions longer than 1 (those of length 1 are arbitrary)."""
    return tuple(stride for stride, size in zip(t.stride(), t.shape) if size > 1)


LAYOUTS = {"contiguous": [False], "channels_last": [True], "mixed": [True, False, False, True]}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(LEVEL_SETS))
def test_crop_levels_equals_crop_resize(device, layout, name):
    require_kernel(device)
    levels = LEVEL_SETS[name]
    boxes = _boxes(levels, seed=len(name), device=device)
    n = len(boxes)
    for dtype in FLOAT_DTYPES:
        features = _features(levels, n, dtype=dtype, device=device, layouts=LAYOUTS[layout])
        out = torch.ops.walnet.crop_levels(features, boxes)
        assert len(out) == len(features)
        if layout == "channels_last" and name == "pyramid":
            assert all(o.is_contiguous(memory_format=CL) and not o.is_contiguous() for o in out)
        for level, (o, f) in enumerate(zip(out, features)):
            b = boxes[:, level].contiguous()
            want = reference.crop_resize(f, b)
            assert o.shape == f.shape and o.dtype == dtype and _layout(o) == _layout(want)
            assert torch.equal(o, torch.ops.walnet.crop_resize(f, b, f.shape[2], f.shape[3], False))
            assert torch.equal(o, want)
            assert torch.equal(o, interpolate_crops(f, b, tuple(f.shape[-2:]), "nearest"))
            assert torch.equal(o[0], f[0])  # the first box is the full map: a copy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(LEVEL_SETS))
def test_crop_levels_backward_equals_crop_resize_backward(device, layout, name):
    """The same sums in the same order as crop_resize_backward: equal bit for bit on random
    gradients, in every dtype."""
    require_kernel(device)
    levels = LEVEL_SETS[name]
    boxes = _boxes(levels, seed=3 + len(name), device=device)
    n = len(boxes)
    for dtype in FLOAT_DTYPES:
        grads = _features(levels, n, dtype=dtype, device=device, layouts=LAYOUTS[layout], seed=100)
        got = torch.ops.walnet.crop_levels_backward(grads, boxes)
        for level, (g, gr) in enumerate(zip(got, grads)):
            b = boxes[:, level].contiguous()
            want = torch.ops.walnet.crop_resize_backward(gr, b, gr.shape[2], gr.shape[3], False)
            assert g.shape == gr.shape and g.dtype == dtype and _layout(g) == _layout(want)
            assert torch.equal(g, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_crop_levels_gradient_through_autograd(device, dtype):
    """ops.crop_levels' autograd gives crop_levels_backward; with small-integer gradients every
    sum is exact, so it equals the reference's gradient bit for bit (the reference's autograd
    sums in another order)."""
    require_kernel(device)
    levels = LEVEL_SETS["pyramid"]
    boxes = _boxes(levels, seed=9, device=device)
    features = _features(levels, len(boxes), dtype=dtype, device=device, layouts=LAYOUTS["mixed"])
    grads = [torch.randint(-1, 2, f.shape, generator=gen(i)).to(device=device, dtype=dtype) for i, f in
             enumerate(features)]
    found = {}
    for backend in ("kernel", "reference"):
        leaves = [f.detach().clone().requires_grad_() for f in features]
        with ops.preview_kernels(True):
            out = ops.crop_levels(leaves, boxes, backend=backend)
        found[backend] = torch.autograd.grad(out, leaves, grads)
    for got, want in zip(found["kernel"], found["reference"]):
        assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(found["kernel"], torch.ops.walnet.crop_levels_backward(grads, boxes)))


@pytest.mark.parametrize("device", DEVICES)
def test_crop_levels_any_batch_size(device):
    """N = 1..8 with random boxes, forward and backward, against crop_resize per level."""
    require_kernel(device)
    levels = [(3, 14, 10), (2, 7, 5), (5, 3, 4)]
    for n in range(1, 9):
        g = gen(n)
        rows = []
        for _ in range(n):
            per_level = []
            for _, h, w in levels:
                ys = sorted(torch.randint(0, h, (2,), generator=g).tolist())
                xs = sorted(torch.randint(0, w, (2,), generator=g).tolist())
                per_level.append([ys[0], xs[0], ys[1], xs[1]])
            rows.append(per_level)
        boxes = torch.tensor(rows, dtype=torch.int32, device=device)
        features = _features(levels, n, device=device, seed=n)
        grads = _features(levels, n, device=device, seed=50 + n)
        out = torch.ops.walnet.crop_levels(features, boxes)
        back = torch.ops.walnet.crop_levels_backward(grads, boxes)
        for level, f in enumerate(features):
            b = boxes[:, level].contiguous()
            assert torch.equal(out[level], reference.crop_resize(f, b))
            h, w = f.shape[-2:]
            assert torch.equal(back[level], torch.ops.walnet.crop_resize_backward(grads[level], b, h, w, False))


@pytest.mark.parametrize("device", DEVICES)
def test_reader_tables_through_one_hot_gradients(device):
    """Every crop length `ch` resized back to every level length up to 64: the gradient of a
    one-hot output row (column) o lands on source row (column) nearest_source(o), the reference's
    definition of the nearest index, and nowhere else. Level 0 probes rows, level 1 columns;
    channel o carries the one-hot gradient of output index o."""
    require_kernel(device)
    for size in range(1, 65):
        n = size  # sample i crops i + 1 pixels, placed at the end of the map for odd i
        starts = [0 if i % 2 == 0 else size - (i + 1) for i in range(n)]
        boxes = torch.tensor([[[s, 0, s + i, 0], [0, s, 0, s + i]] for i, s in enumerate(starts)], dtype=torch.int32,
                             device=device)
        eye = torch.eye(size, dtype=torch.float64, device=device)
        grads = [eye[None, :, :, None].expand(n, size, size, 1).contiguous(),
                 eye[None, :, None, :].expand(n, size, 1, size).contiguous()]
        rows, cols = torch.ops.walnet.crop_levels_backward(grads, boxes)
        for i, s in enumerate(starts):
            outputs = torch.arange(size, device=device)
            src = s + reference.nearest_source(outputs, torch.tensor(i + 1, device=device), size)
            want = torch.zeros(size, size, dtype=torch.float64, device=device)
            want[outputs, src] = 1.0  # [output index, source index]
            assert torch.equal(rows[i, :, :, 0], want), (size, i)
            assert torch.equal(cols[i, :, 0, :], want), (size, i)


@pytest.mark.parametrize("device", DEVICES)
def test_crop_levels_gradcheck(device):
    require_kernel(device)
    h, w = 5, 7
    boxes = torch.tensor(
        [[[0, 0, h - 1, w - 1], [0, 0, 2, 3]], [[1, 2, 3, 3], [1, 1, 1, 1]],
         [[h - 1, w - 1, h - 1, w - 1], [0, 2, 2, 3]], [[0, 4, 2, w - 1], [1, 0, 2, 0]]],
        dtype=torch.int32, device=device)
    f1 = feature_maps(4, 1, h, w, dtype=torch.float64, device=device, seed=1).requires_grad_()
    f2 = feature_maps(4, 2, 3, 4, dtype=torch.float64, device=device, seed=2)
    f2 = f2.contiguous(memory_format=CL).requires_grad_()

    def fn(a, b):
        return tuple(ops.crop_levels([a, b], boxes, backend="kernel"))

    with ops.preview_kernels(True):
        assert torch.autograd.gradcheck(fn, (f1, f2), fast_mode=False)
        assert torch.autograd.gradgradcheck(fn, (f1, f2))
    # the backward op is itself differentiable (its backward is crop_levels)
    g1 = torch.randn(4, 1, h, w, dtype=torch.float64, device=device, requires_grad=True)
    g2 = torch.randn(4, 2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: tuple(torch.ops.walnet.crop_levels_backward([a, b], boxes)), (g1, g2))


@pytest.mark.parametrize("device", DEVICES)
def test_crop_levels_deterministic(device):
    require_kernel(device)
    levels = [(16, 28, 28), (8, 14, 14)]
    boxes = _boxes(levels, n_random=18, seed=12, device=device)
    grads = _features(levels, len(boxes), device=device, layouts=[True, False], seed=5)
    runs = []
    threads = torch.get_num_threads()
    try:
        for nt in (threads, 1, threads):
            torch.set_num_threads(nt)
            runs.append(torch.ops.walnet.crop_levels_backward(grads, boxes))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


# --- bad input ----------------------------------------------------------------------------


def _bad_cases():
    levels = [feature_maps(2, 3, 8, 8), feature_maps(2, 2, 4, 4)]
    boxes = torch.tensor([[[0, 0, 7, 7], [1, 1, 2, 2]], [[2, 3, 4, 5], [0, 0, 3, 3]]], dtype=torch.int32)
    outside = boxes.clone()
    outside[1, 1, 3] = 4  # level 1 is 4 wide
    return [
        BadInput("not a list", (levels[0], boxes), TypeError, "features"),
        BadInput("empty list", ([], boxes), ValueError, "features"),
        BadInput("nine levels", ([levels[1]] * 9, boxes), ValueError, "features"),
        BadInput("integer level", ([levels[0], levels[1].long()], boxes), TypeError, r"features\[1\]"),
        BadInput("3-D level", ([levels[0][0], levels[1]], boxes), ValueError, r"features\[0\]"),
        BadInput("batch mismatch", ([levels[0], levels[1][:1]], boxes), ValueError, r"features\[1\]"),
        BadInput("dtype mismatch", ([levels[0], levels[1].double()], boxes), TypeError, r"features\[1\]"),
        BadInput("device mismatch", ([levels[0], levels[1].to("meta")], boxes), ValueError, r"features\[1\]"),
        BadInput("float boxes", (levels, boxes.float()), TypeError, "boxes"),
        BadInput("boxes [N,4]", (levels, boxes[:, 0]), ValueError, "boxes"),
        BadInput("boxes of one level", (levels, boxes[:, :1]), ValueError, "boxes"),
        BadInput("boxes batch", (levels, boxes[:1]), ValueError, "boxes"),
        BadInput("boxes device", (levels, boxes.to("meta")), ValueError, "boxes"),
        BadInput("box outside its level", (levels, outside), ValueError, r"boxes\[1, 1\]"),
        BadInput("boxes not a tensor", (levels, boxes.tolist()), TypeError, "boxes"),
    ]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", bad_input.params(_bad_cases()))
def test_bad_input_crop_levels(case, backend):
    case.check(ops.crop_levels, backend=backend)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["crop_levels", "crop_levels_backward"])
def test_raw_ops_refuse_bad_arguments(device, op):
    """A direct call checks its arguments in C++ before any kernel runs."""
    require_kernel(device)
    fn = getattr(torch.ops.walnet, op)
    name = "features" if op == "crop_levels" else "grads"
    a, b = feature_maps(2, 3, 8, 8, device=device), feature_maps(2, 2, 4, 4, device=device)
    boxes = torch.zeros(2, 2, 4, dtype=torch.int32, device=device)
    cases = [
        (([], boxes[:, :0]), f"{name} must hold 1 to 8 levels"),
        (([b] * 9, torch.zeros(2, 9, 4, dtype=torch.int32, device=device)), f"{name} must hold 1 to 8 levels"),
        (([a, b], boxes.long()), "boxes must be int32"),
        (([a, b], boxes[:, 0]), "boxes must be \\[N,L,4\\]"),
        (([a, b], boxes[:, :1]), "boxes must be \\[N,L,4\\]"),
        (([a, b[:1]], boxes), f"{name}\\[1\\] has batch size 1"),
        (([a, b.double()], boxes), f"{name}\\[1\\] is Double"),
        (([a, b.int()], boxes), f"{name}\\[1\\] must be a floating tensor"),
        (([a[0], b], boxes), f"{name}\\[0\\] must be \\[N,C,H,W\\]"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            fn(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_kernel(device)
    boxes = torch.tensor([[[0, 0, 4, 6], [0, 0, 0, 0]], [[1, 2, 3, 3], [1, 0, 2, 3]], [[4, 6, 4, 6], [0, 1, 2, 2]]],
                         dtype=torch.int32, device=device)
    a = feature_maps(3, 2, 5, 7, device=device).requires_grad_()
    b = feature_maps(3, 3, 3, 4, device=device, seed=1).contiguous(memory_format=CL).requires_grad_()
    torch.library.opcheck(torch.ops.walnet.crop_levels.default, ([a, b], boxes))
    torch.library.opcheck(torch.ops.walnet.crop_levels.default, ([a.detach().half(), b.detach().half()], boxes))
    ga = torch.randn(3, 2, 5, 7, device=device).contiguous(memory_format=CL).requires_grad_()
    gb = torch.randn(3, 3, 3, 4, device=device, dtype=torch.float32, requires_grad=True)
    torch.library.opcheck(torch.ops.walnet.crop_levels_backward.default, ([ga, gb], boxes))
