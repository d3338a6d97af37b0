"""RCM ops (mask_boxes, crop_resize, roi_crop): kernels vs the reference spec and vs F.interpolate."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from walnet import ops
from walnet.ops import reference

from conftest import DEVICES, FLOAT_DTYPES, HAS_CUDA, require_kernel

#: The four encoder levels of a 224^2 input, (C, H, W) with small C to keep the tests fast.
LEVELS = [(3, 56, 56), (4, 28, 28), (5, 14, 14), (6, 7, 7)]
#: The four levels with the channel counts of the brief's roi_crop case.
ROI_LEVELS = [(8, 56, 56), (16, 28, 28), (32, 14, 14), (64, 7, 7)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --- inputs -------------------------------------------------------------------------------


def _blob(h, w, cy, cx, ry, rx):
    """[h, w] float64 map: 1 inside the ellipse centred at (cy, cx) with radii (ry, rx), else 0."""
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    return ((((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) <= 1).double()


def _fg_probs(h, w, seed=0):
    """A batch of foreground-probability maps [N, h, w] (float64) covering the mask_boxes edge
    cases at mask resolution: empty, full, single pixels (centre and the four corners), blobs
    touching each edge, random blobs, scattered noise, and a pixel exactly at 0.5."""
    g = _gen(seed)
    low = lambda: 0.4 * torch.rand(h, w, generator=g, dtype=torch.float64)  # noqa: E731  < 0.5 everywhere
    maps = [low(), 0.6 + 0.4 * torch.rand(h, w, generator=g, dtype=torch.float64)]  # empty, full
    for y, x in [(h // 2, w // 3), (0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
        m = low()
        m[y, x] = 0.95
        maps.append(m)
    for cy, cx in [(0, w / 2), (h - 1, w / 2), (h / 2, 0), (h / 2, w - 1), (h / 3, 2 * w / 3), (2 * h / 3, w / 4)]:
        blob = _blob(h, w, cy, cx, max(h / 4, 0.5), max(w / 5, 0.5))
        maps.append(torch.where(blob > 0, 0.55 + 0.45 * torch.rand(h, w, generator=g, dtype=torch.float64), low()))
    maps.append(torch.rand(h, w, generator=g, dtype=torch.float64))  # scattered
    m = low()
    m[h // 3, (2 * w) // 3] = 0.5  # exactly at the default threshold: foreground
    maps.append(m)
    return torch.stack(maps)


def _features(n, c, h, w, *, dtype=torch.float32, device="cpu", seed=0):
    """Random features whose values are all distinct enough that a wrong source index shows."""
    f = torch.randn(n, c, h, w, generator=_gen(seed), dtype=torch.float64)
    return f.to(dtype=dtype, device=device)


def _clamp_box(box, h, w):
    y1, x1, y2, x2 = box
    y1, y2 = sorted((min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)))
    x1, x2 = sorted((min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)))
    return y1, x1, y2, x2


def _boxes(h, w, n_random=6, *, seed=0, device="cpu"):
    """int32 [N, 4] boxes (y1, x1, y2, x2) inside an h x w map: the full map (identity), 1x1
    boxes at the corners and the centre, boxes touching each edge, 1-pixel strips, the top-left
    quarter (an exact 2x upsampling back to an even size), then random boxes."""
    fixed = [
        (0, 0, h - 1, w - 1),
        (0, 0, 0, 0),
        (0, w - 1, 0, w - 1),
        (h - 1, 0, h - 1, 0),
        (h - 1, w - 1, h - 1, w - 1),
        (h // 2, w // 2, h // 2, w // 2),
        (0, w // 4, h // 2, (3 * w) // 4),  # top
        (h // 2, w // 4, h - 1, (3 * w) // 4),  # bottom
        (h // 4, 0, (3 * h) // 4, w // 2),  # left
        (h // 4, w // 2, (3 * h) // 4, w - 1),  # right
        (h // 3, 0, h // 3, w - 1),  # full-width row
        (0, w // 3, h - 1, w // 3),  # full-height column
        (0, 0, h // 2 - 1, w // 2 - 1),  # top-left quarter
        (1, 1, h - 2, w - 2),
    ]
    g = _gen(seed)
    for _ in range(n_random):
        ys = torch.randint(0, h, (2,), generator=g).tolist()
        xs = torch.randint(0, w, (2,), generator=g).tolist()
        fixed.append((min(ys), min(xs), max(ys), max(xs)))
    boxes = [_clamp_box(b, h, w) for b in fixed]
    return torch.tensor(boxes, dtype=torch.int32, device=device)


def _interpolate_crops(features, boxes, size, mode):
    """The definition of crop_resize: F.interpolate of every sample's slice, one at a time."""
    outs = []
    for f, (y1, x1, y2, x2) in zip(features, boxes.tolist()):
        crop = f[None, :, y1 : y2 + 1, x1 : x2 + 1]
        if mode == "bilinear":
            outs.append(F.interpolate(crop, size=size, mode="bilinear", align_corners=False))
        else:
            outs.append(F.interpolate(crop, size=size, mode="nearest"))
    return torch.cat(outs)


def _seg_logits(n, h=56, w=56, *, device="cpu", seed=0):
    """[N, 2, h, w] logits: sample 0 has no foreground at all (class 1 strongly negative), the
    others blobs (centre, a corner, a small one that vanishes at coarse levels, a wide one, ...).
    |p - 0.5| is kept well away from 0 so no pixel sits on the threshold."""
    g = _gen(seed)
    blobs = [
        None,
        (h / 2, w / 2, h / 5, w / 4),
        (0, w - 1, h / 3, w / 3),
        (h / 3 + 0.3, w / 5 + 0.6, 0.6, 0.6),  # ~1 pixel at 56^2
        (2 * h / 3, w / 2, h / 8, w / 2.2),
        (h / 4, w / 3, h / 6, w / 7),
    ]
    logits = torch.zeros(n, 2, h, w, dtype=torch.float64)
    for i in range(n):
        spec = blobs[i] if i < len(blobs) else blobs[1 + i % (len(blobs) - 1)]
        mag = 1 + torch.rand(h, w, generator=g, dtype=torch.float64)
        if spec is None:
            diff = -10 * mag
        else:
            inside = _blob(h, w, *spec) > 0
            diff = torch.where(inside, mag, -mag)
        base = torch.randn(h, w, generator=g, dtype=torch.float64)
        logits[i, 0] = base
        logits[i, 1] = base + diff
    return logits.float().to(device)


def _level_features(n, levels=ROI_LEVELS, *, dtype=torch.float32, device="cpu", seed=0):
    return [_features(n, c, h, w, dtype=dtype, device=device, seed=seed + i) for i, (c, h, w) in enumerate(levels)]


# --- mask_boxes ---------------------------------------------------------------------------


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
    prob64 = _fg_probs(h, w, seed=h * 100 + w).to(device)
    for dtype in FLOAT_DTYPES:
        prob = prob64.to(dtype)
        # 0.5 + 1e-9: equal to 0.5 in every dtype but float64 (the pixel at exactly 0.5 then
        # counts as foreground except for float64 maps: the comparison is torch's `p >= t`).
        for threshold in (0.5, 0.3, 0.9, 0.5 + 1e-9):
            for dilation in (0.0, 1 / 7, 0.5, 3.0):
                out = ops.mask_boxes(prob, size, threshold, dilation, backend="kernel")
                expected = reference.mask_boxes(prob, size, threshold, dilation)
                assert out.dtype == torch.int32 and out.device == prob.device
                assert torch.equal(out, expected), (dtype, threshold, dilation, out, expected)
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
    prob = _fg_probs(h, w, seed=7).float()
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


# --- crop_resize: nearest -----------------------------------------------------------------

#: (C, H, W, output size): the four levels of a 224^2 input back to their size, and odd /
#: non-square maps resized up and down.
CROP_CONFIGS = [(c, h, w, (h, w)) for c, h, w in LEVELS] + [
    (2, 17, 23, (17, 23)),
    (2, 17, 23, (9, 5)),
    (2, 17, 23, (40, 31)),
    (3, 56, 56, (7, 7)),
    (3, 7, 7, (56, 56)),
    (2, 1, 9, (3, 4)),
    (2, 12, 1, (5, 2)),
    # 62 -> 28 and 76 -> 56 are among the few sizes where the source index floor(d * float32(in /
    # out)) of PyTorch's nearest differs from double precision and from the exact d * in // out
    (2, 62, 76, (28, 56)),
]


def _crop_id(cfg):
    c, h, w, (oh, ow) = cfg
    return f"C{c}-{h}x{w}-to-{oh}x{ow}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CROP_CONFIGS, ids=_crop_id)
def test_crop_resize_nearest_bitwise_equals_interpolate(device, config):
    require_kernel(device)
    c, h, w, size = config
    boxes = _boxes(h, w, seed=h + w, device=device)
    features = _features(len(boxes), c, h, w, device=device, seed=c)
    out = ops.crop_resize(features, boxes, size, "nearest", backend="kernel")
    assert out.shape == (len(boxes), c, *size) and out.dtype == features.dtype
    assert torch.equal(out, _interpolate_crops(features, boxes, size, "nearest"))
    assert torch.equal(out, reference.crop_resize(features, boxes, size, "nearest"))
    if size == (h, w):  # default size; the full box is the identity
        assert torch.equal(ops.crop_resize(features, boxes, backend="kernel"), out)
        assert torch.equal(out[0], features[0])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 3),
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    oh=st.integers(1, 40),
    ow=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_crop_resize_random_shapes(n, c, h, w, oh, ow, seed):
    g = _gen(seed)
    boxes = []
    for _ in range(n):
        ys = torch.randint(0, h, (2,), generator=g).tolist()
        xs = torch.randint(0, w, (2,), generator=g).tolist()
        boxes.append([min(ys), min(xs), max(ys), max(xs)])
    boxes = torch.tensor(boxes, dtype=torch.int32)
    features = _features(n, c, h, w, seed=seed)
    out = ops.crop_resize(features, boxes, (oh, ow), "nearest", backend="kernel")
    assert torch.equal(out, _interpolate_crops(features, boxes, (oh, ow), "nearest"))
    out = ops.crop_resize(features.double(), boxes, (oh, ow), "bilinear", backend="kernel")
    torch.testing.assert_close(
        out, _interpolate_crops(features.double(), boxes, (oh, ow), "bilinear"), rtol=0, atol=1e-12
    )


# --- crop_resize: bilinear ----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CROP_CONFIGS, ids=_crop_id)
def test_crop_resize_bilinear_matches_interpolate(device, dtype, config):
    require_kernel(device)
    c, h, w, size = config
    boxes = _boxes(h, w, seed=h * w, device=device)
    # float32 at a magnitude of ~1e3 (the tolerance is relative); float64 at ~1 (atol 1e-12)
    scale = 300 if dtype == torch.float32 else 1
    features = (_features(len(boxes), c, h, w, dtype=torch.float64, device=device, seed=c) * scale).to(dtype)
    out = ops.crop_resize(features, boxes, size, "bilinear", backend="kernel")
    assert out.shape == (len(boxes), c, *size) and out.dtype == dtype
    magnitude = features.abs().max().item()
    atol = 1e-12 if dtype == torch.float64 else 1e-5 * magnitude
    torch.testing.assert_close(out, _interpolate_crops(features, boxes, size, "bilinear"), rtol=0, atol=atol)
    torch.testing.assert_close(out, reference.crop_resize(features, boxes, size, "bilinear"), rtol=0, atol=atol)
    # the full box back to its own size is the identity, in bilinear too
    if size == (h, w):
        torch.testing.assert_close(out[0], features[0], rtol=0, atol=atol)


# --- dtypes, layouts ----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_crop_resize_dtypes(device, dtype):
    require_kernel(device)
    c, h, w = 4, 19, 26
    boxes = _boxes(h, w, seed=3, device=device)
    features = _features(len(boxes), c, h, w, dtype=dtype, device=device, seed=5)
    for size in [(h, w), (11, 30)]:
        out = ops.crop_resize(features, boxes, size, "nearest", backend="kernel")
        assert out.dtype == dtype
        assert torch.equal(out, reference.crop_resize(features, boxes, size, "nearest"))
        assert torch.equal(out, _interpolate_crops(features, boxes, size, "nearest"))
        out = ops.crop_resize(features, boxes, size, "bilinear", backend="kernel")
        assert out.dtype == dtype
        expected = reference.crop_resize(features, boxes, size, "bilinear")
        # both compute in float32 (float64 for float64) and round once: at most one ulp apart
        magnitude = features.abs().max().item()
        atol = 1e-12 if dtype == torch.float64 else 1.01 * torch.finfo(dtype).eps * magnitude
        if dtype == torch.float32:
            atol = 1e-5 * magnitude
        torch.testing.assert_close(out, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("backend", ["kernel", "reference"])
def test_crop_resize_layouts(device, mode, backend):
    """channels_last in -> channels_last out, contiguous in -> contiguous out, same values;
    strided and transposed views give the values of their contiguous copy."""
    if backend == "kernel":
        require_kernel(device)
    n, c, h, w = 5, 6, 15, 18
    boxes = _boxes(h, w, n_random=0, seed=1, device=device)[:n]
    features = _features(n, c, h, w, device=device, seed=2)
    size = (13, 20)
    out = ops.crop_resize(features, boxes, size, mode, backend=backend)
    expected = _interpolate_crops(features, boxes, size, mode)
    torch.testing.assert_close(out, expected, rtol=0, atol=0 if mode == "nearest" else 1e-5)
    assert out.is_contiguous(), out.stride()

    cl = features.contiguous(memory_format=torch.channels_last)
    out_cl = ops.crop_resize(cl, boxes, size, mode, backend=backend)
    assert out_cl.is_contiguous(memory_format=torch.channels_last), out_cl.stride()
    assert torch.equal(out_cl, out)

    wide = _features(n, 2 * c, h + 3, 2 * w, device=device, seed=9)
    wide[:, ::2, 3:, ::2] = features
    view = wide[:, ::2, 3:, ::2]
    assert not view.is_contiguous()
    assert torch.equal(ops.crop_resize(view, boxes, size, mode, backend=backend), out)

    t = features.transpose(2, 3).contiguous().transpose(2, 3)
    assert not t.is_contiguous() and torch.equal(t, features)
    assert torch.equal(ops.crop_resize(t, boxes, size, mode, backend=backend), out)
    # boxes of any integer dtype, and non-contiguous boxes
    assert torch.equal(ops.crop_resize(features, boxes.long(), size, mode, backend=backend), out)
    b_t = boxes.t().contiguous().t()
    assert torch.equal(ops.crop_resize(features, b_t, size, mode, backend=backend), out)


# --- gradients ----------------------------------------------------------------------------


def _grad_inputs(device, dtype=torch.float64):
    h, w = 5, 7
    boxes = torch.tensor(
        [[0, 0, h - 1, w - 1], [1, 2, 3, 3], [h - 1, w - 1, h - 1, w - 1], [0, 4, 2, w - 1]],
        dtype=torch.int32,
        device=device,
    )
    features = _features(len(boxes), 1, h, w, dtype=dtype, device=device, seed=4).requires_grad_()
    return features, boxes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [(3, 11), (5, 7), (10, 2)], ids=str)
def test_crop_resize_gradcheck(device, mode, size):
    require_kernel(device)
    features, boxes = _grad_inputs(device)
    assert torch.autograd.gradcheck(
        lambda f: ops.crop_resize(f, boxes, size, mode, backend="kernel"), (features,), fast_mode=False
    )


@pytest.mark.parametrize("device", DEVICES)
def test_crop_resize_gradgradcheck(device):
    require_kernel(device)
    features, boxes = _grad_inputs(device)
    assert torch.autograd.gradgradcheck(
        lambda f: ops.crop_resize(f, boxes, (3, 11), "bilinear", backend="kernel"), (features,)
    )
    # the backward op is itself differentiable: its own gradcheck (w.r.t. the incoming grad)
    grad = torch.randn(4, 1, 3, 11, dtype=torch.float64, device=device, requires_grad=True)
    for bilinear in (False, True):
        assert torch.autograd.gradcheck(
            lambda g: torch.ops.walnet.crop_resize_backward(g, boxes, 5, 7, bilinear), (grad,)
        )


def _backward(features, boxes, size, mode, grad, backend):
    f = features.detach().clone().requires_grad_()
    if backend == "loop":
        out = _interpolate_crops(f, boxes, size, mode)
    else:
        out = ops.crop_resize(f, boxes, size, mode, backend=backend)
    (g,) = torch.autograd.grad(out, f, grad)
    return g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_crop_resize_backward_matches_reference(device, mode):
    require_kernel(device)
    c, h, w = 3, 17, 23
    boxes = _boxes(h, w, seed=8, device=device)
    for size in [(17, 23), (40, 31), (9, 5)]:
        features = _features(len(boxes), c, h, w, dtype=torch.float64, device=device, seed=1)
        grad = torch.randn(len(boxes), c, *size, generator=_gen(2), dtype=torch.float64).to(device)
        got = _backward(features, boxes, size, mode, grad, "kernel")
        torch.testing.assert_close(got, _backward(features, boxes, size, mode, grad, "reference"), rtol=0, atol=1e-12)
        torch.testing.assert_close(got, _backward(features, boxes, size, mode, grad, "loop"), rtol=0, atol=1e-12)
        if mode == "nearest":
            # every output pixel copies one input pixel: the gradient's total is preserved
            torch.testing.assert_close(got.sum((2, 3)), grad.sum((2, 3)), rtol=0, atol=1e-12)
            # outside the boxes the gradient is exactly zero
            inside = torch.zeros(len(boxes), 1, h, w, dtype=torch.bool, device=device)
            for i, (y1, x1, y2, x2) in enumerate(boxes.tolist()):
                inside[i, :, y1 : y2 + 1, x1 : x2 + 1] = True
            assert (got.masked_fill(inside, 0) == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_crop_resize_nearest_backward_exact(device, dtype):
    """With small-integer gradients every sum is exact, whatever the summation order: the
    nearest backward must then equal the reference bitwise in every dtype."""
    require_kernel(device)
    c, h, w = 4, 14, 14
    boxes = _boxes(h, w, seed=6, device=device)
    features = _features(len(boxes), c, h, w, dtype=dtype, device=device)
    for size in [(28, 28), (14, 14), (5, 9)]:
        # values in {-1, 0, 1}: the partial sums (at most 28*28 terms, a random walk) stay far
        # below 256, where bfloat16 stops representing every integer
        grad = torch.randint(-1, 2, (len(boxes), c, *size), generator=_gen(3)).to(dtype=dtype, device=device)
        got = _backward(features, boxes, size, "nearest", grad, "kernel")
        assert got.dtype == dtype
        assert torch.equal(got, _backward(features, boxes, size, "nearest", grad, "reference"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_crop_resize_backward_deterministic(device, mode):
    require_kernel(device)
    c, h, w = 16, 28, 28
    boxes = _boxes(h, w, n_random=18, seed=12, device=device)  # small crops upsampled: many-to-one
    features = _features(len(boxes), c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(len(boxes), c, 56, 56, generator=_gen(5)).to(device)
    grad = grad.contiguous(memory_format=torch.channels_last)  # as the channels_last output's grad
    runs = []
    threads = torch.get_num_threads()
    try:
        for nt in (threads, 1, threads):
            torch.set_num_threads(nt)
            runs.append(_backward(features, boxes, (56, 56), mode, grad, "kernel"))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        assert torch.equal(runs[0], other)
    assert runs[0].is_contiguous(memory_format=torch.channels_last)
    # Against the float64 gradient: float32 accumulation errs by a few eps * sum|g| per input
    # pixel; bilinear weights are float32 numbers below max(H, W), each off by ~max(H, W) * eps.
    exact = _backward(features.double(), boxes, (56, 56), mode, grad.double(), "reference")
    abs_sum = _backward(features.double(), boxes, (56, 56), mode, grad.double().abs(), "reference")
    eps = torch.finfo(torch.float32).eps
    bound = (4 if mode == "nearest" else 4 + 2 * max(h, w)) * eps * abs_sum
    assert ((runs[0].double() - exact).abs() <= bound).all()


# --- torch.library integration ------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_kernel(device)
    features, boxes = _grad_inputs(device, dtype=torch.float32)
    cl = features.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    for bilinear in (False, True):
        torch.library.opcheck(torch.ops.walnet.crop_resize.default, (features, boxes, 3, 11, bilinear))
        torch.library.opcheck(torch.ops.walnet.crop_resize.default, (cl, boxes, 9, 4, bilinear))
        grad = torch.randn(4, 1, 3, 11, device=device, requires_grad=True)
        torch.library.opcheck(torch.ops.walnet.crop_resize_backward.default, (grad, boxes, 5, 7, bilinear))
    torch.library.opcheck(torch.ops.walnet.crop_resize.default, (features.detach().half(), boxes, 5, 7, False))
    grad_cl = torch.randn(4, 3, 6, 2, device=device).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.walnet.crop_resize_backward.default, (grad_cl, boxes, 5, 7, True))
    prob = _fg_probs(20, 12).float().to(device)
    torch.library.opcheck(torch.ops.walnet.mask_boxes.default, (prob, 10, 6, 0.5, 1 / 7))
    torch.library.opcheck(torch.ops.walnet.mask_boxes.default, (prob.double(), 40, 24, 0.3, 0.0))
    torch.library.opcheck(torch.ops.walnet.mask_boxes.default, (prob.half().requires_grad_(), 20, 12, 0.5, 0.25))


def test_torch_compile_fullgraph():
    require_kernel("cpu")
    prob = _fg_probs(28, 28, seed=3).float()
    features = _features(len(prob), 4, 14, 14, seed=6)

    def rcm(prob, features):
        boxes = ops.mask_boxes(prob, (14, 14))
        return boxes, ops.crop_resize(features, boxes, (14, 14)), ops.crop_resize(features, boxes, (9, 16), "bilinear")

    compiled = torch.compile(rcm, fullgraph=True)
    grads = []
    for fn in (compiled, rcm):
        f = features.clone().requires_grad_()
        boxes, near, bil = fn(prob, f)
        grad = torch.autograd.grad((near * torch.arange(14.0)).sum() + (bil * bil).sum(), f)[0]
        grads.append((boxes, near, bil, grad))
    (cb, cn, cbl, cg), (eb, en, ebl, eg) = grads
    assert torch.equal(cb, eb) and torch.equal(cn, en)
    torch.testing.assert_close(cbl, ebl, rtol=0, atol=1e-6)
    torch.testing.assert_close(cg, eg, rtol=0, atol=1e-5)


# --- roi_crop -----------------------------------------------------------------------------


def _loop_roi(levels, seg_logits, method, threshold=0.5, dilation=1 / 7):
    """Independent per-sample oracle of the ROI methods (the authors' style of code)."""
    prob = torch.softmax(seg_logits.float(), dim=1)[:, 1]
    out = []
    for f in levels:
        H, W = f.shape[-2:]
        rows = []
        for i in range(f.shape[0]):
            x = f[i]
            if method == "rwm":
                rows.append(x * F.interpolate(prob[i][None, None], size=(H, W), mode="nearest")[0].to(x.dtype))
                continue
            m = F.interpolate((prob[i] >= threshold)[None, None].float(), size=(H, W), mode="nearest")[0, 0] > 0
            ys, xs = torch.where(m)
            if len(ys) == 0:
                rows.append(x)
                continue
            if method in ("bg_rm", "bg_rm_crop"):
                x = x * m.to(x.dtype)
                if method == "bg_rm":
                    rows.append(x)
                    continue
            r = W * dilation if method == "dilated_crop" else 0.0
            y1, x1 = max(int(int(ys.min()) - r), 0), max(int(int(xs.min()) - r), 0)
            y2, x2 = min(int(int(ys.max()) + r), H - 1), min(int(int(xs.max()) + r), W - 1)
            rows.append(F.interpolate(x[None, :, y1 : y2 + 1, x1 : x2 + 1], size=(H, W), mode="nearest")[0])
        out.append(torch.stack(rows))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(ops.ROI_METHODS))
def test_roi_crop_equals_reference(device, method):
    require_kernel(device)
    n = 6
    seg = _seg_logits(n, device=device, seed=1)
    levels = _level_features(n, device=device, seed=3)
    out = ops.roi_crop(levels, seg, method, backend="kernel")
    expected = reference.roi_crop(levels, seg, method)
    loop = _loop_roi(levels, seg, method)
    assert isinstance(out, list) and len(out) == 4
    for o, e, lp, f in zip(out, expected, loop, levels):
        assert o.shape == f.shape and o.dtype == f.dtype
        assert torch.equal(o, e)
        assert torch.equal(o, lp)
        if method == "rwm":
            assert not torch.equal(o[0], f[0])  # p ~ 0: features are scaled down
        else:
            assert torch.equal(o[0], f[0])  # no foreground: unchanged
            assert not torch.equal(o[1], f[1])  # a real crop changed something
    # single tensor in -> single tensor out, equal to that level of the list
    for i, f in enumerate(levels):
        single = ops.roi_crop(f, seg, method, backend="kernel")
        assert isinstance(single, torch.Tensor) and torch.equal(single, out[i])
    # the small blob (sample 3) vanishes at the coarsest level: unchanged there except for rwm
    if method != "rwm":
        assert torch.equal(out[3][3], levels[3][3])
        assert not torch.equal(out[0][3], levels[0][3])


@pytest.mark.parametrize("device", DEVICES)
def test_roi_crop_options(device):
    """threshold, dilation, dtype, layout and seg_logits resolution reach the kernel path."""
    require_kernel(device)
    n = 4
    seg = _seg_logits(n, 28, 28, device=device, seed=2)
    levels = _level_features(n, [(3, 56, 56), (4, 28, 28), (5, 14, 14), (6, 7, 7)], device=device, seed=4)
    for threshold, dilation in [(0.3, 0.25), (0.7, 0.0), (0.5, 1.0)]:
        for method in ("bg_rm_crop", "dilated_crop", "bg_rm"):
            out = ops.roi_crop(levels, seg, method, threshold, dilation, backend="kernel")
            for o, e in zip(out, _loop_roi(levels, seg, method, threshold, dilation)):
                assert torch.equal(o, e)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        lv = [f.to(dtype) for f in levels]
        for o, e in zip(ops.roi_crop(lv, seg, backend="kernel"), reference.roi_crop(lv, seg)):
            assert o.dtype == dtype and torch.equal(o, e)
    cl = [f.contiguous(memory_format=torch.channels_last) for f in levels]
    for o, e in zip(ops.roi_crop(cl, seg, backend="kernel"), reference.roi_crop(levels, seg)):
        assert o.is_contiguous(memory_format=torch.channels_last) and torch.equal(o, e)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(ops.ROI_METHODS))
def test_roi_crop_gradients(device, method):
    """rwm's gradient reaches seg_logits; the mask and the boxes are not differentiable, so the
    other methods give seg_logits no gradient; every method passes gradient to the features."""
    require_kernel(device)
    n = 4
    seg0 = _seg_logits(n, device=device, seed=5).double()
    levels0 = _level_features(n, [(3, 56, 56), (4, 28, 28), (5, 14, 14), (6, 7, 7)], dtype=torch.float64,
                              device=device, seed=6)
    grads = {}
    for backend in ("kernel", "reference"):
        seg = seg0.clone().requires_grad_()
        levels = [f.clone().requires_grad_() for f in levels0]
        out = ops.roi_crop(levels, seg, method, backend=backend)
        # small-integer weights keep every gradient sum exact whatever the summation order
        loss = sum((o * torch.randint(-3, 4, o.shape, generator=_gen(i)).to(o)).sum() for i, o in enumerate(out))
        grads[backend] = torch.autograd.grad(loss, [seg, *levels], allow_unused=True)
    for got, want in zip(grads["kernel"], grads["reference"]):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    seg_grad, *feature_grads = grads["kernel"]
    if method == "rwm":
        assert seg_grad is not None and seg_grad.abs().sum() > 0 and torch.isfinite(seg_grad).all()
    else:
        assert seg_grad is None or not seg_grad.any()
    for g in feature_grads:
        assert g is not None and g.abs().sum() > 0


# --- bad input ----------------------------------------------------------------------------


def _crop_bad_cases():
    f = _features(2, 3, 8, 10)
    b = torch.tensor([[0, 0, 7, 9], [2, 3, 5, 6]], dtype=torch.int32)
    return [
        ("y2 out of range", (f, torch.tensor([[0, 0, 8, 9], [2, 3, 5, 6]])), {}, ValueError, "boxes"),
        ("x2 out of range", (f, torch.tensor([[0, 0, 7, 10], [2, 3, 5, 6]])), {}, ValueError, "boxes"),
        ("negative y1", (f, torch.tensor([[0, 0, 7, 9], [-1, 3, 5, 6]])), {}, ValueError, "boxes"),
        ("negative x1", (f, torch.tensor([[0, -2, 7, 9], [2, 3, 5, 6]])), {}, ValueError, "boxes"),
        ("y1 > y2", (f, torch.tensor([[0, 0, 7, 9], [5, 3, 2, 6]])), {}, ValueError, "boxes"),
        ("x1 > x2", (f, torch.tensor([[0, 7, 7, 6], [2, 3, 5, 6]])), {}, ValueError, "boxes"),
        ("float boxes", (f, b.float()), {}, TypeError, "boxes"),
        ("bool boxes", (f, b > 2), {}, TypeError, "boxes"),
        ("boxes not a tensor", (f, b.tolist()), {}, TypeError, "boxes"),
        ("boxes [N,3]", (f, b[:, :3]), {}, ValueError, "boxes"),
        ("boxes [4]", (f, b[0]), {}, ValueError, "boxes"),
        ("boxes batch", (f, b[:1]), {}, ValueError, "boxes"),
        ("boxes device", (f, b.to("meta")), {}, ValueError, "boxes"),
        ("features device", (f.to("meta"), b), {}, ValueError, "features"),
        ("integer features", ((f * 10).long(), b), {}, TypeError, "features"),
        ("3-D features", (f[0], b), {}, ValueError, "features"),
        ("5-D features", (f[None], b), {}, ValueError, "features"),
        ("empty batch", (f[:0], b[:0]), {}, ValueError, "features"),
        ("features not a tensor", (f.numpy(), b), {}, TypeError, "features"),
        ("size int", (f, b, 5), {}, TypeError, "size"),
        ("size triple", (f, b, (5, 5, 5)), {}, TypeError, "size"),
        ("size float", (f, b, (5.0, 5)), {}, TypeError, "size"),
        ("size zero", (f, b, (0, 5)), {}, ValueError, "size"),
        ("size negative", (f, b, (4, -1)), {}, ValueError, "size"),
        ("bad mode", (f, b, (4, 4), "bicubic"), {}, ValueError, "mode"),
        ("bad backend", (f, b), {"backend": "cuda"}, ValueError, "backend"),
    ]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", _crop_bad_cases(), ids=lambda c: c[0])
def test_bad_input_crop_resize(case, backend):
    _, args, kwargs, exc, name = case
    kwargs = {"backend": backend, **kwargs}
    with pytest.raises(exc, match=name):
        ops.crop_resize(*args, **kwargs)


def _mask_bad_cases():
    p = torch.rand(2, 12, 10)
    nan = p.clone()
    nan[1, 3, 4] = float("nan")
    inf = p.clone()
    inf[0, 0, 0] = float("-inf")
    return [
        ("nan", (nan, (6, 5)), ValueError, "fg_prob"),
        ("inf", (inf, (6, 5)), ValueError, "fg_prob"),
        ("integer map", ((p > 0.5).int(), (6, 5)), TypeError, "fg_prob"),
        ("two channels", (torch.stack([p, p], 1), (6, 5)), ValueError, "fg_prob"),
        ("2-D map", (p[0], (6, 5)), ValueError, "fg_prob"),
        ("empty batch", (p[:0], (6, 5)), ValueError, "fg_prob"),
        ("size int", (p, 6), TypeError, "size"),
        ("size zero", (p, (6, 0)), ValueError, "size"),
        ("size pair of floats", (p, (6.0, 5.0)), TypeError, "size"),
        ("negative dilation", (p, (6, 5), 0.5, -0.1), ValueError, "dilation"),
        ("nan dilation", (p, (6, 5), 0.5, float("nan")), ValueError, "dilation"),
        ("nan threshold", (p, (6, 5), float("nan")), ValueError, "threshold"),
        ("string threshold", (p, (6, 5), "0.5"), TypeError, "threshold"),
    ]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", _mask_bad_cases(), ids=lambda c: c[0])
def test_bad_input_mask_boxes(case, backend):
    _, args, exc, name = case
    with pytest.raises(exc, match=name):
        ops.mask_boxes(*args, backend=backend)


def _roi_bad_cases():
    levels = _level_features(2, [(3, 16, 16), (4, 8, 8)])
    seg = _seg_logits(2, 16, 16)
    nan = seg.clone()
    nan[1, 1, 2, 2] = float("nan")
    return [
        ("bad method", (levels, seg, "dilated"), ValueError, "method"),
        ("seg_logits 3 channels", (levels, torch.cat([seg, seg[:, :1]], 1)), ValueError, "seg_logits"),
        ("seg_logits 3-D", (levels, seg[:, 1]), ValueError, "seg_logits"),
        ("seg_logits integer", (levels, seg.long()), TypeError, "seg_logits"),
        ("seg_logits batch", (levels, seg[:1]), ValueError, "seg_logits"),
        ("seg_logits device", (levels, seg.to("meta")), ValueError, "seg_logits"),
        ("seg_logits nan", (levels, nan), ValueError, "seg_logits"),
        ("list N mismatch", ([levels[0], levels[1][:1]], seg), ValueError, r"features\[1\]"),
        ("integer level", ([levels[0], levels[1].long()], seg), TypeError, r"features\[1\]"),
        ("3-D level", ([levels[0][0], levels[1]], seg), ValueError, r"features\[0\]"),
        ("3-D tensor", (levels[0][0], seg), ValueError, "features"),
        ("empty list", ([], seg), ValueError, "features"),
        ("negative dilation", (levels, seg, "dilated_crop", 0.5, -0.5), ValueError, "dilation"),
        ("nan threshold", (levels, seg, "crop", float("nan")), ValueError, "threshold"),
    ]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", _roi_bad_cases(), ids=lambda c: c[0])
def test_bad_input_roi_crop(case, backend):
    _, args, exc, name = case
    with pytest.raises(exc, match=name):
        ops.roi_crop(*args, backend=backend)


def test_direct_op_call_checks_boxes():
    """torch.ops.walnet.crop_resize called without the wrapper must still refuse bad shapes
    (out-of-range box values are only checked by the wrapper)."""
    require_kernel("cpu")
    f = _features(2, 3, 8, 10)
    b = torch.tensor([[0, 0, 7, 9], [2, 3, 5, 6]], dtype=torch.int32)
    with pytest.raises(RuntimeError):
        torch.ops.walnet.crop_resize(f, b[:, :3], 4, 4, False)
    with pytest.raises(RuntimeError):
        torch.ops.walnet.crop_resize(f, b[:1], 4, 4, False)
    with pytest.raises(RuntimeError):
        torch.ops.walnet.crop_resize(f, b, 0, 4, False)
    with pytest.raises(RuntimeError):
        torch.ops.walnet.mask_boxes(torch.rand(2, 3, 4, 5), 4, 4, 0.5, 0.1)


def test_public_api():
    for name in ("mask_boxes", "crop_resize", "roi_crop", "ROI_METHODS"):
        assert name in ops.__all__
    for fn in (ops.mask_boxes, ops.crop_resize, ops.roi_crop):
        assert fn.__doc__
    assert tuple(ops.ROI_METHODS) == ("rwm", "bg_rm", "bg_rm_crop", "crop", "dilated_crop")


# --- CUDA == CPU --------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_equals_cpu():
    require_kernel("cuda")
    require_kernel("cpu")
    for (h, w), size in MASK_RESIZES:
        prob = _fg_probs(h, w, seed=1).float()
        for dilation in (0.0, 1 / 7):
            gpu = ops.mask_boxes(prob.cuda(), size, 0.5, dilation).cpu()
            assert torch.equal(ops.mask_boxes(prob, size, 0.5, dilation), gpu)
    for c, h, w, size in CROP_CONFIGS:
        boxes = _boxes(h, w, seed=2)
        f = _features(len(boxes), c, h, w, seed=3)
        assert torch.equal(ops.crop_resize(f, boxes, size), ops.crop_resize(f.cuda(), boxes.cuda(), size).cpu())
        torch.testing.assert_close(
            ops.crop_resize(f, boxes, size, "bilinear"),
            ops.crop_resize(f.cuda(), boxes.cuda(), size, "bilinear").cpu(),
            rtol=0,
            atol=1e-5 * f.abs().max().item(),
        )
        # small-integer gradients: exact sums, so the backward must agree bitwise too
        grad = torch.randint(-4, 5, (len(boxes), c, *size), generator=_gen(4)).float()
        g_cpu = _backward(f, boxes, size, "nearest", grad, "auto")
        g_gpu = _backward(f.cuda(), boxes.cuda(), size, "nearest", grad.cuda(), "auto")
        assert torch.equal(g_cpu, g_gpu.cpu())
    seg = _seg_logits(6, seed=3)
    levels = _level_features(6, seed=4)
    for method in ops.ROI_METHODS:
        cpu = ops.roi_crop(levels, seg, method)
        gpu = ops.roi_crop([f.cuda() for f in levels], seg.cuda(), method)
        for c_, g_ in zip(cpu, gpu):
            if method == "rwm":  # softmax may differ by an ulp between devices
                torch.testing.assert_close(c_, g_.cpu(), rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(c_, g_.cpu())
