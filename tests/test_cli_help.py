"""A command line that explains itself: every option under a group (data, model, optimisation,
runtime, output) with its default in ``--help``; ``train --config FILE`` (a run's args.json with
overrides); the aliases ``phantom --out`` and ``--pretrained-path``; ``walnet info``'s versions."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from walnet import cli
from walnet.engine import trainer
from train_runs import metrics_rows, phantom_data, train_args
from walnet.engine.config import CalibrateConfig, DemoConfig, EvalConfig, ExportConfig, PredictConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ["data", "model", "optimisation", "runtime", "output"]
#: The options every command has besides its settings.
GENERAL = {"help", "debug", "config"}
CONFIGS = {"train": TrainConfig, "evaluate": EvalConfig, "predict": PredictConfig, "export": ExportConfig,
           "calibrate": CalibrateConfig, "demo": DemoConfig}


def _help(command: str, capsys, monkeypatch, *argv) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # one line per option: argparse wraps at the terminal's width
    with pytest.raises(SystemExit) as exited:
        cli.main([command, *argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _line(text: str, flag: str) -> str:
    """The help entry of `flag` as one line (a long invocation puts the help on the next one)."""
    lines = text.splitlines()
    (i,) = [i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(flag)}[ ,]|\s+{re.escape(flag)}$", line)]
    entry = lines[i]
    while i + 1 < len(lines) and lines[i + 1].startswith(" " * 8) and not lines[i + 1].lstrip().startswith("-"):
        i += 1
        entry += " " + lines[i].strip()
    return entry


def test_train_help_lists_groups_and_defaults(capsys, monkeypatch):
    text = _help("train", capsys, monkeypatch)
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["options", *GROUPS]
    assert re.search(r"^  --lr LR +Adam learning rate .*\(default: 0\.0001\)$", text, re.M)
    assert _line(text, "--size").endswith("(default: 224)")
    assert _line(text, "--backbone").endswith("(default: resnest50d)")
    assert _line(text, "--eval-metric").endswith("(default: accuracy)")
    assert _line(text, "--rcm").endswith("(default: on)")  # a switch that is on
    assert _line(text, "-b").endswith("(default: 8)")
    # None and False say nothing; a doc that names its default keeps its own words
    for flag in ("--augment", "--resume", "--compile", "--output", "--fold"):
        assert "(default" not in _line(text, flag), flag
    assert _line(text, "--patience").endswith("(--eval-metric; default: never)")
    assert "timm's" not in text and "--pretrained-file FILE, --pretrained-path FILE" in text


def _groups(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's dest and the title of the help group it is listed under."""
    return {action.dest: group.title for group in parser._action_groups for action in group._group_actions}


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export", "calibrate", "demo", "experiment",
                                     "phantom"])
def test_every_option_is_listed_under_a_group(command):
    parser = cli.build_parser().commands[command]
    grouped = {dest: title for dest, title in _groups(parser).items() if dest not in GENERAL}
    extra = {"experiment", "launch"} if command == "experiment" else set()  # its own options
    assert grouped and set(grouped.values()) <= set(GROUPS) | extra, grouped
    if command in CONFIGS:  # each option under its field's group (demo: its --output is no field)
        own = {f.name: f.metadata["group"] for f in fields(CONFIGS[command]) if f.name in grouped}
        assert grouped == own | ({"output": "output"} if command == "demo" else {})
    for config in CONFIGS.values():
        for f in fields(config):
            assert f.metadata["group"] in GROUPS, f"{config.__name__}.{f.name}"


def _shown(default) -> str | None:
    """How a default reads in --help, written out for the test: None for nothing."""
    if default is None or default is False or default == () or default is MISSING:
        return None
    return {True: "on", ("safetensors",): "safetensors"}.get(default, str(default))


@pytest.mark.parametrize("command", list(CONFIGS))
def test_each_help_ends_with_its_default(command):
    actions = {a.dest: a for a in cli.build_parser().commands[command]._actions}
    for f in fields(CONFIGS[command]):
        if f.name not in actions:  # demo's fixed settings
            continue
        shown, text = _shown(f.default), actions[f.name].help
        if shown is None or "(default" in f.metadata["doc"]:
            assert text == f.metadata["doc"], f.name
        else:
            assert text == f"{f.metadata['doc']} (default: {shown})", f.name


# --- train --config ------------------------------------------------------------------------------


def _trained_config(monkeypatch, argv) -> TrainConfig:
    seen = []
    monkeypatch.setattr(trainer, "train", seen.append)
    assert cli.main(argv) == 0
    (config,) = seen
    return config


@pytest.fixture
def recorded(tmp_path) -> tuple[Path, dict]:
    """A run's args.json (what train writes: TrainConfig.to_dict()), with settings off their defaults."""
    config = TrainConfig(csv="ph/labels.csv", output="runs/a", resume="runs/a/last.pt", backbone="resnet18",
                         size=64, lr=3e-4, rcm=False, augment=True, classes=("a", "b", "c"), class_weights="1,2,1",
                         sched="cosine", warmup_epochs=2, seed=5, epochs=7, cuda_graphs=False, workers=1)
    path = tmp_path / "args.json"
    path.write_text(json.dumps(config.to_dict(), indent=2))
    return path, config.to_dict()


def test_config_file_values_are_the_defaults_and_flags_override_them(recorded, monkeypatch):
    path, saved = recorded
    got = _trained_config(monkeypatch, ["train", "--config", str(path), "--output", "runs/b", "--seed", "1",
                                        "--no-augment", "--rcm", "--lr", "0.01"])
    expected = TrainConfig.from_dict({**saved, "output": "runs/b", "resume": None, "seed": 1, "augment": False,
                                      "rcm": True, "lr": 0.01})
    assert got == expected
    # nothing overridden: the recorded run, in a new folder (its resume point is not carried over)
    got = _trained_config(monkeypatch, ["train", f"--config={path}", "--output", "runs/c"])
    assert got == TrainConfig.from_dict({**saved, "output": "runs/c", "resume": None})
    # the data given anew replaces the recorded one (its pair: exactly one of --csv, --data-dir)
    got = _trained_config(monkeypatch, ["train", "--config", str(path), "--output", "o", "--data-dir", "imgs"])
    assert got.data_dir == "imgs" and got.csv is None
    assert got == TrainConfig.from_dict({**saved, "output": "o", "resume": None, "csv": None, "data_dir": "imgs"})


def test_config_file_of_walnet_010_and_help_shows_its_values(tmp_path, monkeypatch, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"csv": "x.csv", "no_rcm": True, "lr": 0.5}))  # a partial file, 0.1.0 keys
    got = _trained_config(monkeypatch, ["train", "--config", str(path), "--output", "o"])
    assert got == TrainConfig(csv="x.csv", output="o", rcm=False, lr=0.5)
    text = _help("train", capsys, monkeypatch, "--config", str(path))
    assert _line(text, "--lr").endswith("(default: 0.5)") and "(default: on)" not in _line(text, "--rcm")


@pytest.mark.parametrize("content, message", [
    ('{"csv": "x", "bogus": 1}', "--config {path}: 'bogus' is no setting of TrainConfig (known: attention_channels"),
    ('{"csv": "x", "epochs": "ten"}', "--config {path}: epochs must be an integer, got 'ten'"),
    ("[1, 2]", "--config {path} holds a JSON list, not an object of settings"),
    ("{nope", "--config {path} is not a JSON file (Expecting property name"),
    (None, "--config {path}: No such file or directory"),
])
def test_a_bad_config_file_is_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "args.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--config", str(path), "--output", "o"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith("walnet train: error: "), err
    assert message.format(path=path) in err


def test_a_recorded_run_reruns_and_resumes_through_its_args_json(tmp_path_factory, tmp_path, quick, one_thread):
    """A real run's args.json: rerun into a new folder with another seed, and resumed in its own
    folder with more epochs (the epochs go through the motions: the quick fixture)."""
    data = phantom_data(tmp_path_factory)
    first, second = tmp_path / "a", tmp_path / "b"
    assert cli.main(train_args(data, first, "--epochs", "1", "--lr", "0.003")) == 0
    args = json.loads((first / "args.json").read_text())
    assert cli.main(["train", "--config", str(first / "args.json"), "--output", str(second), "--seed", "1"]) == 0
    assert json.loads((second / "args.json").read_text()) == {**args, "output": str(second), "seed": 1}
    assert cli.main(["train", "--config", str(first / "args.json"), "--output", str(first), "--resume",
                     str(first / "last.pt"), "--epochs", "2"]) == 0
    assert [row["epoch"] for row in metrics_rows(first)] == ["0", "1"]


def test_config_file_does_not_give_the_output(recorded, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--config", str(recorded[0])])
    assert exited.value.code == 2 and "the following arguments are required: --output" in capsys.readouterr().err


# --- aliases -------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--output", "--out"])
def test_phantom_output_and_its_old_name(flag, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ph"
    assert cli.main(["phantom", flag, str(out), "--n", "3", "--size", "32"]) == 0
    printed = capsys.readouterr().out
    assert f"to {out}; labels: {out / 'labels.csv'}" in printed and (out / "labels.csv").is_file()
    text = _help("phantom", capsys, monkeypatch)
    assert "--output OUTPUT" in text and "--out " not in text  # the old name works, unlisted


def test_phantom_plaque_area_and_distractors(tmp_path, capsys):
    out = tmp_path / "ph"
    assert cli.main(["phantom", "--output", str(out), "--n", "3", "--size", "48", "--plaque-area", "0.05,0.1",
                     "--distractors", "2"]) == 0
    marker = json.loads((out / ".walnet_phantom").read_text())
    assert marker["plaque_area"] == [0.05, 0.1] and marker["distractors"] == 2
    assert cli.main(["phantom", "--output", str(out), "--n", "3", "--size", "48", "--plaque-area", "0.08"]) == 0
    assert json.loads((out / ".walnet_phantom").read_text())["plaque_area"] == [0.08, 0.08]
    capsys.readouterr()
    for bad in ("0.1,0.2,0.3", "a,b", "0.1,"):
        with pytest.raises(SystemExit) as exited:
            cli.main(["phantom", "--output", str(out), "--n", "3", "--plaque-area", bad])
        assert exited.value.code == 2 and "--plaque-area" in capsys.readouterr().err


def test_pretrained_path_is_pretrained_file(monkeypatch):
    base = ["train", "--csv", "x.csv", "--output", "o"]
    for flag in ("--pretrained-path", "--pretrained-file"):
        got = _trained_config(monkeypatch, [*base, flag, "w.safetensors"])
        assert got == TrainConfig(csv="x.csv", output="o", pretrained_file="w.safetensors") and got.pretrained


# --- walnet info ---------------------------------------------------------------------------------


def test_info_lists_python_the_model_packages_and_the_extras(capsys, monkeypatch):
    import timm
    import torchvision

    monkeypatch.setattr(cli, "INFO_OPTIONAL", (*cli.INFO_OPTIONAL, "walnet-no-such-package"))
    assert cli.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (line,) = [line for line in lines if line.startswith("Python ")]
    # the distribution's version: torchvision's __version__ may add its local build tag (+cu130)
    assert re.fullmatch(rf"Python {platform.python_version()}, timm {timm.__version__}, torchvision "
                        rf"{re.escape(torchvision.__version__.split('+')[0])}(\+\w+)?", line), line
    (optional,) = [line for line in lines if line.startswith("optional: ")]
    assert optional.endswith(", walnet-no-such-package not installed")
    for name in ("onnx", "onnxruntime", "pydicom", "av", "submitit", "tensorboard"):
        try:
            version = importlib.metadata.distribution(name).version
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        assert f" {name} {version}" in optional, name
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["python"] == platform.python_version() and info["packages"]["timm"] == timm.__version__
    assert info["optional"]["walnet-no-such-package"] is None and set(info["optional"]) >= {"av", "tensorboard"}


def test_info_does_not_import_the_optional_packages():
    code = ("import sys\nfrom walnet import cli\ncli.main(['info'])\n"
            f"print(sorted(m for m in {cli.INFO_OPTIONAL!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
