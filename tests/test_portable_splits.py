"""A run's split.csv keys its images relative to the data root (the CSV's folder, the --data-dir
folder), so a data folder and a run folder copied elsewhere still evaluate and resume; split
files of older walnets (absolute keys) and their data.json still read. The epochs here do not
train (fixed losses and scores): the checkpoints hold the initial weights, which is all that
evaluating them needs."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from walnet.data import Record, load_split, read_csv, save_split
from walnet.data.splits import SPLIT_HEADER, data_difference, data_record
from walnet.engine.config import EvalConfig, TrainConfig
from walnet.engine.evaluation import evaluate_run
from walnet.engine.trainer import train

from train_runs import SMALL, metrics_rows, phantom_data, run_config

#: What two evaluations of one model on one split must share.
SCORED = ("images", "accuracy", "macro_f1", "kappa", "auc_micro", "confusion", "sensitivity", "specificity")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _scores(run, **data):
    result = evaluate_run(EvalConfig(checkpoint=run / "best.pt", device="cpu", figures=False, **data))
    return {k: result[k] for k in SCORED}


def _image_folder(csv_path: Path, root: Path) -> Path:
    """The phantom of `csv_path` as an ImageFolder tree ``root/<class>/<image>``."""
    for row in _rows(csv_path):
        target = root / row["label"] / Path(row["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(csv_path.parent / row["path"], target)
    return root


def test_split_csv_keys_images_relative_to_the_csv_folder(data, tmp_path, quick):
    run = tmp_path / "run"
    train(run_config(data, run, epochs=1))
    rows = _rows(run / "split.csv")
    assert tuple(rows[0]) == SPLIT_HEADER == ("path", "split", "resolved_path")
    # the CSV's own path cells (relative to its folder), and each image's absolute path
    assert sorted(r["path"] for r in rows) == sorted(r["path"] for r in _rows(data))
    assert all(r["resolved_path"] == str((data.parent / r["path"]).resolve()) for r in rows)
    assert json.loads((run / "data.json").read_text())["sha256_relative"]


def test_a_copied_csv_folder_and_run_evaluate_and_resume(data, tmp_path, quick):
    here = tmp_path / "here"
    shutil.copytree(data.parent, here / "data")
    run = here / "run"
    train(run_config(here / "data" / "labels.csv", run, epochs=1))
    before = _scores(run, csv=here / "data" / "labels.csv")
    there = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(here, there)
    here.rename(tmp_path / "gone")  # the original place no longer exists
    moved = there / "data" / "labels.csv"
    assert _scores(there / "run", csv=moved) == before
    for split in ("val", "train"):  # every split is found, not only the test images
        result = evaluate_run(EvalConfig(checkpoint=there / "run" / "best.pt", csv=moved, split=split,
                                         device="cpu", figures=False))
        assert result["images"] == sum(r["split"] == split for r in _rows(there / "run" / "split.csv"))
    split_file = (there / "run" / "split.csv").read_bytes()
    train(run_config(moved, there / "run", epochs=2, resume=str(there / "run" / "last.pt")))
    assert [r["epoch"] for r in metrics_rows(there / "run")] == ["0", "1"]
    assert (there / "run" / "split.csv").read_bytes() == split_file


def test_a_copied_image_folder_tree_and_run_evaluate_and_resume(data, tmp_path, quick):
    tree = _image_folder(data, tmp_path / "here" / "tree")
    run = tmp_path / "here" / "run"
    train(TrainConfig(data_dir=tree, output=run, epochs=1, **SMALL))
    assert {r["path"].split("/")[0] for r in _rows(run / "split.csv")} <= {"hyperechoic", "hypoechoic", "mixed-echoic"}
    before = _scores(run, data_dir=tree)
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    shutil.rmtree(tmp_path / "here")
    moved = tmp_path / "there" / "tree"
    assert _scores(tmp_path / "there" / "run", data_dir=moved) == before
    run = tmp_path / "there" / "run"
    train(TrainConfig(data_dir=moved, output=run, epochs=2, resume=str(run / "last.pt"), **SMALL))
    assert [r["epoch"] for r in metrics_rows(run)] == ["0", "1"]


def test_old_split_files_and_data_records_with_absolute_keys_still_read(data, tmp_path, quick):
    shutil.copytree(data.parent, tmp_path / "data")
    labels = tmp_path / "data" / "labels.csv"
    run = tmp_path / "run"
    train(run_config(labels, run, epochs=1))
    before = _scores(run, csv=labels)
    rows = _rows(run / "split.csv")
    # the split and the data record as an older walnet wrote them: resolved absolute paths only
    (run / "split.csv").write_text("key,split\n" + "".join(f"{r['resolved_path']},{r['split']}\n" for r in rows))
    record = json.loads((run / "data.json").read_text())
    (run / "data.json").write_text(json.dumps({k: record[k] for k in ("images", "classes", "sha256")}))
    assert load_split(run / "split.csv") == {r["resolved_path"]: r["split"] for r in rows}
    assert _scores(run, csv=labels) == before
    train(run_config(labels, run, epochs=2, resume=str(run / "last.pt")))  # the data at its place: the same
    assert [r["epoch"] for r in metrics_rows(run)] == ["0", "1"]
    # moved, such a run no longer finds its images: its keys say where they were
    (tmp_path / "data").rename(tmp_path / "moved")
    with pytest.raises(ValueError, match=r"split\.csv does not cover 40 image\(s\)"):
        _scores(run, csv=tmp_path / "moved" / "labels.csv")


def test_the_data_record_matches_the_data_at_its_place_or_moved(data, tmp_path):
    shutil.copytree(data.parent, tmp_path / "a")
    shutil.copytree(data.parent, tmp_path / "b")
    a, b = (read_csv(tmp_path / name / "labels.csv") for name in ("a", "b"))
    saved = data_record(*a)
    assert data_record(*b)["sha256"] != saved["sha256"]  # other absolute paths ...
    assert data_difference(saved, data_record(*b)) is None  # ... the same data, moved
    old = {k: saved[k] for k in ("images", "classes", "sha256")}  # an older walnet's data.json
    assert data_difference(old, data_record(*a)) is None
    assert "its data differs from the run's" in data_difference(old, data_record(*b))
    changed = [r if i else Record(r.path, (r.label + 1) % 3, r.patient, r.mask_path, root=r.root)
               for i, r in enumerate(b[0])]
    assert "its data differs" in data_difference(saved, data_record(changed, b[1]))


def test_split_file_paths_keep_frames_and_images_outside_the_root(tmp_path):
    root = tmp_path / "data"
    keys = [str(root / "a" / "loop.dcm") + "#frame=3", str(root / "b.png"), str(tmp_path / "outside.png")]
    save_split(tmp_path / "split.csv", keys, ["train", "val", "test"], root=root)
    rows = _rows(tmp_path / "split.csv")
    assert [r["path"] for r in rows] == ["a/loop.dcm#frame=3", "b.png", str((tmp_path / "outside.png").resolve())]
    assert load_split(tmp_path / "split.csv") == {str(Path(k).resolve()) if "#" not in k else k: s
                                                  for k, s in zip(keys, ["train", "val", "test"])}
    record = Record(root / "a" / "loop.dcm", 0, frame=3, root=root)
    assert record.relative_key == "a/loop.dcm#frame=3" and Record(tmp_path / "x.png", 0, root=root).relative_key \
        == str((tmp_path / "x.png").resolve())
