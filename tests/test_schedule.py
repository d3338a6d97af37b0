"""The optimizer and learning-rate schedule of a run (walnet.engine.schedule) and early stopping:
the rates per epoch are timm's, the rate tensor is one object that Adam reads as it would the
float, ``--patience`` stops at the right epoch with best.pt that epoch's, best.pt holds no
training state, a resumed scheduled run ends as an uninterrupted one, DDP steps and stops on rank
0's score, and a CUDA-graphed step follows the rate."""
from __future__ import annotations

import csv
import logging
import math
import subprocess
import sys
import time
import warnings

import pytest
import torch
from timm.scheduler import CosineLRScheduler, PlateauLRScheduler, StepLRScheduler

import walnet
from walnet.engine import run_files, trainer
from walnet.engine.config import TrainConfig
from walnet.engine.schedule import Schedule
from walnet.engine.trainer import train

from train_runs import ENV, metrics_rows, older_metrics_csv, phantom_data, run_config, train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


def _config(**values):
    return TrainConfig(csv="labels.csv", output="run", **values)


def _timm_rates(sched, epochs, scores=None, lr=1e-4, **kw):
    """The rate of each epoch by timm's scheduler class for `sched`, built here with timm's
    parameters, over an SGD optimizer with a float rate; stepped as timm's train script does."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if sched == "cosine":
            scheduler = CosineLRScheduler(opt, t_initial=epochs, lr_min=kw["min_lr"], warmup_t=kw["warmup_epochs"],
                                          warmup_lr_init=kw["warmup_lr"], warmup_prefix=False)
        elif sched == "step":
            scheduler = StepLRScheduler(opt, decay_t=kw["decay_epochs"], decay_rate=kw["decay_rate"],
                                        warmup_t=kw["warmup_epochs"], warmup_lr_init=kw["warmup_lr"],
                                        warmup_prefix=False)
        else:
            scheduler = PlateauLRScheduler(opt, decay_rate=kw["decay_rate"], patience_t=kw["patience_epochs"],
                                           warmup_t=kw["warmup_epochs"], warmup_lr_init=kw["warmup_lr"],
                                           lr_min=kw["min_lr"], mode="max")
    rates = []
    for epoch in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        scheduler.step(epoch + 1, None if scores is None else scores[epoch])
    return rates


#: Validation scores of 10 epochs for the plateau schedule: better, flat, worse, better, flat ...
SCORES = [0.2, 0.5, 0.5, 0.4, 0.6, 0.6, 0.6, 0.55, 0.7, 0.7]
SCHEDULES = {
    "cosine": dict(sched="cosine", warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-6, decay_epochs=30, decay_rate=0.1,
                   patience_epochs=10),
    "step": dict(sched="step", warmup_epochs=1, warmup_lr=2e-5, min_lr=0.0, decay_epochs=3, decay_rate=0.5,
                 patience_epochs=10),
    "plateau": dict(sched="plateau", warmup_epochs=1, warmup_lr=1e-6, min_lr=1e-6, decay_epochs=30, decay_rate=0.5,
                    patience_epochs=1),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_the_rate_tensor_is_one_object_holding_timms_rate_of_each_epoch(name):
    values = SCHEDULES[name]
    schedule = Schedule(_config(epochs=10, **values), torch.nn.Linear(2, 2).parameters(), torch.device("cpu"))
    tensor = schedule.optimizer.param_groups[0]["lr"]
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64
    got = []
    for epoch, score in enumerate(SCORES):
        assert all(g["lr"] is tensor for g in schedule.optimizer.param_groups), epoch
        got.append((schedule.lr, float(tensor)))
        schedule.step(epoch, score)
    want = _timm_rates(name, 10, SCORES, **{k: v for k, v in values.items() if k != "sched"})
    assert got == [(r, r) for r in want]
    assert len(set(want)) > 2  # the schedule did move the rate
    if name == "cosine":  # timm's cosine by hand: warm-up, then min + (max - min) (1 + cos(pi t / T)) / 2
        assert want[1] == pytest.approx(1e-6 + (1e-4 - 1e-6) / 2)
        assert want[5] == pytest.approx(1e-6 + (1e-4 - 1e-6) * (1 + math.cos(math.pi * 5 / 10)) / 2)


def _adam_pair(sched_values):
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    schedule = Schedule(_config(epochs=4, **sched_values), a.parameters(), torch.device("cpu"))
    ref = torch.optim.Adam(b.parameters(), lr=sched_values.get("lr", 1e-4),
                           weight_decay=sched_values.get("weight_decay", 0.0))
    return a, b, schedule, ref


@pytest.mark.parametrize("values", [{}, dict(sched="cosine", warmup_epochs=1, weight_decay=0.01)],
                         ids=["defaults", "cosine"])
def test_adam_with_the_rate_tensor_updates_as_adam_with_the_float_rate(values):
    """On the CPU the tensor path is torch's Adam with a float rate (set by hand each epoch from
    the schedule), bit for bit; the defaults are the paper's constant Adam 1e-4 without decay."""
    a, b, schedule, ref = _adam_pair(values)
    gen = torch.Generator().manual_seed(1)
    for epoch in range(4):
        for group in ref.param_groups:
            group["lr"] = schedule.lr
        for _ in range(3):
            x = torch.randn(5, 6, generator=gen)
            for model, opt in ((a, schedule.optimizer), (b, ref)):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
        schedule.step(epoch, 0.5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    if not values:
        assert schedule.lr == 1e-4 and ref.param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("values, message", [
    (dict(sched="bogus"), "--sched must be one of none, cosine, step, plateau"),
    (dict(weight_decay=-0.1), "--weight-decay must be a finite number >= 0"),
    (dict(weight_decay=math.inf), "--weight-decay must be a finite number >= 0"),
    (dict(warmup_lr=math.nan), "--warmup-lr must be a finite number >= 0"),
    (dict(sched="cosine", warmup_epochs=-1), "--warmup-epochs must be at least 0"),
    (dict(warmup_epochs=2), "--warmup-epochs needs a schedule"),
    (dict(decay_rate=1.0), "--decay-rate must be a number between 0 and 1"),
    (dict(decay_epochs=0), "--decay-epochs must be at least 1"),
    (dict(patience=0), "--patience must be at least 1"),
    (dict(patience_epochs=-1), "--patience-epochs must be at least 0"),
    (dict(min_lr=1e-3), "--min-lr 0.001 is above --lr 0.0001"),
])
def test_bad_schedule_settings_name_their_option(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _config(**values)


# --- runs with a scripted validation ----------------------------------------------------------


def _scripted(monkeypatch, scores):
    """No training (fixed losses), and validation accuracy (and every other metric) from `scores`."""
    left = list(scores)
    monkeypatch.setattr(trainer, "train_one_epoch",
                        lambda *a, **kw: {"loss": 1.0, "cls_loss": 0.6, "seg_loss": 0.4, "accuracy": 0.5})

    def evaluate(*a, **kw):
        value = left.pop(0)
        return dict(accuracy=value, macro_f1=value, kappa=value, auc_micro=value, loss=1.1)

    monkeypatch.setattr(trainer, "evaluate", evaluate)


def test_patience_stops_after_that_many_epochs_without_a_new_best_pt(data, tmp_path, monkeypatch, caplog):
    # best.pt: epoch 0, 1, then 2 (equal scores: the later epoch); 3 and 4 do not change it
    _scripted(monkeypatch, [0.3, 0.6, 0.6, 0.5, 0.55, 0.9, 0.9, 0.9])
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="walnet.engine.trainer"):
        train(run_config(data, run, epochs=8, patience=2))
    assert [r["epoch"] for r in metrics_rows(run)] == ["0", "1", "2", "3", "4"]
    assert "stopping early after epoch 4" in caplog.text and "best.pt holds epoch 2" in caplog.text
    best, last = (torch.load(run / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert best["epoch"] == 2 and best["best_value"] == 0.6
    assert last["epoch"] == 4 and last["best_epoch"] == 2 and last["stopped_early"] is True
    # best.pt: what evaluation needs; last.pt: the training state besides
    assert set(best) == {"model", "args", "classes", "epoch", "best_metric", "best_value"}
    assert {"optimizer", "scaler", "scheduler"} <= set(last)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="walnet.engine.trainer"):
        assert train(run_config(data, run, epochs=8, patience=2, resume=str(run / "last.pt"))) == {}
    assert "stopped early after epoch 4" in caplog.text and "nothing to train" in caplog.text
    assert len(metrics_rows(run)) == 5


def test_a_run_without_patience_never_stops_early(data, tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.9, 0.1, 0.1, 0.1])
    run = tmp_path / "run"
    train(run_config(data, run, epochs=4))
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and last["best_epoch"] == 0 and last["stopped_early"] is False


def test_plateau_steps_on_the_validation_metric_and_logs_each_epochs_rate(data, tmp_path, monkeypatch):
    values = SCHEDULES["plateau"]
    _scripted(monkeypatch, SCORES[:6])
    run = tmp_path / "run"
    train(run_config(data, run, epochs=6, eval_metric="kappa", **values))
    rows = metrics_rows(run)
    assert list(rows[0]) == list(run_files.METRIC_FIELDS) and "lr" in rows[0]
    want = _timm_rates("plateau", 6, SCORES, **{k: v for k, v in values.items() if k != "sched"})
    assert [float(r["lr"]) for r in rows] == want


def test_resume_from_best_pt_is_refused_before_any_work(data, tmp_path, monkeypatch, capsys):
    _scripted(monkeypatch, [0.5])
    run = tmp_path / "run"
    train(run_config(data, run, epochs=1))
    before = (run / "metrics.csv").read_text()
    from walnet.cli import main

    assert main(train_args(data, run, "--epochs", "2", "--resume", str(run / "best.pt"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("walnet train: error: ") and err.count("\n") == 1
    assert "holds no training state" in err and "best.pt" in err and f"resume from {run / 'last.pt'}" in err
    assert (run / "metrics.csv").read_text() == before


def test_an_older_metrics_csv_gets_the_lr_column_on_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    old = [f for f in run_files.METRIC_FIELDS if f != "lr"]
    log = older_metrics_csv(path, old)
    log.append({**{k: 0.25 for k in old}, "epoch": 2, "lr": 1e-4})
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == run_files.METRIC_FIELDS
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and [r["lr"] for r in rows] == ["", "", "0.0001"]


# --- resume and DDP ------------------------------------------------------------------------------

class Killed(Exception):
    """A kill of the run, after epoch 0's checkpoint."""


RESUMED = dict(epochs=3, sched="cosine", warmup_epochs=1, weight_decay=0.01, patience=5)


def test_a_resumed_scheduled_run_ends_as_an_uninterrupted_one(data, tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(run_config(data, whole, **RESUMED))

    fit = trainer._fit

    def killed_in_epoch_1(config, ctx, run, loader, epoch):
        if epoch == 1:
            raise Killed
        return fit(config, ctx, run, loader, epoch)

    monkeypatch.setattr(trainer, "_fit", killed_in_epoch_1)
    with pytest.raises(Killed):
        train(run_config(data, cut, **RESUMED))
    monkeypatch.setattr(trainer, "_fit", fit)
    with pytest.raises(ValueError, match=r"--epochs 4 differs from the run's 3: its cosine schedule"):
        train(run_config(data, cut, **{**RESUMED, "epochs": 4}, resume=str(cut / "last.pt")))
    for changed, message in ((dict(sched="step"), "--sched step differs from the run's cosine"),
                             (dict(patience=6), "--patience 6 differs from the run's 5"),
                             (dict(weight_decay=0.0), "--weight-decay 0.0 differs from the run's 0.01")):
        with pytest.raises(ValueError, match=message):  # the schedule's settings define the run
            train(run_config(data, cut, **{**RESUMED, **changed}, resume=str(cut / "last.pt")))
    train(run_config(data, cut, **RESUMED, resume=str(cut / "last.pt")))

    assert metrics_rows(cut, timings=False) == metrics_rows(whole, timings=False)  # losses, scores, rates: every digit
    want = _timm_rates("cosine", 3, min_lr=0.0, warmup_epochs=1, warmup_lr=1e-6)
    assert [float(r["lr"]) for r in metrics_rows(whole)] == want
    a, b = (torch.load(run / "last.pt", weights_only=True) for run in (whole, cut))
    assert a["epoch"] == b["epoch"] == 2 and a["scheduler"] == b["scheduler"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for i, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][i][k]) for k, v in state.items())


def test_ddp_with_plateau_and_patience_ends_on_every_rank(data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "walnet",
           *train_args(data, run, "--epochs", "3", "--sched", "plateau", "--patience-epochs", "0",
                       "--patience", "1")]
    done = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metrics_rows(run)
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == int(rows[-1]["epoch"]) and last["scheduler"]["plateau"]["patience"] == 0
    assert last["stopped_early"] == (len(rows) < 3)


def _ddp_worker(rank, port, data, run, scores):
    """One of two gloo processes of a scripted run (rank 0 alone validates): writes the rate of
    every epoch this process saw to rank<r>.json."""
    import json
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    rates = []

    class Recorded(Schedule):
        def step(self, epoch, metric):
            super().step(epoch, metric)
            rates.append(self.lr)

    with pytest.MonkeyPatch.context() as mp:
        _scripted(mp, scores)
        mp.setattr(trainer, "Schedule", Recorded)
        train(run_config(data, run, epochs=len(scores) + 2, patience=2, **SCHEDULES["plateau"]))
    (run.parent / f"rank{rank}.json").write_text(json.dumps(rates))


def test_under_ddp_every_rank_steps_the_plateau_and_stops_on_rank_0s_score(data, tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    scores = [0.2, 0.5, 0.5, 0.4, 0.45]  # best.pt: epoch 2; epochs 3 and 4 do not change it: stop after 4
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    procs = mp.start_processes(_ddp_worker, args=(port, data, run, scores), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 300
    while not procs.join(timeout=5):  # a rank that missed the stop would wait for the other forever
        if time.monotonic() > deadline:
            for process in procs.processes:
                process.kill()
            pytest.fail("a DDP rank did not end")
    # the rates after each epoch's step: those of epochs 1 to 5
    want = _timm_rates("plateau", 6, [*scores, 0], **{k: v for k, v in SCHEDULES["plateau"].items() if k != "sched"})
    rates = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert rates[0] == rates[1] == want[1:] and len(set(want)) > 2
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 4 and last["stopped_early"] is True and last["best_epoch"] == 2


# --- the CUDA-graphed step under a schedule ------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_graphed_step_follows_the_scheduled_rate_as_an_eager_one():
    """The graph is captured once; the rate changes between epochs in the tensor it reads. Its
    losses are the eager step's (to the rounding of atomic sums, as in test_step), and they
    would part from them at once if the replays kept the captured rate."""
    from walnet.engine.step import GRAPH_WARMUP_STEPS, TrainStep

    from test_step import HalfMask, _batches

    config = _config(epochs=4, sched="cosine", warmup_epochs=1, warmup_lr=1e-5, lr=1e-3)
    steps_per_epoch, epochs = GRAPH_WARMUP_STEPS + 2, 4
    batches = _batches(steps_per_epoch * epochs, "cuda")
    results = []
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        for graphed in (True, False):
            torch.manual_seed(0)
            model = walnet.WALNet(backbone="resnet18", attention_channels=8, rcm_warmup_epochs=0).cuda().train()
            schedule = Schedule(config, model.parameters(), torch.device("cuda"), capturable=True)
            tensor = schedule.optimizer.param_groups[0]["lr"]
            step = TrainStep(model, HalfMask(), schedule.optimizer, cuda_graph=graphed)
            losses, rates = [], []
            for epoch in range(epochs):
                rates.append(schedule.lr)
                for x, t in batches[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]:
                    losses.append(step(x, t, epoch).clone())
                schedule.step(epoch, 0.5)
                assert schedule.optimizer.param_groups[0]["lr"] is tensor
                assert float(tensor) == pytest.approx(schedule.lr, rel=1e-6)
            results.append((torch.stack(losses), rates, model.state_dict()))
    (got, got_rates, got_state), (want, want_rates, want_state) = results
    assert got_rates == want_rates and len(set(got_rates)) == epochs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for name, a in got_state.items():
        torch.testing.assert_close(a.float(), want_state[name].float(), rtol=0, atol=5e-3, msg=name)
