"""``walnet train`` beyond one plain run: resume after a kill, DDP on gloo, mixed precision, the
run folder's lock, no split kept by a failed run, a last batch of one, ``classes``, ``--eval-metric``
and metrics.csv on resume."""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from walnet.data import read_csv
from walnet.engine import lock, run_files, trainer
from walnet.engine.runtime import runtime_of
from walnet.engine.trainer import train

from train_runs import (ENV, metrics_rows, phantom_data, rewritten_csv, run_config, split_column, split_of,
                        train_args)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


def test_resume_after_kill_matches_uninterrupted_run(data, tmp_path):
    cmd = [sys.executable, "-m", "walnet"]
    whole = tmp_path / "whole"
    done = subprocess.run(cmd + train_args(data, whole, "--epochs", "3"), env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr

    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd + train_args(data, cut, "--epochs", "3"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (cut / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # epoch 0 is saved; epoch 1 has started
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(metrics_rows(cut)) < 3
    resumed = subprocess.run(cmd + train_args(data, cut, "--epochs", "3", "--resume", str(cut / "last.pt")),
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    assert metrics_rows(cut, timings=False) == metrics_rows(whole, timings=False)  # every loss and score, every digit
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_ddp_two_cpu_processes_on_gloo(data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "walnet",
           *train_args(data, run, "--epochs", "2")]
    done = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1:") == 1  # rank 0 alone logs
    assert [r["epoch"] for r in metrics_rows(run)] == ["0", "1"]
    for row in metrics_rows(run):
        assert all(math.isfinite(float(row[k])) for k in ("loss", "cls_loss", "seg_loss"))
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and not any(k.startswith("module.") for k in state["model"])


def test_bf16_on_cpu_trains_in_bfloat16(data, tmp_path, monkeypatch):
    seen = []
    real = trainer.TrainStep

    def spy(*a, **kw):
        seen.append(kw["amp_dtype"])
        return real(*a, **kw)

    monkeypatch.setattr(trainer, "TrainStep", spy)
    row = train(run_config(data, tmp_path / "amp", epochs=1, precision="bf16"))
    assert seen == [torch.bfloat16]
    assert all(math.isfinite(row[k]) for k in ("loss", "cls_loss", "seg_loss"))
    state = torch.load(tmp_path / "amp" / "last.pt", weights_only=True)
    assert "scaler" in state and state["args"]["precision"] == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_cuda_uses_a_gradient_scaler(data, tmp_path):
    row = train(run_config(data, tmp_path / "amp", epochs=1, precision="fp16", device="cuda"))
    assert all(math.isfinite(row[k]) for k in ("loss", "cls_loss", "seg_loss"))
    state = torch.load(tmp_path / "amp" / "last.pt", weights_only=True)
    assert state["scaler"] and state["scaler"]["scale"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_is_graphed_by_default_and_resumes(data, tmp_path, caplog):
    """Batches of 4: each epoch's six steps are three warm-up steps, the capture and replays, and
    the RCM switching on in epoch 1 captures anew. The run then resumes with its capturable
    Adam state into one more graphed epoch."""
    run = tmp_path / "graphed"
    caplog.set_level(logging.INFO, logger="walnet")
    row = train(run_config(data, run, epochs=2, batch_size=4, device="cuda"))
    assert "training on cuda" in caplog.text
    assert all(math.isfinite(row[k]) for k in ("loss", "cls_loss", "seg_loss"))
    row = train(run_config(data, run, epochs=3, batch_size=4, device="cuda", resume=str(run / "last.pt")))
    out = caplog.text
    assert "CUDA graph, bf16 autocast, channels-last, TF32, cudnn.benchmark" in out and "epoch 2:" in out
    assert row["epoch"] == 2 and math.isfinite(row["loss"])


def test_sync_bn_needs_cuda(data, tmp_path):
    with pytest.raises(ValueError, match="--sync-bn"):
        train(run_config(data, tmp_path / "sbn", epochs=1, sync_bn=True))


def test_diverged_training_stops_with_a_clear_error(data, tmp_path, monkeypatch):
    with pytest.raises(FloatingPointError, match="loss of epoch 0 is nan; no checkpoint was written"):
        train(run_config(data, tmp_path / "nan", epochs=3, lr=1e30))
    assert not (tmp_path / "nan" / "last.pt").exists()
    assert not (tmp_path / "nan" / "split.csv").exists()  # a rerun (another --lr) splits anew

    # a loss that turns NaN in epoch 1: epoch 0's checkpoint and metrics row stay, nothing of epoch 1 is saved
    real = trainer.train_one_epoch

    def nan_from_epoch_1(*a, **kw):
        stats = real(*a, **kw)
        return {**stats, "loss": math.nan} if a[4] == 1 else stats

    monkeypatch.setattr(trainer, "train_one_epoch", nan_from_epoch_1)
    run = tmp_path / "late"
    with pytest.raises(FloatingPointError, match="epoch 1 .*last.pt keeps epoch 0"):
        train(run_config(data, run, epochs=3))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 0
    assert [r["epoch"] for r in metrics_rows(run)] == ["0"]


# --- the run folder's lock -------------------------------------------------------------------

def _lock_of(pid, folder):
    import json
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    (folder / lock.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


def test_train_into_a_locked_folder_fails_at_once(data, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        run = tmp_path / "run"
        _lock_of(sleeper.pid, run)
        with pytest.raises(lock.RunLockedError, match=f"{run}.*pid {sleeper.pid}"):
            train(run_config(data, run, epochs=1))
        assert sorted(p.name for p in run.iterdir()) == [lock.LOCK_NAME]  # nothing written, the lock kept
        # from the command line: one line, exit status 2
        done = subprocess.run([sys.executable, "-m", "walnet", *train_args(data, run, "--epochs", "1")], env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"walnet train: error: {run} is locked by pid {sleeper.pid}")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_lock_is_replaced_and_every_run_removes_its_lock(data, tmp_path, caplog):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    run = tmp_path / "run"
    _lock_of(ended.pid, run)
    caplog.set_level(logging.INFO, logger="walnet")
    train(run_config(data, run, epochs=1))
    assert f"removing the stale lock {run / lock.LOCK_NAME} of pid {ended.pid}" in caplog.text
    assert (run / "last.pt").is_file() and not (run / lock.LOCK_NAME).exists()
    # a failed run removes its lock too
    with pytest.raises(FileExistsError):
        train(run_config(data, run, epochs=1))
    with pytest.raises(FloatingPointError):
        train(run_config(data, tmp_path / "nan", epochs=1, lr=1e30))
    assert not (run / lock.LOCK_NAME).exists() and not (tmp_path / "nan" / lock.LOCK_NAME).exists()


# --- a failed run leaves no split behind ------------------------------------------------------

def _csv_with_patients(data, path, patient=None):
    """The phantom's rows with every patient id replaced by `patient` (if given)."""
    return rewritten_csv(data, path, lambda i, r: r.update(patient_id=patient) if patient is not None else None)


def test_a_failed_split_is_not_kept_so_the_fixed_data_trains(data, tmp_path):
    one_patient = _csv_with_patients(data, tmp_path / "one.csv", patient="P1")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="left 40 training and 0 validation images") as failed:
        train(run_config(one_patient, run, epochs=1))
    assert not (run / "split.csv").exists()
    fixed = _csv_with_patients(data, tmp_path / "one.csv")  # the same files, with their patients
    train(run_config(fixed, run, epochs=1))
    assert (run / "split.csv").is_file() and (run / "last.pt").is_file()
    assert "40 image(s) in 1 patient group(s)" in str(failed.value)  # what made the split fail


def test_a_run_that_fails_at_its_first_checkpoint_leaves_no_run(data, tmp_path, monkeypatch):
    """A full disk at the first last.pt: the split written just before it counts for nothing, so
    the rerun (here with another seed) splits anew."""
    real = run_files.save_checkpoint

    def crash(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_files, "save_checkpoint", crash)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space"):
        train(run_config(data, run, epochs=1))
    assert not (run / "last.pt").exists()
    monkeypatch.setattr(run_files, "save_checkpoint", real)
    train(run_config(data, run, epochs=1, seed=5))
    records = read_csv(data)[0]
    assert split_column(run) == split_of(records, 5) != split_of(records, 0)


def test_a_split_file_of_other_data_without_a_checkpoint_is_replaced(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = tmp_path / "elsewhere.png"  # a split of other data: keys are resolved image paths
    other.write_bytes(b"")
    (run / "split.csv").write_text(f"key,split\n{other},train\n")
    train(run_config(data, run, epochs=1))  # no last.pt: no run is there, and its split is not kept
    assert split_column(run) == split_of(read_csv(data)[0], 0)


# --- a last training batch of one ------------------------------------------------------------

@pytest.mark.parametrize("samples, batch, dropped", [(480, 16, False), (25, 8, True), (9, 8, True), (17, 16, True),
                                                     (24, 8, False), (18, 8, False), (1, 8, False), (3, 1, False)])
def test_only_a_last_batch_of_one_is_dropped(samples, batch, dropped):
    sampler = torch.utils.data.DistributedSampler(range(samples), 1, 0)
    config = run_config("x.csv", "o", batch_size=batch)
    loader = trainer._train_loader(range(samples), sampler, config, runtime_of(config, torch.device("cpu")), pin=False)
    assert loader.drop_last is dropped
    assert len(loader) == samples // batch + (samples % batch > (1 if dropped else 0))


@pytest.mark.parametrize("mode", ["cuda_graphs", "compile"])
@pytest.mark.parametrize("samples, batch", [(480, 16), (25, 8), (24, 8), (18, 8), (3, 1)])
def test_a_graphed_or_compiled_run_drops_every_partial_last_batch(samples, batch, mode):
    sampler = torch.utils.data.DistributedSampler(range(samples), 1, 0)
    config = run_config("x.csv", "o", batch_size=batch)
    runtime = dataclasses.replace(runtime_of(config, torch.device("cpu")), **{mode: True})
    loader = trainer._train_loader(range(samples), sampler, config, runtime, pin=False)
    assert len(loader) == samples // batch and all(len(b) == batch for b in loader)


def _split_csv(data, path, n_train):
    """The phantom's rows with a split column: `n_train` training images, the rest validation."""
    return rewritten_csv(data, path, lambda i, r: r.update(split="train" if i < n_train else "val"))


def test_size_32_with_a_last_training_batch_of_one_trains(data, tmp_path):
    # 9 training images in batches of 8: a last batch of one, whose 1x1 feature maps BatchNorm
    # cannot normalise in training mode
    nine = _split_csv(data, tmp_path / "nine.csv", 9)
    row = train(run_config(nine, tmp_path / "run", epochs=1, size=32))
    assert math.isfinite(row["loss"])
    # every batch one image: a clear error, not torch's
    with pytest.raises(ValueError, match="a training batch of one image at --size 32 .*-b 2 or more"):
        train(run_config(nine, tmp_path / "b1", epochs=1, size=32, batch_size=1))


# --- --classes --------------------------------------------------------------------------------

def test_classes_set_the_class_order(data, tmp_path):
    order = ("mixed-echoic", "hyperechoic", "hypoechoic")
    train(run_config(data, tmp_path / "run", epochs=1, classes=order))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert tuple(state["classes"]) == order and tuple(state["args"]["classes"]) == order
    with pytest.raises(ValueError, match=r"labels.csv:2: column 'label': unknown label 'hyperechoic'; known classes: "
                                         r"calcified, soft"):
        train(run_config(data, tmp_path / "other", epochs=1, classes=("calcified", "soft")))
    assert not (tmp_path / "other").exists()


def test_resume_from_an_unusable_checkpoint_is_one_line(data, tmp_path, capsys):
    """--resume with another run's options, a folder or a truncated file: one line naming the
    file and what is wrong, exit status 2, before any epoch runs."""
    from walnet import cli

    run = tmp_path / "run"
    train(run_config(data, run, epochs=1))
    last = run / "last.pt"
    cases = {
        "other options": (train_args(data, run, "--epochs", "2", "--resume", str(last), "--attention-channels", "16"),
                          f"--resume {last}: --attention-channels 16 differs from the run's 8"),
        "a folder": (train_args(data, run, "--epochs", "2", "--resume", str(run)), "is a folder"),
    }
    (tmp_path / "cut").mkdir()
    truncated = tmp_path / "cut" / "last.pt"
    truncated.write_bytes(last.read_bytes()[:1000])
    cases["truncated"] = (train_args(data, tmp_path / "cut", "--epochs", "2", "--resume", str(truncated)),
                          f"checkpoint {truncated} cannot be loaded")
    rows = metrics_rows(run)
    for name, (argv, message) in cases.items():
        assert cli.main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("walnet train: error: ") and err.count("\n") == 1 and message in err, (name, err)
    assert metrics_rows(run) == rows  # no epoch ran


# --- --eval-metric: which epoch becomes best.pt ------------------------------------------------

#: Scripted validation scores of epochs 0-3: accuracy peaks in epoch 1, macro F1 ties in 2 and 3,
#: kappa peaks in epoch 2 and AUC in epoch 0.
SCRIPT = [dict(accuracy=0.5, macro_f1=0.3, kappa=0.1, auc_micro=0.9),
          dict(accuracy=0.9, macro_f1=0.4, kappa=0.2, auc_micro=0.7),
          dict(accuracy=0.6, macro_f1=0.8, kappa=0.3, auc_micro=0.8),
          dict(accuracy=0.7, macro_f1=0.8, kappa=-0.1, auc_micro=0.5)]


def _scripted(monkeypatch, scores):
    """No training (fixed losses) and validation scores taken from `scores`, one per epoch."""
    left = list(scores)
    monkeypatch.setattr(trainer, "train_one_epoch",
                        lambda *a, **kw: {"loss": 1.0, "cls_loss": 0.6, "seg_loss": 0.4, "accuracy": 0.5})
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **kw: {"loss": 1.1, **left.pop(0)})


@pytest.mark.parametrize("metric, best_epoch", [("accuracy", 1), ("macro_f1", 3), ("kappa", 2), ("auc", 0)])
def test_eval_metric_chooses_best_pt(data, tmp_path, monkeypatch, metric, best_epoch):
    _scripted(monkeypatch, SCRIPT)
    run = tmp_path / "run"
    train(run_config(data, run, epochs=4, eval_metric=metric))
    best = torch.load(run / "best.pt", weights_only=True)
    key = {"auc": "auc_micro"}.get(metric, metric)
    assert best["epoch"] == best_epoch  # of equal scores (macro F1 in 2 and 3) the later epoch
    assert best["best_metric"] == metric and best["best_value"] == SCRIPT[best_epoch][key]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["best_value"] == max(s[key] for s in SCRIPT) and "best_accuracy" not in last
    rows = metrics_rows(run)
    assert list(rows[0]) == list(run_files.METRIC_FIELDS)
    assert [float(r[f"val_{metric}"]) for r in rows] == [s[key] for s in SCRIPT]


def test_resume_with_another_eval_metric_is_refused(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _scripted(monkeypatch, SCRIPT[:1])
    train(run_config(data, run, epochs=1, eval_metric="kappa"))
    with pytest.raises(ValueError, match=r"--eval-metric macro_f1 differs from the run's kappa; resume with the "
                                         r"run's settings"):
        train(run_config(data, run, epochs=2, eval_metric="macro_f1", resume=str(run / "last.pt")))
    assert [r["epoch"] for r in metrics_rows(run)] == ["0"]


def test_resume_drops_the_rows_of_unfinished_epochs(tmp_path):
    """A run killed after logging epoch 1 but before its checkpoint resumes from epoch 1: that
    row goes, the earlier ones stay as they were, and the new row follows them."""
    path = tmp_path / "metrics.csv"
    log = run_files.RunLog(path)
    rows = [{name: f"{epoch}.{i}" if name != "epoch" else epoch for i, name in enumerate(run_files.METRIC_FIELDS)}
            for epoch in range(3)]
    for row in rows:
        log.append(row)
    log.resume_at(1)
    log.append(rows[2])
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        kept = list(reader)
    assert tuple(reader.fieldnames) == run_files.METRIC_FIELDS
    assert kept == [{k: str(v) for k, v in row.items()} for row in (rows[0], rows[2])]
    log.resume_at(0)
    assert path.read_text().splitlines() == [",".join(run_files.METRIC_FIELDS)]
