"""Input validation of the public op wrappers: the one home of their argument checks.

Shape, dtype and device checks are free. Value checks (NaN in maps, labels out of range) read
data, which on CUDA costs one host synchronisation: they run by default, are skipped while
torch.compile traces or a CUDA graph captures and for tensors on the meta device (which hold no
data), and can be switched off with :func:`set_value_checks` for sync-free training steps.
"""
from __future__ import annotations

import math
import numbers

import torch

from walnet.ops._switch import Switch

_VALUE_CHECKS = Switch(True)


def set_value_checks(enabled: bool) -> None:
    """Turn the data-reading input checks of walnet ops on or off (default on)."""
    _VALUE_CHECKS.set(enabled)


def value_checks(enabled: bool):
    """Within the block (``with value_checks(False):``), the data-reading input checks are on or
    off (see :func:`set_value_checks`); the previous setting is restored afterwards."""
    return _VALUE_CHECKS.scoped(enabled)


def value_checks_enabled(*tensors: torch.Tensor) -> bool:
    """Whether the data-reading checks run now, for `tensors` (none on the meta device, whose
    tensors have shapes but no values to read)."""
    if not _VALUE_CHECKS.enabled or torch.compiler.is_compiling():
        return False
    if any(t.device.type == "meta" for t in tensors):
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


#: How every op may be asked to run: the compiled kernel where built ("auto"), the kernel or an
#: error ("kernel"), or the pure-PyTorch reference ("reference").
BACKENDS = ("auto", "kernel", "reference")


def check_choice(value, name: str, choices: tuple) -> str:
    """`value` if it is one of `choices`, else a ValueError naming the argument."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_backend(backend) -> str:
    return check_choice(backend, "backend", BACKENDS)


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
    tensors = list(maps.values()) + ([labels] if labels is not None else [])
    if not value_checks_enabled(*tensors):
        return
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


def check_real(x, name: str, *, min_value: float | None = None) -> float:
    """`x` as a finite float (>= `min_value` where given), else an error naming `name`."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {x}")
    if min_value is not None and x < min_value:
        raise ValueError(f"{name} must be >= {min_value:g}, got {x}")
    return x


def check_int(x, name: str, *, min_value: int | None = None) -> int:
    """`x` as an int (>= `min_value` where given), else an error naming `name`."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    x = int(x)
    if min_value is not None and x < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {x}")
    return x


#: Sizes and box coordinates reach the kernels as int32.
MAX_SIZE = 2**31 - 1


def check_size(size, name: str = "size") -> tuple[int, int]:
    """A pair of positive ints (H, W), each at most :data:`MAX_SIZE`."""
    if (
        not isinstance(size, (tuple, list, torch.Size))
        or len(size) != 2
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"{name} must be a pair of ints (H, W), got {size!r}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"{name} must be positive, got {tuple(size)}")
    if size[0] > MAX_SIZE or size[1] > MAX_SIZE:
        raise ValueError(f"{name} must be at most {MAX_SIZE} (2^31 - 1) per side, got {tuple(size)}")
    return int(size[0]), int(size[1])


def as_features(t, name: str = "features", *, empty_batch: bool = False) -> torch.Tensor:
    """Validates a floating [N,C,H,W] tensor with C, H, W >= 1 (and N >= 1 unless `empty_batch`);
    returns it as it is (gradients flow)."""
    check_tensor(t, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != 4:
        raise ValueError(f"{name} must have shape [N,C,H,W], got {tuple(t.shape)}")
    if t.shape[0] == 0 and not empty_batch:
        raise ValueError(f"{name} is an empty batch (N = 0)")
    if min(t.shape[1:]) == 0:
        raise ValueError(f"{name} must have non-empty C, H and W, got {tuple(t.shape)}")
    return t


def as_boxes(boxes, features: torch.Tensor) -> torch.Tensor:
    """Validates integer [N,4] boxes (y1, x1, y2, x2), inclusive, inside `features`' maps; returns
    them as int32. The bounds are a value check (read from the data)."""
    check_tensor(boxes, "boxes")
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must be an integer tensor, got {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N,4] (y1, x1, y2, x2), got {tuple(boxes.shape)}")
    check_same_batch(boxes, "boxes", features, "features")
    check_same_device(boxes, "boxes", features, "features")
    if value_checks_enabled(boxes):
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


def check_sizes(sizes, name: str, max_count: int) -> list[tuple[int, int]]:
    """A non-empty list (or tuple) of at most `max_count` (H, W) pairs, each as :func:`check_size`."""
    pair = isinstance(sizes, (list, tuple)) and len(sizes) == 2 and all(isinstance(s, numbers.Integral) for s in sizes)
    if not isinstance(sizes, (list, tuple)) or pair:
        raise TypeError(f"{name} must be a list of (H, W) pairs, one per level, got {sizes!r}")
    if not 1 <= len(sizes) <= max_count:
        raise ValueError(f"{name} must hold 1 to {max_count} levels, got {len(sizes)}")
    return [check_size(size, f"{name}[{i}]") for i, size in enumerate(sizes)]


def sample_fits_int32(t: torch.Tensor) -> bool:
    """Whether every element of one sample of [N,...] `t` lies less than 2^31 elements from the
    sample's first (through the strides), and the sample has fewer than 2^31 elements: the one-pass
    RCM kernels index inside a sample with 32-bit offsets."""
    last = sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:]))
    return last < 2**31 and math.prod(t.shape[1:]) < 2**31


def as_levels(levels, name: str, max_count: int) -> list[torch.Tensor]:
    """Validates a non-empty list (or tuple) of at most `max_count` feature levels, each as
    :func:`as_features`, of one batch size, dtype and device, each sample within 32-bit offsets
    (:func:`sample_fits_int32`); returns them as a list (gradients flow)."""
    if not isinstance(levels, (list, tuple)):
        raise TypeError(f"{name} must be a list of [N,C,H,W] tensors, one per level, got {type(levels).__name__}")
    if not 1 <= len(levels) <= max_count:
        raise ValueError(f"{name} must hold 1 to {max_count} levels, got {len(levels)}")
    levels = [as_features(f, f"{name}[{i}]") for i, f in enumerate(levels)]
    first = f"{name}[0]"
    for i, f in enumerate(levels[1:], 1):
        check_same_batch(f, f"{name}[{i}]", levels[0], first)
        check_same_device(f, f"{name}[{i}]", levels[0], first)
        if f.dtype != levels[0].dtype:
            raise TypeError(f"{name}[{i}] is {f.dtype} but {first} is {levels[0].dtype}; the levels must share one "
                            "dtype")
    for i, f in enumerate(levels):
        if not sample_fits_int32(f):
            raise ValueError(f"{name}[{i}] must have fewer than 2^31 elements per sample, got {tuple(f.shape)}")
    return levels


def as_level_boxes(boxes, levels: list[torch.Tensor], name: str = "boxes") -> torch.Tensor:
    """Validates integer per-level boxes [N,L,4] (y1, x1, y2, x2), inclusive, ``[:, l]`` inside
    level l's map; returns them as int32. The bounds are a value check (read from the data)."""
    check_tensor(boxes, name)
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {boxes.dtype}")
    if boxes.dim() != 3 or boxes.shape[1] != len(levels) or boxes.shape[2] != 4:
        raise ValueError(f"{name} must have shape [N,{len(levels)},4] (one (y1, x1, y2, x2) per sample and level), "
                         f"got {tuple(boxes.shape)}")
    check_same_batch(boxes, name, levels[0], "the levels")
    check_same_device(boxes, name, levels[0], "the levels")
    if value_checks_enabled(boxes):
        limits = torch.tensor([f.shape[-2:] for f in levels], device=boxes.device)  # [L, 2]: H, W
        y1, x1, y2, x2 = boxes.long().unbind(2)
        bad = (y1 < 0) | (x1 < 0) | (y2 >= limits[:, 0]) | (x2 >= limits[:, 1]) | (y1 > y2) | (x1 > x2)
        if bool(bad.any()):
            i, level = bad.nonzero()[0].tolist()
            H, W = levels[level].shape[-2:]
            raise ValueError(
                f"{name}[{i}, {level}] = {boxes[i, level].tolist()} is not a box (y1, x1, y2, x2) with "
                f"0 <= y1 <= y2 < {H} and 0 <= x1 <= x2 < {W}"
            )
    return boxes.to(torch.int32)


def as_seg_logits(t, levels: list[torch.Tensor], level_names: list[str]) -> torch.Tensor:
    """Validates segmentation logits [N,2,h,w] of the batch and device of every feature level."""
    check_tensor(t, "seg_logits")
    if not t.is_floating_point():
        raise TypeError(f"seg_logits must be a floating-point tensor, got {t.dtype}")
    if t.dim() != 4 or t.shape[1] != 2:
        raise ValueError(f"seg_logits must have shape [N,2,h,w], got {tuple(t.shape)}")
    for f, name in zip(levels, level_names):
        check_same_batch(t, "seg_logits", f, name)
        check_same_device(t, "seg_logits", f, name)
    return t
