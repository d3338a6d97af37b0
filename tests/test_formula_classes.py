"""Nothing that a spreadsheet reads as a formula (a cell starting with =, +, -, @, a tab or a
carriage return) reaches ``walnet predict``'s CSV: class names are refused where they enter
(``--classes``, class folders, CSV labels, a checkpoint given to predict), and a relative image or
mask path starting so is written with "./" in front."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from walnet import cli
from walnet.constants import FORMULA_PREFIXES, formula_problem
from walnet.data.sources import read_csv, scan_image_folder
from walnet.engine.checkpoint import save_checkpoint
from walnet.engine.config import TrainConfig
from walnet.engine.predict import predict
from walnet.models import schema

from conftest import small_checkpoint

RULE = r"must not start with =, \+, - or @ \(a spreadsheet would read it as a formula\)"
NAMES = ["=cmd|' /C calc'!A0", "+1", "-2+3", "@SUM(A1)"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return small_checkpoint(tmp_path_factory.mktemp("formula") / "best.pt")[0]


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (40, 30), 90).save(path)
    return path


def test_one_rule_for_every_layer():
    assert schema.FORMULA_PREFIXES is FORMULA_PREFIXES
    assert all(formula_problem(p + "x") for p in FORMULA_PREFIXES) and formula_problem("x=1") is None
    assert schema.class_name_problem("@x") == formula_problem("@x")


@pytest.mark.parametrize("name", NAMES)
def test_classes_option_refuses_formula_names(name, tmp_path, capsys):
    argv = ["train", "--csv", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "run"),
            "--classes", f"soft,{name}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"walnet train: error: --classes: the class name {name!r} "), err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=rf"^--classes: the class name {re.escape(repr(name))} {RULE}$"):
        TrainConfig(csv="x.csv", output="o", classes=("soft", f" {name}"))


def test_class_folders_refuse_formula_names(tmp_path):
    _image(tmp_path / "hyperechoic" / "0.png")
    _image(tmp_path / "@hypoechoic" / "0.png")
    with pytest.raises(ValueError, match=rf"^class folder .*@hypoechoic: the label '@hypoechoic' {RULE}$"):
        scan_image_folder(tmp_path)
    with pytest.raises(ValueError, match=rf"^classes \(.*\): the class name '@hypoechoic' {RULE}$"):
        scan_image_folder(tmp_path, classes=["hyperechoic", "@hypoechoic"])


def test_csv_labels_and_classes_refuse_formula_names(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,label\na.png,hyperechoic\na.png,-hypoechoic\n")
    with pytest.raises(ValueError, match=rf"d\.csv:3: column 'label': the label '-hypoechoic' {RULE}$"):
        read_csv(tmp_path / "d.csv")
    with pytest.raises(ValueError, match=rf"the class name '\+x' {RULE}$"):
        read_csv(tmp_path / "d.csv", classes=["hyperechoic", "+x"])


def test_predict_refuses_a_checkpoint_with_formula_classes(checkpoint, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=True)
    bad = save_checkpoint(tmp_path / "formula.pt", {**state, "classes": ["hyperechoic", "=1+1", "c"]})
    image = _image(tmp_path / "scan.png")
    out = tmp_path / "p.csv"
    assert cli.main(["predict", "--checkpoint", str(bad), str(image), "--output", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == (f"walnet predict: error: checkpoint {bad}: its class name '=1+1' must not start with =, +, - "
                   "or @ (a spreadsheet would read it as a formula); predict refuses to write it into a CSV\n")
    assert not out.exists()


def test_relative_paths_starting_like_a_formula_get_dot_slash(checkpoint, tmp_path, monkeypatch):
    """An absolute path never starts with a formula character; a relative one, as the user gave it,
    can: it is written as ./<path>, the same file."""
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "=1+1.png")
    _image(tmp_path / "+folder" / "@scan.png")
    plain = _image(tmp_path / "plain.png")
    predict(checkpoint, ["=1+1.png", "+folder", plain], "p.csv", masks_dir="-masks", device="cpu")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    cells = [cell for row in rows for cell in row]
    assert not [c for c in cells if c.startswith(FORMULA_PREFIXES)], cells
    assert [r[0] for r in rows[1:]] == ["./=1+1.png", "./+folder/@scan.png", str(plain)]
    assert [r[-1] for r in rows[1:]] == ["./-masks/=1+1.png", "./-masks/@scan.png", "./-masks/plain.png"]
    assert all((tmp_path / r[0]).is_file() and (tmp_path / r[-1]).is_file() for r in rows[1:])
