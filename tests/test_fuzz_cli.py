"""Fuzzing the command line as a careless or hostile user would (hypothesis): random flag values
for ``walnet train`` / ``evaluate`` / ``predict`` / ``calibrate``, and random CSV rows for
``walnet train --csv``.

Whatever the input, the command ends with status 0, or 2 and one line on stderr
(``walnet <command>: error: ...``), never a traceback; and it creates or changes no file
outside its output (the run folder, the evaluate folder, the predict CSV, the calibrated
checkpoint's folder). The values mix valid and invalid ones so that most examples fail their
checks early and a few train a tiny model (a 12-image phantom at 64 px, one epoch, resnet18).
``WALNET_FUZZ_EXAMPLES=<n>`` runs more random examples than the fixed (derandomized) 25 of
``make test``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walnet import cli
from walnet.data import phantom

_EXAMPLES = int(os.environ.get("WALNET_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=_EXAMPLES, deadline=None, derandomize="WALNET_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: A valid, cheap training command line; the fuzzed flags come after it (argparse: last one wins).
BASE = ["--backbone", "resnet18", "--attention-channels", "8", "-b", "8", "--device", "cpu", "--size", "64",
        "--epochs", "1", "--rcm-warmup", "0"]

#: Values per flag, valid ones first (hypothesis shrinks towards them). Valid values are all
#: cheap: a valid example trains a tiny model for one epoch, never a big one for long.
FLAG_VALUES = {
    "--epochs": ["1", "0", "-3", "x", "", "1.5", "-0"],
    "-b": ["8", "4", "0", "-1", "eight", "2.0"],
    "--lr": ["1e-3", "1e-4", "0", "-1", "nan", "inf", "1e30", "one"],
    "--size": ["64", "48", "32", "16", "0", "-64", "x"],
    "--device": ["cpu", "auto", "cuda", "cuda:7", "gpu0", "", "meta", "cpu:0:1"],
    "--output": ["out", "out/deep/run", ".", "", "{csv}", "{csv}/sub", "ph", "ph/images", "/dev/null/run"],
    "--seed": ["0", "3", "-1", "4294967296", "x"],
    "--attention-channels": ["8", "16", "0", "-8", "x"],
    "--model": ["walnet", "walnet_no_pgm", "walnet_crop", "nonet", "", "walnet_"],
    "--backbone": ["resnet18", "resnet19", "vit_tiny_patch16_224", "", "../resnet18"],
    "--classes": ["hyperechoic,hypoechoic,mixed-echoic", "mixed-echoic,hypoechoic,hyperechoic", "a", "a,b", ",",
                  "x,x"],
    "--split": ["val", "train", "test", "", "dev"],
    # --folds and --fold go together: one of them alone fails its check (one line)
    "--folds": ["3", "4", "2", "0", "-3", "x", ""],
    "--fold": ["0", "2", "3", "-1", "x"],
    # evaluate only; relative to a fresh folder inside the world (.. is the world: its run and data)
    "--save-predictions": ["pred.csv", "out/p.csv", "{csv}", "", "ph", "../trained/split.csv",
                           "../trained/metrics.json", "../ph/labels.csv", "/dev/null"],
    "--sched": ["none", "cosine", "step", "plateau", "bogus", ""],
    "--warmup-epochs": ["0", "1", "-1", "x", "1.5"],
    "--weight-decay": ["0", "0.01", "-0.1", "nan", "inf", "x"],
    "--patience": ["1", "3", "0", "-2", "x"],
    "--class-weights": ["none", "balanced", "1,2,1", "1,2", "0,1,1", "-1,1,1", "x", "", "nan,1,1"],
    "--balanced-sampler": [None],  # a switch: no value
    "--figure-format": ["png", "pdf", "both", "jpg", ""],  # evaluate only
    "--quiet": [None],
    "--tensorboard": [None],
}
#: The flags each command takes (others are usage errors, which the fuzz tries now and then).
COMMAND_FLAGS = {
    "train": [f for f in FLAG_VALUES if f not in ("--split", "--save-predictions", "--figure-format")],
    "evaluate": ["-b", "--device", "--output", "--save-predictions", "--figure-format", "--quiet"],
    "predict": ["-b", "--device", "--output", "--quiet"],
    "calibrate": ["-b", "--device", "--split"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A phantom and a checkpoint trained on it, shared by every example (read-only for them)."""
    from walnet.engine.config import TrainConfig
    from walnet.engine.trainer import train

    root = tmp_path_factory.mktemp("fuzz")
    csv_path = phantom.generate(root / "ph", n=12, seed=0, size=64)
    train(TrainConfig(csv=csv_path, output=root / "trained", backbone="resnet18", attention_channels=8,
                      batch_size=8, size=64, epochs=1, rcm_warmup=0, device="cpu"))
    return root


def _snapshot(root: Path) -> dict:
    """Every file and folder under `root`: (kind, size, mtime)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            found[p] = ("dir" if p.is_dir() else "file", None if p.is_dir() else st_.st_size, st_.st_mtime_ns)
    return found


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _run(argv: list[str], allowed: list[Path], roots: list[Path]) -> tuple[int, str]:
    """Runs ``walnet <argv>`` in this process; checks the exit status, stderr and that nothing
    outside `allowed` (or a new folder above one of them) changed under `roots`."""
    before = {k: v for root in roots for k, v in _snapshot(root).items()}
    allowed = [Path(os.path.realpath(a)) for a in allowed]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    text = err.getvalue()
    assert code in (0, 2), (argv, code, text)
    assert "Traceback" not in text, (argv, text)
    if code == 2:
        lines = text.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"walnet {argv[0]}: error: "), (argv, text)
    after = {k: v for root in roots for k, v in _snapshot(root).items()}
    for path in set(before) | set(after):
        if before.get(path) == after.get(path):
            continue
        real = Path(os.path.realpath(path)) if path.exists() else path
        ok = any(_inside(real, a) for a in allowed)
        # folders created on the way to the output (out/ of out/deep/run)
        ok = ok or (path not in before and after[path][0] == "dir" and any(real in a.parents for a in allowed))
        assert ok, (argv, "changed outside the output:", path, before.get(path), after.get(path))
    return code, text


def _workdir(world: Path) -> Path:
    """A fresh folder holding a copy of the phantom (so that runs into it stay apart)."""
    work = Path(tempfile.mkdtemp(dir=world, prefix="ex-"))
    shutil.copytree(world / "ph", work / "ph")
    return work


def _fill(value: str, work: Path) -> str:
    return value.format(csv=work / "ph" / "labels.csv")


def _draw_flags(data, command: str, foreign: bool) -> list[tuple[str, str]]:
    names = list(FLAG_VALUES) if foreign else COMMAND_FLAGS[command]
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=4), label="flags")
    return [(name, data.draw(st.sampled_from(FLAG_VALUES[name]), label=name)) for name in chosen]


@FUZZ
@given(data=st.data())
def test_train_flags(world, data):
    work = _workdir(world)
    pairs = _draw_flags(data, "train", foreign=False)
    argv = ["train", "--csv", "ph/labels.csv", "--output", "run", *BASE]
    for name, value in pairs:
        argv += [name] if value is None else [name, _fill(value, work)]
    output = next((_fill(v, work) for n, v in reversed(pairs) if n == "--output"), "run")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code, _ = _run(argv, [work / output] if output else [], [work])
    finally:
        os.chdir(cwd)
    if code == 0:
        assert (work / output / "last.pt").is_file() and not (work / output / "walnet.lock").exists()
    shutil.rmtree(work)


@FUZZ
@given(data=st.data(), command=st.sampled_from(["evaluate", "predict", "calibrate"]), foreign=st.booleans())
def test_evaluate_and_predict_flags(world, data, command, foreign):
    work = _workdir(world)
    pairs = _draw_flags(data, command, foreign)
    checkpoint = world / "trained" / "best.pt"
    if command == "calibrate":  # it rewrites its checkpoint: a copy, with the run's split.csv
        (work / "trained").mkdir()
        for name in ("best.pt", "split.csv"):
            shutil.copy(world / "trained" / name, work / "trained" / name)
        argv = ["calibrate", "--checkpoint", str(work / "trained" / "best.pt"), "--csv",
                str(world / "ph" / "labels.csv"), "--device", "cpu"]
        default_output = work / "trained"
    elif command == "evaluate":
        # the data the checkpoint was trained on, as its split.csv names it
        argv = ["evaluate", "--checkpoint", str(checkpoint), "--csv", str(world / "ph" / "labels.csv"), "--split",
                "val", "--device", "cpu", "--no-figures"]
        default_output = checkpoint.parent
    else:
        argv = ["predict", "--checkpoint", str(checkpoint), "ph/images", "--output", "pred.csv", "--device", "cpu"]
        default_output = work / "pred.csv"
    for name, value in pairs:
        argv += [name] if value is None else [name, _fill(value, work)]
    given = [_fill(v, work) for n, v in pairs if n == "--output"]
    output = (work / given[-1]) if given and given[-1] else default_output
    saved = [work / _fill(v, work) for n, v in pairs if n == "--save-predictions" and v][-1:]
    cwd = os.getcwd()
    os.chdir(work)
    try:
        _run(argv, [output, *saved], [work, world / "trained", world / "ph"])
    finally:
        os.chdir(cwd)
    shutil.rmtree(work)


# --- CSV rows given to walnet train --csv ---------------------------------------------------

def _images(world: Path) -> list[tuple[str, str, str, str]]:
    with open(world / "ph" / "labels.csv", newline="") as f:
        return [(r["path"], r["label"], r["patient_id"], r["mask_path"]) for r in csv.DictReader(f)]


#: The CSV's columns: path and label (each left out now and then), then any of the optional ones.
REQUIRED = ["path", "label"]
OPTIONAL = ["patient_id", "mask_path", "split", "y1", "x1", "y2", "x2"]
cells = {
    "path": st.sampled_from(["{image}", "{image}", "missing.png", "", "images", "labels.csv", "{abs_image}"]),
    "label": st.sampled_from(["{label}", "{label}", "hyperechoic", "calcified", ""]),
    "patient_id": st.sampled_from(["{patient}", "", "P1", "P2"]),
    "mask_path": st.sampled_from(["{mask}", "", "missing_mask.png", "images"]),
    "split": st.sampled_from(["", "train", "val", "test", "dev"]),
    "y1": st.sampled_from(["", "0", "8", "-1", "x", "inf"]),
    "x1": st.sampled_from(["", "0", "8", "1e3", "nan"]),
    "y2": st.sampled_from(["", "40", "63", "0", "99999999999999999999"]),
    "x2": st.sampled_from(["", "40", "63", "2.5", "-inf"]),
}


@FUZZ
@given(data=st.data(), optional=st.lists(st.sampled_from(OPTIONAL), unique=True, max_size=len(OPTIONAL)),
       dropped=st.sampled_from([None, None, None, None, "path", "label"]), n_rows=st.integers(0, 12),
       header=st.sampled_from([True, True, True, False]))
def test_train_csv_rows(world, data, optional, dropped, n_rows, header):
    columns = [c for c in REQUIRED if c != dropped] + optional
    work = _workdir(world)
    images = _images(world)
    rows = []
    for i in range(n_rows):
        image, label, patient, mask = images[data.draw(st.integers(0, len(images) - 1), label="image")]
        values = dict(image=image, abs_image=work / "ph" / image, label=label, patient=patient, mask=mask)
        rows.append([data.draw(cells[c], label=c).format(**values) for c in columns])
    fuzzed = work / "ph" / "fuzzed.csv"
    with open(fuzzed, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(columns)
        writer.writerows(rows)
    argv = ["train", "--csv", str(fuzzed), "--output", str(work / "run"), *BASE]
    code, _ = _run(argv, [work / "run"], [work])
    if code == 0:
        assert (work / "run" / "last.pt").is_file()
    shutil.rmtree(work)
