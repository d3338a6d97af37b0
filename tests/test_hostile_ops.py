"""The ops under hostile input: values range-checked before they are narrowed to the kernels'
types (Felzenszwalb's min_size and sigma, mask_boxes' dilation and size), and a defined result,
never an out-of-bounds access, where bad labels or boxes reach the kernels with the value checks
off (sync-free CUDA training runs so): an invalid label is ignored (NaN mean, pseudo-mask 255),
a box is clamped into the map (also each level's box of crop_levels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from walnet import ops
from walnet.ops import reference
from walnet.ops.felzenszwalb import MAX_SIGMA

from conftest import DEVICES, require_kernel
from felzenszwalb_oracle import skimage_labels

# --- Felzenszwalb --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"algorithm": "sequential"}, {"algorithm": "reservations"},
                                    {"backend": "reference"}])
def test_felzenszwalb_huge_min_size_is_not_wrapped(kwargs):
    """min_size beyond int32 merges everything, as in skimage (2**32 + 5 wrapped to 5 gave 119
    segments)."""
    require_kernel("cpu")
    image = np.random.default_rng(0).random((12, 14, 3))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    for min_size in (2**32 + 5, 2**31, 2**63 - 1, 10**30):
        labels = ops.felzenszwalb(x, 1.0, 0.0, min_size, **kwargs)
        assert int(labels.max()) == 0, (min_size, int(labels.max()) + 1)
    assert np.array_equal(skimage_labels(image, 1.0, 0.0, 2**32 + 5), np.zeros((12, 14)))


def test_felzenszwalb_raw_op_clamps_min_size():
    require_kernel("cpu")
    x = torch.rand(1, 3, 9, 11, dtype=torch.float64)
    for algorithm in ("sequential", "reservations", "block"):
        labels, _ = torch.ops.walnet.felzenszwalb(x, [], 1 / 255, 2**40, algorithm, 64, True, True, True)
        assert int(labels.max()) == 0


def test_felzenszwalb_sigma_upper_bound():
    x = torch.rand(1, 3, 9, 11, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma must be at most"):
        ops.felzenszwalb(x, 1.0, 1e300)
    with pytest.raises(ValueError, match="sigma must be at most"):
        ops.felzenszwalb(x, 1.0, MAX_SIGMA * 2)


# --- mask_boxes ----------------------------------------------------------------------------------


def _prob(n=3, h=10, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    prob = torch.rand(n, h, w, generator=g) * 0.4
    prob[0, 3:6, 4:9] = 0.9
    prob[1, 0, 11] = 0.7
    return prob  # sample 2: no foreground


@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("dilation", [1e300, 1e10, 50.0])
def test_mask_boxes_huge_dilation_spans_the_map(backend, dilation):
    """A dilation far beyond the map gives the full map (it gave (0, 0, 0, 0) when the dilated
    coordinates overflowed int64 before clamping)."""
    if backend == "kernel":
        require_kernel("cpu")
    boxes = ops.mask_boxes(_prob(), (14, 9), dilation=dilation, backend=backend)
    assert boxes.tolist() == [[0, 0, 13, 8]] * 3


def test_mask_boxes_raw_op_dilation():
    require_kernel("cpu")
    prob = _prob()
    assert torch.ops.walnet.mask_boxes(prob, 14, 9, 0.5, float("inf")).tolist() == [[0, 0, 13, 8]] * 3
    with pytest.raises(RuntimeError, match="dilation must be >= 0"):
        torch.ops.walnet.mask_boxes(prob, 14, 9, 0.5, float("nan"))
    with pytest.raises(RuntimeError, match="below 2\\^31"):
        torch.ops.walnet.mask_boxes(prob, 2**31, 9, 0.5, 0.0)


def _first_target(src: int, h: int, H: int) -> int:
    """First target index whose nearest source index (PyTorch's legacy nearest: floor(dst *
    float32(h / H)), clamped; identity and exact doubling special-cased) is >= src: a binary
    search written here from that definition, in numpy float32."""
    def nearest(dst):
        if h == H:
            return dst
        if H == 2 * h:
            return dst // 2
        return min(int(np.floor(np.float32(dst) * (np.float32(h) / np.float32(H)))), h - 1)

    lo, hi = 0, H
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if nearest(mid) < src else (lo, mid)
    return lo


def test_mask_boxes_huge_target_size():
    """The box of a huge target size is found on the source map (the kernel looped over the
    2^31 x 2^31 target): rows from the first target row reading the first foreground source row
    to the last one reading the last."""
    require_kernel("cpu")
    prob = _prob()
    big = 2**31 - 1
    boxes = ops.mask_boxes(prob, (big, big - 6), dilation=0.0, backend="kernel")
    h, w = prob.shape[1:]
    want = [
        [_first_target(3, h, big), _first_target(4, w, big - 6), _first_target(6, h, big) - 1,
         _first_target(9, w, big - 6) - 1],
        [0, _first_target(11, w, big - 6), _first_target(1, h, big) - 1, big - 7],
        [0, 0, big - 1, big - 7],
    ]
    assert boxes.tolist() == want
    with pytest.raises(ValueError, match="at most 2147483647"):
        ops.mask_boxes(prob, (2**31, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_mask_boxes_shrinking_skips_unread_rows(device):
    """A foreground pixel in a source row or column that the shrinking resize never reads does not
    count (the brute-force definition), also against the reference."""
    require_kernel(device)
    prob = torch.zeros(2, 9, 9, device=device)
    prob[0, 1, 1] = 1.0  # 9 -> 4: rows/columns read are 0, 2, 4, 6; row 1 is skipped
    prob[1, 4, 6] = 1.0
    for size in ((4, 4), (3, 5), (9, 9), (20, 7)):
        got = ops.mask_boxes(prob, size, dilation=0.0, backend="kernel")
        assert torch.equal(got, reference.mask_boxes(prob, size, 0.5, 0.0))
    assert ops.mask_boxes(prob, (4, 4), dilation=0.0).tolist()[0] == [0, 0, 3, 3]  # no foreground: full map


# --- bad labels and boxes with the value checks off ---------------------------------------------


def _corrupt_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels with invalid ids (negative, = H*W, huge) at a few pixels, and the mask of them."""
    bad = labels.clone().long()
    n, h, w = bad.shape
    invalid = torch.zeros_like(bad, dtype=torch.bool)
    for (i, y, x), value in zip([(0, 0, 0), (0, 3, 5), (1, 7, 2), (1, 0, 9)], [-1, h * w, 2**40, -(2**62)]):
        bad[i, y, x] = value
        invalid[i, y, x] = True
    return bad, invalid


def _singletons(labels: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """The corrupted labels with each invalid pixel given an id of its own: the valid segments
    are the same as the kernel sees them."""
    fixed = labels.clone()
    n, h, w = fixed.shape
    for i in range(n):
        unused = sorted(set(range(h * w)) - set(fixed[i][~invalid[i]].tolist()))
        pixels = invalid[i].nonzero().tolist()
        for (y, x), label in zip(pixels, unused):
            fixed[i, y, x] = label
    return fixed


@pytest.mark.parametrize("device", DEVICES)
def test_invalid_labels_are_ignored_without_value_checks(device):
    require_kernel(device)
    g = torch.Generator().manual_seed(1)
    a1, a2, a3 = torch.rand(2, 8, 10, generator=g), torch.rand(2, 4, 5, generator=g), torch.rand(2, 2, 3, generator=g)
    labels = torch.randint(0, 6, (2, 8, 10), generator=g)
    bad, invalid = _corrupt_labels(labels)
    fixed = _singletons(bad, invalid)
    with pytest.raises(ValueError, match="labels must lie in"):
        ops.pseudo_mask(a1, a2, a3, bad)
    with ops.value_checks(False):
        on = [t.to(device) for t in (a1, a2, a3, bad)]
        mean = ops.superpixel_mean(on[0], on[3], backend="kernel").cpu()
        mask = ops.pseudo_mask(*on, backend="kernel").cpu()
    want_mean = reference.superpixel_mean(a1, fixed)
    want_mask = reference.pseudo_mask(a1, a2, a3, fixed)
    assert torch.isnan(mean[invalid]).all() and (mask[invalid] == 255).all()
    assert torch.equal(mean[~invalid], want_mean[~invalid])
    assert torch.equal(mask[~invalid], want_mask[~invalid])


def _clamped(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The boxes clamped into an H x W map: corners into the map, the far corner not before the
    near one."""
    y1 = boxes[:, 0].clamp(0, H - 1)
    x1 = boxes[:, 1].clamp(0, W - 1)
    y2 = torch.maximum(boxes[:, 2].clamp(max=H - 1), y1)
    x2 = torch.maximum(boxes[:, 3].clamp(max=W - 1), x1)
    return torch.stack([y1, x1, y2, x2], 1).to(torch.int32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_bad_boxes_are_clamped_without_value_checks(device, mode):
    require_kernel(device)
    g = torch.Generator().manual_seed(2)
    features = torch.randn(4, 3, 9, 11, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[-5, -5, 100, 100], [7, 3, 2, 1], [2**30, 4, 2**31 - 1, 5], [-(2**31), 0, -3, 10]],
                         dtype=torch.int32)
    with pytest.raises(ValueError, match="is not a box"):
        ops.crop_resize(features, boxes, (6, 7), mode)
    want = reference.crop_resize(features, _clamped(boxes, 9, 11), (6, 7), mode)
    f = features.to(device).requires_grad_()
    with ops.value_checks(False):
        out = ops.crop_resize(f, boxes.to(device), (6, 7), mode, backend="kernel")
    assert torch.equal(out.detach().cpu(), want)
    # the backward of the bad boxes is the kernel's backward of the clamped boxes, bit for bit (the
    # reference's autograd sums in another order: equal within rounding)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (got_grad,) = torch.autograd.grad(out, f, grad.to(device))
    clamped = _clamped(boxes, 9, 11).to(device)
    assert torch.equal(got_grad, torch.ops.walnet.crop_resize_backward(grad.to(device), clamped, 9, 11,
                                                                       mode == "bilinear"))
    ref_f = features.clone().requires_grad_()
    (want_grad,) = torch.autograd.grad(reference.crop_resize(ref_f, _clamped(boxes, 9, 11), (6, 7), mode), ref_f,
                                       grad)
    torch.testing.assert_close(got_grad.cpu(), want_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_level_boxes_are_clamped_without_value_checks(device):
    """crop_levels and its backward clamp every level's boxes into that level's map, as crop_resize
    does: the result of the clamped boxes, bit for bit."""
    require_kernel(device)
    g = torch.Generator().manual_seed(3)
    features = [torch.randn(4, 3, 9, 11, generator=g, dtype=torch.float64),
                torch.randn(4, 2, 5, 4, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)]
    level0 = [[-5, -5, 100, 100], [7, 3, 2, 1], [2**30, 4, 2**31 - 1, 5], [-(2**31), 0, -3, 10]]
    level1 = [[0, 0, 4, 3], [-1, 2, 2, 9], [4, 3, 4, 3], [3, -7, 1, -2]]
    boxes = torch.tensor([[a, b] for a, b in zip(level0, level1)], dtype=torch.int32)
    with pytest.raises(ValueError, match="is not a box"):
        ops.crop_levels(features, boxes)
    clamped = torch.stack([_clamped(boxes[:, level], *f.shape[-2:]) for level, f in enumerate(features)], dim=1)
    leaves = [f.to(device).requires_grad_() for f in features]
    with ops.value_checks(False), ops.preview_kernels(True):
        out = ops.crop_levels(leaves, boxes.to(device), backend="kernel")
    for o, w in zip(out, reference.crop_levels(features, clamped)):
        assert torch.equal(o.detach().cpu(), w)
    grads = [torch.randn(f.shape, generator=g, dtype=torch.float64).to(device) for f in features]
    got = torch.autograd.grad(out, leaves, grads)
    want = torch.ops.walnet.crop_levels_backward(grads, clamped.to(device))
    for level, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b)
        h, w = features[level].shape[-2:]
        level_boxes = clamped[:, level].contiguous().to(device)
        assert torch.equal(a, torch.ops.walnet.crop_resize_backward(grads[level], level_boxes, h, w, False))
