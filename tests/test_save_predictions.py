"""``walnet evaluate --save-predictions FILE``: one row per scored image with its path, patient,
label, predicted class and probabilities, equal to ``walnet predict``'s; written atomically,
never over an input or a file evaluate writes, and matched to the images by dataset index."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from walnet import cli
from walnet.data import Record
from walnet.engine import trainer
from walnet.engine.config import EvalConfig
from walnet.engine.evaluation import evaluate_run
from walnet.engine.predictions import read_predictions, write_predictions
from walnet.engine.trainer import train

from train_runs import phantom_data, run_config

CLASSES = ["hyperechoic", "hypoechoic", "mixed-echoic"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A copy of the phantom and a run on it whose epochs do not train (the initial weights are
    a model as good as any for comparing two ways of running it)."""
    root = tmp_path_factory.mktemp("pred")
    data = phantom_data(tmp_path_factory)
    shutil.copytree(data.parent, root / "data")
    patch = pytest.MonkeyPatch()
    patch.setattr(trainer, "train_one_epoch",
                  lambda *a, **kw: {"loss": 1.0, "cls_loss": 0.6, "seg_loss": 0.4, "accuracy": 0.5})
    patch.setattr(trainer, "evaluate", lambda *a, **kw: dict(accuracy=0.5, macro_f1=0.5, kappa=0.0, auc_micro=0.5,
                                                             loss=1.1))
    try:
        train(run_config(root / "data" / "labels.csv", root / "run", epochs=1))
    finally:
        patch.undo()
    return root


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_saved_predictions_equal_predict_and_match_the_csv(world, tmp_path):
    labels = world / "data" / "labels.csv"
    saved = tmp_path / "out" / "predictions.csv"
    result = evaluate_run(EvalConfig(checkpoint=world / "run" / "best.pt", csv=labels, device="cpu", figures=False,
                                     output=tmp_path / "eval", save_predictions=saved))
    rows = _rows(saved)
    assert list(rows[0]) == ["path", "frame", "patient", "label", "predicted", *(f"prob_{c}" for c in CLASSES)]
    test = sorted(r["path"] for r in _rows(world / "run" / "split.csv") if r["split"] == "test")
    assert sorted(r["path"] for r in rows) == test and len(rows) == result["images"]
    listed = {r["path"]: r for r in _rows(labels)}
    for r in rows:
        assert (r["label"], r["patient"], r["frame"]) == (listed[r["path"]]["label"], listed[r["path"]]["patient_id"],
                                                           "")
    # walnet predict on the same images (their CSV rows), with the same checkpoint
    subset = tmp_path / "test.csv"
    with open(subset, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label"])
        writer.writeheader()
        writer.writerows({"path": str(labels.parent / r["path"]), "label": r["label"]} for r in rows)
    assert cli.main(["predict", "--checkpoint", str(world / "run" / "best.pt"), "--csv", str(subset), "--output",
                     str(tmp_path / "predict.csv"), "--device", "cpu"]) == 0
    predicted = {str(Path(r["path"]).resolve()): r for r in _rows(tmp_path / "predict.csv")}
    for r in rows:
        other = predicted[str((labels.parent / r["path"]).resolve())]
        assert r["predicted"] == other["predicted"]
        np.testing.assert_allclose([float(r[f"prob_{c}"]) for c in CLASSES],
                                   [float(other[f"prob_{c}"]) for c in CLASSES], rtol=0, atol=1e-6)
    # the accuracy of metrics.json is that of the saved rows
    assert result["accuracy"] == pytest.approx(np.mean([r["label"] == r["predicted"] for r in rows]))
    keys, targets, probs = read_predictions(saved, CLASSES)
    assert keys == [r["path"] for r in rows] and list(targets) == [CLASSES.index(r["label"]) for r in rows]


def test_rows_are_matched_to_images_by_dataset_index(tmp_path):
    records = [Record(tmp_path / f"{i}.png", i % 3, patient=p, root=tmp_path) for i, p in
               enumerate(["P1", None, "=P2", "P3"])]
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    order = np.array([2, 0, 3, 1])  # loader order: item 2 first ...
    write_predictions(tmp_path / "p.csv", records, order, probs, CLASSES)
    rows = _rows(tmp_path / "p.csv")
    assert [r["path"] for r in rows] == ["0.png", "1.png", "2.png", "3.png"]
    assert [r["patient"] for r in rows] == ["P1", "", "'=P2", "P3"]  # never a spreadsheet formula
    assert [r["label"] for r in rows] == [CLASSES[i % 3] for i in range(4)]
    for i, r in enumerate(rows):  # row i holds the probabilities of item i
        k = int(np.flatnonzero(order == i)[0])
        assert [float(r[f"prob_{c}"]) for c in CLASSES] == list(probs[k])
        assert r["predicted"] == CLASSES[int(np.argmax(probs[k]))]


@pytest.mark.parametrize("target, message", [
    ("{data}/labels.csv", "is the --csv file"),
    ("{data}/{image}", "listed in the --csv file"),
    ("{run}/split.csv", "is the run's split"),
    ("{run}/best.pt", "is the checkpoint"),
    ("{eval}/metrics.json", "is where evaluate writes metrics.json"),
    ("{eval}", "is a folder; give the CSV file to write"),
    ("/dev/null", "is a character device, not a file"),
])
def test_a_predictions_file_over_an_input_or_an_output_is_refused(world, tmp_path, capsys, target, message):
    (tmp_path / "eval").mkdir()
    image = _rows(world / "data" / "labels.csv")[0]["path"]
    path = target.format(data=world / "data", run=world / "run", eval=tmp_path / "eval", image=image)
    before = {p: p.stat().st_mtime_ns for p in (world / "run").iterdir()}
    argv = ["evaluate", "--checkpoint", str(world / "run" / "best.pt"), "--csv", str(world / "data" / "labels.csv"),
            "--device", "cpu", "--no-figures", "--output", str(tmp_path / "eval"), "--save-predictions", path]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("walnet evaluate: error: --save-predictions") and message in err
    assert list((tmp_path / "eval").iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in (world / "run").iterdir()} == before
