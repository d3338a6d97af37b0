"""How well a classifier's probabilities match its hit rate: the multi-class Brier score, the
expected calibration error (ECE) of the top-label confidence and the per-bin numbers of a
reliability diagram; in numpy, on true labels [N] and class probabilities [N,K]."""
from __future__ import annotations

import numpy as np

#: Equal-width confidence bins over (0, 1] of the ECE and the reliability diagram.
ECE_BINS = 15


def _arrays(target, probs) -> tuple[np.ndarray, np.ndarray]:
    target, probs = np.asarray(target, dtype=np.int64), np.asarray(probs, dtype=float)
    if target.ndim != 1 or probs.ndim != 2 or probs.shape[0] != target.shape[0]:
        raise ValueError(f"target must be [N] and probs [N,K] with the same N, got {target.shape} and {probs.shape}")
    if target.size and (target.min() < 0 or target.max() >= probs.shape[1]):
        raise ValueError(f"class indices must lie in [0, {probs.shape[1]})")
    return target, probs


def brier_score(target, probs) -> float | None:
    """The multi-class Brier score: the mean over images of ``sum_k (p_k - y_k)^2``, with ``y``
    the one-hot true class; 0 is perfect, 2 the worst (all mass on a wrong class). For two
    classes it is twice scikit-learn's ``brier_score_loss``, which scores the positive class's
    probability only. None without images."""
    target, probs = _arrays(target, probs)
    if target.size == 0:
        return None
    onehot = np.eye(probs.shape[1])[target]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def calibration_bins(target, probs, bins: int = ECE_BINS) -> dict:
    """The reliability diagram's numbers of the top-label confidence (the largest probability,
    whose class is the prediction; of equal ones the lower index, as argmax picks): bin ``b``
    holds the images whose confidence lies in ``(edges[b], edges[b + 1]]`` with ``edges =
    numpy.linspace(0, 1, bins + 1)`` (a confidence of 0 goes to the first bin).

    Returns ``{"bins": bins, "count": [...], "accuracy": [...], "confidence": [...]}``: per bin,
    the number of images, the fraction of them predicted right and their mean confidence (None
    for an empty bin)."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    target, probs = _arrays(target, probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == target).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    hits = np.bincount(which, weights=correct, minlength=bins)
    mass = np.bincount(which, weights=confidence, minlength=bins)

    def mean(total):
        return [float(t / c) if c else None for t, c in zip(total, count)]

    return {"bins": int(bins), "count": count.tolist(), "accuracy": mean(hits), "confidence": mean(mass)}


def expected_calibration_error(bins: dict) -> float | None:
    """ECE of :func:`calibration_bins`' result: ``sum_b (n_b / N) |accuracy_b - confidence_b|``
    over the non-empty bins; None without images."""
    total = sum(bins["count"])
    if not total:
        return None
    return float(sum(n * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"]) if n)
                 / total)


def calibration_metrics(target, probs, bins: int = ECE_BINS) -> dict:
    """``{"brier": ..., "ece": ..., "calibration": {...}}``: :func:`brier_score`,
    :func:`expected_calibration_error` and the per-bin numbers of :func:`calibration_bins`
    (the reliability diagram's)."""
    table = calibration_bins(target, probs, bins)
    return {"brier": brier_score(target, probs), "ece": expected_calibration_error(table), "calibration": table}
