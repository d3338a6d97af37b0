"""A run folder's files are the run's own: writes replace a symbolic link instead of following
it, train refuses run files that are links or a metrics.csv of no walnet run (before it writes
anything), and special files (FIFOs) given as inputs are named as such, not as missing."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from walnet import cli
from walnet.data import phantom
from walnet.files import WriteError, append_text, write_text

from conftest import small_checkpoint
from train_runs import phantom_data, train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


def _error(capsys, *argv) -> str:
    assert cli.main([*map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"walnet {argv[0]}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_the_atomic_writer_replaces_a_link_and_never_writes_through_it(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("the user's")
    (tmp_path / "run").mkdir()
    link = tmp_path / "run" / "args.json"
    link.symlink_to(outside)
    write_text(link, "{}")
    assert outside.read_text() == "the user's"
    assert not link.is_symlink() and link.read_text() == "{}"


def test_appending_refuses_a_link(tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("the user's\n")
    link = tmp_path / "metrics.csv"
    link.symlink_to(outside)
    with pytest.raises(WriteError, match=f"cannot append to {link}: it is a symbolic link"):
        append_text(link, "1,2\n")
    assert outside.read_text() == "the user's\n"
    append_text(tmp_path / "new.csv", "a\n")
    append_text(tmp_path / "new.csv", "b\n")
    assert (tmp_path / "new.csv").read_text() == "a\nb\n"


@pytest.mark.parametrize("name", ["args.json", "metrics.csv", "last.pt", "best.pt", "split.csv"])
def test_train_refuses_a_run_file_that_is_a_link(data, tmp_path, capsys, name):
    """The audit's case: a run folder whose args.json links to a file outside; train wrote through it."""
    outside = tmp_path / "outside"
    outside.write_text("the user's")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(outside)
    err = _error(capsys, *train_args(data, run, "--epochs", "1"))
    assert f"{run / name} is a symbolic link" in err
    assert outside.read_text() == "the user's" and sorted(p.name for p in run.iterdir()) == [name]


def test_a_fresh_run_refuses_a_metrics_csv_of_another_run(data, tmp_path, capsys):
    """The audit's case: an unrelated metrics.csv gave KeyError 'epoch' and left args.json behind."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,score\n1,0.5\n")
    err = _error(capsys, *train_args(data, run, "--epochs", "1"))
    assert f"{run} holds a metrics.csv of no walnet run" in err and "choose another --output or delete it" in err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.csv"]
    assert (run / "metrics.csv").read_text() == "step,score\n1,0.5\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("fifo")
    phantom.generate(root / "ph", n=3, seed=0, size=48)
    return small_checkpoint(root / "run" / "best.pt")[0], sorted((root / "ph" / "images").rglob("*.png"))


def test_a_fifo_is_not_called_missing(model, tmp_path, capsys):
    ckpt, images = model
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    predict = ["predict", "--device", "cpu", "--output", tmp_path / "p.csv"]
    err = _error(capsys, *predict, "--checkpoint", ckpt, fifo)
    assert f"input {fifo} is a FIFO (named pipe), not a regular file" in err
    err = _error(capsys, *predict, "--checkpoint", ckpt, "--csv", fifo)
    assert f"CSV file {fifo} is a FIFO (named pipe), not a regular file" in err
    (tmp_path / "rows.csv").write_text(f"path\n{images[0]}\n{fifo}\n")
    err = _error(capsys, *predict, "--checkpoint", ckpt, "--csv", tmp_path / "rows.csv")
    assert f"image file {fifo} is a FIFO (named pipe), not a regular file" in err
    pipe = tmp_path / "best.pt"
    os.mkfifo(pipe)
    err = _error(capsys, *predict, "--checkpoint", pipe, images[0])
    assert f"checkpoint {pipe} is a FIFO (named pipe), not a checkpoint file" in err
    assert not (tmp_path / "p.csv").exists()


def test_a_failure_moving_the_masks_says_what_was_written(model, tmp_path, capsys, monkeypatch):
    """A mask that could not be moved into place after others were: not "nothing was written"."""
    ckpt, images = model
    scans = [Path(shutil.copy(p, tmp_path / f"s{i}.png")) for i, p in enumerate(images[:2])]
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "s1.png":
            raise OSError(28, os.strerror(28))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    masks = tmp_path / "masks"
    err = _error(capsys, "predict", "--device", "cpu", "--checkpoint", ckpt, *scans, "--output", tmp_path / "p.csv",
                 "--masks", masks)
    assert "nothing was written" not in err
    assert (f"cannot write {masks / 's1.png'}: No space left on device; 1 of its 2 files were moved there already; "
            f"the CSV {tmp_path / 'p.csv'} was not written") in err
    assert not (tmp_path / "p.csv").exists()
