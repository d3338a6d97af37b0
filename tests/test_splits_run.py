"""A split is an invariant: one patient is in one split whatever the split comes from (a CSV
column, a run's split.csv), a run keeps its folder, split, data and settings when resumed,
evaluate scores the run's own split, and a run killed before its first checkpoint leaves no
split behind. The epochs here do not train (fixed losses and scores): what is checked is the run
folder, not the model."""
from __future__ import annotations

import json

import pytest

from walnet import cli
from walnet.data import read_csv
from walnet.engine import run_files, trainer
from walnet.engine.config import EvalConfig
from walnet.engine.evaluation import evaluate_run
from walnet.engine.trainer import train

from conftest import QUICK_SCORES
from train_runs import metrics_rows, phantom_data, rewritten_csv, run_config, split_column, split_of, train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


def _files(run):
    return {p.name: p.read_bytes() for p in run.iterdir()}


def _by_patient(i, row):
    """A split column that keeps each of the phantom's patients in one split."""
    row["split"] = ("train", "val", "test")[int(row["patient_id"][1:]) % 3]


# --- item 2: a run continues in its own folder ---------------------------------------------------

def test_resume_continues_a_run_in_its_own_folder_only(data, tmp_path, quick, capsys):
    other, run = tmp_path / "rB", tmp_path / "rA"
    train(run_config(data, other, epochs=1))
    train(run_config(data, run, epochs=1))
    before = _files(run)
    argv = train_args(data, run, "--epochs", "2", "--resume", str(other / "last.pt"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"walnet train: error: --resume {other / 'last.pt'} is not a "
                                                   f"checkpoint of --output {run}: a run continues in its own folder")
    assert _files(run) == before  # neither last.pt nor metrics.csv took the other run's epochs
    # its own last.pt, the folder spelled another way: continued (a best.pt holds no training state)
    train(run_config(data, tmp_path / "rA" / ".." / "rA", epochs=2, resume=str(run / "last.pt")))
    assert [r["epoch"] for r in metrics_rows(run)] == ["0", "1"]


# --- item 10: a resumed run keeps its settings and data; nothing to train writes nothing -----------

@pytest.mark.parametrize("values, message", [
    (dict(lr=0.01), "--lr 0.01 differs from the run's 0.0001"),
    (dict(seed=3), "--seed 3 differs from the run's 0"),
    (dict(augment=True), "--augment differs from the run's --no-augment"),
    (dict(batch_size=4, precision="bf16"), "--batch-size 4 differs from the run's 8; --precision bf16 differs from "
                                           "the run's auto"),
])
def test_resume_with_other_settings_is_an_error(data, tmp_path, quick, values, message):
    run = tmp_path / "run"
    train(run_config(data, run, epochs=1))
    before = _files(run)
    with pytest.raises(ValueError, match=f"--resume {run / 'last.pt'}: {message}; resume with the run's settings"):
        train(run_config(data, run, epochs=2, resume=str(run / "last.pt"), **values))
    assert _files(run) == before


def test_resume_records_what_may_change_and_nothing_to_train_writes_nothing(data, tmp_path, quick, caplog):
    run = tmp_path / "run"
    train(run_config(data, run, epochs=1))
    before = _files(run)
    caplog.set_level("INFO", logger="walnet")
    assert train(run_config(data, run, epochs=1, resume=str(run / "last.pt"), workers=0)) == {}
    assert f"{run / 'last.pt'} has trained 1 epoch(s), --epochs 1: nothing to train" in caplog.text
    assert _files(run) == before  # args.json keeps the run's settings
    # more epochs, other runtime settings and the same data through another CSV: continued, recorded
    same = rewritten_csv(data, tmp_path / "same.csv", lambda i, r: None)
    train(run_config(same, run, epochs=2, resume=str(run / "last.pt"), workers=0, tf32=False))
    args = json.loads((run / "args.json").read_text())
    assert (args["epochs"], args["workers"], args["tf32"], args["csv"]) == (2, 0, False, str(same))
    assert (run / "split.csv").read_bytes() == before["split.csv"]
    assert [r["epoch"] for r in metrics_rows(run)] == ["0", "1"]


def test_resume_with_other_data_is_an_error(data, tmp_path, quick):
    run = tmp_path / "run"
    train(run_config(data, run, epochs=1))
    before = _files(run)
    other = rewritten_csv(data, tmp_path / "other.csv", lambda i, r: r.update(patient_id="X") if i == 0 else None)
    with pytest.raises(ValueError, match=r"--csv .*other\.csv: its data differs from the run's \(40 image\(s\), "
                                         r"sha256 \w{12} vs the run's 40 image\(s\), sha256 \w{12} in data\.json\)"):
        train(run_config(other, run, epochs=2, resume=str(run / "last.pt")))
    assert _files(run) == before


# --- item 12: a run killed before its first checkpoint leaves no split ---------------------------

def test_a_split_without_a_checkpoint_is_drawn_anew(data, tmp_path, quick):
    """kill -9 before the first checkpoint, simulated: the folder holds args.json and the split
    of seed 0, no last.pt. The rerun with seed 1 splits anew and records that split."""
    records = read_csv(data)[0]
    first = tmp_path / "first"
    train(run_config(data, first, epochs=1))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("args.json", "split.csv"):
        (run / name).write_bytes((first / name).read_bytes())
    assert split_column(run) == split_of(records, 0)
    train(run_config(data, run, epochs=1, seed=1))
    assert split_column(run) == split_of(records, 1) != split_of(records, 0)
    assert json.loads((run / "args.json").read_text())["seed"] == 1


def test_the_split_and_data_record_are_written_with_the_first_checkpoint(data, tmp_path, monkeypatch):
    seen = []
    real = run_files.save_checkpoint

    def spy(path, state):
        seen.append(sorted(p.name for p in path.parent.iterdir() if p.suffix != ".lock"))
        return real(path, state)

    def fit(*a, **kw):  # the epoch itself: nothing recorded yet
        seen.append(sorted(p.name for p in (tmp_path / "run").iterdir() if p.suffix != ".lock"))
        return {"loss": 1.0, "cls_loss": 0.6, "seg_loss": 0.4, "accuracy": 0.5}

    monkeypatch.setattr(trainer, "train_one_epoch", fit)
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **kw: dict(QUICK_SCORES))
    monkeypatch.setattr(run_files, "save_checkpoint", spy)
    train(run_config(data, tmp_path / "run", epochs=1))
    assert seen[0] == ["args.json"]
    assert seen[1] == ["args.json", "data.json", "metrics.csv", "split.csv"]  # then last.pt


# --- item 8: the CSV's split column --------------------------------------------------------------

def test_a_split_column_that_puts_a_patient_in_two_splits_is_an_error(data, tmp_path, capsys):
    def change(i, row):
        _by_patient(i, row)
        if i == 1:  # row 1 is patient P00000's second image (lines 2-4)
            row["split"] = "test" if row["split"] != "test" else "train"

    two = rewritten_csv(data, tmp_path / "two.csv", change)
    run = tmp_path / "run"
    assert cli.main(train_args(two, run, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "walnet train: error: " in err
    assert f"{two}:3: the split column puts patient 'P00000' in test, but {two}:2 puts it in train; a patient must " \
           "be in one split" in err
    assert not (run / "last.pt").exists()


def test_a_run_trained_from_a_split_column_records_it_and_evaluate_uses_it(data, tmp_path, quick):
    column = rewritten_csv(data, tmp_path / "column.csv", _by_patient)
    run = tmp_path / "run"
    train(run_config(column, run, epochs=1))
    records = read_csv(column)[0]
    assert split_column(run) == {r.key: r.split for r in records}
    split_file = (run / "split.csv").read_bytes()
    # the plain CSV (no split column) is scored on the run's split, not a new one
    result = evaluate_run(EvalConfig(checkpoint=run / "best.pt", csv=data, device="cpu", figures=False))
    assert result["images"] == sum(r.split == "test" for r in records)
    assert (run / "split.csv").read_bytes() == split_file
    # a run folder without its split: an error, and no split is made up
    (run / "split.csv").unlink()
    with pytest.raises(ValueError, match=f"{run} holds no split.csv: the split its run was trained on is unknown"):
        evaluate_run(EvalConfig(checkpoint=run / "best.pt", csv=data, device="cpu", figures=False))
    assert not (run / "split.csv").exists()


def test_evaluate_refuses_a_split_column_that_disagrees_with_the_run(data, tmp_path, quick, capsys):
    run = tmp_path / "run"
    train(run_config(data, run, epochs=1))
    all_test = rewritten_csv(data, tmp_path / "all_test.csv", lambda i, r: r.update(split="test"))
    argv = ["evaluate", "--checkpoint", str(run / "best.pt"), "--csv", str(all_test), "--device", "cpu",
            "--no-figures"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"walnet evaluate: error: {all_test}:")
    assert "the split column puts" in err and f"in test, but the run's {run / 'split.csv'} has it in " in err
    assert "image(s) disagree); the run's split decides" in err
    assert not (run / "metrics.json").exists()
    # patient ids that group images the run put in two splits (the data changed since)
    one = rewritten_csv(data, tmp_path / "one.csv", lambda i, r: r.update(patient_id="P1"))
    with pytest.raises(ValueError, match=f"{run / 'split.csv'} puts patient 'P1' in \\w+ \\(.*\\) and in \\w+ "
                                         "\\(.*\\); a patient must be in one split"):
        evaluate_run(EvalConfig(checkpoint=run / "best.pt", csv=one, device="cpu", figures=False))
    # a column that agrees with the run's split is fine
    saved = split_column(run)
    agrees = rewritten_csv(data, tmp_path / "agrees.csv", lambda i, r: None)
    records = read_csv(agrees)[0]
    rewritten_csv(data, agrees, lambda i, r: r.update(split=saved[records[i].key]))
    result = evaluate_run(EvalConfig(checkpoint=run / "best.pt", csv=agrees, device="cpu", figures=False))
    assert result["images"] == sum(s == "test" for s in saved.values())
