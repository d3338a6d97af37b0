"""walnet.files, the one home of safe writes (its atomic_open, check_writable and temporaries
are also exercised through checkpoints in test_checkpoint.py): staged folders that move into
place whole or leave nothing, write_text, first_line and the state-dict mismatch report."""
from __future__ import annotations

import os

import pytest
import torch

from walnet.files import (WriteError, atomic_open, check_writable, first_line, move_aside, remove_stale_temps, staged,
                          temp_prefix, weights_mismatch, write_text)

from conftest import unwritable_folder


def test_a_stage_commits_its_files_together(tmp_path):
    target = tmp_path / "new" / "deeper"
    with staged(target, "walnet-test") as stage:
        assert stage.target == target and stage.path.parent == target and stage.path.name.startswith(".walnet-test.")
        for name in ("a.png", "b.png", "left.txt"):
            (stage.path / name).write_text(name)
        stage.commit(["a.png", "b.png"])
    assert sorted(p.name for p in target.iterdir()) == ["a.png", "b.png"]  # the stage and what it kept are gone
    assert (target / "b.png").read_text() == "b.png"


def test_a_failed_stage_leaves_nothing_not_even_its_folders(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "old.png").write_text("old")
    for target in (tmp_path / "a" / "b", tmp_path / "keep"):
        with pytest.raises(RuntimeError, match="boom"):
            with staged(target, "walnet-test") as stage:
                (stage.path / "old.png").write_text("new")
                raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]  # a/b removed again, keep kept
    assert [p.name for p in (tmp_path / "keep").iterdir()] == ["old.png"]
    assert (tmp_path / "keep" / "old.png").read_text() == "old"


def test_a_stage_removes_the_stages_of_killed_writers(tmp_path):
    dead = tmp_path / (temp_prefix("walnet-test").rsplit("-", 1)[0] + "-999999999.x.tmp")
    dead.mkdir()
    live = tmp_path / (temp_prefix("walnet-test") + "y.tmp")
    live.mkdir()
    with staged(tmp_path, "walnet-test"):
        assert not dead.exists() and live.exists()
    assert remove_stale_temps(tmp_path, "walnet-test") == []


def test_write_text_is_atomic_and_utf8(tmp_path):
    path = write_text(tmp_path / "sub" / "args.json", "{\"é\": 1}")
    assert path.read_bytes() == "{\"é\": 1}".encode()
    os.chmod(path, 0o640)
    write_text(path, "x")
    assert path.read_text() == "x" and oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in path.parent.iterdir()) == ["args.json"]
    with pytest.raises(WriteError, match="it is a folder"):
        write_text(tmp_path / "sub", "x")


def test_first_line():
    assert first_line("\n  first  \nsecond") == "first"
    assert first_line(ValueError("bad\nmore")) == "bad"
    assert first_line(KeyError()) == "KeyError"
    assert first_line("x" * 200) == "x" * 157 + "..."
    assert first_line("") == ""


def test_weights_mismatch():
    own = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    assert weights_mismatch(own, {"a": torch.ones(2, 3), "b": torch.ones(4), "c": torch.ones(1)}) == []
    given = {"a": torch.zeros(3, 3), "c": torch.zeros(1), "d": torch.zeros(5), "e": torch.zeros(5)}
    assert weights_mismatch(own, given) == [
        "1 shape(s) differ, e.g. a [3, 3] in the file, [2, 3] in the model",
        "1 parameter(s) missing, e.g. b",
        "2 unexpected parameter(s), e.g. d",
    ]
    assert weights_mismatch(own, {"a": torch.zeros(2, 3), "c": torch.zeros(1)}, "in the checkpoint", "weight") == [
        "1 weight(s) missing, e.g. b"]


def test_move_aside_takes_the_file_for_one_process(tmp_path):
    path = tmp_path / "walnet.lock"
    path.write_text("held")
    aside = move_aside(path, "stale")
    assert aside == tmp_path / f".walnet.lock.{os.getpid()}.stale" and aside.read_text() == "held"
    assert not path.exists()
    assert move_aside(path, "stale") is None  # gone: another process took it first


def test_check_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    check_writable(tmp_path / "new" / "deeper" / "p.csv", "--output")  # folders still to be made: fine
    check_writable(tmp_path / "masks", "--masks", folder=True)
    with pytest.raises(WriteError, match="--output .* is a folder"):
        check_writable(tmp_path, "--output")
    with pytest.raises(WriteError, match="--masks .*file is a file, not a folder"):
        check_writable(tmp_path / "file", "--masks", folder=True)
    with pytest.raises(WriteError, match=r"--output .*file/sub\.csv lies under the file .*file; choose a folder"):
        check_writable(tmp_path / "file" / "sub.csv", "--output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe leaves nothing


def test_check_writable_unwritable_folder(tmp_path):
    folder = unwritable_folder(tmp_path)
    with pytest.raises(WriteError, match=f"--output {folder}/p.csv: cannot create files in {folder}"):
        check_writable(folder / "p.csv", "--output")
    with pytest.raises(WriteError, match=f"cannot create files in {folder}"):
        check_writable(folder / "masks", "--masks", folder=True)


def test_atomic_open_errors_name_the_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="cannot write .*: it is a folder"):
        with atomic_open(tmp_path):
            pass
    with pytest.raises(WriteError, match=r"cannot write .*file/x\.json"):
        with atomic_open(tmp_path / "file" / "x.json"):
            pass
