"""Classification metrics of the paper (accuracy, macro F1 / precision / recall, Cohen's kappa,
per-class and micro ROC-AUC, confusion matrix), what a clinical report adds (per-class
sensitivity and specificity with their Wilson intervals, macro ROC-AUC, and the calibration
scores of :mod:`walnet.engine.calibration_metrics`), percentile-bootstrap confidence intervals
and per-patient scores; in numpy (scipy for the normal quantile), with no sklearn dependency."""
from __future__ import annotations

import numbers
from typing import Hashable, Sequence

import numpy as np

from walnet.engine.calibration_metrics import calibration_metrics

#: Resamples of :func:`bootstrap_ci` unless told otherwise.
BOOTSTRAP_RESAMPLES = 1000
#: Seed of :func:`bootstrap_ci`'s generator: the same predictions always get the same intervals.
BOOTSTRAP_SEED = 0
#: Coverage of the confidence intervals (95%).
CI_LEVEL = 0.95


def confusion_matrix(target, pred, num_classes: int) -> np.ndarray:
    """[K,K] counts: rows are true classes, columns predicted classes."""
    target, pred = np.asarray(target, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if target.shape != pred.shape:
        raise ValueError(f"target has shape {target.shape} but pred has {pred.shape}")
    if target.size and (min(target.min(), pred.min()) < 0 or max(target.max(), pred.max()) >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes})")
    counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _safe_div(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


def roc_auc(scores, positive) -> float:
    """Area under the ROC curve of binary `positive` labels ranked by `scores` (ties count 1/2:
    the Mann-Whitney statistic). NaN when only one class is present."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores, positive) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve of binary `positive` labels ranked by `scores`: false- and true-positive rates,
    one point per distinct score (descending thresholds, tied scores form one step) after a
    leading (0, 0), so the curve ends at (1, 1). Equal to ``sklearn.metrics.roc_curve(...,
    drop_intermediate=False)``; its trapezoid area is :func:`roc_auc`. A rate whose class is
    absent is NaN (as in scikit-learn)."""
    scores, positive = np.asarray(scores, dtype=float).ravel(), np.asarray(positive, dtype=bool).ravel()
    if scores.shape != positive.shape:
        raise ValueError(f"scores has {scores.size} values but positive has {positive.size}")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    # the last index of every run of equal scores: one threshold per distinct score
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1] if scores.size else np.zeros(0, dtype=np.int64)
    tps = np.cumsum(positive)[ends]
    fps = ends + 1 - tps
    n_pos, n_neg = int(positive.sum()), int(scores.size - positive.sum())
    tpr = np.r_[0, tps] / n_pos if n_pos else np.full(ends.size + 1, np.nan)
    fpr = np.r_[0, fps] / n_neg if n_neg else np.full(ends.size + 1, np.nan)
    return fpr.astype(float), tpr.astype(float)


def _checked(target, probs) -> tuple[np.ndarray, np.ndarray]:
    target = np.asarray(target, dtype=np.int64)
    probs = np.asarray(probs, dtype=float)
    if target.ndim != 1 or probs.ndim != 2 or probs.shape[0] != target.shape[0]:
        raise ValueError(f"target must be [N] and probs [N,K] with the same N, got {target.shape} and {probs.shape}")
    return target, probs


def _precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 [..., K] of confusion matrices [..., K, K] (rows true,
    columns predicted); a class with no prediction or no sample scores 0."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    precision = _safe_div(tp, cm.sum(axis=-2))
    recall = _safe_div(tp, cm.sum(axis=-1))
    return precision, recall, _safe_div(2 * precision * recall, precision + recall)


def class_precision_recall(confusion) -> tuple[list[float | None], list[float | None]]:
    """Per-class precision TP / (TP + FP) and recall (sensitivity) TP / (TP + FN) of a confusion
    matrix (rows: true class, columns: predicted); None where a class is never predicted
    (precision) or has no sample (recall): undefined, not 0."""
    cm = np.asarray(confusion, dtype=float)
    tp, predicted, positives = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    precision = [float(tp[c] / predicted[c]) if predicted[c] else None for c in range(len(tp))]
    recall = [float(tp[c] / positives[c]) if positives[c] else None for c in range(len(tp))]
    return precision, recall


def _one_vs_rest(confusion) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class of a confusion matrix (rows: true class, columns: predicted), one class against
    the rest: true positives, positives (TP + FN), true negatives (neither true nor predicted
    class c) and negatives (TN + FP), as int64 arrays [K]."""
    cm = np.asarray(confusion, dtype=np.int64)
    tp, positives, n = np.diag(cm), cm.sum(axis=1), cm.sum()
    return tp, positives, n - positives - cm.sum(axis=0) + tp, n - positives


def class_specificity(confusion) -> list[float | None]:
    """Per-class specificity TN / (TN + FP) of a confusion matrix, one class against the rest;
    None where a class holds every sample (no negatives: undefined, not 0)."""
    _, _, true_negatives, negatives = _one_vs_rest(confusion)
    return [float(tn / neg) if neg else None for tn, neg in zip(true_negatives, negatives)]


def wilson_interval(successes: int, trials: int, level: float = CI_LEVEL) -> list[float] | None:
    """Wilson score interval ``[lo, hi]`` of a binomial proportion `successes` / `trials` at
    coverage `level` (no continuity correction), in closed form: with ``z`` the normal quantile
    of ``(1 + level) / 2``, ``n = trials`` and ``p = successes / n``, the centre
    ``(p + z^2 / 2n) / (1 + z^2 / n)`` plus or minus ``z / (1 + z^2 / n) * sqrt(p (1 - p) / n +
    z^2 / 4n^2)``; the bounds at ``successes`` 0 and ``n`` are exactly 0 and 1. None when
    `trials` is 0 (undefined)."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if trials == 0:
        return None
    from scipy.stats import norm  # scipy.stats loads slowly: only for the reports that ask for intervals

    z, n, p = float(norm.ppf((1 + level) / 2)), float(trials), successes / trials
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [0.0 if successes == 0 else float(centre - half), 1.0 if successes == trials else float(centre + half)]


def class_intervals(confusion, class_names=None, level: float = CI_LEVEL) -> dict:
    """Wilson intervals (:func:`wilson_interval`) of each class's sensitivity, TP of TP + FN,
    and specificity, TN of TN + FP (one class against the rest), from a confusion matrix (rows:
    true class, columns: predicted). Returns ``{"sensitivity_ci": {name: [lo, hi] or None},
    "specificity_ci": {...}}``: None where the proportion is undefined (no positives, or no
    negatives)."""
    tp, positives, true_negatives, negatives = _one_vs_rest(confusion)
    k = len(tp)
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    return {
        "sensitivity_ci": {names[c]: wilson_interval(int(tp[c]), int(positives[c]), level) for c in range(k)},
        "specificity_ci": {names[c]: wilson_interval(int(true_negatives[c]), int(negatives[c]), level)
                           for c in range(k)},
    }


def clinical_metrics(target, probs, class_names=None) -> dict:
    """What ``walnet evaluate`` adds to :func:`classification_metrics` for a clinical report:
    the Wilson intervals of :func:`class_intervals` and the calibration scores of
    :func:`~walnet.engine.calibration_metrics.calibration_metrics` (``brier``, ``ece``,
    ``calibration``). Kept out of :func:`classification_metrics`, which validates every epoch."""
    target, probs = _checked(target, probs)
    confusion = confusion_matrix(target, probs.argmax(axis=1), probs.shape[1])
    return {**class_intervals(confusion, class_names), **calibration_metrics(target, probs)}


def classification_metrics(target, probs, class_names=None) -> dict:
    """All the paper's metrics from true labels [N] and class probabilities [N,K].

    Returns a JSON-friendly dict: accuracy, macro_f1, macro_precision, macro_recall, kappa,
    auc_per_class {name: auc}, auc_micro, auc_macro (the mean of the defined per-class AUCs: where every
    class is present, scikit-learn's ``multi_class="ovr", average="macro"``; None if none is),
    sensitivity {name: TP / (TP + FN)}, specificity {name: TN / (TN + FP)} (one class against
    the rest), macro_specificity, confusion (list of lists), class_names.

    A sensitivity whose class has no sample, or a specificity whose class has every sample, is
    undefined and given as None; macro_specificity is the mean of the defined ones (None if none
    is). The paper's macro_recall (the mean sensitivity) counts an undefined recall as 0, as scikit-learn does.
    """
    target, probs = _checked(target, probs)
    k = probs.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(target, pred, k)
    tp = np.diag(cm).astype(float)
    precision, recall, f1 = _precision_recall_f1(cm)
    n = cm.sum()
    observed = tp.sum() / n if n else 0.0
    expected = float((cm.sum(axis=0) * cm.sum(axis=1)).sum()) / (n * n) if n else 0.0
    kappa = (observed - expected) / (1 - expected) if expected != 1 else 0.0
    onehot = np.eye(k, dtype=bool)[target]
    sensitivity = class_precision_recall(cm)[1]
    specificity = class_specificity(cm)
    defined = [v for v in specificity if v is not None]
    auc_per_class = [roc_auc(probs[:, c], target == c) for c in range(k)]
    auc_defined = [a for a in auc_per_class if not np.isnan(a)]
    return {
        "accuracy": float(observed),
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "kappa": float(kappa),
        "auc_per_class": dict(zip(names, auc_per_class)),
        "auc_micro": roc_auc(probs.ravel(), onehot.ravel()),
        "auc_macro": float(np.mean(auc_defined)) if auc_defined else None,
        "sensitivity": dict(zip(names, sensitivity)),
        "specificity": dict(zip(names, specificity)),
        "macro_specificity": float(np.mean(defined)) if defined else None,
        "confusion": cm.tolist(),
        "class_names": names,
    }


def _weighted_auc(starts, positive_sorted, owner_sorted, weights) -> tuple[np.ndarray, np.ndarray]:
    """Mann-Whitney AUC (ties count 1/2) of many resamples at once, each given as per-sample
    weights [B,N] (how often a sample was drawn) over the scores sorted once, ascending, with
    `starts` the first index of every run of equal scores. Returns the AUCs [B] and whether each
    is defined (both classes drawn)."""
    w = weights[:, owner_sorted]  # [B, N*K]: the weight of every sorted score
    pos = np.add.reduceat(w * positive_sorted, starts, axis=1)  # positive weight per distinct score
    neg = np.add.reduceat(w * ~positive_sorted, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight under each distinct score
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    auc = _safe_div((pos * (below + 0.5 * neg)).sum(axis=1), n_pos * n_neg)
    return auc, defined


def bootstrap_ci(target, probs, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = CI_LEVEL) -> dict:
    """Percentile-bootstrap confidence intervals of accuracy, macro F1 and micro ROC-AUC.

    Each of `resamples` resamples draws N samples with replacement (resample b is the b-th call
    ``rng.integers(0, N, N)`` of ``rng = numpy.random.default_rng(seed)``) and scores them as
    :func:`classification_metrics` does; an interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` percentiles of those scores (numpy's linear interpolation). The micro AUC
    of a resample is undefined when it holds no positive or no negative score (only with fewer
    than two classes): such resamples are left out of its interval, ``auc_resamples`` counts the
    ones used, and the interval is None when none is left. Macro F1 counts a class missing from a
    resample (no sample, no prediction) as 0, as the point estimate does.

    Returns ``{"accuracy_ci": [lo, hi], "macro_f1_ci": [lo, hi], "auc_micro_ci": [lo, hi] or
    None, "bootstrap": {"method", "level", "resamples", "seed", "auc_resamples"}}``.
    """
    target, probs = _checked(target, probs)
    if isinstance(resamples, bool) or not isinstance(resamples, numbers.Integral) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    n, k = probs.shape
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one sample")
    confusion_matrix(target, target, k)  # the labels' range, checked once
    pred = probs.argmax(axis=1)
    correct = (pred == target).astype(float)
    cell = np.eye(k * k)[target * k + pred]  # [N, K*K]: each sample's confusion cell
    # micro AUC: every (sample, class) score, sorted once; a resample only reweights them
    scores = probs.ravel()
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    positive_sorted = np.eye(k, dtype=bool)[target].ravel()[order]
    owner_sorted = order // k
    rng = np.random.default_rng(seed)
    accuracy, f1, auc = np.empty(resamples), np.empty(resamples), np.empty(resamples)
    auc_defined = np.empty(resamples, dtype=bool)
    chunk = max(1, 4_000_000 // max(1, n * k))  # resamples per step: bounded memory for large N
    for lo in range(0, resamples, chunk):
        hi = min(resamples, lo + chunk)
        draws = np.stack([rng.integers(0, n, n) for _ in range(hi - lo)])
        offsets = np.arange(hi - lo)[:, None] * n
        weights = np.bincount((draws + offsets).ravel(), minlength=(hi - lo) * n).reshape(hi - lo, n).astype(float)
        accuracy[lo:hi] = weights @ correct / n
        f1[lo:hi] = _precision_recall_f1((weights @ cell).reshape(-1, k, k))[2].mean(axis=-1)
        auc[lo:hi], auc_defined[lo:hi] = _weighted_auc(starts, positive_sorted, owner_sorted, weights)
    q = [50 * (1 - level), 50 * (1 + level)]

    def interval(values):
        return [float(v) for v in np.percentile(values, q)] if values.size else None

    return {
        "accuracy_ci": interval(accuracy),
        "macro_f1_ci": interval(f1),
        "auc_micro_ci": interval(auc[auc_defined]),
        "bootstrap": {"method": "percentile", "level": level, "resamples": int(resamples), "seed": seed,
                      "auc_resamples": int(auc_defined.sum())},
    }


def patient_metrics(target, probs, patients: Sequence[Hashable | None], class_names=None,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict | None:
    """The metrics of :func:`classification_metrics`, :func:`clinical_metrics` and
    :func:`bootstrap_ci` per patient.

    A patient's class probabilities are the mean over its images, its prediction their argmax,
    and its true class the most common label of its images (a tie goes to the lower class index,
    as in the patient-grouped split); ``mixed_label_patients`` counts the patients whose images
    disagree. Images without a patient id (None or "") take no part; ``patients`` counts the
    patients, ``images`` their images and ``images_without_patient`` the rest. The intervals
    resample patients. Returns None when no image has a patient id.
    """
    target, probs = _checked(target, probs)
    if len(patients) != len(target):
        raise ValueError(f"patients has {len(patients)} entries but target has {len(target)}")
    groups: dict[Hashable, list[int]] = {}  # in order of first appearance
    for i, pid in enumerate(patients):
        if pid is not None and pid != "":
            groups.setdefault(pid, []).append(i)
    if not groups:
        return None
    k = probs.shape[1]
    members = list(groups.values())
    counts = np.stack([np.bincount(target[m], minlength=k) for m in members])
    patient_target = counts.argmax(axis=1)  # argmax takes the first of equal counts: the lower index
    patient_probs = np.stack([probs[m].mean(axis=0) for m in members])
    images = sum(len(m) for m in members)
    return {
        "patients": len(members),
        "images": images,
        "images_without_patient": len(target) - images,
        "mixed_label_patients": int(((counts > 0).sum(axis=1) > 1).sum()),
        **classification_metrics(patient_target, patient_probs, class_names),
        **clinical_metrics(patient_target, patient_probs, class_names),
        **bootstrap_ci(patient_target, patient_probs, resamples=resamples, seed=seed),
    }


def mask_iou_dice(pred, truth) -> tuple[float, float]:
    """IoU and Dice of two binary masks (any shapes alike); 1.0 for two empty masks."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    inter, union = np.logical_and(pred, truth).sum(), np.logical_or(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return (float(inter / union) if union else 1.0), (float(2 * inter / total) if total else 1.0)


def box_recall_precision(box, truth) -> tuple[float, float] | None:
    """How well a box (y1, x1, y2, x2, inclusive, on the grid of `truth`) covers the plaque of the
    binary mask `truth` [h, w]: recall, the share of the plaque's pixels inside the box, and
    precision, the share of the box's pixels that are plaque. None where `truth` has no plaque
    (nothing to find)."""
    truth = np.asarray(truth, dtype=bool)
    y1, x1, y2, x2 = (int(v) for v in box)
    if truth.ndim != 2 or not (0 <= y1 <= y2 < truth.shape[0] and 0 <= x1 <= x2 < truth.shape[1]):
        raise ValueError(f"box {tuple(box)} does not lie on a mask of shape {truth.shape}")
    plaque = int(truth.sum())
    if plaque == 0:
        return None
    inside = int(truth[y1:y2 + 1, x1:x2 + 1].sum())
    return inside / plaque, inside / ((y2 - y1 + 1) * (x2 - x1 + 1))
