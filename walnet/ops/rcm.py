"""Public RCM ops (docs/design.md §5): boxes from the predicted mask, batched crop-resize, ROI methods.

The authors loop over the batch in Python and find each box with a host sync; these ops take the
whole batch at once and never read data back to the host on the kernel path (apart from the
optional value checks, see walnet.ops.set_value_checks). roi_boxes and crop_levels do every
feature level in one op (one launch on CUDA), and roi_crop's kernel path is composed of them; on
CUDA they are preview kernels (walnet.ops.PREVIEW["roi_crop"]), run only when preview kernels are
enabled, else the per-level ops run. The ops' fake kernels and autograd formulas are registered
here.
"""
from __future__ import annotations

import torch

from walnet.constants import RCM_DILATION, RCM_THRESHOLD
from walnet.ops import _checks, _library, reference
from walnet.ops._dispatch import use_kernel
from walnet.ops._preview import preview_kernels_enabled
from walnet.ops.reference import ROI_METHODS

__all__ = ["mask_boxes", "crop_resize", "roi_boxes", "crop_levels", "roi_crop", "ROI_METHODS", "MAX_LEVELS"]

MODES = ("nearest", "bilinear")
#: Levels per call of roi_boxes and crop_levels at most (kMaxLevels of csrc/common/checks.h).
MAX_LEVELS = 8


def mask_boxes(
    fg_prob: torch.Tensor,
    size: tuple[int, int],
    threshold: float = RCM_THRESHOLD,
    dilation: float = RCM_DILATION,
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


def roi_boxes(
    fg_prob: torch.Tensor,
    sizes: list[tuple[int, int]],
    threshold: float = RCM_THRESHOLD,
    dilation: float = RCM_DILATION,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`mask_boxes` for several feature levels at once (one launch on CUDA).

    Args:
        fg_prob: foreground probability [N,h,w] or [N,1,h,w] (any floating dtype).
        sizes: the (H, W) of every level, 1 to :data:`MAX_LEVELS` of them.
        threshold, dilation, backend: as in :func:`mask_boxes`.

    Returns:
        int32 [N,L,4] boxes whose ``[:, l]`` equals ``mask_boxes(fg_prob, sizes[l], threshold,
        dilation)`` bit for bit.
    """
    prob = _checks.as_map(fg_prob, "fg_prob")
    sizes = _checks.check_sizes(sizes, "sizes", MAX_LEVELS)
    threshold = _checks.check_real(threshold, "threshold")
    dilation = _checks.check_real(dilation, "dilation", min_value=0)
    _checks.check_values({"fg_prob": prob})
    if not use_kernel("roi_boxes", prob.device, backend):
        return reference.roi_boxes(prob, sizes, threshold, dilation)
    if _one_pass(prob.device):
        return _roi_boxes(prob, sizes, threshold, dilation)
    return torch.stack([torch.ops.walnet.mask_boxes(prob, h, w, threshold, dilation) for h, w in sizes], dim=1)


def crop_levels(
    features: list[torch.Tensor], boxes: torch.Tensor, *, backend: str = "auto"
) -> list[torch.Tensor]:
    """The RCM's crop of several feature levels at once (one launch on CUDA), differentiable.

    Args:
        features: 1 to :data:`MAX_LEVELS` floating [N,C_l,H_l,W_l] maps of one batch size, dtype
            and device, each contiguous or channels_last (or any strides).
        boxes: integer [N,L,4] (y1, x1, y2, x2), inclusive, ``[:, l]`` inside level l, e.g. from
            :func:`roi_boxes`. No gradient flows to the boxes.
        backend: "auto", "kernel" or "reference".

    Returns:
        One map per level, equal bit for bit to ``crop_resize(features[l], boxes[:, l])`` (the
        nearest crop resized back to the level's size), in the level's memory format. The
        backward pass is a deterministic gather (no atomics).
    """
    levels = _checks.as_levels(features, "features", MAX_LEVELS)
    boxes = _checks.as_level_boxes(boxes, levels)
    if not use_kernel("crop_levels", levels[0].device, backend):
        return reference.crop_levels(levels, boxes)
    if _one_pass(levels[0].device):
        return list(torch.ops.walnet.crop_levels(levels, boxes))
    return [torch.ops.walnet.crop_resize(f, boxes[:, i], f.shape[2], f.shape[3], False) for i, f in enumerate(levels)]


def _one_pass(device: torch.device) -> bool:
    """Whether the one-pass kernels (roi_boxes, crop_levels) run on `device`: always on the CPU;
    on CUDA, where they are preview kernels, only while preview kernels are enabled. A program
    being exported (torch.export) may run on either device later, so it holds them only while
    preview kernels are enabled."""
    if preview_kernels_enabled():
        return True
    return device.type != "cuda" and not torch.compiler.is_exporting()


def _roi_boxes(prob: torch.Tensor, sizes, threshold: float, dilation: float) -> torch.Tensor:
    return torch.ops.walnet.roi_boxes(prob, [h for h, _ in sizes], [w for _, w in sizes], threshold, dilation)


def _crop_kernels(levels: list[torch.Tensor], prob: torch.Tensor, threshold: float, dilation: float):
    """The kernel path of the crop methods: every level's box of `prob` >= threshold dilated by
    ``W * dilation``, and the levels cropped to them and resized back. One roi_boxes and one
    crop_levels where the one-pass ops take the levels (at most MAX_LEVELS of one dtype, within
    32-bit offsets), else mask_boxes and crop_resize per level."""
    sizes = [tuple(f.shape[-2:]) for f in levels]
    if (
        _one_pass(prob.device)
        and len(levels) <= MAX_LEVELS
        and all(f.dtype == levels[0].dtype for f in levels)
        and all(_checks.sample_fits_int32(f) for f in levels)
    ):
        boxes = _roi_boxes(prob, sizes, threshold, dilation)
        return list(torch.ops.walnet.crop_levels(levels, boxes))
    return [
        torch.ops.walnet.crop_resize(f, torch.ops.walnet.mask_boxes(prob, h, w, threshold, dilation), h, w, False)
        for f, (h, w) in zip(levels, sizes)
    ]


def roi_crop(
    features: torch.Tensor | list[torch.Tensor],
    seg_logits: torch.Tensor,
    method: str = "dilated_crop",
    threshold: float = RCM_THRESHOLD,
    dilation: float = RCM_DILATION,
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

    On the kernel path the crop methods find every level's box with one :func:`roi_boxes` and
    crop every level with one :func:`crop_levels` (on CUDA only while preview kernels are
    enabled, see walnet.ops.PREVIEW; else level by level), with the reference's result.
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
    needed = ("roi_boxes", "crop_levels") if _one_pass(device) else ("mask_boxes", "crop_resize")
    if not all(use_kernel(op, device, backend) for op in needed):
        return reference.roi_crop(features, seg_logits, method, threshold, dilation)
    # The reference's composition, with the crop methods' boxes and crops from the kernels.
    prob = torch.softmax(seg_logits.float(), dim=1)[:, 1]
    if method == "rwm":
        out = [reference.rwm_level(f, prob) for f in levels]
    elif method == "bg_rm":
        out = [reference.bg_rm_level(f, prob, threshold) for f in levels]
    else:
        if method == "bg_rm_crop":
            levels = [reference.bg_rm_level(f, prob, threshold) for f in levels]
        out = _crop_kernels(levels, prob, threshold, reference.crop_dilation(method, dilation))
    return out[0] if single else out


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

    @torch.library.register_fake("walnet::roi_boxes")
    def _roi_boxes_fake(prob, heights, widths, threshold, dilation):
        return prob.new_empty((prob.shape[0], len(heights), 4), dtype=torch.int32)

    @torch.library.register_fake("walnet::crop_levels")
    def _crop_levels_fake(features, boxes):
        return [_crop_like(f, f.shape[2], f.shape[3]) for f in features]

    @torch.library.register_fake("walnet::crop_levels_backward")
    def _crop_levels_backward_fake(grads, boxes):
        return [_crop_like(g, g.shape[2], g.shape[3]) for g in grads]

    # crop_levels and crop_levels_backward are each other's transpose (linear in the levels), so
    # each is the other's backward and double backward works. Boxes are integers: no gradient.
    def _levels_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    def _crop_levels_grad(ctx, grads):
        (boxes,) = ctx.saved_tensors
        return list(torch.ops.walnet.crop_levels_backward(list(grads), boxes)), None

    def _crop_levels_backward_grad(ctx, grads):
        (boxes,) = ctx.saved_tensors
        return list(torch.ops.walnet.crop_levels(list(grads), boxes)), None

    torch.library.register_autograd("walnet::crop_levels", _crop_levels_grad, setup_context=_levels_setup)
    torch.library.register_autograd(
        "walnet::crop_levels_backward", _crop_levels_backward_grad, setup_context=_levels_setup
    )
