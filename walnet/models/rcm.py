"""The RCM, the ROI Cropping Module (paper §3.2; docs/design.md §5), as a module: one of the
paper's ROI methods with its threshold and dilation, applied to the encoder's feature levels
(:func:`walnet.ops.roi_crop`), and the boxes it crops (:func:`walnet.ops.mask_boxes`)."""
from __future__ import annotations

import torch
from torch import nn

from walnet import ops
from walnet.constants import RCM_DILATION, RCM_THRESHOLD
from walnet.ops.reference import crop_dilation


class RCM(nn.Module):
    """``forward(levels, seg_logits)`` applies ROI method `method` to the feature maps `levels`
    given the segmentation logits (``p = softmax(seg_logits)[:, 1]``, foreground ``p >=
    threshold``); :meth:`boxes` are the boxes it crops. No parameters.

    Args:
        method: one of ``walnet.ops.ROI_METHODS`` (the paper's default "dilated_crop").
        threshold: foreground threshold (paper: 0.5).
        dilation: the dilated box grows by ``W * dilation`` (paper: 1/7).
        backend: op backend ("auto", "kernel", "reference").
    """

    def __init__(self, method: str = "dilated_crop", threshold: float = RCM_THRESHOLD,
                 dilation: float = RCM_DILATION, backend: str = "auto"):
        super().__init__()
        if method not in ops.ROI_METHODS:
            raise ValueError(f"roi_method must be one of {ops.ROI_METHODS}, got {method!r}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.method, self.threshold, self.dilation, self.backend = method, threshold, dilation, backend

    def forward(self, levels: list[torch.Tensor], seg_logits: torch.Tensor) -> list[torch.Tensor]:
        return ops.roi_crop(levels, seg_logits, self.method, self.threshold, self.dilation, backend=self.backend)

    def boxes(self, seg_logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor | None:
        """The boxes this RCM crops (int32 [N,4], (y1, x1, y2, x2), inclusive) from a feature map
        of `size` (default: the segmentation's grid), as :meth:`forward` finds them; None for
        the methods that crop nothing ("rwm", "bg_rm")."""
        dilation = crop_dilation(self.method, self.dilation)
        if dilation is None:
            return None
        prob = torch.softmax(seg_logits.float(), dim=1)[:, 1]
        size = tuple(seg_logits.shape[-2:]) if size is None else size
        return ops.mask_boxes(prob, size, self.threshold, dilation, backend=self.backend)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, threshold={self.threshold}, dilation={self.dilation:.4g}"
