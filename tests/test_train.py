"""``walnet train`` beyond one plain run: resume after a kill, DDP on gloo, mixed precision."""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from walnet.data import phantom
from walnet.engine import trainer
from walnet.engine.config import TrainConfig
from walnet.engine.trainer import train

ROOT = Path(__file__).resolve().parents[1]
# Same thread count in every process, so the runs compared below do the same arithmetic.
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom.generate(tmp_path_factory.mktemp("ph") / "data", n=40, seed=2, size=48)


#: A run small enough for a CPU test, as config fields (and, below, as command-line flags).
SMALL = dict(backbone="resnet18", attention_channels=8, size=48, batch_size=8, rcm_warmup=1, device="cpu")


def _train_args(data, run, *extra):
    flags = [item for k, v in SMALL.items() for item in ("--" + k.replace("_", "-"), str(v))]
    return ["train", "--csv", str(data), "--output", str(run), *flags, *extra]


def _config(data, run, **values):
    return TrainConfig(csv=data, output=run, **{**SMALL, **values})


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resume_after_kill_matches_uninterrupted_run(data, tmp_path):
    cmd = [sys.executable, "-m", "walnet"]
    whole = tmp_path / "whole"
    done = subprocess.run(cmd + _train_args(data, whole, "--epochs", "3"), env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr

    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd + _train_args(data, cut, "--epochs", "3"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (cut / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # epoch 0 is saved; epoch 1 has started
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(_rows(cut)) < 3
    resumed = subprocess.run(cmd + _train_args(data, cut, "--epochs", "3", "--resume", str(cut / "last.pt")),
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    assert _rows(cut) == _rows(whole)  # every loss and accuracy, to the last digit
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_ddp_two_cpu_processes_on_gloo(data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "walnet",
           *_train_args(data, run, "--epochs", "2")]
    done = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1:") == 1  # rank 0 alone logs
    assert [r["epoch"] for r in _rows(run)] == ["0", "1"]
    for row in _rows(run):
        assert all(math.isfinite(float(row[k])) for k in ("loss", "cls_loss", "seg_loss"))
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and not any(k.startswith("module.") for k in state["model"])


def test_amp_on_cpu_trains_in_bfloat16(data, tmp_path):
    row = train(_config(data, tmp_path / "amp", epochs=1, amp=True))
    assert all(math.isfinite(row[k]) for k in ("loss", "cls_loss", "seg_loss"))
    state = torch.load(tmp_path / "amp" / "last.pt", weights_only=True)
    assert "scaler" in state and state["args"]["amp"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_on_cuda_uses_float16_and_a_gradient_scaler(data, tmp_path):
    row = train(_config(data, tmp_path / "amp", epochs=1, amp=True, device="cuda"))
    assert all(math.isfinite(row[k]) for k in ("loss", "cls_loss", "seg_loss"))
    state = torch.load(tmp_path / "amp" / "last.pt", weights_only=True)
    assert state["scaler"] and state["scaler"]["scale"] > 0


def test_sync_bn_needs_cuda(data, tmp_path):
    with pytest.raises(ValueError, match="--sync-bn"):
        train(_config(data, tmp_path / "sbn", epochs=1, sync_bn=True))


def test_diverged_training_stops_with_a_clear_error(data, tmp_path, monkeypatch):
    with pytest.raises(FloatingPointError, match="loss of epoch 0 is nan; no checkpoint was written"):
        train(_config(data, tmp_path / "nan", epochs=3, lr=1e30))
    assert not (tmp_path / "nan" / "last.pt").exists()

    # a loss that turns NaN in epoch 1: epoch 0's checkpoint and metrics row stay, nothing of epoch 1 is saved
    real = trainer.train_one_epoch

    def nan_from_epoch_1(*a, **kw):
        stats = real(*a, **kw)
        return {**stats, "loss": math.nan} if a[4] == 1 else stats

    monkeypatch.setattr(trainer, "train_one_epoch", nan_from_epoch_1)
    run = tmp_path / "late"
    with pytest.raises(FloatingPointError, match="epoch 1 .*last.pt keeps epoch 0"):
        train(_config(data, run, epochs=3))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 0
    assert [r["epoch"] for r in _rows(run)] == ["0"]
