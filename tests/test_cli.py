"""The ``walnet`` command line, run as a user would (a subprocess)."""
from __future__ import annotations

import csv
import functools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from walnet import cli, console

ROOT = Path(__file__).resolve().parents[1]


def _walnet(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "walnet", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_phantom_command(tmp_path):
    out = tmp_path / "ph"
    done = _walnet("phantom", "--output", str(out), "--n", "9", "--seed", "3", "--size", "48", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "labels.csv" in done.stdout
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and all((out / r["path"]).is_file() and (out / r["mask_path"]).is_file() for r in rows)


def test_phantom_command_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    done = _walnet("phantom", "--output", str(tmp_path / "mine"), "--n", "3", cwd=tmp_path)
    assert done.returncode == 2 and "mine" in done.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_usage_errors(tmp_path):
    done = _walnet(cwd=tmp_path)
    assert done.returncode == 2 and "COMMAND" in done.stderr


def test_train_command_writes_a_run_and_resumes(tmp_path):
    data = tmp_path / "ph"
    made = _walnet("phantom", "--output", str(data), "--n", "30", "--seed", "0", "--size", "48", cwd=tmp_path)
    assert made.returncode == 0
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
    classes = ["hyperechoic", "hypoechoic", "mixed-echoic"]
    assert list(result["sensitivity"]) == list(result["specificity"]) == classes
    for key in ("accuracy", "macro_f1", "auc_micro"):
        lo, hi = result[f"{key}_ci"]
        assert 0 <= lo <= hi <= 1, key
    assert result["bootstrap"] == {"method": "percentile", "level": 0.95, "resamples": 1000, "seed": 0,
                                   "auc_resamples": 1000}
    # the phantom has patient ids: the same scores per patient
    patient = result["patient"]
    assert 0 < patient["patients"] <= patient["images"] == result["images"]
    assert sum(map(sum, patient["confusion"])) == patient["patients"] and patient["accuracy_ci"]
    assert "sensitivity / specificity [95% Wilson intervals]:\n  hyperechoic " in scored.stdout
    for key in ("sensitivity_ci", "specificity_ci"):
        assert list(result[key]) == classes and all(ci is None or 0 <= ci[0] <= ci[1] <= 1
                                                    for ci in result[key].values()), key
    assert 0 <= result["ece"] <= 1 and 0 <= result["brier"] <= 2
    assert sum(result["calibration"]["count"]) == result["images"] and "auc_macro" in result
    assert f"Brier {result['brier']:.3f}, ECE {result['ece']:.3f}" in scored.stdout
    assert f"per patient ({patient['patients']} patients" in scored.stdout
    assert result["figures"] == ["roc.png", "confusion.png", "reliability.png", "segmentation.png", "attention.png"]
    for name in result["figures"]:
        assert (run / name).stat().st_size > 1000, name
    assert "accuracy" in scored.stdout


@pytest.fixture(scope="module")
def phantom_csv(tmp_path_factory):
    from walnet.data import phantom

    return phantom.generate(tmp_path_factory.mktemp("ph") / "ph", n=12, seed=0, size=64)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


TINY = ["--backbone", "resnet18", "--attention-channels", "8", "-b", "8", "--device", "cpu", "--size", "64",
        "--epochs", "1"]


def _unwritable(tmp_path) -> str:
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        return str(folder / "run")
    if not Path("/sys").is_dir():
        pytest.skip("root, and no read-only /sys to write into")
    return "/sys/walnet-test-run"  # root writes everywhere else


@pytest.mark.parametrize("case, flags, message", [
    ("backbone", ["--backbone", "resnet19"], "unknown backbone 'resnet19' for --backbone (timm has no such model"),
    ("stages", ["--backbone", "vit_tiny_patch16_224"],
     "backbone 'vit_tiny_patch16_224' has no four feature stages at growing strides"),
    ("attention", ["--attention-channels", "0"], "--attention-channels must be at least 1, got 0"),
    ("gpu0", ["--device", "gpu0"], "--device 'gpu0' is not a device; use auto, cpu, cuda or cuda:<index>"),
    ("cuda", ["--device", "cuda"], "--device cuda: no CUDA device is available here"),
    ("epochs0", ["--epochs", "0"], "--epochs must be at least 1, got 0"),
    ("epochs-3", ["--epochs", "-3"], "--epochs must be at least 1, got -3"),
    ("model", ["--model", "nonet"], "--model 'nonet' is unknown; choose one of walnet, "),
    ("file", ["--output", "{csv}"], "--output {csv} is the --csv file {csv}; choose another path: train never "
                                    "writes what it reads"),
    ("under-file", ["--output", "{csv}/sub"], "--output {csv}/sub lies under the file {csv}; choose a folder"),
    ("unwritable", ["--output", "{unwritable}"], "{unwritable}"),
    ("csv-folder", ["--csv", "{folder}"], "--csv {folder} is a folder, not a CSV file"),
    ("classes", ["--classes", "calcified"], "--classes takes two or more comma-separated class names"),
    ("bad-int", ["-b", "eight"], "argument -b/--batch-size: invalid int value: 'eight'"),
])
def test_bad_train_input_is_one_line_and_touches_nothing(case, flags, message, phantom_csv, tmp_path, monkeypatch,
                                                        capsys):

    if case == "cuda":
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    names = dict(csv=phantom_csv, folder=phantom_csv.parent, unwritable=_unwritable(tmp_path))
    flags = [f.format(**names) for f in flags]
    message = message.format(**names)
    before = _tree(phantom_csv.parent)
    try:
        code = cli.main(["train", "--csv", str(phantom_csv), "--output", "run", *TINY, *flags])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("walnet train: error: "), err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists() and _tree(phantom_csv.parent) == before


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path):
    for argv in (["--debug", "train"], ["train", "--debug"]):
        done = _walnet(*argv, "--csv", "x.csv", "--output", "run", "--device", "gpu0", cwd=tmp_path)
        assert done.returncode == 1 and "Traceback" in done.stderr
        assert done.stderr.rstrip().endswith("ValueError: --device 'gpu0' is not a device; use auto, cpu, cuda or "
                                             "cuda:<index>")
    done = _walnet("train", "--csv", "x.csv", "--output", "run", "--device", "gpu0", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == ("walnet train: error: --device 'gpu0' is not a device; use auto, "
                                                    "cpu, cuda or cuda:<index>\n")


def test_torch_runtime_errors_are_one_line_that_points_to_debug(monkeypatch, capsys):
    from walnet.engine import trainer

    def out_of_memory(config):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nsee the allocator's notes")

    monkeypatch.setattr(trainer, "train", out_of_memory)
    assert cli.main(["train", "--csv", "x", "--output", "y"]) == 2
    assert capsys.readouterr().err == ("walnet train: error: RuntimeError: CUDA out of memory. Tried to allocate "
                                       "2.00 GiB (--debug shows the traceback)\n")


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only errors a user can cause are shortened; anything else is walnet's bug and shown whole."""
    from walnet.engine import trainer

    monkeypatch.setattr(trainer, "train", lambda config: {}["missing"])
    with pytest.raises(KeyError):
        cli.main(["train", "--csv", "x", "--output", "y"])


def test_an_error_raised_in_a_loader_worker_is_one_line():
    """A data error raised in a DataLoader worker reaches the user as its own message, not the
    worker's traceback that torch wraps it in."""
    wrapped = ValueError("Caught ValueError in DataLoader worker process 0.\n"
                         "Original Traceback (most recent call last):\n"
                         '  File "walnet/data/datasets.py", line 1, in __getitem__\n'
                         "    raise ValueError(...)\n"
                         "ValueError: labels.csv:3: the ROI box (0, 0, 99, 99) lies outside a.png (64x64)")
    assert cli._one_line(wrapped) == "labels.csv:3: the ROI box (0, 0, 99, 99) lies outside a.png (64x64)"


def test_walnets_warnings_are_one_line(capsys):
    """A warning of walnet's own (e.g. a CSV row listed twice) is one line naming the command;
    another package's keeps Python's format."""
    shown = []
    show = functools.partial(console.show_warning, "train", lambda *args: shown.append(args))
    show(UserWarning("labels.csv:4 repeats labels.csv:2"), UserWarning, cli.__file__, 10)
    assert capsys.readouterr().err == "walnet train: warning: labels.csv:4 repeats labels.csv:2\n"
    show(UserWarning("elsewhere"), UserWarning, functools.__file__, 10)
    assert capsys.readouterr().err == "" and len(shown) == 1


def test_the_engines_log_reaches_the_terminal_only_through_the_command_line(monkeypatch, capsys):
    """The engine logs on the ``walnet`` logger: a command shows its INFO records as lines on
    stdout and its warnings as one line on stderr; a Python caller sees nothing it did not ask
    for, and main() leaves the logger as it found it."""
    from walnet.engine import trainer

    def fake_train(config):
        logging.getLogger("walnet.engine.trainer").info("epoch 0: loss 1.0")
        logging.getLogger("walnet.engine.trainer").warning("skipped 1 unreadable image(s) (--skip-bad)")
        logging.getLogger("walnet.engine.trainer").debug("not shown")

    monkeypatch.setattr(trainer, "train", fake_train)
    logger = logging.getLogger("walnet")
    handlers, level = list(logger.handlers), logger.level
    assert cli.main(["train", "--csv", "x.csv", "--output", "run"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "epoch 0: loss 1.0\n"
    assert captured.err == "walnet train: warning: skipped 1 unreadable image(s) (--skip-bad)\n"
    assert logger.handlers == handlers and logger.level == level
    fake_train(None)  # called from Python: the library prints nothing itself
    assert capsys.readouterr().out == ""
