"""``walnet experiment --devices`` and ``--slurm`` (walnet.engine.launch): the runs in processes
of their own (a process per device; a job array through submitit, here its local executor) give
the table of the same runs one after another; a resubmitted array trains only what is missing;
``--aggregate-only`` tabulates the finished runs; a failed run is named; a SLURM job's stale lock
is recognised on another node."""
from __future__ import annotations

import csv
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

from walnet import cli
from walnet.engine import launch, lock
from walnet.engine.config import EvalConfig, TrainConfig
from walnet.engine.experiment import run_experiment
from walnet.engine.launch import RunsFailedError, SlurmOptions, launcher, parse_devices

ROOT = Path(__file__).resolve().parents[1]
MODEL, SEEDS = "walnet_no_pgm", [0, 1]
TABLES = ("experiment.csv", "experiment_runs.csv", "experiment.md")
#: The tiny runs as command-line flags (and, in _templates, as configs).
FLAGS = ["--epochs", "1", "--backbone", "resnet18", "--attention-channels", "8", "--size", "32", "-b", "8",
         "--rcm-warmup", "0", "--device", "cpu", "--no-figures"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from walnet.data import phantom

    return phantom.generate(tmp_path_factory.mktemp("ph") / "data", n=24, seed=3, size=32)


def _templates(data, out):
    train = TrainConfig(csv=data, output=out, epochs=1, backbone="resnet18", attention_channels=8, size=32,
                        batch_size=8, rcm_warmup=0, device="cpu")
    return dict(train=train, evaluate=EvalConfig(checkpoint="best.pt", csv=data, device="cpu", figures=False))


def _args(data, out, *extra):
    return ["experiment", "--models", MODEL, "--seeds", ",".join(map(str, SEEDS)), "--csv", str(data),
            "--output", str(out), *FLAGS, *extra]


def _tables(out):
    return {name: (Path(out) / name).read_text() for name in TABLES}


def _run(out, seed):
    return Path(out) / "runs" / MODEL / f"seed{seed}"


def _scores(out):
    """Each run's continuous test scores (which a single different bit of its model would change)."""
    runs = [json.loads((_run(out, seed) / "metrics.json").read_text()) for seed in SEEDS]
    return [(run["brier"], run["ece"], run["auc_per_class"]) for run in runs]


@pytest.fixture(scope="module")
def sequential(data, tmp_path_factory):
    """The experiment's runs one after another in this process, with one CPU thread."""
    out = tmp_path_factory.mktemp("sequential") / "exp"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_experiment([MODEL], out, seeds=SEEDS, **_templates(data, out))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def children(monkeypatch):
    """The processes the launchers start: one CPU thread each (as the sequential runs), walnet
    importable."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def test_a_submitit_job_array_gives_the_sequential_table_and_resubmitted_trains_only_what_is_missing(
        data, sequential, tmp_path, children):
    out = tmp_path / "exp"
    slurm = SlurmOptions(folder=tmp_path / "submitit", cluster="local", gpus_per_task=0, cpus_per_task=1, time_min=30)
    run_experiment([MODEL], out, seeds=SEEDS, **_templates(data, out), launch=launcher(slurm=slurm))
    assert _tables(out) == _tables(sequential) and _scores(out) == _scores(sequential)
    # the local executor ran each run as a job (a process) of its own, all submitted at once
    results = sorted((tmp_path / "submitit").rglob("*_result.pkl"))
    assert len(results) == 2 and len({p.parent for p in results}) == 2
    # a preempted array resubmitted: the finished run is reused as it is, the missing one trained
    kept = {p.name: p.stat().st_mtime_ns for p in _run(out, 0).iterdir()}
    shutil.rmtree(_run(out, 1))
    run_experiment([MODEL], out, seeds=SEEDS, **_templates(data, out), launch=launcher(slurm=slurm))
    assert {p.name: p.stat().st_mtime_ns for p in _run(out, 0).iterdir()} == kept
    assert (_run(out, 1) / "metrics.json").is_file() and (_run(out, 1) / "last.pt").is_file()
    assert _tables(out) == _tables(sequential)


def test_a_process_per_device_gives_the_sequential_table(data, sequential, tmp_path, children, capfd):
    out = tmp_path / "exp"
    assert cli.main(_args(data, out, "--devices", "cpu,cpu")) == 0
    assert _tables(out) == _tables(sequential) and _scores(out) == _scores(sequential)
    shown = capfd.readouterr().out
    for seed in SEEDS:  # each run's lines name it
        assert f"[{MODEL} seed {seed}] runs on cpu" in shown and f"[{MODEL} seed {seed}] training into" in shown


@pytest.mark.parametrize("where", ["devices", "slurm"])
def test_a_failed_run_is_named_and_the_others_are_done(data, sequential, tmp_path, children, where):
    out = tmp_path / "exp"
    shutil.copytree(sequential, out)
    (_run(out, 1) / "args.json").write_text("{not json")
    finished = (_run(out, 0) / "metrics.json").stat().st_mtime_ns
    (out / "experiment.md").unlink()
    slurm = SlurmOptions(folder=tmp_path / "submitit", cluster="local", gpus_per_task=0, cpus_per_task=1)
    launch = launcher("cpu,cpu") if where == "devices" else launcher(slurm=slurm)
    with pytest.raises(RunsFailedError, match=rf"1 of 2 runs failed: \[{MODEL} seed 1\] ValueError: "
                                              rf"{_run(out, 1) / 'args.json'} cannot be read"):
        run_experiment([MODEL], out, seeds=SEEDS, **_templates(data, out), launch=launch)
    assert (_run(out, 0) / "metrics.json").stat().st_mtime_ns == finished and not (out / "experiment.md").exists()


def test_aggregate_only_tabulates_the_finished_runs_and_names_the_others(data, sequential, tmp_path, capsys):
    out = tmp_path / "exp"
    shutil.copytree(sequential, out)
    for name in TABLES:
        (out / name).unlink()
    assert cli.main(_args(data, out, "--aggregate-only")) == 0
    assert _tables(out) == _tables(sequential)
    (_run(out, 1) / "metrics.json").unlink()
    assert cli.main(_args(data, out, "--aggregate-only", "--devices", "cpu")) == 0
    captured = capsys.readouterr()
    assert f"1 of 2 runs are not finished: [{MODEL} seed 1] ({_run(out, 1)})" in captured.err
    assert "training into" not in captured.out and not (_run(out, 1) / "metrics.json").exists()
    with open(out / "experiment.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    seed0 = json.loads((_run(out, 0) / "metrics.json").read_text())
    assert row["n_seeds"] == "1" and float(row["accuracy_mean"]) == seed0["accuracy"] and row["accuracy_std"] == ""
    (_run(out, 0) / "metrics.json").unlink()
    assert cli.main(_args(data, out, "--aggregate-only")) == 2
    assert "2 of 2 runs are not finished" in capsys.readouterr().err


def test_cli_slurm_options(data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(launch, "run_slurm", lambda runs, options: calls.append((runs, options)) or False)
    out = tmp_path / "exp"
    assert cli.main(_args(data, out, "--slurm", "--partition", "gpu", "--time", "90", "--gpus-per-task", "2",
                          "--mem-gb", "32", "--no-wait")) == 0
    ((runs, options),) = calls
    assert options == SlurmOptions(folder=out / "slurm", partition="gpu", time_min=90, gpus_per_task=2, mem_gb=32.0,
                                   wait=False)
    assert [(r.config, r.seed, r.run_dir, r.train.seed, r.train.model) for r in runs] == [
        (MODEL, s, _run(out, s), s, MODEL) for s in SEEDS]
    assert not (out / "experiment.md").exists()  # submitted only: no tables


@pytest.mark.parametrize("extra, message", [
    (["--time", "60"], "--time is an option of --slurm"),
    (["--no-wait"], "--no-wait is an option of --slurm"),
    (["--devices", "cpu", "--slurm"], "--devices and --slurm exclude each other"),
    (["--devices", "gpu0"], "--devices 'gpu0' is not a device"),
    (["--devices", ","], "--devices takes all or comma-separated devices"),
    (["--slurm", "--cpus-per-task", "0"], "--cpus-per-task must be at least 1"),
])
def test_cli_launch_errors_come_before_any_run(data, tmp_path, capsys, extra, message):
    assert cli.main(_args(data, tmp_path / "exp", *extra)) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "exp").exists()


def test_slurm_without_submitit_names_the_extra(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit: ImportError
    assert cli.main(_args(data, tmp_path / "exp", "--slurm")) == 2
    assert "--slurm needs submitit: pip install 'walnet[slurm]'" in capsys.readouterr().err


def test_parse_devices():
    assert parse_devices("cpu, cpu") == ["cpu", "cpu"]
    if torch.cuda.is_available():
        assert parse_devices("all") == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        with pytest.raises(ValueError, match="--devices all: no CUDA device"):
            parse_devices("all")


def test_a_local_process_sees_only_its_gpu(monkeypatch):
    from walnet.engine.launch import _pin

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # the parent's GPUs: cuda:1 is GPU 5
    assert _pin("cuda:1") == "cuda:0" and launch.os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _pin("cuda:3") == "cuda:0" and launch.os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _pin("cpu") == "cpu" and "CUDA_VISIBLE_DEVICES" not in launch.os.environ


def _foreign_lock(folder: Path, job: str) -> None:
    """The lock of a run of SLURM job `job` on another node (pid 1 there)."""
    folder.mkdir(parents=True)
    (folder / lock.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": socket.gethostname() + "-other",
                                                     "slurm_job": job}))


def _squeue(tmp_path, monkeypatch, state: str) -> None:
    """A squeue on the PATH that lists every job in `state`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho {state}\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_a_lock_of_a_slurm_job_that_runs_no_more_is_stale_on_any_node(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _squeue(tmp_path, monkeypatch, "RUNNING")
    _foreign_lock(tmp_path / "a", "77")
    with pytest.raises(lock.RunLockedError, match="on host .* in SLURM job 77"):
        with lock.run_lock(tmp_path / "a"):
            pass
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the job itself, requeued: its earlier run was stopped
    with lock.run_lock(tmp_path / "a") as path:
        assert json.loads(path.read_text())["slurm_job"] == "77"
    _foreign_lock(tmp_path / "b", "78")
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\necho PENDING\n")  # resubmitted, not started yet
    with lock.run_lock(tmp_path / "b"):
        pass
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\n"
                                             "exit 1\n")
    _foreign_lock(tmp_path / "c", "79")
    with lock.run_lock(tmp_path / "c"):
        pass
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no squeue: cannot tell, so it is live
    _foreign_lock(tmp_path / "d", "80")
    with pytest.raises(lock.RunLockedError, match="in SLURM job 80"):
        with lock.run_lock(tmp_path / "d"):
            pass
