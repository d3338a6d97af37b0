"""roi_crop: the five ROI methods over a list of encoder levels, kernel vs the reference spec and
an independent per-sample loop, on the one-pass ops (the CPU; CUDA with preview kernels) and the
per-level ops (CUDA by default); which ops run; thresholds, dilations, dtypes and layouts;
torch.compile; gradients; bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from walnet import ops
from walnet.ops import reference

import bad_input
from bad_input import BadInput
from conftest import HAS_CUDA, require_kernel
from rcm_inputs import gen, level_features, segmentation_logits

_NO_GPU = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
#: (device, preview kernels): the CPU runs the one-pass ops (roi_boxes, crop_levels) whatever the
#: preview setting; CUDA runs them only with preview kernels on, else mask_boxes and crop_resize
#: per level.
PATHS = [
    pytest.param("cpu", False, id="cpu"),
    pytest.param("cuda", False, id="cuda-per-level", marks=_NO_GPU),
    pytest.param("cuda", True, id="cuda-one-pass", marks=_NO_GPU),
]


class WalnetOps(TorchDispatchMode):
    """Records the walnet operators that run inside the block (below autograd), by name."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name.startswith("walnet::"):
            self.names.append(func._schema.name.removeprefix("walnet::"))
        return func(*args, **(kwargs or {}))


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


@pytest.mark.parametrize("device, preview", PATHS)
@pytest.mark.parametrize("method", list(ops.ROI_METHODS))
def test_roi_crop_equals_reference(device, preview, method):
    require_kernel(device)
    n = 6
    seg = segmentation_logits(n, device=device, seed=1)
    levels = level_features(n, device=device, seed=3)
    with ops.preview_kernels(preview), WalnetOps() as log:
        out = ops.roi_crop(levels, seg, method, backend="kernel")
    if method in ("rwm", "bg_rm"):
        assert log.names == []
    elif device == "cpu" or preview:
        assert log.names == ["roi_boxes", "crop_levels"]  # one op each for all four levels
    else:
        assert log.names == ["mask_boxes", "crop_resize"] * 4
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
        with ops.preview_kernels(preview):
            single = ops.roi_crop(f, seg, method, backend="kernel")
        assert isinstance(single, torch.Tensor) and torch.equal(single, out[i])
    # the small blob (sample 3) vanishes at the coarsest level: unchanged there except for rwm
    if method != "rwm":
        assert torch.equal(out[3][3], levels[3][3])
        assert not torch.equal(out[0][3], levels[0][3])


@pytest.mark.parametrize("device, preview", PATHS)
def test_roi_crop_options(device, preview):
    """threshold, dilation, dtype, layout and seg_logits resolution reach the kernel path."""
    require_kernel(device)
    with ops.preview_kernels(preview):
        _roi_crop_options(device)


def _roi_crop_options(device):
    n = 4
    seg = segmentation_logits(n, 28, 28, device=device, seed=2)
    levels = level_features(n, [(3, 56, 56), (4, 28, 28), (5, 14, 14), (6, 7, 7)], device=device, seed=4)
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
    mixed = [cl[0], levels[1], cl[2], levels[3]]
    for method in ("crop", "bg_rm_crop", "dilated_crop"):
        out = ops.roi_crop(mixed, seg, method, backend="kernel")
        assert [o.is_contiguous(memory_format=torch.channels_last) for o in out] == [True, False, True, False]
        for o, e in zip(out, reference.roi_crop(levels, seg, method)):
            assert torch.equal(o, e)


@pytest.mark.parametrize("device, preview", PATHS)
def test_roi_crop_levels_the_one_pass_ops_do_not_take(device, preview):
    """More than MAX_LEVELS levels, or levels of different dtypes: the per-level ops, still the
    reference's result."""
    require_kernel(device)
    n = 3
    seg = segmentation_logits(n, 28, 28, device=device, seed=7)
    many = level_features(n, [(2, 14 + i, 9 + 2 * i) for i in range(ops.MAX_LEVELS + 1)], device=device, seed=8)
    mixed = level_features(n, [(3, 28, 28), (4, 14, 14)], device=device, seed=9)
    mixed[1] = mixed[1].double()
    for levels in (many, mixed):
        with ops.preview_kernels(preview), WalnetOps() as log:
            out = ops.roi_crop(levels, seg, "dilated_crop", backend="kernel")
        assert log.names == ["mask_boxes", "crop_resize"] * len(levels)
        for o, e in zip(out, reference.roi_crop(levels, seg, "dilated_crop")):
            assert o.dtype == e.dtype and torch.equal(o, e)
    with ops.preview_kernels(preview), WalnetOps() as log:
        ops.roi_crop(many[: ops.MAX_LEVELS], seg, "crop", backend="kernel")
    assert log.names == (["roi_boxes", "crop_levels"] if device == "cpu" or preview else
                         ["mask_boxes", "crop_resize"] * ops.MAX_LEVELS)


def test_roi_crop_torch_compile_fullgraph():
    """The one-pass kernel path compiles to one graph with the eager values and gradients."""
    require_kernel("cpu")
    n = 4
    seg = segmentation_logits(n, 28, 28, seed=11)
    levels = level_features(n, [(3, 56, 56), (4, 28, 28), (5, 14, 14), (6, 7, 7)], seed=12)

    def rcm(seg, *levels):
        return ops.roi_crop(list(levels), seg, "dilated_crop")

    compiled = torch.compile(rcm, fullgraph=True)
    results = []
    for fn in (compiled, rcm):
        leaves = [f.clone().requires_grad_() for f in levels]
        out = fn(seg, *leaves)
        grads = torch.autograd.grad(sum((o * torch.arange(o.shape[-1])).sum() for o in out), leaves)
        results.append((out, grads))
    (c_out, c_grads), (e_out, e_grads) = results
    for a, b in zip(c_out + list(c_grads), e_out + list(e_grads)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device, preview", PATHS)
@pytest.mark.parametrize("method", list(ops.ROI_METHODS))
def test_roi_crop_gradients(device, preview, method):
    """rwm's gradient reaches seg_logits; the mask and the boxes are not differentiable, so the
    other methods give seg_logits no gradient; every method passes gradient to the features."""
    require_kernel(device)
    n = 4
    seg0 = segmentation_logits(n, device=device, seed=5).double()
    levels0 = level_features(n, [(3, 56, 56), (4, 28, 28), (5, 14, 14), (6, 7, 7)], dtype=torch.float64,
                              device=device, seed=6)
    grads = {}
    for backend in ("kernel", "reference"):
        seg = seg0.clone().requires_grad_()
        levels = [f.clone().requires_grad_() for f in levels0]
        with ops.preview_kernels(preview):
            out = ops.roi_crop(levels, seg, method, backend=backend)
        # small-integer weights keep every gradient sum exact whatever the summation order
        loss = sum((o * torch.randint(-3, 4, o.shape, generator=gen(i)).to(o)).sum() for i, o in enumerate(out))
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


def _bad_cases():
    levels = level_features(2, [(3, 16, 16), (4, 8, 8)])
    seg = segmentation_logits(2, 16, 16)
    nan = seg.clone()
    nan[1, 1, 2, 2] = float("nan")
    return [
        BadInput("bad method", (levels, seg, "dilated"), ValueError, "method"),
        BadInput("seg_logits 3 channels", (levels, torch.cat([seg, seg[:, :1]], 1)), ValueError, "seg_logits"),
        BadInput("seg_logits 3-D", (levels, seg[:, 1]), ValueError, "seg_logits"),
        BadInput("seg_logits integer", (levels, seg.long()), TypeError, "seg_logits"),
        BadInput("seg_logits batch", (levels, seg[:1]), ValueError, "seg_logits"),
        BadInput("seg_logits device", (levels, seg.to("meta")), ValueError, "seg_logits"),
        BadInput("seg_logits nan", (levels, nan), ValueError, "seg_logits"),
        BadInput("list N mismatch", ([levels[0], levels[1][:1]], seg), ValueError, r"features\[1\]"),
        BadInput("integer level", ([levels[0], levels[1].long()], seg), TypeError, r"features\[1\]"),
        BadInput("3-D level", ([levels[0][0], levels[1]], seg), ValueError, r"features\[0\]"),
        BadInput("3-D tensor", (levels[0][0], seg), ValueError, "features"),
        BadInput("empty list", ([], seg), ValueError, "features"),
        BadInput("negative dilation", (levels, seg, "dilated_crop", 0.5, -0.5), ValueError, "dilation"),
        BadInput("nan threshold", (levels, seg, "crop", float("nan")), ValueError, "threshold"),
    ]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", bad_input.params(_bad_cases()))
def test_bad_input_roi_crop(case, backend):
    case.check(ops.roi_crop, backend=backend)


# --- CUDA == CPU --------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("preview", [False, True])
def test_cuda_equals_cpu(preview):
    require_kernel("cuda")
    require_kernel("cpu")
    seg = segmentation_logits(6, seed=3)
    levels = level_features(6, seed=4)
    for method in ops.ROI_METHODS:
        cpu = ops.roi_crop(levels, seg, method)
        with ops.preview_kernels(preview):
            gpu = ops.roi_crop([f.cuda() for f in levels], seg.cuda(), method)
        for c_, g_ in zip(cpu, gpu):
            if method == "rwm":  # softmax may differ by an ulp between devices
                torch.testing.assert_close(c_, g_.cpu(), rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(c_, g_.cpu())
