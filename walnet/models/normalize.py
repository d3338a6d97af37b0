"""Input normalisation inside the models (docs/design.md §3).

walnet's images are RGB in [0, 1]; a timm backbone's pretrained weights expect them normalised
with the mean and std of its ``pretrained_cfg`` (ImageNet's for every backbone walnet names).
Every walnet model therefore holds that mean and std as persistent buffers ``input_mean`` and
``input_std`` (float32 ``[1, 3, 1, 1]``) and computes ``(x - input_mean) / input_std`` before
its backbone: callers always pass the [0, 1] image, and a checkpoint or exported folder carries
the normalisation its weights were trained with. :class:`~walnet.WALNet` applies it in
``forward``; a baseline (a timm classifier) gets the buffers and a forward pre-hook
(:func:`normalize_inputs`), which keeps its state-dict keys those of the timm model.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

#: The buffers' names, the same on WAL-Net and on the baselines (top-level state-dict keys).
BUFFERS = ("input_mean", "input_std")


def _three(values: Sequence[float], what: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:  # a grey-scale statistic: the same for each of the three channels
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"{what} must have 1 or 3 values (RGB input), got {values}")
    return values


def input_stats(timm_model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std of `timm_model`'s ``pretrained_cfg`` (what its pretrained weights were
    trained on), each three floats; ImageNet's (``timm.data``) where the config has none."""
    cfg = getattr(timm_model, "pretrained_cfg", None) or {}
    mean = cfg.get("mean") or IMAGENET_DEFAULT_MEAN
    std = cfg.get("std") or IMAGENET_DEFAULT_STD
    return _three(mean, "pretrained_cfg['mean']"), _three(std, "pretrained_cfg['std']")


def register_stats(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """Registers `mean` and `std` on `module` as the persistent float32 buffers ``input_mean``
    and ``input_std``, shaped [1, 3, 1, 1] to broadcast over [N, 3, H, W]; they follow the
    module's ``.to(device / dtype)`` and go into its state dict."""
    mean, std = _three(mean, "mean"), _three(std, "std")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    module.register_buffer(BUFFERS[0], torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
    module.register_buffer(BUFFERS[1], torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))


def check_images(x) -> None:
    """A TypeError naming ``images`` unless `x` is a floating-point tensor: an integer image
    (uint8 0..255) would pass the arithmetic of :func:`normalize` and be read as if in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [N,3,H,W] in [0, 1], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"images is {x.dtype}: the model expects a floating image in [0, 1]; convert uint8 with "
                        ".float() / 255")


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std``, the input a backbone sees; `x` must be floating (:func:`check_images`)."""
    check_images(x)
    return (x - mean) / std


def _normalize_first_input(module: nn.Module, args: tuple) -> tuple:
    # a module-level function reading the module's own buffers, so that a deepcopy of the model
    # (the ONNX export's) normalises with its copy's buffers
    return (normalize(args[0], module.input_mean, module.input_std), *args[1:])


def normalize_inputs(model: nn.Module, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> nn.Module:
    """`model` (a timm classifier) with the buffers of :func:`register_stats` (`mean` and `std`,
    default :func:`input_stats` of the model) and a forward pre-hook that normalises its first
    argument with them, so ``model(x)`` takes [0, 1] images. The model is changed in place and
    returned; its other state-dict keys stay timm's."""
    default_mean, default_std = input_stats(model)
    register_stats(model, default_mean if mean is None else mean, default_std if std is None else std)
    model.register_forward_pre_hook(_normalize_first_input)
    return model

