"""Loads the compiled operators (walnet._C) and registers their fake kernels.

Which backends exist is asked of the dispatcher itself, so the answer is exactly what the
loaded library registered, whatever the build flags were.
"""
from __future__ import annotations

import os

import torch

try:  # importing the extension runs its TORCH_LIBRARY registrations
    from walnet import _C  # noqa: F401

    LOAD_ERROR: str | None = None
except ImportError as exc:  # not built: every op falls back to the reference
    LOAD_ERROR = str(exc)

OPS = (
    "fuse_attention",
    "superpixel_mean",
    "pseudo_mask",
    "mask_boxes",
    "crop_resize",
    "crop_resize_backward",
    "felzenszwalb",
)


def _defined(op: str) -> bool:
    """Whether the loaded library defines walnet::<op> (a stale build may lack newer ops)."""
    try:
        getattr(torch.ops.walnet, op)
    except (AttributeError, RuntimeError):
        return False
    return True


DEFINED = frozenset(op for op in OPS if LOAD_ERROR is None and _defined(op))


def _registered_kernels() -> frozenset[tuple[str, str]]:
    return frozenset(
        (op, dev)
        for op in DEFINED
        for dev in ("cpu", "cuda")
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"walnet::{op}", dev.upper())
    )


# Asked once at import (registrations are static), which also keeps has_kernel traceable by
# torch.compile.
_KERNELS = _registered_kernels()


def has_kernel(op: str, device_type: str) -> bool:
    """True when walnet::<op> has a kernel registered for this device type ("cpu", "cuda")."""
    return (op, device_type) in _KERNELS


def built_backends() -> set[str]:
    """The device types for which this build of walnet has compiled kernels of every op, e.g.
    {"cpu", "cuda"}. (has_kernel answers per op; an op without a kernel for a device falls back to
    the reference, or for felzenszwalb to the CPU kernel through a host copy.)"""
    return {dev for dev in ("cpu", "cuda") if all(has_kernel(op, dev) for op in OPS)}


def force_reference() -> bool:
    """WALNET_FORCE_REFERENCE=1 makes backend="auto" use the reference ops everywhere."""
    return os.environ.get("WALNET_FORCE_REFERENCE", "0") not in ("", "0")


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if {"fuse_attention", "superpixel_mean", "pseudo_mask"} <= DEFINED:

    @torch.library.register_fake("walnet::fuse_attention")
    def _fuse_attention_fake(a1, a2, a3):
        return a1.new_empty(a1.shape, dtype=_opmath(a1.dtype))

    @torch.library.register_fake("walnet::superpixel_mean")
    def _superpixel_mean_fake(values, labels):
        return torch.empty_like(values, memory_format=torch.contiguous_format)

    @torch.library.register_fake("walnet::pseudo_mask")
    def _pseudo_mask_fake(a1, a2, a3, labels, threshold):
        return a1.new_empty(a1.shape, dtype=torch.uint8)


if {"mask_boxes", "crop_resize", "crop_resize_backward"} <= DEFINED:

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


if "felzenszwalb" in DEFINED:

    @torch.library.register_fake("walnet::felzenszwalb")
    def _felzenszwalb_fake(images, weights, k, min_size, parallel):
        n, _, h, w = images.shape
        return images.new_empty((n, h, w), dtype=torch.int32), images.new_empty((n, 2), dtype=torch.int32)
