"""The public API of walnet.ops: each op exported, documented, and the ROI method names in order."""
from __future__ import annotations

from walnet import ops


def test_rcm_public_api():
    for name in ("mask_boxes", "crop_resize", "roi_crop", "ROI_METHODS"):
        assert name in ops.__all__
    for fn in (ops.mask_boxes, ops.crop_resize, ops.roi_crop):
        assert fn.__doc__
    assert tuple(ops.ROI_METHODS) == ("rwm", "bg_rm", "bg_rm_crop", "crop", "dilated_crop")
