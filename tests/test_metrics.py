"""Classification and mask metrics against scikit-learn on fixed predictions, and their edge cases."""
from __future__ import annotations

import numpy as np
import pytest

from walnet.engine import classification_metrics, confusion_matrix, mask_iou_dice

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _predictions(n=200, k=3, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[target]
    if ties:
        logits = np.round(logits)  # many tied scores
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return target, probs


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed, ties):
    target, probs = _predictions(seed=seed, ties=ties)
    pred = probs.argmax(1)
    m = classification_metrics(target, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(target, pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(target, pred, average="macro"), abs=1e-12)
    assert m["macro_precision"] == pytest.approx(
        sklearn_metrics.precision_score(target, pred, average="macro", zero_division=0), abs=1e-12)
    assert m["macro_recall"] == pytest.approx(sklearn_metrics.recall_score(target, pred, average="macro"), abs=1e-12)
    assert m["kappa"] == pytest.approx(sklearn_metrics.cohen_kappa_score(target, pred), abs=1e-12)
    assert m["confusion"] == sklearn_metrics.confusion_matrix(target, pred, labels=[0, 1, 2]).tolist()
    for c, name in enumerate("abc"):
        assert m["auc_per_class"][name] == pytest.approx(sklearn_metrics.roc_auc_score(target == c, probs[:, c]), abs=1e-12)
    onehot = np.eye(3)[target]
    assert m["auc_micro"] == pytest.approx(sklearn_metrics.roc_auc_score(onehot, probs, average="micro"), abs=1e-12)


def test_metric_edge_cases():
    assert confusion_matrix([0, 1], [1, 1], 2).tolist() == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix([0, 3], [0, 0], 3)
    m = classification_metrics([0, 0], np.array([[0.9, 0.1], [0.8, 0.2]]))
    assert m["accuracy"] == 1.0 and np.isnan(m["auc_per_class"]["0"])  # one class only
    assert mask_iou_dice(np.zeros((4, 4)), np.zeros((4, 4))) == (1.0, 1.0)
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert mask_iou_dice(a, b) == pytest.approx((4 / 12, 8 / 16))
