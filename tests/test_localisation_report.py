"""benchmarks/localisation_report.py on a made-up ablation folder (scores already saved)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks import localisation_report as report
from walnet.constants import PLAQUE_CLASSES


def _predictions(path, labels, predicted, images):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "frame", "patient", "label", "predicted", *(f"prob_{c}" for c in PLAQUE_CLASSES)])
        for name, y, p in zip(images, labels, predicted):
            w.writerow([name, "", "", PLAQUE_CLASSES[y], PLAQUE_CLASSES[p], *np.eye(3)[p]])


def _ablation(root, setting, share, correct):
    """A setting whose variants are right on the images `correct[config][seed]` marks."""
    base = root / setting
    (base / "phantom").mkdir(parents=True)
    (base / "phantom" / "labels.csv").write_text(f"path,label,plaque_share\na.png,hyperechoic,{share}\n")
    (base / "t2").mkdir()
    (base / "t2" / "table2.md").write_text("Table 2: caption\n\n| Method | Accuracy |\n|---|---:|\n\nPer-class\n")
    labels = np.array([0, 1, 2, 1, 0, 2, 1, 1])
    images = [f"images/{i}.png" for i in range(labels.size)]
    for variant, seeds in correct.items():
        for seed, right in seeds.items():
            run = report._run_dir(base, variant, seed)
            run.mkdir(parents=True)
            scores = {"accuracy": float(np.mean(right)), "macro_f1": 0.5, "epoch": 7}
            if variant == "walnet":
                scores.update(box_recall=0.5, box_precision=0.25)
            (run / "metrics.json").write_text(json.dumps(scores))
            predicted = np.where(right, labels, (labels + 1) % 3)
            _predictions(base / "scores" / f"{variant}_{seed}" / "predictions.csv", labels, predicted, images)


def test_report_pairs_the_variants_on_the_same_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    correct = {config: {s: rng.random(8) < 0.6 for s in ("seed0", "seed1")} for config, _ in report.VARIANTS}
    _ablation(tmp_path, "small", 0.04, correct)
    _ablation(tmp_path, "large", 0.25, correct)
    figure = tmp_path / "fig.png"
    assert report.main([str(tmp_path), "--figure", str(figure), "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    assert "Plaques of 4.0 % of the image on average (small)" in text and "(large)" in text
    assert "| Method | Accuracy |" in text and "Per-class" not in text  # the experiment's main table
    for a, b in report.PAIRS:
        pooled = np.mean(np.concatenate([correct[a][s].astype(float) - correct[b][s] for s in ("seed0", "seed1")]))
        row = next(line for line in text.splitlines() if line.startswith(f"| {report.LABEL[a]} − {report.LABEL[b]} |"))
        assert row.split("|")[2].strip().startswith(f"{pooled:+.3f} [")
    walnet_row = next(line for line in text.splitlines() if line.startswith("| WAL-Net |"))
    accuracy = [np.mean(correct["walnet"][s]) for s in ("seed0", "seed1")]
    assert walnet_row.split("|")[2].strip() == f"{np.mean(accuracy):.3f} ({np.std(accuracy, ddof=1):.3f})"
    assert walnet_row.split("|")[4:6] == [" 0.500 (0.000) ", " 0.250 (0.000) "] and walnet_row.endswith("| 7, 7 |")
    assert "| w/o RCM | " in text and "| – | – | – | – | 7, 7 |" in text  # no RCM: no box to score
    assert figure.is_file() and figure.stat().st_size > 1000


def test_report_leaves_out_a_missing_control(tmp_path, capsys):
    right = {variant: {"seed0": np.ones(8, bool), "seed1": np.ones(8, bool)} for variant, _ in report.VARIANTS[:3]}
    _ablation(tmp_path, "medium", 0.1, right)
    assert report.main([str(tmp_path), "--resamples", "50"]) == 0
    text = capsys.readouterr().out
    assert "| WAL-Net − w/o RCM | +0.000 [+0.000, +0.000]" in text and "true ROI" not in text


def test_report_refuses_unpaired_runs(tmp_path):
    right = {config: {"seed0": np.ones(8, bool)} for config, _ in report.VARIANTS}
    _ablation(tmp_path, "small", 0.04, right)
    moved = tmp_path / "small" / "scores" / "walnet_seed0" / "predictions.csv"
    moved.write_text(moved.read_text().replace("images/0.png", "images/other.png"))
    with pytest.raises(ValueError, match="not tested on the same images"):
        report.main([str(tmp_path)])
