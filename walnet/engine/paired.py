"""Paired comparison of two models scored on the same test images, over several seeds.

An ablation's variants differ by less than one seed's spread from another, so comparing their
means (each with its own std) throws away the pairing: for one seed both variants see the same
split and the same images. :func:`paired_difference` scores variant A minus variant B on the
pooled images of every seed and gives a two-level percentile-bootstrap interval of that
difference: each resample draws the seeds with replacement and, within each drawn seed, its test
images with replacement, so the interval carries both the seed-to-seed variation (training
noise, another split) and the finite test set. With few seeds the seed level is coarse; the
interval is honest about that rather than narrower.
"""
from __future__ import annotations

import numpy as np

__all__ = ["PAIRED_METRICS", "paired_difference"]

#: The scores :func:`paired_difference` compares.
PAIRED_METRICS = ("accuracy", "macro_f1")


def _scores(weights: np.ndarray, target: np.ndarray, pred: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Accuracy and macro F1 of `pred` against `target` with each image counted `weights` times
    (``weights``: [R, N], one row per resample): a class without image or prediction has F1 0."""
    cells = np.zeros((target.size, k * k))
    cells[np.arange(target.size), target * k + pred] = 1.0
    confusion = (weights @ cells).reshape(-1, k, k)  # [R, true, predicted]
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    total = confusion.sum(axis=(1, 2))
    denominator = confusion.sum(axis=1) + confusion.sum(axis=2)  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return {"accuracy": tp.sum(axis=1) / total, "macro_f1": f1.mean(axis=1)}


def _checked(target, pred_a, pred_b, group) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(a) for a in (target, pred_a, pred_b, group)]
    names = ("target", "pred_a", "pred_b", "group")
    for name, a in zip(names, arrays):
        if a.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
        if a.size != arrays[0].size:
            raise ValueError(f"{name} has {a.size} entries, target {arrays[0].size}: one per image")
    if arrays[0].size == 0:
        raise ValueError("paired_difference needs at least one image")
    for name, a in zip(names[:3], arrays[:3]):
        if not np.issubdtype(a.dtype, np.integer) or a.min() < 0:
            raise ValueError(f"{name} must hold class indices (non-negative integers), got {a.dtype}")
    return tuple(arrays)


def paired_difference(target, pred_a, pred_b, group, *, resamples: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Score differences A - B of two models' predictions on the same images, with intervals.

    Args:
        target: [N] true class index of each image (the images of every seed, concatenated).
        pred_a, pred_b: [N] the class each model predicts for that image.
        group: [N] the seed (any hashable label) each image was scored under: A and B must have
            been trained and tested with that seed, on that image.
        resamples: bootstrap resamples; ``seed``: the rng seed that draws them; ``level``: the
            interval's coverage.

    Returns:
        ``{metric: {"a", "b", "difference", "ci": [lo, hi]}}`` for each of
        :data:`PAIRED_METRICS`, the point estimates on all images pooled and the ``(1 - level)
        / 2``, ``(1 + level) / 2`` percentiles of the resampled differences, plus ``"groups"``
        (the number of seeds) and ``"images"`` (N).
    """
    target, pred_a, pred_b, group = _checked(target, pred_a, pred_b, group)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    k = int(max(target.max(), pred_a.max(), pred_b.max())) + 1
    labels, index = np.unique(group, return_inverse=True)
    members = [np.flatnonzero(index == g) for g in range(labels.size)]
    rng = np.random.default_rng(seed)
    # seed level: how often each seed is drawn; image level: m draws of a seed's n images are
    # one multinomial of m * n images
    drawn = rng.multinomial(labels.size, np.full(labels.size, 1.0 / labels.size), size=resamples)
    weights = np.zeros((resamples, target.size))
    for g, rows in enumerate(members):
        weights[:, rows] = rng.multinomial(drawn[:, g] * rows.size, np.full(rows.size, 1.0 / rows.size))
    full = np.ones((1, target.size))
    point_a, point_b = _scores(full, target, pred_a, k), _scores(full, target, pred_b, k)
    boot_a, boot_b = _scores(weights, target, pred_a, k), _scores(weights, target, pred_b, k)
    tail = (1 - level) / 2 * 100
    out: dict = {"groups": int(labels.size), "images": int(target.size)}
    for name in PAIRED_METRICS:
        diff = boot_a[name] - boot_b[name]
        out[name] = {"a": float(point_a[name][0]), "b": float(point_b[name][0]),
                     "difference": float(point_a[name][0] - point_b[name][0]),
                     "ci": [float(np.percentile(diff, tail)), float(np.percentile(diff, 100 - tail))]}
    return out
