"""Fuzzing ``walnet train --resume``, ``walnet experiment`` and ``walnet export`` (hypothesis), as
tests/test_fuzz_cli.py fuzzes train's flags: whatever the paths and values, the command ends
with status 0, or 2 and one line ``walnet <command>: error: ...`` on stderr, never a traceback,
and changes nothing outside its output. Most examples fail their checks before any work; the few
valid ones train one epoch of a 30-image phantom at 32 px (resnet18, 8 attention channels).
``WALNET_FUZZ_EXAMPLES=<n>`` runs more random examples than the fixed (derandomized) 25.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from walnet.data import phantom

from test_fuzz_cli import FUZZ, _run

TINY = ["--backbone", "resnet18", "--attention-channels", "8", "--size", "32", "-b", "4", "--device", "cpu",
        "--rcm-warmup", "0"]

#: Checkpoint paths a careless user gives, valid ones first (hypothesis shrinks towards them).
CHECKPOINTS = ["own-last", "own-best", "other-last", "missing", "folder", "text", "garbage", "truncated", "fifo",
               "empty"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 30-image phantom and two one-epoch runs on it (seeds 0 and 1), read-only for the examples."""
    from walnet.engine.config import TrainConfig
    from walnet.engine.trainer import train

    root = tmp_path_factory.mktemp("fuzz-commands")
    labels = phantom.generate(root / "ph", n=30, seed=0, size=32)
    for seed, name in ((0, "trained"), (1, "other")):
        train(TrainConfig(csv=labels, output=root / name, backbone="resnet18", attention_channels=8, size=32,
                          batch_size=4, epochs=1, rcm_warmup=0, device="cpu", seed=seed))
    return root


def _workdir(world: Path) -> Path:
    """A fresh folder with a copy of the phantom and of the run "trained" (as run/)."""
    work = Path(tempfile.mkdtemp(dir=world, prefix="ex-"))
    shutil.copytree(world / "ph", work / "ph")
    shutil.copytree(world / "trained", work / "run")
    return work


def _checkpoint(kind: str, world: Path, work: Path) -> Path:
    """A path of `kind` (see :data:`CHECKPOINTS`), made in `work` where it is made at all."""
    run = work / "run"
    if kind == "truncated":
        data = (run / "last.pt").read_bytes()
        (run / "last.pt").write_bytes(data[: len(data) // 2])
    elif kind == "text":
        return run / "args.json"
    elif kind == "garbage":
        (run / "junk.pt").write_bytes(b"\x80\x02not a pickle at all" * 10)
        return run / "junk.pt"
    elif kind == "empty":
        (run / "empty.pt").write_bytes(b"")
        return run / "empty.pt"
    elif kind == "fifo":
        os.mkfifo(run / "pipe.pt")
        return run / "pipe.pt"
    return {"own-best": run / "best.pt", "other-last": world / "other" / "last.pt", "missing": run / "nothere.pt",
            "folder": run}.get(kind, run / "last.pt")


def _in(work: Path, argv: list, allowed: list[Path], world: Path) -> int:
    """Runs `argv` in `work` (:func:`test_fuzz_cli._run`: `allowed` may change), then removes `work`."""
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code, _ = _run([str(a) for a in argv], allowed, [work, world / "trained", world / "other", world / "ph"])
    finally:
        os.chdir(cwd)
    shutil.rmtree(work)
    return code


@FUZZ
@given(checkpoint=st.sampled_from(CHECKPOINTS), output=st.sampled_from(["run", "fresh", "other"]),
       epochs=st.sampled_from(["1", "2", "0"]))
@example(checkpoint="fifo", output="run", epochs="1")
@example(checkpoint="empty", output="run", epochs="1")
def test_train_resume(world, checkpoint, output, epochs):
    work = _workdir(world)
    if output == "other":
        shutil.copytree(world / "other", work / "other")
    resume = _checkpoint(checkpoint, world, work)
    argv = ["train", "--csv", "ph/labels.csv", "--output", output, *TINY, "--epochs", epochs, "--resume", resume]
    _in(work, argv, [work / output], world)


MODELS = ["walnet", "walnet_no_pgm", "nonet", "", ",", "walnet,walnet", "walnet,,", " walnet ", "walnet;walnet_crop",
          "WALNET", "../walnet"]
SEEDS = ["0", "1", "0,0", "", ",", "x", "-1", "4294967296", "1_0", "0.5", "+0", " 0 ,", "0,,1"]
TABLES = ["4", "", "table1", "1 ", "0", "-1", "1", "2", "3"]


@FUZZ
@given(which=st.sampled_from(["--models", "--table"]), models=st.sampled_from(MODELS),
       table=st.sampled_from(TABLES), seeds=st.one_of(st.none(), st.sampled_from(SEEDS)),
       output=st.sampled_from(["exp", "ph/labels.csv", "run", "", "ph"]))
@example(which="--table", models="", table="1", seeds="x", output="exp")
def test_experiment(world, which, models, table, seeds, output):
    work = _workdir(world)
    argv = ["experiment", "--csv", "ph/labels.csv", "--output", output, *TINY, "--epochs", "1", "--no-figures"]
    argv += ["--models", models] if which == "--models" else ["--table", table]
    if which == "--table" and table in ("1", "2", "3"):
        argv += ["--epochs", "0"]  # a paper table trains many models: refused here before any of them
    argv += ["--seeds", seeds] if seeds is not None else ["--seeds", "x"]  # the default five seeds: five runs
    _in(work, argv, [work / output] if output else [], world)


FORMATS = [None, "safetensors", "onnx", "", ",", "safetensors,safetensors", "tflite", "ONNX,pt2x", "pt2;onnx",
           "safetensors,"]


@FUZZ
@given(checkpoint=st.sampled_from(CHECKPOINTS), formats=st.sampled_from(FORMATS),
       output=st.sampled_from(["exported", "existing", "run", "ph/labels.csv", "run/best.pt", ""]),
       overwrite=st.booleans())
def test_export(world, checkpoint, formats, output, overwrite):
    work = _workdir(world)
    if output == "existing":
        from walnet.engine.export import export_model

        export_model(work / "run" / "best.pt", work / "existing", device="cpu")
    argv = ["export", "--checkpoint", _checkpoint(checkpoint, world, work), "--output", output, "--device", "cpu"]
    argv += ["--format", formats] if formats is not None else []
    argv += ["--overwrite"] if overwrite else []
    _in(work, argv, [work / output] if output else [], world)


def test_a_resume_that_is_a_fifo_is_named_as_one(world, capsys):
    """Found by the fuzz: a FIFO given to --resume was reported as "no such checkpoint file"."""
    from walnet import cli

    work = _workdir(world)
    pipe = _checkpoint("fifo", world, work)
    code = cli.main(["train", "--csv", str(work / "ph" / "labels.csv"), "--output", str(work / "run"), *TINY,
                     "--resume", str(pipe)])
    assert code == 2
    err = capsys.readouterr().err
    assert err == f"walnet train: error: --resume {pipe} is a FIFO (named pipe), not a checkpoint file\n"
    shutil.rmtree(work)
