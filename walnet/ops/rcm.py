"""Public RCM ops (DESIGN.md §2): boxes from the predicted mask, batched crop-resize, ROI methods.

The authors loop over the batch in Python and find each box with a host sync; these ops take the
whole batch at once and never read data back to the host on the kernel path (apart from the
optional value checks, see walnet.ops.set_value_checks).
"""
from __future__ import annotations

import numbers

import torch

from walnet.ops import _checks, reference
from walnet.ops._dispatch import use_kernel
from walnet.ops.reference import ROI_METHODS

__all__ = ["mask_boxes", "crop_resize", "roi_crop", "ROI_METHODS"]

MODES = ("nearest", "bilinear")


def _check_size(size, name: str = "size") -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list, torch.Size))
        or len(size) != 2
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"{name} must be a pair of ints (H, W), got {size!r}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"{name} must be positive, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _check_dilation(dilation) -> float:
    dilation = _checks.check_real(dilation, "dilation")
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0, got {dilation}")
    return dilation


def _check_features(features, name: str = "features") -> torch.Tensor:
    _checks.check_tensor(features, name)
    if not features.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {features.dtype}")
    if features.dim() != 4:
        raise ValueError(f"{name} must have shape [N,C,H,W], got {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0)")
    if min(features.shape[1:]) == 0:
        raise ValueError(f"{name} must have non-empty C, H and W, got {tuple(features.shape)}")
    return features


def mask_boxes(
    fg_prob: torch.Tensor,
    size: tuple[int, int],
    threshold: float = 0.5,
    dilation: float = 1 / 7,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Dilated bounding boxes of the predicted foreground at a feature level's size.

    Args:
        fg_prob: foreground probability [N,h,w] or [N,1,h,w] (any floating dtype).
        size: (H, W) of the feature level the boxes are for.
        threshold: foreground is ``fg_prob >= threshold`` (paper: 0.5).
        dilation: the tight box grows by ``r = W * dilation`` on every side, with truncation and
            clamping (paper: 1/7); 0 gives the tight box.
        backend: "auto", "kernel" or "reference".

    Returns:
        int32 [N,4] boxes (y1, x1, y2, x2), inclusive; (0, 0, H-1, W-1) where there is no
        foreground.
    """
    prob = _checks.as_map(fg_prob, "fg_prob")
    H, W = _check_size(size)
    threshold = _checks.check_real(threshold, "threshold")
    dilation = _check_dilation(dilation)
    _checks.check_values({"fg_prob": prob})
    if use_kernel("mask_boxes", prob.device, backend):
        return torch.ops.walnet.mask_boxes(prob, H, W, threshold, dilation)
    return reference.mask_boxes(prob, (H, W), threshold, dilation)


def _check_boxes(boxes, features: torch.Tensor) -> torch.Tensor:
    _checks.check_tensor(boxes, "boxes")
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must be an integer tensor, got {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N,4] (y1, x1, y2, x2), got {tuple(boxes.shape)}")
    _checks.check_same_batch(boxes, "boxes", features, "features")
    _checks.check_same_device(boxes, "boxes", features, "features")
    if _checks.value_checks_enabled():
        H, W = features.shape[-2:]
        y1, x1, y2, x2 = boxes.long().unbind(1)
        bad = (y1 < 0) | (x1 < 0) | (y2 >= H) | (x2 >= W) | (y1 > y2) | (x1 > x2)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"boxes[{i}] = {boxes[i].tolist()} is not a box (y1, x1, y2, x2) with "
                f"0 <= y1 <= y2 < {H} and 0 <= x1 <= x2 < {W}"
            )
    return boxes.to(torch.int32)


def crop_resize(
    features: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int] | None = None,
    mode: str = "nearest",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Crops every sample's box and resizes it, in one batched, differentiable op.

    ``out[n] = F.interpolate(features[n:n+1, :, y1:y2+1, x1:x2+1], size, mode=mode)`` (bitwise
    for "nearest"; "bilinear" uses align_corners=False), for the whole batch at once.

    Args:
        features: [N,C,H,W] floating tensor (contiguous or channels_last).
        boxes: integer [N,4] (y1, x1, y2, x2), inclusive, inside the map, e.g. from
            :func:`mask_boxes`. No gradient flows to the boxes.
        size: output (H', W'); default the input size.
        mode: "nearest" (the RCM's) or "bilinear".
        backend: "auto", "kernel" or "reference".

    Returns:
        [N,C,H',W'] tensor of the features' dtype and memory format. The backward pass is a
        deterministic gather (no atomics).
    """
    features = _check_features(features)
    boxes = _check_boxes(boxes, features)
    out_h, out_w = features.shape[-2:] if size is None else _check_size(size)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if use_kernel("crop_resize", features.device, backend):
        return torch.ops.walnet.crop_resize(features, boxes, out_h, out_w, mode == "bilinear")
    return reference.crop_resize(features, boxes, (out_h, out_w), mode)


def roi_crop(
    features: torch.Tensor | list[torch.Tensor],
    seg_logits: torch.Tensor,
    method: str = "dilated_crop",
    threshold: float = 0.5,
    dilation: float = 1 / 7,
    *,
    backend: str = "auto",
) -> torch.Tensor | list[torch.Tensor]:
    """The ROI Cropping Module: applies one of the paper's Table 3 ROI methods to the features.

    Args:
        features: one [N,C,H,W] feature map or a list of them (e.g. all four encoder levels).
        seg_logits: segmentation logits [N,2,h,w]; ``p = softmax(seg_logits)[:, 1]``.
        method: "rwm" (features * p, soft: gradient reaches the decoder), "bg_rm" (features * m,
            m = p >= threshold), "bg_rm_crop" (bg_rm, then tight crop), "crop" (tight crop) or
            "dilated_crop" (the paper's default: crop dilated by W * dilation). Crops are
            nearest-resized back to each level's size.
        threshold, dilation: as in :func:`mask_boxes`.
        backend: "auto", "kernel" or "reference".

    Returns:
        The transformed map(s), same shapes as the input. A sample with no foreground at a level
        passes unchanged through every method but "rwm".
    """
    single = isinstance(features, torch.Tensor)
    levels = [features] if single else list(features)
    if not levels:
        raise ValueError("features must be a tensor or a non-empty list of tensors")
    for i, f in enumerate(levels):
        _check_features(f, "features" if single else f"features[{i}]")
    _checks.check_tensor(seg_logits, "seg_logits")
    if not seg_logits.is_floating_point():
        raise TypeError(f"seg_logits must be a floating-point tensor, got {seg_logits.dtype}")
    if seg_logits.dim() != 4 or seg_logits.shape[1] != 2:
        raise ValueError(f"seg_logits must have shape [N,2,h,w], got {tuple(seg_logits.shape)}")
    for i, f in enumerate(levels):
        name = "features" if single else f"features[{i}]"
        _checks.check_same_batch(seg_logits, "seg_logits", f, name)
        _checks.check_same_device(seg_logits, "seg_logits", f, name)
    if method not in ROI_METHODS:
        raise ValueError(f"method must be one of {ROI_METHODS}, got {method!r}")
    threshold = _checks.check_real(threshold, "threshold")
    dilation = _check_dilation(dilation)
    _checks.check_values({"seg_logits": seg_logits})
    device = seg_logits.device
    if not (use_kernel("mask_boxes", device, backend) and use_kernel("crop_resize", device, backend)):
        return reference.roi_crop(features, seg_logits, method, threshold, dilation)
    return reference.roi_crop(
        features,
        seg_logits,
        method,
        threshold,
        dilation,
        boxes_fn=lambda prob, size, t, d: torch.ops.walnet.mask_boxes(prob, size[0], size[1], t, d),
        crop_fn=lambda f, boxes: torch.ops.walnet.crop_resize(f, boxes, f.shape[2], f.shape[3], False),
    )
