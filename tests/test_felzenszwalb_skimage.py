"""scikit-image's own felzenszwalb tests (skimage/segmentation/tests/test_felzenszwalb.py: grey,
color, minsize, merging, channel handling), run against walnet's op as a drop-in.

Each test makes skimage's assertions on walnet's output, called as a user would swap the call
(skimage's defaults, images converted as skimage converts them), and also checks that the labels
equal skimage's own, with both algorithms and on every device.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from walnet import ops

from conftest import DEVICES
from felzenszwalb_oracle import assert_labels_equal, require_op, skimage_labels
from felzenszwalb_variants import kernel_variants, variant_name


def _to_walnet(image: np.ndarray, device: str) -> torch.Tensor:
    """skimage's input convention -> walnet's [1,C,H,W] float64: uint8 scaled by 1/255
    (img_as_float), a 2-D image as one channel."""
    if image.ndim == 2:
        image = image[..., None]
    x = torch.from_numpy(np.ascontiguousarray(image))
    x = x.double() * (1.0 / 255) if image.dtype == np.uint8 else x.double()
    return x.permute(2, 0, 1)[None].contiguous().to(device)


def _run(image: np.ndarray, device: str, **params) -> list[np.ndarray]:
    """walnet's labels [H,W] of one skimage-style image, called with only the `params` given
    (so walnet's defaults stand in for skimage's), once per compiled algorithm of the device;
    each is checked equal to skimage's labels."""
    from skimage.segmentation import felzenszwalb

    defaults = {k: p.default for k, p in inspect.signature(felzenszwalb).parameters.items()}
    args = [params.get(k, defaults[k]) for k in ("scale", "sigma", "min_size")]
    want = skimage_labels(image, *args)
    # These images' tied edge weights do not depend on the tie rule: skimage as users call it
    # (numpy's own argsort) gives the same labels as the stable oracle.
    assert np.array_equal(skimage_labels(image, *args, tie_rule="numpy"), want)
    out = []
    for kwargs in kernel_variants(device):
        got = ops.felzenszwalb(_to_walnet(image, device), **params, **kwargs)
        assert_labels_equal(got, [want], ["image"], f"{variant_name(kwargs)} {params}")
        out.append(got[0].cpu().numpy())
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_grey(device):
    require_op(device)
    img = np.zeros((20, 21))
    img[:10, 10:] = 0.2
    img[10:, :10] = 0.4
    img[10:, 10:] = 0.6
    for seg in _run(img, device, sigma=0):
        # 4 segments that mostly respect the 4 regions
        assert len(np.unique(seg)) == 4
        for i in range(4):
            hist = np.histogram(img[seg == i], bins=[0, 0.1, 0.3, 0.5, 1])[0]
            assert hist[i] > 40


@pytest.mark.parametrize("device", DEVICES)
def test_color(device):
    require_op(device)
    img = np.zeros((20, 21, 3))
    img[:10, :10, 0] = 1
    img[10:, :10, 1] = 1
    img[10:, 10:, 2] = 1
    for seg in _run(img, device, sigma=0):
        assert len(np.unique(seg)) == 4
        assert (seg[:10, :10] == 0).all()
        assert (seg[10:, :10] == 2).all()
        assert (seg[:10, 10:] == 1).all()
        assert (seg[10:, 10:] == 3).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("image", ["coins", "coffee"])
def test_minsize(device, image):
    """Every segment has at least min_size pixels (single channel: coins; three: coffee)."""
    require_op(device)
    import skimage.data

    img = skimage.data.coins()[20:168, 0:128] if image == "coins" else skimage.data.coffee()[::4, ::4]
    for min_size in range(10, 100, 10):
        for seg in _run(img, device, min_size=min_size, sigma=3):
            counts = np.bincount(seg.ravel())
            assert counts.min() >= min_size


@pytest.mark.parametrize("device", DEVICES)
def test_merging(device):
    """scale=0: only the min_size pass merges."""
    require_op(device)
    img = np.array([[0, 0.3], [0.7, 1]])
    for seg in _run(img, device, scale=0, sigma=0, min_size=2):
        assert len(np.unique(seg)) == 2
        assert (seg[0, :] == 0).all()
        assert (seg[1, :] == 1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_channels(device):
    """Grey (one channel), RGB and many-channel images all segment (skimage warns for more than
    three channels but segments them); an image that is not [N,C,H,W] is an error."""
    require_op(device)
    rng = np.random.default_rng(3)
    for shape in ((10, 10), (10, 10, 3), (10, 10, 10)):
        _run(rng.random(shape), device)
    with pytest.raises(ValueError, match="images"):
        ops.felzenszwalb(torch.zeros(10, 10, 3, dtype=torch.float64, device=device))
