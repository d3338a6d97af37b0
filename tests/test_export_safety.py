"""``walnet export`` as a writer: one export at a time per folder (the run-folder lock), a full
disk reported in one line naming the file, and nothing left behind by a failed export."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from walnet import cli
from walnet.engine.lock import LOCK_NAME

from conftest import small_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return small_checkpoint(tmp_path_factory.mktemp("export-safety") / "run" / "best.pt")[0]


@pytest.fixture
def other_export(tmp_path):
    """A folder that a live export of another process holds (its lock file)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    out = tmp_path / "m"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(),
                                             "command": "walnet export", "time": "2024-01-01 00:00:00"}))
    yield out
    proc.kill()
    proc.wait()


def _error(capsys, *argv) -> str:
    assert cli.main(["export", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("walnet export: error: ") and err.count("\n") == 1, err
    return err


def test_a_second_export_into_a_folder_fails_at_once(ckpt, other_export, capsys, monkeypatch):
    """The audit's case: two exports into one new folder both exited 0, the first one's files gone."""
    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded while another export held the folder")

    monkeypatch.setattr("walnet.engine.export.load_model", load_model)
    err = _error(capsys, "--checkpoint", ckpt, "--output", other_export, "--overwrite")
    assert f"{other_export} is locked by pid" in err and "walnet export" in err
    assert sorted(p.name for p in other_export.iterdir()) == [LOCK_NAME]


def test_an_export_releases_its_lock(ckpt, tmp_path, capsys):
    out = tmp_path / "m"
    assert cli.main(["export", "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_a_full_disk_names_the_file(ckpt, tmp_path, capsys, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "new" / "m"
    err = _error(capsys, "--checkpoint", ckpt, "--output", out)
    assert err == (f"walnet export: error: cannot write {out / 'model.safetensors'}: No space left on device; "
                   "nothing was written\n")
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    assert cli.main(["export", "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full(self, None))
    err = _error(capsys, "--checkpoint", ckpt, "--output", out, "--overwrite")
    assert err == (f"walnet export: error: cannot write {out / 'config.json'}: No space left on device; "
                   "the earlier export there is unchanged\n")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
