"""The public API of walnet.ops: each op exported, documented, and the ROI method names in order."""
from __future__ import annotations

import walnet
from walnet import ops


def test_public_api():
    assert walnet.built_backends is ops.built_backends
    for name in ("fuse_attention", "superpixel_mean", "pseudo_mask", "built_backends", "reference"):
        assert name in ops.__all__
        assert getattr(ops, name).__doc__


def test_rcm_public_api():
    for name in ("mask_boxes", "crop_resize", "roi_crop", "ROI_METHODS"):
        assert name in ops.__all__
    for fn in (ops.mask_boxes, ops.crop_resize, ops.roi_crop):
        assert fn.__doc__
    assert tuple(ops.ROI_METHODS) == ("rwm", "bg_rm", "bg_rm_crop", "crop", "dilated_crop")
