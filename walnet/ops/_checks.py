"""Input validation shared by the public op wrappers.

Shape, dtype and device checks are free. Value checks (NaN in maps, labels out of range) read
data, which on CUDA costs one host synchronisation: they run by default, are skipped while
torch.compile traces or a CUDA graph captures, and can be switched off with
:func:`set_value_checks` for sync-free training steps.
"""
from __future__ import annotations

import contextlib
import math
import numbers

import torch

_value_checks = True


def set_value_checks(enabled: bool) -> None:
    """Turn the data-reading input checks of walnet ops on or off (default on)."""
    global _value_checks
    _value_checks = bool(enabled)


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Within the block, the data-reading input checks are on or off (see
    :func:`set_value_checks`); the previous setting is restored afterwards."""
    global _value_checks
    previous, _value_checks = _value_checks, bool(enabled)
    try:
        yield
    finally:
        _value_checks = previous


def value_checks_enabled() -> bool:
    if not _value_checks or torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


BACKENDS = ("auto", "kernel", "reference")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def as_map(t, name: str) -> torch.Tensor:
    """Validates a floating [N,H,W] or [N,1,H,W] map and returns it as [N,H,W], detached."""
    check_tensor(t, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3:
        raise ValueError(f"{name} must have shape [N,H,W] or [N,1,H,W], got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0)")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"{name} must have non-empty H and W, got {tuple(t.shape)}")
    return t.detach()


def as_labels(labels, like: torch.Tensor, like_name: str) -> torch.Tensor:
    """Validates integer segment labels shaped like `like` ([N,H,W]) and returns them as [N,H,W]."""
    check_tensor(labels, "labels")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if tuple(labels.shape) != tuple(like.shape):
        raise ValueError(
            f"labels must have the shape of {like_name}, {tuple(like.shape)}, got {tuple(labels.shape)}"
        )
    check_same_device(labels, "labels", like, like_name)
    if labels.dtype not in (torch.int32, torch.int64):
        labels = labels.to(torch.int32)
    return labels


def check_same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device")


def check_same_batch(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.shape[0] != ref.shape[0]:
        raise ValueError(f"{name} has batch size {t.shape[0]} but {ref_name} has {ref.shape[0]}")


def check_values(maps: dict[str, torch.Tensor], labels: torch.Tensor | None = None) -> None:
    """Raises ValueError naming the first map that holds NaN/inf, or labels outside [0, H*W).

    Segments are numbered per sample, so a sample of H*W pixels has labels in [0, H*W). One
    aminmax per tensor (it propagates NaN; +-inf shows as the min or the max), read back with a
    single host transfer (one sync on CUDA).
    """
    if not value_checks_enabled():
        return
    tensors = list(maps.values()) + ([labels] if labels is not None else [])
    extremes = [v for t in tensors for v in torch.aminmax(t)]
    if tensors[0].device.type == "cpu":
        numbers = [v.item() for v in extremes]
    else:
        numbers = torch.stack([v.double() for v in extremes]).tolist()
    for i, name in enumerate(maps):
        if not (math.isfinite(numbers[2 * i]) and math.isfinite(numbers[2 * i + 1])):
            raise ValueError(f"{name} contains NaN or infinite values")
    if labels is not None:
        n_pixels = labels.shape[-2] * labels.shape[-1]
        lo, hi = int(numbers[-2]), int(numbers[-1])
        if lo < 0 or hi >= n_pixels:
            raise ValueError(
                f"labels must lie in [0, H*W) = [0, {n_pixels}) (segments numbered per image), "
                f"got values in [{lo}, {hi}]"
            )


def check_real(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {x}")
    return x
