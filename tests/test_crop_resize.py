"""crop_resize forward: nearest bitwise equal to F.interpolate of each box's slice, bilinear
within rounding of it, the reference spec, every dtype and layout; bad input; torch.library
checks and torch.compile. The gradient is tested in test_crop_resize_backward.py."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from walnet import ops
from walnet.ops import reference

import bad_input
from bad_input import BadInput
from conftest import DEVICES, FLOAT_DTYPES, HAS_CUDA, require_kernel
from rcm_inputs import (LEVELS, crop_resize_grad, edge_case_boxes, feature_maps, fg_probs, gen, grad_inputs,
                        interpolate_crops)

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


# --- nearest ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CROP_CONFIGS, ids=_crop_id)
def test_crop_resize_nearest_bitwise_equals_interpolate(device, config):
    require_kernel(device)
    c, h, w, size = config
    boxes = edge_case_boxes(h, w, seed=h + w, device=device)
    features = feature_maps(len(boxes), c, h, w, device=device, seed=c)
    out = ops.crop_resize(features, boxes, size, "nearest", backend="kernel")
    assert out.shape == (len(boxes), c, *size) and out.dtype == features.dtype
    assert torch.equal(out, interpolate_crops(features, boxes, size, "nearest"))
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
    g = gen(seed)
    boxes = []
    for _ in range(n):
        ys = torch.randint(0, h, (2,), generator=g).tolist()
        xs = torch.randint(0, w, (2,), generator=g).tolist()
        boxes.append([min(ys), min(xs), max(ys), max(xs)])
    boxes = torch.tensor(boxes, dtype=torch.int32)
    features = feature_maps(n, c, h, w, seed=seed)
    out = ops.crop_resize(features, boxes, (oh, ow), "nearest", backend="kernel")
    assert torch.equal(out, interpolate_crops(features, boxes, (oh, ow), "nearest"))
    out = ops.crop_resize(features.double(), boxes, (oh, ow), "bilinear", backend="kernel")
    torch.testing.assert_close(
        out, interpolate_crops(features.double(), boxes, (oh, ow), "bilinear"), rtol=0, atol=1e-12
    )


# --- bilinear -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CROP_CONFIGS, ids=_crop_id)
def test_crop_resize_bilinear_matches_interpolate(device, dtype, config):
    require_kernel(device)
    c, h, w, size = config
    boxes = edge_case_boxes(h, w, seed=h * w, device=device)
    # float32 at a magnitude of ~1e3 (the tolerance is relative); float64 at ~1 (atol 1e-12)
    scale = 300 if dtype == torch.float32 else 1
    features = (feature_maps(len(boxes), c, h, w, dtype=torch.float64, device=device, seed=c) * scale).to(dtype)
    out = ops.crop_resize(features, boxes, size, "bilinear", backend="kernel")
    assert out.shape == (len(boxes), c, *size) and out.dtype == dtype
    magnitude = features.abs().max().item()
    atol = 1e-12 if dtype == torch.float64 else 1e-5 * magnitude
    torch.testing.assert_close(out, interpolate_crops(features, boxes, size, "bilinear"), rtol=0, atol=atol)
    torch.testing.assert_close(out, reference.crop_resize(features, boxes, size, "bilinear"), rtol=0, atol=atol)
    # the full box back to its own size is the identity, in bilinear too
    if size == (h, w):
        torch.testing.assert_close(out[0], features[0], rtol=0, atol=atol)


# --- the reference on every device ---------------------------------------------------------


class CudaScalarDivision(torch.overrides.TorchFunctionMode):
    """Divides a floating tensor by a Python number as PyTorch's CUDA kernels do: a multiplication
    by the reciprocal, computed in the tensor's dtype. It can round differently from division."""

    DIVISIONS = (torch.Tensor.__truediv__, torch.Tensor.div, torch.div, torch.true_divide)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in self.DIVISIONS and len(args) == 2 and not kwargs and isinstance(args[0], torch.Tensor)
                and args[0].is_floating_point() and isinstance(args[1], (int, float))):
            x, divisor = args
            reciprocal = torch.tensor(1.0, dtype=x.dtype) / torch.tensor(float(divisor), dtype=x.dtype)
            return x * reciprocal
        return func(*args, **kwargs)


def test_cuda_scalar_division_mode_changes_a_division():
    """The emulation takes effect: 3 / 135 in float32 differs from 3 * (1 / 135)."""
    x = torch.tensor([3.0])
    with CudaScalarDivision():
        emulated = x / 135
    assert not torch.equal(emulated, x / torch.tensor([135.0]))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_is_device_independent(mode, dtype):
    """The reference is the spec on every device: its index maths must not depend on how a device
    divides. Under CUDA's division by a Python number (emulated on the CPU) every crop size from 1
    to 80, resized up and down, gives the same output bits, equal to the kernel's."""
    require_kernel("cpu")
    features = feature_maps(80, 2, 80, 80, dtype=dtype, seed=3)
    sizes = torch.arange(1, 81)
    boxes = torch.stack([torch.zeros_like(sizes), torch.zeros_like(sizes), sizes - 1, sizes.flip(0) - 1], 1)
    for size in ((28, 56), (135, 97), (7, 3)):
        want = reference.crop_resize(features, boxes, size, mode)
        with CudaScalarDivision():
            got = reference.crop_resize(features, boxes, size, mode)
        assert torch.equal(got, want), f"{mode} {dtype} to {size}"
        assert torch.equal(ops.crop_resize(features, boxes, size, mode, backend="kernel"), want)


# --- dtypes, layouts ----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_crop_resize_dtypes(device, dtype):
    require_kernel(device)
    c, h, w = 4, 19, 26
    boxes = edge_case_boxes(h, w, seed=3, device=device)
    features = feature_maps(len(boxes), c, h, w, dtype=dtype, device=device, seed=5)
    for size in [(h, w), (11, 30)]:
        out = ops.crop_resize(features, boxes, size, "nearest", backend="kernel")
        assert out.dtype == dtype
        assert torch.equal(out, reference.crop_resize(features, boxes, size, "nearest"))
        assert torch.equal(out, interpolate_crops(features, boxes, size, "nearest"))
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
    boxes = edge_case_boxes(h, w, n_random=0, seed=1, device=device)[:n]
    features = feature_maps(n, c, h, w, device=device, seed=2)
    size = (13, 20)
    out = ops.crop_resize(features, boxes, size, mode, backend=backend)
    expected = interpolate_crops(features, boxes, size, mode)
    torch.testing.assert_close(out, expected, rtol=0, atol=0 if mode == "nearest" else 1e-5)
    assert out.is_contiguous(), out.stride()

    cl = features.contiguous(memory_format=torch.channels_last)
    out_cl = ops.crop_resize(cl, boxes, size, mode, backend=backend)
    assert out_cl.is_contiguous(memory_format=torch.channels_last), out_cl.stride()
    assert torch.equal(out_cl, out)

    wide = feature_maps(n, 2 * c, h + 3, 2 * w, device=device, seed=9)
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


# --- torch.library integration ------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_kernel(device)
    features, boxes = grad_inputs(device, dtype=torch.float32)
    cl = features.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    for bilinear in (False, True):
        torch.library.opcheck(torch.ops.walnet.crop_resize.default, (features, boxes, 3, 11, bilinear))
        torch.library.opcheck(torch.ops.walnet.crop_resize.default, (cl, boxes, 9, 4, bilinear))
        grad = torch.randn(4, 1, 3, 11, device=device, requires_grad=True)
        torch.library.opcheck(torch.ops.walnet.crop_resize_backward.default, (grad, boxes, 5, 7, bilinear))
    torch.library.opcheck(torch.ops.walnet.crop_resize.default, (features.detach().half(), boxes, 5, 7, False))
    grad_cl = torch.randn(4, 3, 6, 2, device=device).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.walnet.crop_resize_backward.default, (grad_cl, boxes, 5, 7, True))


def test_torch_compile_fullgraph():
    """mask_boxes feeding crop_resize compiles to one graph with the eager values and gradient."""
    require_kernel("cpu")
    prob = fg_probs(28, 28, seed=3).float()
    features = feature_maps(len(prob), 4, 14, 14, seed=6)

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


# --- bad input ----------------------------------------------------------------------------


def _bad_cases():
    f = feature_maps(2, 3, 8, 10)
    b = torch.tensor([[0, 0, 7, 9], [2, 3, 5, 6]], dtype=torch.int32)
    return [
        BadInput("y2 out of range", (f, torch.tensor([[0, 0, 8, 9], [2, 3, 5, 6]])), ValueError, "boxes"),
        BadInput("x2 out of range", (f, torch.tensor([[0, 0, 7, 10], [2, 3, 5, 6]])), ValueError, "boxes"),
        BadInput("negative y1", (f, torch.tensor([[0, 0, 7, 9], [-1, 3, 5, 6]])), ValueError, "boxes"),
        BadInput("negative x1", (f, torch.tensor([[0, -2, 7, 9], [2, 3, 5, 6]])), ValueError, "boxes"),
        BadInput("y1 > y2", (f, torch.tensor([[0, 0, 7, 9], [5, 3, 2, 6]])), ValueError, "boxes"),
        BadInput("x1 > x2", (f, torch.tensor([[0, 7, 7, 6], [2, 3, 5, 6]])), ValueError, "boxes"),
        BadInput("float boxes", (f, b.float()), TypeError, "boxes"),
        BadInput("bool boxes", (f, b > 2), TypeError, "boxes"),
        BadInput("boxes not a tensor", (f, b.tolist()), TypeError, "boxes"),
        BadInput("boxes [N,3]", (f, b[:, :3]), ValueError, "boxes"),
        BadInput("boxes [4]", (f, b[0]), ValueError, "boxes"),
        BadInput("boxes batch", (f, b[:1]), ValueError, "boxes"),
        BadInput("boxes device", (f, b.to("meta")), ValueError, "boxes"),
        BadInput("features device", (f.to("meta"), b), ValueError, "features"),
        BadInput("integer features", ((f * 10).long(), b), TypeError, "features"),
        BadInput("3-D features", (f[0], b), ValueError, "features"),
        BadInput("5-D features", (f[None], b), ValueError, "features"),
        BadInput("empty batch", (f[:0], b[:0]), ValueError, "features"),
        BadInput("features not a tensor", (f.numpy(), b), TypeError, "features"),
        BadInput("size int", (f, b, 5), TypeError, "size"),
        BadInput("size triple", (f, b, (5, 5, 5)), TypeError, "size"),
        BadInput("size float", (f, b, (5.0, 5)), TypeError, "size"),
        BadInput("size zero", (f, b, (0, 5)), ValueError, "size"),
        BadInput("size negative", (f, b, (4, -1)), ValueError, "size"),
        BadInput("bad mode", (f, b, (4, 4), "bicubic"), ValueError, "mode"),
        BadInput("bad backend", (f, b), ValueError, "backend", kwargs={"backend": "cuda"}),
    ]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", bad_input.params(_bad_cases()))
def test_bad_input_crop_resize(case, backend):
    case.check(ops.crop_resize, backend=backend)


def test_direct_op_call_checks_boxes():
    """torch.ops.walnet.crop_resize called without the wrapper must still refuse bad shapes
    (out-of-range box values are only checked by the wrapper)."""
    require_kernel("cpu")
    f = feature_maps(2, 3, 8, 10)
    b = torch.tensor([[0, 0, 7, 9], [2, 3, 5, 6]], dtype=torch.int32)
    with pytest.raises(RuntimeError):
        torch.ops.walnet.crop_resize(f, b[:, :3], 4, 4, False)
    with pytest.raises(RuntimeError):
        torch.ops.walnet.crop_resize(f, b[:1], 4, 4, False)
    with pytest.raises(RuntimeError):
        torch.ops.walnet.crop_resize(f, b, 0, 4, False)


# --- CUDA == CPU --------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_equals_cpu():
    require_kernel("cuda")
    require_kernel("cpu")
    for c, h, w, size in CROP_CONFIGS:
        boxes = edge_case_boxes(h, w, seed=2)
        f = feature_maps(len(boxes), c, h, w, seed=3)
        assert torch.equal(ops.crop_resize(f, boxes, size), ops.crop_resize(f.cuda(), boxes.cuda(), size).cpu())
        torch.testing.assert_close(
            ops.crop_resize(f, boxes, size, "bilinear"),
            ops.crop_resize(f.cuda(), boxes.cuda(), size, "bilinear").cpu(),
            rtol=0,
            atol=1e-5 * f.abs().max().item(),
        )
        # small-integer gradients: exact sums, so the backward must agree bitwise too
        grad = torch.randint(-4, 5, (len(boxes), c, *size), generator=gen(4)).float()
        g_cpu = crop_resize_grad(f, boxes, size, "nearest", grad, "auto")
        g_gpu = crop_resize_grad(f.cuda(), boxes.cuda(), size, "nearest", grad.cuda(), "auto")
        assert torch.equal(g_cpu, g_gpu.cpu())
