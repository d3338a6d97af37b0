"""ops.value_checks: the context manager that turns the NaN/inf checks of the op wrappers off (for
sync-free CUDA steps) and restores the previous setting on the way out, exceptions included."""
from __future__ import annotations

import pytest
import torch

from walnet import ops

from pgm_inputs import small_inputs


def test_value_checks_context_restores_the_setting():
    a1, a2, a3, lab = small_inputs()
    a1 = a1.clone()
    a1[0, 3, 3] = float("nan")
    with ops.value_checks(False):
        assert (ops.pseudo_mask(a1, a2, a3, lab)[0] == 255).all()
        with pytest.raises(RuntimeError, match="inner"), ops.value_checks(True):
            with pytest.raises(ValueError, match="a1"):
                ops.pseudo_mask(a1, a2, a3, lab)
            raise RuntimeError("inner")  # leaving by an exception restores the setting too
        assert (ops.pseudo_mask(a1, a2, a3, lab)[0] == 255).all()
    with pytest.raises(ValueError, match="a1 contains NaN"):
        ops.pseudo_mask(a1, a2, a3, lab)


def test_meta_tensors_skip_the_value_checks():
    """Meta tensors have shapes and no values: the ops give their output shapes instead of
    failing to read data (as under torch.compile's fake tensors)."""
    a1, a2, a3, lab = (t.to("meta") for t in small_inputs())
    assert ops.pseudo_mask(a1, a2, a3, lab).shape == a1.shape
    assert ops.superpixel_mean(a1, lab).shape == a1.shape
    assert ops.fuse_attention(a1, a2, a3).device.type == "meta"
    assert ops.segment_counts(lab).shape == (a1.shape[0],)
    assert ops.felzenszwalb(torch.rand(2, 3, 8, 8, device="meta")).shape == (2, 8, 8)
    features = torch.rand(2, 3, 8, 8, device="meta")
    boxes = torch.zeros(2, 4, dtype=torch.int64, device="meta")
    assert ops.crop_resize(features, boxes, (4, 4)).shape == (2, 3, 4, 4)
    assert ops.roi_boxes(torch.rand(2, 8, 8, device="meta"), [(4, 4)]).shape == (2, 1, 4)
