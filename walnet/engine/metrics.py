"""Classification metrics of the paper (accuracy, macro F1 / precision / recall, Cohen's kappa,
per-class and micro ROC-AUC, confusion matrix), in numpy, with no sklearn dependency."""
from __future__ import annotations

import numpy as np


def confusion_matrix(target, pred, num_classes: int) -> np.ndarray:
    """[K,K] counts: rows are true classes, columns predicted classes."""
    target, pred = np.asarray(target, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if target.shape != pred.shape:
        raise ValueError(f"target has shape {target.shape} but pred has {pred.shape}")
    if target.size and (min(target.min(), pred.min()) < 0 or max(target.max(), pred.max()) >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes})")
    return np.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


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


def classification_metrics(target, probs, class_names=None) -> dict:
    """All the paper's metrics from true labels [N] and class probabilities [N,K].

    Returns a JSON-friendly dict: accuracy, macro_f1, macro_precision, macro_recall, kappa,
    auc_per_class {name: auc}, auc_micro, confusion (list of lists), class_names.
    """
    target = np.asarray(target, dtype=np.int64)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[0] != target.shape[0]:
        raise ValueError(f"probs must be [N,K] with N = {target.shape[0]}, got {probs.shape}")
    k = probs.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(target, pred, k)
    tp = np.diag(cm).astype(float)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = cm.sum()
    observed = tp.sum() / n if n else 0.0
    expected = float((cm.sum(axis=0) * cm.sum(axis=1)).sum()) / (n * n) if n else 0.0
    kappa = (observed - expected) / (1 - expected) if expected != 1 else 0.0
    onehot = np.eye(k, dtype=bool)[target]
    return {
        "accuracy": float(observed),
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "kappa": float(kappa),
        "auc_per_class": {names[c]: roc_auc(probs[:, c], target == c) for c in range(k)},
        "auc_micro": roc_auc(probs.ravel(), onehot.ravel()),
        "confusion": cm.tolist(),
        "class_names": names,
    }


def mask_iou_dice(pred, truth) -> tuple[float, float]:
    """IoU and Dice of two binary masks (any shapes alike); 1.0 for two empty masks."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    inter, union = np.logical_and(pred, truth).sum(), np.logical_or(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return (float(inter / union) if union else 1.0), (float(2 * inter / total) if total else 1.0)
