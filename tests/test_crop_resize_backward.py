"""crop_resize's gradient (the crop_resize_backward op): gradcheck and gradgradcheck, equal to
the reference's and to the gradient of F.interpolate, exact for small-integer gradients, and
deterministic whatever the thread count."""
from __future__ import annotations

import pytest
import torch

from walnet import ops

from conftest import DEVICES, FLOAT_DTYPES, require_kernel
from rcm_inputs import crop_resize_grad, edge_case_boxes, feature_maps, gen, grad_inputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [(3, 11), (5, 7), (10, 2)], ids=str)
def test_crop_resize_gradcheck(device, mode, size):
    require_kernel(device)
    features, boxes = grad_inputs(device)
    assert torch.autograd.gradcheck(
        lambda f: ops.crop_resize(f, boxes, size, mode, backend="kernel"), (features,), fast_mode=False
    )


@pytest.mark.parametrize("device", DEVICES)
def test_crop_resize_gradgradcheck(device):
    require_kernel(device)
    features, boxes = grad_inputs(device)
    assert torch.autograd.gradgradcheck(
        lambda f: ops.crop_resize(f, boxes, (3, 11), "bilinear", backend="kernel"), (features,)
    )
    # the backward op is itself differentiable: its own gradcheck (w.r.t. the incoming grad)
    grad = torch.randn(4, 1, 3, 11, dtype=torch.float64, device=device, requires_grad=True)
    for bilinear in (False, True):
        assert torch.autograd.gradcheck(
            lambda g: torch.ops.walnet.crop_resize_backward(g, boxes, 5, 7, bilinear), (grad,)
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_crop_resize_backward_matches_reference(device, mode):
    require_kernel(device)
    c, h, w = 3, 17, 23
    boxes = edge_case_boxes(h, w, seed=8, device=device)
    for size in [(17, 23), (40, 31), (9, 5)]:
        features = feature_maps(len(boxes), c, h, w, dtype=torch.float64, device=device, seed=1)
        grad = torch.randn(len(boxes), c, *size, generator=gen(2), dtype=torch.float64).to(device)
        got = crop_resize_grad(features, boxes, size, mode, grad, "kernel")
        torch.testing.assert_close(got, crop_resize_grad(features, boxes, size, mode, grad, "reference"), rtol=0, atol=1e-12)
        torch.testing.assert_close(got, crop_resize_grad(features, boxes, size, mode, grad, "loop"), rtol=0, atol=1e-12)
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
    boxes = edge_case_boxes(h, w, seed=6, device=device)
    features = feature_maps(len(boxes), c, h, w, dtype=dtype, device=device)
    for size in [(28, 28), (14, 14), (5, 9)]:
        # values in {-1, 0, 1}: the partial sums (at most 28*28 terms, a random walk) stay far
        # below 256, where bfloat16 stops representing every integer
        grad = torch.randint(-1, 2, (len(boxes), c, *size), generator=gen(3)).to(dtype=dtype, device=device)
        got = crop_resize_grad(features, boxes, size, "nearest", grad, "kernel")
        assert got.dtype == dtype
        assert torch.equal(got, crop_resize_grad(features, boxes, size, "nearest", grad, "reference"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_crop_resize_backward_deterministic(device, mode):
    require_kernel(device)
    c, h, w = 16, 28, 28
    boxes = edge_case_boxes(h, w, n_random=18, seed=12, device=device)  # small crops upsampled: many-to-one
    features = feature_maps(len(boxes), c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(len(boxes), c, 56, 56, generator=gen(5)).to(device)
    grad = grad.contiguous(memory_format=torch.channels_last)  # as the channels_last output's grad
    runs = []
    threads = torch.get_num_threads()
    try:
        for nt in (threads, 1, threads):
            torch.set_num_threads(nt)
            runs.append(crop_resize_grad(features, boxes, (56, 56), mode, grad, "kernel"))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        assert torch.equal(runs[0], other)
    assert runs[0].is_contiguous(memory_format=torch.channels_last)
    # Against the float64 gradient: float32 accumulation errs by a few eps * sum|g| per input
    # pixel; bilinear weights are float32 numbers below max(H, W), each off by ~max(H, W) * eps.
    exact = crop_resize_grad(features.double(), boxes, (56, 56), mode, grad.double(), "reference")
    abs_sum = crop_resize_grad(features.double(), boxes, (56, 56), mode, grad.double().abs(), "reference")
    eps = torch.finfo(torch.float32).eps
    bound = (4 if mode == "nearest" else 4 + 2 * max(h, w)) * eps * abs_sum
    assert ((runs[0].double() - exact).abs() <= bound).all()
