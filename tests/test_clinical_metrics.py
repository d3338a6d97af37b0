"""What ``walnet evaluate`` adds for a clinical report: Wilson intervals against scipy, macro AUC
and the Brier score against scikit-learn, the ECE of a hand-computed case, the reliability
diagram and the printed summary."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from walnet.engine import figures
from walnet.engine.calibration_metrics import (ECE_BINS, brier_score, calibration_bins, calibration_metrics,
                                               expected_calibration_error)
from walnet.engine.evaluation import summary
from walnet.engine.metrics import (class_intervals, classification_metrics, clinical_metrics, patient_metrics,
                                   wilson_interval)

stats = pytest.importorskip("scipy.stats")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _scipy_wilson(k, n, level=0.95):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return [ci.low, ci.high]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 17, 50, 301, 1000])
def test_wilson_interval_equals_scipys(n):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        if 0 <= k <= n:
            assert wilson_interval(k, n) == pytest.approx(_scipy_wilson(k, n), abs=1e-12), (k, n)
    assert wilson_interval(n // 2, n, 0.8) == pytest.approx(_scipy_wilson(n // 2, n, 0.8), abs=1e-12)
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_wilson_interval_undefined_and_bad_arguments():
    assert wilson_interval(0, 0) is None
    for k, n in ((3, 2), (-1, 2)):
        with pytest.raises(ValueError, match="0 <= successes <= trials"):
            wilson_interval(k, n)
    with pytest.raises(ValueError, match="level must lie in"):
        wilson_interval(1, 2, 1.0)


def test_class_intervals_count_each_class_against_the_rest():
    # rows true, columns predicted; class c has no sample (no positives)
    cm = np.array([[5, 2, 1], [3, 7, 0], [0, 0, 0]])
    ci = class_intervals(cm, ["a", "b", "c"])
    n = cm.sum()
    # a: TP 5 of 8 positives; TN = samples neither true nor predicted a = 7 of 10 negatives
    assert ci["sensitivity_ci"]["a"] == pytest.approx(_scipy_wilson(5, 8), abs=1e-12)
    assert ci["specificity_ci"]["a"] == pytest.approx(_scipy_wilson(7, 10), abs=1e-12)
    assert ci["sensitivity_ci"]["b"] == pytest.approx(_scipy_wilson(7, 10), abs=1e-12)
    assert ci["specificity_ci"]["b"] == pytest.approx(_scipy_wilson(6, 8), abs=1e-12)
    # c has no sample: sensitivity undefined; its negatives are all 18, one predicted c
    assert ci["sensitivity_ci"]["c"] is None
    assert ci["specificity_ci"]["c"] == pytest.approx(_scipy_wilson(n - 1, n), abs=1e-12)
    # one class holding every sample: its specificity is undefined
    assert class_intervals([[4, 0], [0, 0]])["specificity_ci"]["0"] is None


def _predictions(n=300, k=3, seed=0):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[target]
    return target, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clinical_metrics_agree_with_classification_metrics_and_scipy(seed):
    target, probs = _predictions(seed=seed)
    m = classification_metrics(target, probs, list("abc"))
    clinical = clinical_metrics(target, probs, list("abc"))
    cm = np.array(m["confusion"])
    for c, name in enumerate("abc"):
        tp, pos = cm[c, c], cm[c].sum()
        tn, neg = cm.sum() - cm[c].sum() - cm[:, c].sum() + tp, cm.sum() - pos
        assert clinical["sensitivity_ci"][name] == pytest.approx(_scipy_wilson(tp, pos), abs=1e-12)
        assert clinical["specificity_ci"][name] == pytest.approx(_scipy_wilson(tn, neg), abs=1e-12)
        lo, hi = clinical["sensitivity_ci"][name]
        assert lo <= m["sensitivity"][name] <= hi
    assert set(clinical) == {"sensitivity_ci", "specificity_ci", "brier", "ece", "calibration"}
    # the macro AUC: scikit-learn's one-vs-rest macro average
    assert m["auc_macro"] == pytest.approx(
        sklearn_metrics.roc_auc_score(target, probs, multi_class="ovr", average="macro"), abs=1e-12)


def test_macro_auc_leaves_out_an_undefined_class():
    target = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1],
                      [0.1, 0.8, 0.1]])
    m = classification_metrics(target, probs)
    assert np.isnan(m["auc_per_class"]["2"])  # class 2 has no sample
    assert m["auc_macro"] == pytest.approx(np.mean([sklearn_metrics.roc_auc_score(target == c, probs[:, c])
                                                    for c in (0, 1)]), abs=1e-12)
    assert classification_metrics([0, 0], [[0.6, 0.4], [0.7, 0.3]])["auc_macro"] is None


def test_brier_score_by_hand_and_against_sklearn():
    target = [0, 2, 1]
    probs = [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.0, 1.0, 0.0]]
    # (0.09 + 0.04 + 0.01) + (0.09 + 0.09 + 0.36) + 0 = 0.14 + 0.54 + 0, over 3 images
    assert brier_score(target, probs) == pytest.approx(0.68 / 3, abs=1e-15)
    assert brier_score([0], [[0.0, 1.0]]) == pytest.approx(2.0)  # all mass on the wrong class
    # two classes: sum_k (p_k - y_k)^2 = (p1 - y1)^2 + ((1 - p1) - (1 - y1))^2 = 2 (p1 - y1)^2,
    # and scikit-learn's brier_score_loss is the mean of (p1 - y1)^2: ours is twice it
    rng = np.random.default_rng(0)
    y, p1 = rng.integers(0, 2, 50), rng.random(50)
    ours = brier_score(y, np.stack([1 - p1, p1], axis=1))
    assert ours == pytest.approx(2 * sklearn_metrics.brier_score_loss(y, p1), abs=1e-12)
    assert brier_score(np.zeros(0, int), np.zeros((0, 3))) is None


def test_ece_of_a_hand_computed_case():
    # ten images, two classes: top-label confidence and whether the argmax is right
    confidence = np.array([0.55, 0.58, 0.62, 0.65, 0.68, 0.91, 0.93, 0.95, 0.97, 0.99])
    correct = np.array([1, 0, 1, 0, 0, 1, 1, 1, 1, 0], dtype=bool)
    target = np.where(correct, 1, 0)
    probs = np.stack([1 - confidence, confidence], axis=1)  # class 1 predicted every time
    # 15 bins of width 1/15: (0.5333, 0.6] holds 0.55, 0.58; (0.6, 0.6667] 0.62, 0.65;
    # (0.6667, 0.7333] 0.68; (0.8667, 0.9333] 0.91, 0.93; (0.9333, 1] 0.95, 0.97, 0.99
    groups = [([0.55, 0.58], [1, 0]), ([0.62, 0.65], [1, 0]), ([0.68], [0]), ([0.91, 0.93], [1, 1]),
              ([0.95, 0.97, 0.99], [1, 1, 0])]
    expected = sum(len(c) / 10 * abs(np.mean(a) - np.mean(c)) for c, a in groups)
    # |0.5 - 0.565| * 0.2 + |0.5 - 0.635| * 0.2 + |0 - 0.68| * 0.1 + |1 - 0.92| * 0.2 + |2/3 - 0.97| * 0.3
    assert expected == pytest.approx(0.013 + 0.027 + 0.068 + 0.016 + 0.091, abs=1e-12)
    bins = calibration_bins(target, probs)
    assert bins["bins"] == ECE_BINS == 15
    assert bins["count"] == [0] * 8 + [2, 2, 1, 0, 0, 2, 3]
    assert bins["accuracy"][8] == 0.5 and bins["accuracy"][10] == 0.0 and bins["accuracy"][14] == pytest.approx(2 / 3)
    assert bins["confidence"][13] == pytest.approx(0.92) and bins["confidence"][0] is None
    assert expected_calibration_error(bins) == pytest.approx(expected, abs=1e-12)
    assert calibration_metrics(target, probs)["ece"] == pytest.approx(0.215, abs=1e-12)
    # perfectly confident and right: no calibration error
    assert calibration_metrics([0, 1], [[1.0, 0.0], [0.0, 1.0]])["ece"] == 0.0


def test_calibration_bins_are_closed_on_the_right():
    edges = np.linspace(0, 1, 6)  # 0, 0.2, ..., 1: bin b is (edges[b], edges[b + 1]]
    conf = np.array([edges[3], edges[4], np.nextafter(edges[4], 1), edges[5]])
    bins = calibration_bins(np.zeros(4, int), np.stack([conf, 1 - conf], axis=1), bins=5)
    assert bins["count"] == [0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        calibration_bins([0], [[1.0]], bins=0)
    empty = calibration_metrics(np.zeros(0, int), np.zeros((0, 2)))
    assert empty["brier"] is None and empty["ece"] is None and empty["calibration"]["count"] == [0] * ECE_BINS


def test_patient_metrics_carry_the_intervals_and_calibration():
    target = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1], [0.3, 0.3, 0.4],
                      [0.1, 0.1, 0.8]])
    patient = patient_metrics(target, probs, ["p", "p", "q", "q", "r", "r"], list("abc"), resamples=10)
    # one patient per class, each right with mean confidence 0.7, 0.6, 0.6
    assert patient["sensitivity_ci"]["a"] == pytest.approx(_scipy_wilson(1, 1), abs=1e-12)
    assert patient["specificity_ci"]["c"] == pytest.approx(_scipy_wilson(2, 2), abs=1e-12)
    assert patient["ece"] == pytest.approx((0.3 + 0.4 + 0.4) / 3, abs=1e-12)
    assert patient["auc_macro"] == 1.0


def test_reliability_figure(tmp_path):
    target, probs = _predictions()
    m = calibration_metrics(target, probs)
    path = tmp_path / "reliability.png"
    figures.reliability_figure(path, m["calibration"], m["ece"], title="R (test)")
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert 300 <= img.size[0] <= 2000 and 300 <= img.size[1] <= 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reliability.png"]  # no temporary file left
    # empty bins (and no ECE) still draw
    figures.reliability_figure(tmp_path / "empty.png", calibration_metrics([0], [[0.9, 0.1]])["calibration"])
    with pytest.raises(ValueError, match="must hold 15 counts"):
        figures.reliability_figure(tmp_path / "bad.png", {**m["calibration"], "count": [1, 2]})


def test_summary_prints_the_intervals_and_calibration():
    target, probs = _predictions(n=60)
    result = {**classification_metrics(target, probs, list("abc")), **clinical_metrics(target, probs, list("abc")),
              "split": "test", "images": 60}
    lines = summary(result)
    assert lines[1] == (f"macro AUC {result['auc_macro']:.3f}, Brier {result['brier']:.3f}, ECE {result['ece']:.3f} "
                        "(15 confidence bins)")
    assert lines[2] == "sensitivity / specificity [95% Wilson intervals]:"
    lo, hi = result["sensitivity_ci"]["b"]
    assert f"  b {result['sensitivity']['b']:.3f} [{lo:.3f}, {hi:.3f}] / " in lines[4]
    # a metrics dict without the new keys (older walnet) prints as before, undefined values as n/a
    old = {k: v for k, v in result.items() if k not in ("brier", "ece", "calibration", "sensitivity_ci",
                                                         "specificity_ci")}
    old["sensitivity"] = {**old["sensitivity"], "c": None}
    lines = summary(old)
    assert lines[1] == "sensitivity / specificity:" and lines[4].startswith("  c n/a / ")


def test_model_card_shows_the_intervals_and_calibration(tmp_path):

    from conftest import CLASSES, small_checkpoint
    from walnet.engine.export import export_model
    from walnet.engine.metrics import bootstrap_ci

    target, probs = _predictions(n=80)
    metrics = {**classification_metrics(target, probs, CLASSES), **clinical_metrics(target, probs, CLASSES),
               **bootstrap_ci(target, probs, resamples=50), "split": "test", "images": 80, "epoch": 0}
    ckpt, _ = small_checkpoint(tmp_path / "run" / "best.pt")
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    export_model(ckpt, tmp_path / "model")
    card = (tmp_path / "model" / "README.md").read_text()
    lo, hi = metrics["accuracy_ci"]
    for text in (f"| accuracy | {metrics['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] |",
                 f"| ROC-AUC (macro) | {metrics['auc_macro']:.3f} |", f"| Brier score (multi-class) | "
                 f"{metrics['brier']:.3f} |", f"| expected calibration error | {metrics['ece']:.3f} |",
                 "95% percentile-bootstrap intervals", "over 15 equal-width confidence bins",
                 "| class | images | precision | sensitivity (recall) | specificity | ROC-AUC |",
                 "Sensitivity and specificity [lo, hi]: 95% Wilson score intervals."):
        assert text in card, text
    assert card.count("Confusion matrix (rows: true class") == 1
    cm = np.array(metrics["confusion"])
    for c, name in enumerate(CLASSES):  # each row's intervals: scipy's, from the confusion matrix
        tp, pos = cm[c, c], cm[c].sum()
        tn, neg = cm.sum() - pos - cm[:, c].sum() + tp, cm.sum() - pos
        sens, spec = _scipy_wilson(tp, pos), _scipy_wilson(tn, neg)
        assert (f"| {tp / pos:.3f} [{sens[0]:.3f}, {sens[1]:.3f}] | {tn / neg:.3f} [{spec[0]:.3f}, {spec[1]:.3f}] | "
                f"{metrics['auc_per_class'][name]:.3f} |") in card, name


def test_experiment_reads_a_metrics_json_with_the_clinical_keys(tmp_path):
    from walnet.engine.experiment import CLINICAL_METRICS, aggregate, read_metrics
    from walnet.engine.metrics import bootstrap_ci

    keys = ("accuracy", "macro_f1", "kappa", "macro_precision", "macro_recall", "macro_specificity", "auc_macro")
    assert ("auc_macro", "Macro AUC") in CLINICAL_METRICS
    target, probs = _predictions(n=40)
    metrics = {**classification_metrics(target, probs, list("abc")), **clinical_metrics(target, probs, list("abc")),
               **bootstrap_ci(target, probs, resamples=20)}
    metrics["sensitivity_ci"]["c"] = None
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    read = read_metrics(tmp_path / "metrics.json", keys)
    assert read["sensitivity_ci"] == metrics["sensitivity_ci"] and read["calibration"] == metrics["calibration"]
    # an older metrics.json without the macro AUC still reads; its column is undefined
    old = {k: v for k, v in metrics.items() if k != "auc_macro"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    rows = aggregate([{**read, "config": "x"}, {**read_metrics(tmp_path / "old.json", keys), "config": "y"}], keys)
    assert rows[0]["auc_macro_mean"] == pytest.approx(metrics["auc_macro"]) and np.isnan(rows[1]["auc_macro_mean"])
