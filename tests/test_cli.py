"""The ``walnet`` command line, run as a user would (a subprocess)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _walnet(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "walnet", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_phantom_command(tmp_path):
    out = tmp_path / "ph"
    done = _walnet("phantom", "--out", str(out), "--n", "9", "--seed", "3", "--size", "48", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "labels.csv" in done.stdout
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and all((out / r["path"]).is_file() and (out / r["mask_path"]).is_file() for r in rows)


def test_phantom_command_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    done = _walnet("phantom", "--out", str(tmp_path / "mine"), "--n", "3", cwd=tmp_path)
    assert done.returncode == 2 and "mine" in done.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_usage_errors(tmp_path):
    done = _walnet(cwd=tmp_path)
    assert done.returncode == 2 and "COMMAND" in done.stderr
