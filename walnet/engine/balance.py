"""Training on imbalanced classes: ``--class-weights`` (weights of the classification loss) and
``--balanced-sampler`` (:class:`~walnet.data.samplers.ClassBalancedSampler`) of ``walnet train``.

``--class-weights`` is kept as the text given (``none``, ``balanced`` or one positive number per
class, comma-separated, in class order), so a run's args.json shows it as written;
:func:`parse_class_weights` is its one reader. ``balanced`` weighs class ``c`` by
``n / (K * n_c)`` over the run's training split (``n`` images, ``K`` classes, ``n_c`` of class
``c``), as scikit-learn's ``compute_class_weight("balanced")``.
"""
from __future__ import annotations

import logging
import math

import torch

from walnet.data.samplers import ClassBalancedSampler

_log = logging.getLogger(__name__)
#: The forms of ``--class-weights`` in words, for its error messages.
FORMS = "none, balanced, or one positive number per class in class order, comma-separated (e.g. 1,2.5,1)"


def parse_class_weights(text: str, classes=None) -> str | tuple[float, ...]:
    """``--class-weights`` read: ``"none"``, ``"balanced"`` or the weights as floats. Where the
    class names `classes` are given, the weights must be one per class. A one-line ValueError
    naming ``--class-weights`` otherwise."""
    if text in ("none", "balanced"):
        return text
    items = text.split(",")
    try:
        weights = tuple(float(item) for item in items)
    except ValueError:
        raise ValueError(f"--class-weights must be {FORMS}, got {text!r}") from None
    bad = [item.strip() for item, w in zip(items, weights) if not (math.isfinite(w) and w > 0)]
    if bad:
        raise ValueError(f"--class-weights: a class weight must be a positive finite number, got {bad[0]} in "
                         f"{text!r}")
    if len(weights) < 2:
        raise ValueError(f"--class-weights must be {FORMS}; a classifier has two or more classes, got {text!r}")
    if classes is not None and len(weights) != len(classes):
        raise ValueError(f"--class-weights gives {len(weights)} weight(s) for the {len(classes)} classes "
                         f"{', '.join(classes)}; give one per class, in this order")
    return weights


def class_weights(text: str, labels, classes) -> tuple[float, ...] | None:
    """The weights of the classification loss that ``--class-weights`` `text` asks for, one per
    name of `classes` (None for ``none``); `labels`: the class indices of the training images.
    ``balanced`` with a class that has no training image is a ValueError naming it."""
    parsed = parse_class_weights(text, classes)
    if parsed == "none":
        return None
    if parsed != "balanced":
        return parsed
    counts = torch.bincount(torch.tensor(list(labels), dtype=torch.long), minlength=len(classes)).tolist()
    missing = [name for name, count in zip(classes, counts) if count == 0]
    if missing:
        raise ValueError(f"--class-weights balanced: the training split holds no image of the class(es) "
                         f"{', '.join(missing)} (of {', '.join(classes)}), so it has no weight; give the weights "
                         "or train on data with every class")
    total = sum(counts)
    return tuple(total / (len(classes) * count) for count in counts)


def loss_weights(text: str, train_set, classes, device: torch.device, log: bool = True) -> torch.Tensor | None:
    """The class weights that ``--class-weights`` `text` asks for, for a run whose training set
    is `train_set` (a :class:`~walnet.data.PlaqueDataset`), as a float32 tensor on `device`, or
    None for none; logs them (where `log`)."""
    weights = class_weights(text, [r.label for r in train_set.records], list(classes))
    if weights is None:
        return None
    if log:
        shown = ", ".join(f"{name} {w:.4g}" for name, w in zip(classes, weights))
        _log.info(f"classification loss weighted per class (--class-weights {text}): {shown}")
    return torch.tensor(weights, dtype=torch.float32, device=device)


def train_sampler(train_set, balanced: bool, seed: int, num_replicas: int, rank: int) -> torch.utils.data.Sampler:
    """The sampler of a run's training set: every image once per epoch in a (`seed`, epoch)
    order, shared out among the DDP processes; `balanced` (``--balanced-sampler``):
    class-balanced draws with replacement (:class:`~walnet.data.samplers.ClassBalancedSampler`)."""
    if balanced:
        return ClassBalancedSampler([r.label for r in train_set.records], num_replicas, rank, seed=seed)
    return torch.utils.data.DistributedSampler(train_set, num_replicas, rank, shuffle=True, seed=seed)
