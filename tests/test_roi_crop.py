"""roi_crop: the five ROI methods over a list of encoder levels, kernel vs the reference spec and
an independent per-sample loop; thresholds, dilations, dtypes and layouts; gradients; bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from walnet import ops
from walnet.ops import reference

import bad_input
from bad_input import BadInput
from conftest import DEVICES, HAS_CUDA, require_kernel
from rcm_inputs import gen, level_features, segmentation_logits


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
    seg = segmentation_logits(n, device=device, seed=1)
    levels = level_features(n, device=device, seed=3)
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(ops.ROI_METHODS))
def test_roi_crop_gradients(device, method):
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
def test_cuda_equals_cpu():
    require_kernel("cuda")
    require_kernel("cpu")
    seg = segmentation_logits(6, seed=3)
    levels = level_features(6, seed=4)
    for method in ops.ROI_METHODS:
        cpu = ops.roi_crop(levels, seg, method)
        gpu = ops.roi_crop([f.cuda() for f in levels], seg.cuda(), method)
        for c_, g_ in zip(cpu, gpu):
            if method == "rwm":  # softmax may differ by an ulp between devices
                torch.testing.assert_close(c_, g_.cpu(), rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(c_, g_.cpu())
