"""Classification and mask metrics against scikit-learn on fixed predictions and hand-made
cases, their edge cases, bootstrap intervals against a plain loop, and per-patient scores."""
from __future__ import annotations

import numpy as np
import pytest

from walnet.engine import bootstrap_ci, classification_metrics, confusion_matrix, mask_iou_dice, patient_metrics
from walnet.engine.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

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


# --- sensitivity and specificity ---------------------------------------------------------------

def _scores_of(pred, k):
    """Class probabilities whose argmax is `pred`."""
    probs = np.full((len(pred), k), 0.2 / (k - 1))
    probs[np.arange(len(pred)), pred] = 0.8
    return probs


def test_sensitivity_and_specificity_of_a_hand_made_confusion():
    # confusion (rows true, columns predicted): [[3, 1, 0], [0, 2, 1], [1, 0, 4]], 12 samples
    target = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    pred = [0, 0, 0, 1, 1, 1, 2, 0, 2, 2, 2, 2]
    m = classification_metrics(target, _scores_of(pred, 3), ["a", "b", "c"])
    assert m["confusion"] == [[3, 1, 0], [0, 2, 1], [1, 0, 4]]
    # a: TP 3, FN 1, FP 1, TN 7; b: TP 2, FN 1, FP 1, TN 8; c: TP 4, FN 1, FP 1, TN 6
    assert m["sensitivity"] == pytest.approx({"a": 3 / 4, "b": 2 / 3, "c": 4 / 5}, abs=1e-15)
    assert m["specificity"] == pytest.approx({"a": 7 / 8, "b": 8 / 9, "c": 6 / 7}, abs=1e-15)
    assert m["macro_specificity"] == pytest.approx((7 / 8 + 8 / 9 + 6 / 7) / 3, abs=1e-15)
    assert m["macro_recall"] == pytest.approx((3 / 4 + 2 / 3 + 4 / 5) / 3, abs=1e-15)


def test_undefined_sensitivity_and_specificity_are_none():
    # no sample of class c: its sensitivity is undefined; every sample in class a: a's specificity is
    m = classification_metrics([0, 0, 1], _scores_of([0, 1, 1], 3), ["a", "b", "c"])
    assert m["sensitivity"] == {"a": 0.5, "b": 1.0, "c": None}
    assert m["specificity"]["c"] == 1.0
    m = classification_metrics([0, 0], _scores_of([0, 1], 2), ["a", "b"])
    assert m["specificity"]["a"] is None and m["specificity"]["b"] == 0.5 and m["macro_specificity"] == 0.5
    assert m["sensitivity"]["b"] is None


def test_sensitivity_and_specificity_match_sklearn():
    target, probs = _predictions(seed=4)
    pred = probs.argmax(1)
    m = classification_metrics(target, probs, ["a", "b", "c"])
    for c, name in enumerate("abc"):
        assert m["sensitivity"][name] == pytest.approx(sklearn_metrics.recall_score(target == c, pred == c), abs=1e-12)
        # specificity is the recall of "not c"
        assert m["specificity"][name] == pytest.approx(sklearn_metrics.recall_score(target != c, pred != c), abs=1e-12)


# --- bootstrap intervals -----------------------------------------------------------------------

def _loop_bootstrap(target, probs, resamples, seed, level=0.95):
    """The intervals the plain way: one resample at a time, scored by classification_metrics."""
    rng = np.random.default_rng(seed)
    n = len(target)
    scores = {"accuracy": [], "macro_f1": [], "auc_micro": []}
    for _ in range(resamples):
        i = rng.integers(0, n, n)
        m = classification_metrics(target[i], probs[i])
        for key in scores:
            scores[key].append(m[key])
    q = [50 * (1 - level), 50 * (1 + level)]
    return {key: np.percentile([v for v in values if not np.isnan(v)], q) for key, values in scores.items()}


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_matches_a_plain_loop(ties):
    target, probs = _predictions(n=25, seed=5, ties=ties)
    expected = _loop_bootstrap(target, probs, resamples=200, seed=3, level=0.9)
    got = bootstrap_ci(target, probs, resamples=200, seed=3, level=0.9)
    for key in ("accuracy", "macro_f1", "auc_micro"):
        assert got[f"{key}_ci"] == pytest.approx(expected[key], abs=1e-12), key
    assert got["bootstrap"] == {"method": "percentile", "level": 0.9, "resamples": 200, "seed": 3,
                                "auc_resamples": 200}


def test_bootstrap_of_a_missing_class_matches_the_loop():
    # class 2 is rare: many resamples lack it, and macro F1 counts it as 0 there, as the point estimate would
    target, probs = _predictions(n=30, seed=6)
    target[target == 2] = 1
    target[0] = 2
    expected = _loop_bootstrap(target, probs, resamples=300, seed=0)
    got = bootstrap_ci(target, probs, resamples=300)
    for key in ("accuracy", "macro_f1", "auc_micro"):
        assert got[f"{key}_ci"] == pytest.approx(expected[key], abs=1e-12), key


def test_bootstrap_interval_holds_the_estimate_is_deterministic_and_narrows():
    target, probs = _predictions(n=300, seed=7)
    point = classification_metrics(target, probs)
    ci = bootstrap_ci(target, probs)
    assert ci["bootstrap"]["resamples"] == BOOTSTRAP_RESAMPLES and ci["bootstrap"]["seed"] == BOOTSTRAP_SEED
    for key in ("accuracy", "macro_f1", "auc_micro"):
        lo, hi = ci[f"{key}_ci"]
        assert lo < point[key] < hi, key
    assert bootstrap_ci(target, probs) == ci  # same seed, same intervals
    assert bootstrap_ci(target, probs, seed=1)["accuracy_ci"] != ci["accuracy_ci"]
    big_target, big_probs = _predictions(n=3000, seed=7)
    wide, narrow = ci, bootstrap_ci(big_target, big_probs)
    for key in ("accuracy", "macro_f1", "auc_micro"):
        assert np.diff(narrow[f"{key}_ci"])[0] < 0.5 * np.diff(wide[f"{key}_ci"])[0], key  # ~ 1 / sqrt(10)


def test_bootstrap_auc_without_negatives_is_none_not_nan():
    # one class: no (sample, class) score is a negative, so no resample has a micro AUC
    ci = bootstrap_ci([0, 0, 0], np.ones((3, 1)), resamples=50)
    assert ci["auc_micro_ci"] is None and ci["bootstrap"]["auc_resamples"] == 0
    assert ci["accuracy_ci"] == [1.0, 1.0]


@pytest.mark.parametrize("kw, message", [(dict(resamples=0), "resamples must be a positive integer"),
                                         (dict(resamples=2.5), "resamples must be a positive integer"),
                                         (dict(level=1.0), r"level must lie in \(0, 1\)")])
def test_bootstrap_rejects_bad_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci([0, 1], np.eye(2), **kw)


# --- per patient -------------------------------------------------------------------------------

def test_patient_metrics_of_a_hand_made_example():
    patients = ["A", "A", "B", "B", "B", None, "C", "", "D", "D"]
    target = [0, 0, 1, 1, 2, 2, 2, 0, 2, 1]
    probs = np.array([
        [0.7, 0.2, 0.1], [0.3, 0.5, 0.2],                   # A: true 0, mean [.5, .35, .15] -> 0 (right)
        [0.1, 0.3, 0.6], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3],  # B: labels 1, 1, 2 -> 1; mean -> 2 (wrong)
        [0.0, 0.0, 1.0],                                    # no patient id: left out
        [0.1, 0.1, 0.8],                                    # C: true 2 -> 2 (right)
        [1.0, 0.0, 0.0],                                    # "" is no patient id either
        [0.1, 0.8, 0.1], [0.2, 0.7, 0.1],                   # D: labels 2, 1 (a tie) -> 1; mean -> 1 (right)
    ])
    m = patient_metrics(target, probs, patients, ["a", "b", "c"], resamples=100)
    assert (m["patients"], m["images"], m["images_without_patient"], m["mixed_label_patients"]) == (4, 8, 2, 2)
    assert m["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == 0.75 and m["sensitivity"] == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert m["class_names"] == ["a", "b", "c"] and m["bootstrap"]["resamples"] == 100
    lo, hi = m["accuracy_ci"]
    assert 0 <= lo <= 0.75 <= hi <= 1
    # the per-patient scores are those of the patients' mean probabilities
    again = classification_metrics([0, 1, 2, 1], [[0.5, 0.35, 0.15], [0.4 / 3, 1.1 / 3, 0.5], [0.1, 0.1, 0.8],
                                                  [0.15, 0.75, 0.1]], ["a", "b", "c"])
    for key, value in again.items():
        assert m[key] == (pytest.approx(value, abs=1e-12) if isinstance(value, float) else value), key


def test_patient_metrics_without_patient_ids_is_none():
    assert patient_metrics([0, 1], np.eye(2), [None, ""]) is None
    with pytest.raises(ValueError, match="patients has 1 entries but target has 2"):
        patient_metrics([0, 1], np.eye(2), ["A"])


def test_class_precision_recall_leaves_undefined_classes_undefined():
    from walnet.engine.metrics import class_precision_recall

    # rows true, columns predicted: class 2 has no sample and is never predicted; class 1 is never predicted
    confusion = [[3, 0, 0], [2, 0, 0], [0, 0, 0]]
    precision, recall = class_precision_recall(confusion)
    assert precision == [0.6, None, None] and recall == [1.0, 0.0, None]
    # the same rule as classification_metrics' sensitivity
    m = classification_metrics(np.array([0, 0, 0, 1, 1]), np.eye(3)[[0, 0, 0, 0, 0]])
    assert list(m["sensitivity"].values()) == recall


def test_box_recall_and_precision_on_a_hand_checked_mask():
    from walnet.engine.metrics import box_recall_precision

    truth = np.zeros((6, 8), dtype=bool)
    truth[1:4, 2:6] = True  # a 3 x 4 plaque: 12 pixels
    # the box (y1, x1, y2, x2) = (2, 3, 4, 6), inclusive: 3 x 4 = 12 pixels, of which rows 2-3 and
    # columns 3-5 are plaque: 2 x 3 = 6 pixels
    recall, precision = box_recall_precision((2, 3, 4, 6), truth)
    assert recall == 6 / 12 and precision == 6 / 12
    assert box_recall_precision((0, 0, 5, 7), truth) == (1.0, 12 / 48)  # the whole image: all of it, diluted
    assert box_recall_precision((1, 2, 3, 5), truth) == (1.0, 1.0)  # the plaque's own box
    assert box_recall_precision((5, 0, 5, 0), truth) == (0.0, 0.0)  # a corner the plaque misses
    assert box_recall_precision((0, 0, 1, 1), np.zeros((6, 8))) is None  # nothing to find
    with pytest.raises(ValueError, match="does not lie on a mask"):
        box_recall_precision((0, 0, 6, 1), truth)
