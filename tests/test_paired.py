"""walnet.engine.paired: paired score differences of two models over seeds x test images."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from walnet.engine.paired import PAIRED_METRICS, paired_difference


def _random_case(n=300, k=3, seed=0):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, n)
    pred_a = np.where(rng.random(n) < 0.7, target, rng.integers(0, k, n))
    pred_b = np.where(rng.random(n) < 0.6, target, rng.integers(0, k, n))
    return target, pred_a, pred_b, rng.integers(0, 3, n)


def test_point_estimates_are_the_pooled_scores():
    target, a, b, group = _random_case()
    out = paired_difference(target, a, b, group, resamples=200)
    assert out["groups"] == 3 and out["images"] == 300
    for pred, key in ((a, "a"), (b, "b")):
        assert out["accuracy"][key] == pytest.approx(accuracy_score(target, pred), abs=1e-12)
        assert out["macro_f1"][key] == pytest.approx(
            f1_score(target, pred, average="macro", labels=[0, 1, 2], zero_division=0), abs=1e-12)
    for name in PAIRED_METRICS:
        assert out[name]["difference"] == pytest.approx(out[name]["a"] - out[name]["b"], abs=1e-12)
        lo, hi = out[name]["ci"]
        assert lo < out[name]["difference"] < hi
    assert paired_difference(target, a, b, group, resamples=200) == out  # the same draws for the same seed


def test_a_class_nobody_predicts_or_has_scores_zero_f1():
    target = np.array([0, 0, 1, 1])
    out = paired_difference(target, np.array([0, 0, 1, 2]), target, np.zeros(4, int), resamples=50)
    # A: F1 1 (class 0), 2/3 (class 1), 0 (class 2: predicted, never true); B: 1, 1, 0 (no image, no prediction)
    assert out["macro_f1"]["a"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert out["macro_f1"]["b"] == pytest.approx((1 + 1) / 3)


def test_identical_and_opposite_models():
    target, a, _, group = _random_case()
    same = paired_difference(target, a, a, group, resamples=100)
    assert same["accuracy"]["difference"] == 0 and same["accuracy"]["ci"] == [0.0, 0.0]
    wrong = (target + 1) % 3
    best = paired_difference(target, target, wrong, group, resamples=100)
    assert best["accuracy"]["difference"] == 1 and best["accuracy"]["ci"] == [1.0, 1.0]


def test_image_level_interval_matches_the_normal_approximation():
    # one seed: the interval is that of the mean paired difference of N images
    rng = np.random.default_rng(3)
    n = 2000
    target = np.zeros(n, int)
    a = (rng.random(n) < 0.3).astype(int)  # A wrong on ~30% of images
    b = (rng.random(n) < 0.4).astype(int)
    out = paired_difference(target, a, b, np.zeros(n, int), resamples=4000)
    d = (a == 0).astype(float) - (b == 0).astype(float)
    half = 1.96 * d.std() / np.sqrt(n)
    lo, hi = out["accuracy"]["ci"]
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert (lo + hi) / 2 == pytest.approx(d.mean(), abs=0.2 * half)


def test_seed_level_variation_widens_the_interval():
    # A wins by 0.5 under one seed and loses by 0.5 under the other: the pooled difference is 0,
    # and a resample of the seeds may hold either one twice
    n = 200
    target = np.zeros(2 * n, int)
    half = np.arange(n) < n // 2
    a = np.concatenate([np.zeros(n, int), np.where(half, 1, 0)])
    b = np.concatenate([np.where(half, 1, 0), np.zeros(n, int)])
    group = np.repeat(["seed0", "seed1"], n)
    out = paired_difference(target, a, b, group, resamples=2000)
    assert out["accuracy"]["difference"] == 0
    lo, hi = out["accuracy"]["ci"]
    assert lo < -0.45 and hi > 0.45  # an image-level bootstrap alone would give about +-0.07


@pytest.mark.parametrize("kwargs, match", [
    ({"pred_a": np.zeros(3, int)}, "pred_a has 3 entries"),
    ({"group": np.zeros((4, 1), int)}, "group must be one-dimensional"),
    ({"pred_b": np.array([0.0, 1.0, 0.0, 1.0])}, "pred_b must hold class indices"),
    ({"target": np.array([0, -1, 0, 1])}, "target must hold class indices"),
    ({"resamples": 0}, "resamples"),
    ({"level": 1.0}, "level"),
])
def test_bad_input_is_named(kwargs, match):
    args = {"target": np.array([0, 1, 0, 1]), "pred_a": np.array([0, 1, 1, 1]), "pred_b": np.array([0, 0, 0, 1]),
            "group": np.zeros(4, int)}
    options = {k: kwargs.pop(k) for k in ("resamples", "level") if k in kwargs}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        paired_difference(args["target"], args["pred_a"], args["pred_b"], args["group"], **options)
    with pytest.raises(ValueError, match="at least one image"):
        paired_difference([], [], [], [])
