"""``walnet experiment``: aggregation over seeds, table files, presets, and a tiny end-to-end run."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from walnet import cli
from walnet.engine import experiment
from walnet.engine.config import EvalConfig, TrainConfig
from walnet.engine.experiment import (PAPER_METRICS, TABLES, aggregate, metric_value, per_class_metrics, run_experiment,
                                      to_markdown, write_csv)
from walnet.models import model_names

ROOT = Path(__file__).resolve().parents[1]
KEYS = [k for k, _ in PAPER_METRICS]


def _runs(seed=0):
    rng = np.random.default_rng(seed)
    runs = []
    for config, n in (("a", 5), ("b", 3), ("c", 1)):
        for s in range(n):
            runs.append({"config": config, "seed": s, **{k: float(rng.uniform(0.5, 0.9)) for k in KEYS},
                         "auc_micro": 0.5})
    return runs


def test_aggregate_matches_numpy():
    runs = _runs()
    rows = aggregate(runs, KEYS, labels={"a": "Method A"})
    assert [r["config"] for r in rows] == ["a", "b", "c"]
    assert [r["label"] for r in rows] == ["Method A", "b", "c"]
    assert [r["n_seeds"] for r in rows] == [5, 3, 1]
    for row in rows:
        for key in KEYS:
            values = np.array([r[key] for r in runs if r["config"] == row["config"]])
            assert row[f"{key}_mean"] == pytest.approx(values.mean(), abs=1e-12)
            if len(values) > 1:
                assert row[f"{key}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
            else:
                assert math.isnan(row[f"{key}_std"])  # one seed: no sample std
    assert "auc_micro_mean" not in rows[0]  # only the requested metrics


def test_aggregate_missing_metric_is_nan():
    rows = aggregate([{"config": "x", "accuracy": 0.5}, {"config": "x", "accuracy": 0.7}], ["accuracy", "kappa"])
    assert rows[0]["accuracy_mean"] == pytest.approx(0.6) and math.isnan(rows[0]["kappa_mean"])


def test_markdown_shape_and_cells():
    runs = [{"config": c, "seed": s, **{k: v for k in KEYS}}
            for c, vals in (("p", (0.80, 0.82)), ("q", (0.90, 0.86)), ("r", (0.70, 0.70))) for s, v in enumerate(vals)]
    rows = aggregate(runs, KEYS, labels={"p": "P", "q": "WAL-Net", "r": "R"})
    md = to_markdown(rows, title="Table X")
    lines = md.strip().splitlines()
    assert lines[0] == "Table X; mean (sample std) over 2 seed(s)."
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| Method | Accuracy ↑ | F1-score ↑ | Kappa ↑ | Precision ↑ | Recall ↑ |"
    assert len(table) == 2 + 3 and all(line.count("|") == 7 for line in table)
    cells = [c.strip() for c in table[3].strip("|").split("|")]
    assert cells[0] == "WAL-Net" and cells[1] == f"**0.880** ({np.std([0.90, 0.86], ddof=1):.3f})"  # best: bold
    assert [c.strip() for c in table[2].strip("|").split("|")][1] == "<u>0.810</u> (0.014)"        # 2nd: underline
    assert [c.strip() for c in table[4].strip("|").split("|")][1] == "0.700 (0.000)"
    # a single seed has no std; unequal seed counts get a Seeds column
    one = to_markdown(aggregate(runs[:3], KEYS))
    assert "(–)" in one and one.splitlines()[0].endswith("| Seeds |")


def test_csv_shape(tmp_path):
    rows = aggregate(_runs(), KEYS)
    path = write_csv(rows, tmp_path / "t.csv", KEYS)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        data = list(reader)
    assert reader.fieldnames == ["config", "label", "n_seeds"] + [f"{k}_{s}" for k in KEYS for s in ("mean", "std")]
    assert [d["config"] for d in data] == ["a", "b", "c"] and [d["n_seeds"] for d in data] == ["5", "3", "1"]
    assert float(data[0]["accuracy_mean"]) == pytest.approx(rows[0]["accuracy_mean"])
    assert data[2]["accuracy_std"] == ""  # undefined std of one seed


def _scored(config, seed, sens, spec):
    """A metrics.json as `walnet evaluate` writes it: flat scores, nested per-class dicts, lists."""
    return {"config": config, "seed": seed, **{k: 0.8 for k in KEYS}, "macro_specificity": float(np.mean(spec)),
            "auc_macro": 0.75 + 0.1 * seed, "sensitivity_ci": {"a": [0.1, 0.9], "b": None}, "brier": 0.3,
            "calibration": {"bins": 15, "count": [0] * 15},
            "sensitivity": dict(zip("ab", sens)), "specificity": dict(zip("ab", spec)), "class_names": ["a", "b"],
            "accuracy_ci": [0.7, 0.9], "confusion": [[1, 0], [0, 1]], "bootstrap": {"seed": 0},
            "patient": {"accuracy": 0.5, "sensitivity": {"a": 1.0}}}


def test_per_class_metrics_are_aggregated_from_nested_dicts(tmp_path):
    runs = [_scored("x", 0, (0.5, 1.0), (0.25, 0.75)), _scored("x", 1, (0.7, None), (0.75, 0.25))]
    assert metric_value(runs[0], "sensitivity/b") == 1.0 and metric_value(runs[1], "sensitivity/b") is None
    assert metric_value(runs[0], "sensitivity/c") is None and metric_value(runs[0], "patient/accuracy") == 0.5
    with pytest.raises(ValueError, match="metric 'sensitivity' is dict, not a number; name one of its entries, "
                                         "e.g. sensitivity/a"):
        metric_value(runs[0], "sensitivity")
    per_class = per_class_metrics(runs)
    assert per_class == [("sensitivity/a", "Sensitivity a"), ("sensitivity/b", "Sensitivity b"),
                         ("specificity/a", "Specificity a"), ("specificity/b", "Specificity b")]
    keys = KEYS + ["macro_specificity"] + [k for k, _ in per_class]
    (row,) = aggregate(runs, keys)
    assert row["sensitivity/a_mean"] == pytest.approx(0.6) and row["sensitivity/a_std"] == pytest.approx(
        np.std([0.5, 0.7], ddof=1))
    assert row["sensitivity/b_mean"] == 1.0 and math.isnan(row["sensitivity/b_std"])  # undefined in one run
    assert row["macro_specificity_mean"] == pytest.approx(0.5)
    with open(write_csv([row], tmp_path / "t.csv", keys), newline="") as f:
        (line,) = list(csv.DictReader(f))
    assert float(line["specificity/b_mean"]) == pytest.approx(0.5) and line["sensitivity/b_std"] == ""
    md = to_markdown([{**row, "label": "X"}], per_class)
    assert md.splitlines()[0] == "| Method | Sensitivity a ↑ | Sensitivity b ↑ | Specificity a ↑ | Specificity b ↑ |"
    # runs without per-class dicts (metrics.json of an older walnet) add no columns
    assert per_class_metrics([{"config": "x", "accuracy": 0.5, "class_names": ["a", "b"]}]) == []


def _scoring(scores):
    """A stand-in for evaluate_run: writes the next of `scores` as the run's metrics.json (as
    evaluate does) and returns it."""
    scores = iter(scores)

    def evaluate_run(config):
        result = next(scores)
        (Path(config.checkpoint).parent / "metrics.json").write_text(json.dumps(result))
        return result

    return evaluate_run


def test_experiment_tables_hold_the_paper_columns_and_sensitivity_specificity(tmp_path, monkeypatch):
    from walnet.engine import evaluation, trainer

    scores = [_scored("walnet", 0, (0.5, 1.0), (0.25, 0.75)), _scored("walnet", 1, (0.7, 0.9), (0.75, 0.25))]
    monkeypatch.setattr(trainer, "train", lambda config: (Path(config.output) / "best.pt").write_bytes(b""))
    monkeypatch.setattr(evaluation, "evaluate_run", _scoring(scores))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n")
    out = tmp_path / "exp"
    run_experiment(["walnet"], out, seeds=[0, 1],
                   train=TrainConfig(csv=csv_path, output=tmp_path, backbone="resnet18", device="cpu"))
    md = (out / "experiment.md").read_text()
    assert ("| Method | Accuracy ↑ | F1-score ↑ | Kappa ↑ | Precision ↑ | Recall ↑ | Specificity ↑ | Macro AUC ↑ |"
            in md)
    assert "| Method | Sensitivity a ↑ | Sensitivity b ↑ | Specificity a ↑ | Specificity b ↑ |" in md
    assert "| walnet | 0.600 (0.141) | 0.950 (0.071) | 0.500 (0.354) | 0.500 (0.354) |" in md
    with open(out / "experiment.csv", newline="") as f:
        reader = csv.DictReader(f)
        (row,) = list(reader)
    assert reader.fieldnames[3:] == [f"{k}_{s}" for k in KEYS + ["macro_specificity", "auc_macro", "sensitivity/a",
                                                                 "sensitivity/b", "specificity/a", "specificity/b"]
                                     for s in ("mean", "std")]
    assert float(row["sensitivity/b_mean"]) == pytest.approx(0.95)
    assert float(row["auc_macro_mean"]) == pytest.approx(0.8)
    with open(out / "experiment_runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert [(r["seed"], r["sensitivity/a"], r["specificity/b"]) for r in runs] == [("0", "0.5", "0.75"),
                                                                                  ("1", "0.7", "0.25")]


def test_presets_follow_the_paper():
    assert set(TABLES) == {"table1", "table2", "table3"}
    assert [label for _, label in TABLES["table1"].rows] == [
        "ConvNext-V2", "DPN", "RepVit", "Sequencer", "RexNet", "Res2Net", "ResNeSt", "WAL-Net (Ours)"]
    assert TABLES["table2"].rows == (("walnet_no_pgm", "w/o RCM & PGM"), ("walnet_no_rcm", "w/o RCM"),
                                     ("walnet", "WAL-Net"))
    assert [label for _, label in TABLES["table3"].rows] == ["rwm", "bg rm", "bg rm & crop", "crop", "dilated crop"]
    for preset in TABLES.values():
        assert all(model in model_names() for model, _ in preset.rows)
    assert [name for _, name in PAPER_METRICS] == ["Accuracy", "F1-score", "Kappa", "Precision", "Recall"]


def test_cli_builds_the_templates_from_the_train_and_evaluate_options(monkeypatch):
    calls = []
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **kw: calls.append((a, kw)))
    assert cli.main(["experiment", "--table", "table2", "--csv", "x.csv", "--output", "o", "--epochs", "3", "-b", "4",
                     "--pretrained", "--device", "cpu", "--no-figures"]) == 0
    (configs, output), kw = calls[0]
    assert configs == TABLES["table2"].rows and output == "o" and kw["seeds"] == [0, 1, 2, 3, 4]
    # the given options, every other one at the train / evaluate default
    assert kw["train"] == TrainConfig(csv="x.csv", output="o", epochs=3, batch_size=4, pretrained=True, device="cpu")
    assert kw["evaluate"] == EvalConfig(checkpoint="best.pt", csv="x.csv", device="cpu", figures=False)
    with pytest.raises(SystemExit):  # the experiment sets the model itself
        cli.build_parser().parse_args(["experiment", "--table", "table1", "--csv", "x", "--output", "o",
                                       "--model", "m"])


def test_run_experiment_rejects_unknown_models(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        run_experiment(["walnet", "nonet"], tmp_path, seeds=[0], train=TrainConfig(csv="x.csv", output=tmp_path))


def test_run_experiment_refuses_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="torchrun"):
        run_experiment(["walnet"], tmp_path, seeds=[0], train=TrainConfig(csv="x.csv", output=tmp_path))


def test_experiment_end_to_end_reuses_and_resumes(tmp_path, caplog):
    from walnet.data import phantom

    csv_path = phantom.generate(tmp_path / "ph", n=30, seed=0, size=48)
    out = tmp_path / "exp"
    flags = ["--epochs", "1", "--backbone", "resnet18", "--attention-channels", "8", "--size", "48", "-b", "8",
             "--rcm-warmup", "0", "--device", "cpu"]
    # the same settings as templates for the Python API; figures are not what this test checks
    train = TrainConfig(csv=csv_path, output=out, epochs=1, backbone="resnet18", attention_channels=8, size=48,
                        batch_size=8, rcm_warmup=0, device="cpu")
    evaluate = EvalConfig(checkpoint="best.pt", csv=csv_path, device="cpu", figures=False)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "walnet", "experiment", "--models", "walnet_no_pgm,walnet_no_rcm",
                           "--seeds", "0,1", "--csv", str(csv_path), "--output", str(out), *flags, "--no-figures"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| Method | Accuracy ↑" in done.stdout and "walnet_no_rcm" in done.stdout
    runs = [out / "runs" / m / f"seed{s}" for m in ("walnet_no_pgm", "walnet_no_rcm") for s in (0, 1)]
    for run in runs:
        for name in ("args.json", "split.csv", "best.pt", "last.pt", "metrics.json"):
            assert (run / name).is_file(), run / name
    for name in ("experiment.csv", "experiment.md", "experiment_runs.csv"):
        assert (out / name).is_file(), name
    with open(out / "experiment.csv", newline="") as f:
        first = list(csv.DictReader(f))
    assert [r["config"] for r in first] == ["walnet_no_pgm", "walnet_no_rcm"] and {r["n_seeds"] for r in first} == {"2"}
    with open(out / "experiment_runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4

    # the same experiment again: finished runs are reused; a run without metrics.json resumes
    mtimes = {run: (run / "metrics.json").stat().st_mtime_ns for run in runs}
    (runs[-1] / "metrics.json").unlink()
    last_mtime = (runs[-1] / "last.pt").stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="walnet")
    caplog.clear()
    rows = run_experiment(["walnet_no_pgm", "walnet_no_rcm"], out, seeds=[0, 1], train=train, evaluate=evaluate)
    log = caplog.text
    assert log.count("reusing finished run") == 3 and log.count("resuming interrupted run") == 1
    assert "training into" not in log and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for run in runs[:-1]:
        assert (run / "metrics.json").stat().st_mtime_ns == mtimes[run]
    assert (runs[-1] / "metrics.json").is_file()
    assert (runs[-1] / "last.pt").stat().st_mtime_ns == last_mtime  # all epochs were done: no training
    with open(out / "experiment.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert again == first  # the rescored run gives the same numbers
    assert [r["n_seeds"] for r in rows] == [2, 2]

    # a finished run of other settings is not averaged with the others: an error naming it
    with pytest.raises(ValueError, match=f"the finished run {runs[0]} is not a run of this experiment: --epochs 2 "
                                         "differs from the run's 1; delete it"):
        run_experiment(["walnet_no_pgm"], out, seeds=[0], train=replace(train, epochs=2), evaluate=evaluate)


def test_experiment_holds_each_run_folder_from_training_to_scoring(tmp_path, monkeypatch):
    """While a run is trained and scored its folder is locked by the experiment, so a second
    experiment (or train) into it stops instead of resuming it too."""
    from walnet.engine import evaluation, lock, trainer

    seen = []

    def fake_train(config):
        seen.append(("train", json.loads((Path(config.output) / lock.LOCK_NAME).read_text())["pid"]))
        (Path(config.output) / "last.pt").write_bytes(b"")

    def fake_evaluate(config):
        seen.append(("evaluate", json.loads((Path(config.checkpoint).parent / lock.LOCK_NAME).read_text())["pid"]))
        return _scoring([{k: 0.5 for k in KEYS}])(config)

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(evaluation, "evaluate_run", fake_evaluate)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n")
    run_experiment(["walnet"], tmp_path / "exp", seeds=[0],
                   train=TrainConfig(csv=csv_path, output=tmp_path, backbone="resnet18", device="cpu"))
    assert seen == [("train", os.getpid()), ("evaluate", os.getpid())]
    assert not (tmp_path / "exp" / "runs" / "walnet" / "seed0" / lock.LOCK_NAME).exists()


def test_a_second_experiment_stops_at_a_run_another_one_holds(tmp_path, monkeypatch):
    import socket

    from walnet.engine import lock, trainer

    monkeypatch.setattr(trainer, "train", lambda config: pytest.fail(f"trained {config.output}"))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n")
    held = tmp_path / "exp" / "runs" / "walnet" / "seed0"
    held.mkdir(parents=True)
    (held / "last.pt").write_bytes(b"")  # an interrupted run: this experiment would resume it
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        (held / lock.LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(lock.RunLockedError, match=f"{held} is locked by pid {sleeper.pid}"):
            run_experiment(["walnet"], tmp_path / "exp", seeds=[0],
                           train=TrainConfig(csv=csv_path, output=tmp_path, backbone="resnet18", device="cpu"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(p.name for p in held.iterdir()) == ["last.pt", lock.LOCK_NAME]


@pytest.mark.parametrize("values, message", [
    (dict(backbone="resnet19"), "unknown backbone 'resnet19'"),
    (dict(device="gpu0"), "--device 'gpu0' is not a device"),
])
def test_experiment_checks_the_shared_settings_before_any_run(tmp_path, values, message):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n")
    with pytest.raises(ValueError, match=message):
        run_experiment(["walnet_no_pgm", "walnet"], tmp_path / "exp", seeds=[0],
                       train=TrainConfig(csv=csv_path, output=tmp_path, **values))
    assert not (tmp_path / "exp").exists()
