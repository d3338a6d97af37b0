"""``walnet experiment --folds K``: every fold of every seed is a run of its own, the tables'
mean (std) is over the folds, and the pooled out-of-fold scores are those of the folds' test
predictions together, every image once."""
from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from walnet import cli
from walnet.engine import experiment
from walnet.engine.config import EvalConfig, TrainConfig
from walnet.engine.experiment import run_experiment

from train_runs import phantom_data


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_passes_folds_and_sets_the_fold_per_run(monkeypatch):
    calls = []
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **kw: calls.append(kw))
    assert cli.main(["experiment", "--models", "walnet", "--csv", "x.csv", "--output", "o", "--folds", "5",
                     "--device", "cpu"]) == 0
    assert calls[0]["train"] == TrainConfig(csv="x.csv", output="o", folds=5, fold=0, device="cpu")
    # the experiment runs every fold itself: it offers no --fold
    parsed = cli.build_parser().parse_args(["experiment", "--models", "walnet", "--csv", "x", "--output", "o",
                                            "--folds", "5"])
    assert parsed.folds == 5 and not hasattr(parsed, "fold")


def test_experiment_runs_every_fold_and_pools_their_predictions(tmp_path_factory, tmp_path, caplog):
    data = phantom_data(tmp_path_factory)
    out = tmp_path / "exp"
    train = TrainConfig(csv=data, output=out, epochs=1, backbone="resnet18", attention_channels=8, size=32,
                        batch_size=8, rcm_warmup=0, device="cpu", folds=3, fold=0)
    evaluate = EvalConfig(checkpoint="best.pt", csv=data, device="cpu", figures=False)
    rows = run_experiment(["walnet_no_pgm"], out, seeds=[0], train=train, evaluate=evaluate)
    folds = [out / "runs" / "walnet_no_pgm" / "seed0" / f"fold{i}" for i in range(3)]
    predictions = [_rows(run / "predictions.csv") for run in folds]
    # every image of the CSV is predicted exactly once, by the fold that tested it
    listed = sorted(r["path"] for r in _rows(data))
    assert sorted(r["path"] for fold in predictions for r in fold) == listed
    for run, fold in zip(folds, predictions):
        assert sorted(r["path"] for r in fold) == sorted(r["path"] for r in _rows(run / "split.csv")
                                                         if r["split"] == "test")
    # the pooled accuracy is that of the three files together; the main table's is the folds' mean
    correct = [r["label"] == r["predicted"] for fold in predictions for r in fold]
    (pooled,) = _rows(out / "experiment_pooled.csv")
    assert float(pooled["accuracy_mean"]) == pytest.approx(np.mean(correct)) and pooled["n_seeds"] == "1"
    fold_accuracy = [np.mean([r["label"] == r["predicted"] for r in fold]) for fold in predictions]
    assert rows[0]["accuracy_mean"] == pytest.approx(np.mean(fold_accuracy))
    assert rows[0]["accuracy_std"] == pytest.approx(np.std(fold_accuracy, ddof=1)) and rows[0]["n_seeds"] == 3
    assert [(r["seed"], r["fold"]) for r in _rows(out / "experiment_runs.csv")] == [("0", "0"), ("0", "1"),
                                                                                   ("0", "2")]
    markdown = (out / "experiment.md").read_text()
    assert "mean (sample std) over 3 runs (3 folds x 1 seed(s))" in markdown
    assert "Pooled out-of-fold scores" in markdown and f"{float(pooled['accuracy_mean']):.3f}" in markdown
    # again: every fold run is reused; one without its predictions is scored again, not retrained
    (folds[1] / "predictions.csv").unlink()
    caplog.set_level(logging.INFO, logger="walnet")
    run_experiment(["walnet_no_pgm"], out, seeds=[0], train=train, evaluate=evaluate)
    assert caplog.text.count("reusing finished run") == 2 and caplog.text.count("resuming interrupted run") == 1
    assert "training into" not in caplog.text
    assert _rows(folds[1] / "predictions.csv") == predictions[1]
