"""Public RCM ops (docs/design.md §5): boxes from the predicted mask, batched crop-resize, ROI methods.

The authors loop over the batch in Python and find each box with a host sync; these ops take the
whole batch at once and never read data back to the host on the kernel path (apart from the
optional value checks, see walnet.ops.set_value_checks). The ops' fake kernels and the autograd
formula of crop_resize are registered here.
"""
from __future__ import annotations

import torch

from walnet.ops import _checks, _library, reference
from walnet.ops._dispatch import use_kernel
from walnet.ops.reference import ROI_METHODS

__all__ = ["mask_boxes", "crop_resize", "roi_crop", "ROI_METHODS"]

MODES = ("nearest", "bilinear")


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
    H, W = _checks.check_size(size)
    threshold = _checks.check_real(threshold, "threshold")
    dilation = _checks.check_real(dilation, "dilation", min_value=0)
    _checks.check_values({"fg_prob": prob})
    if use_kernel("mask_boxes", prob.device, backend):
        return torch.ops.walnet.mask_boxes(prob, H, W, threshold, dilation)
    return reference.mask_boxes(prob, (H, W), threshold, dilation)


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
    features = _checks.as_features(features)
    boxes = _checks.as_boxes(boxes, features)
    out_h, out_w = features.shape[-2:] if size is None else _checks.check_size(size)
    _checks.check_choice(mode, "mode", MODES)
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
    names = ["features"] if single else [f"features[{i}]" for i in range(len(levels))]
    for f, name in zip(levels, names):
        _checks.as_features(f, name)
    _checks.as_seg_logits(seg_logits, levels, names)
    _checks.check_choice(method, "method", ROI_METHODS)
    threshold = _checks.check_real(threshold, "threshold")
    dilation = _checks.check_real(dilation, "dilation", min_value=0)
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


if _library.LOADED:

    @torch.library.register_fake("walnet::mask_boxes")
    def _mask_boxes_fake(prob, height, width, threshold, dilation):
        return prob.new_empty((prob.shape[0], 4), dtype=torch.int32)

    def _crop_like(features, height, width):
        out = features.new_empty((features.shape[0], features.shape[1], height, width))
        return out.contiguous(memory_format=torch._prims_common.suggest_memory_format(features))

    @torch.library.register_fake("walnet::crop_resize")
    def _crop_resize_fake(features, boxes, out_height, out_width, bilinear):
        return _crop_like(features, out_height, out_width)

    @torch.library.register_fake("walnet::crop_resize_backward")
    def _crop_resize_backward_fake(grad, boxes, in_height, in_width, bilinear):
        return _crop_like(grad, in_height, in_width)

    # crop_resize is linear in the features: its backward is crop_resize_backward and vice versa
    # (which also makes double backward work). Boxes are integers: no gradient.
    def _crop_setup(ctx, inputs, output):
        features, boxes, _, _, bilinear = inputs
        ctx.save_for_backward(boxes)
        ctx.in_size = tuple(features.shape[-2:])
        ctx.bilinear = bilinear

    def _crop_backward(ctx, grad):
        (boxes,) = ctx.saved_tensors
        grad_in = torch.ops.walnet.crop_resize_backward(grad, boxes, *ctx.in_size, ctx.bilinear)
        return grad_in, None, None, None, None

    def _crop_backward_setup(ctx, inputs, output):
        grad, boxes, _, _, bilinear = inputs
        ctx.save_for_backward(boxes)
        ctx.out_size = tuple(grad.shape[-2:])
        ctx.bilinear = bilinear

    def _crop_backward_backward(ctx, gg):
        (boxes,) = ctx.saved_tensors
        return torch.ops.walnet.crop_resize(gg, boxes, *ctx.out_size, ctx.bilinear), None, None, None, None

    torch.library.register_autograd("walnet::crop_resize", _crop_backward, setup_context=_crop_setup)
    torch.library.register_autograd(
        "walnet::crop_resize_backward", _crop_backward_backward, setup_context=_crop_backward_setup
    )
