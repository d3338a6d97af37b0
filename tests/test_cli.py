"""The ``walnet`` command line, run as a user would (a subprocess)."""
from __future__ import annotations

import csv
import json
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


def test_train_command_writes_a_run_and_resumes(tmp_path):
    data = tmp_path / "ph"
    assert _walnet("phantom", "--out", str(data), "--n", "30", "--seed", "0", "--size", "48", cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    common = ["train", "--csv", str(data / "labels.csv"), "--output", str(run), "--backbone", "resnet18",
              "--attention-channels", "8", "--size", "48", "-b", "8", "--rcm-warmup", "1", "--device", "cpu"]
    done = _walnet(*common, "--epochs", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("args.json", "split.csv", "metrics.csv", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    # args.json is the run's config: the command line's options, every other one at its default
    from walnet.engine.config import TrainConfig

    config = TrainConfig(csv=data / "labels.csv", output=run, backbone="resnet18", attention_channels=8, size=48,
                         batch_size=8, rcm_warmup=1, device="cpu", epochs=2)
    assert json.loads((run / "args.json").read_text()) == config.to_dict()
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    # an existing run is never overwritten without --resume
    again = _walnet(*common, "--epochs", "3", cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = _walnet(*common, "--epochs", "3", "--resume", str(run / "last.pt"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    with open(run / "metrics.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2"]
    import torch

    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["classes"] == ["hyperechoic", "hypoechoic", "mixed-echoic"]

    scored = _walnet("evaluate", "--checkpoint", str(run / "best.pt"), "--csv", str(data / "labels.csv"),
                     "--device", "cpu", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    result = json.loads((run / "metrics.json").read_text())
    assert result["split"] == "test" and result["images"] > 0
    assert sum(map(sum, result["confusion"])) == result["images"]
    for key in ("accuracy", "macro_f1", "kappa", "auc_micro", "seg_iou", "pseudo_iou"):
        assert key in result
    assert result["figures"] == ["roc.png", "confusion.png", "segmentation.png"]
    for name in result["figures"]:
        assert (run / name).stat().st_size > 1000, name
    assert "accuracy" in scored.stdout
