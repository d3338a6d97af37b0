"""Checkpoints: written atomically and loadable weights-only, and every unloadable file a one-line
error naming it (through ``load_checkpoint``, ``load_model``, ``load_training_state`` and the
command line). Writing under a full disk, file modes and killed writers: test_checkpoint_writes.py."""
from __future__ import annotations

import fractions
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from walnet import cli
from walnet.engine import load_checkpoint, save_checkpoint
from walnet.engine.checkpoint import CheckpointError, load_training_state
from walnet.engine.config import TrainConfig
from walnet.engine.loading import load_model
from walnet.models import create_model


ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["hyperechoic", "hypoechoic", "mixed-echoic"]


def _walnet(channels=8):
    torch.manual_seed(0)
    return create_model("walnet", num_classes=3, backbone="resnet18", attention_channels=channels,
                        rcm_warmup_epochs=1)


def _args(channels=8):
    return TrainConfig(csv="labels.csv", output="run", backbone="resnet18", size=48, attention_channels=channels,
                       rcm_warmup=1).to_dict()


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A checkpoint shaped like `walnet train`'s, and its raw bytes."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"model": _walnet().state_dict(), "args": _args(), "classes": CLASSES, "epoch": 0})
    return path, path.read_bytes()


def test_checkpoint_atomic_and_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 4, "args": {"lr": 1e-4}, "classes": ["a", "b"]}
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind

    class Boom:  # an object whose unpickling would run code
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"x": Boom()}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refuses \(builtins\.exec\)") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"x": Unsaveable()})
    assert torch.equal(load_checkpoint(path)["model"]["w"], state["model"]["w"])  # old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


# ---------------------------------------------------------------------------------------------
# unloadable checkpoints


def _unloadable(kind: str, tmp_path: Path, good_bytes: bytes) -> tuple[Path, str]:
    """A file of `kind` and the words its error must hold."""
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        path.write_bytes(good_bytes[: len(good_bytes) // 2])
        return path, "is truncated or damaged"
    if kind == "random":
        path.write_bytes(bytes(range(256)) * 8)
        return path, "not a PyTorch checkpoint"
    if kind == "empty":
        path.write_bytes(b"")
        return path, r"is empty \(0 bytes\)"
    if kind == "plain-dict":
        torch.save({"weights": torch.zeros(2)}, path)
        return path, "lacks the key.s. model, args, classes, epoch .*its keys: weights"
    if kind == "list":
        torch.save([1, 2, 3], path)
        return path, "holds a list, not a walnet checkpoint"
    if kind == "text":
        path.write_text("model: resnet18\n")
        return path, "not a PyTorch checkpoint"
    if kind == "folder":
        path.mkdir()
        return path, "is a folder, not a checkpoint file"
    if kind == "bad-classes":
        torch.save({"model": {}, "args": _args(), "classes": "abc", "epoch": 0}, path)
        return path, "'classes' is not a non-empty list of class names"
    if kind == "bad-args":
        torch.save({"model": {}, "args": {**_args(), "size": "big"}, "classes": CLASSES, "epoch": 0}, path)
        return path, r"train config \(\"args\"\) is not valid: size must be an integer, got 'big'"
    if kind == "other-model":  # weights of an unrelated network under a WAL-Net config
        torch.save({"model": torch.nn.Linear(4, 3).state_dict(), "args": _args(), "classes": CLASSES,
                    "epoch": 0}, path)
        return path, (r"does not match model walnet \(backbone resnet18, 8 attention channels\): "
                      r"\d+ parameter.s. missing, e\.g\. .*unexpected parameter.s., e\.g\. weight")
    if kind == "other-channels":  # WAL-Net weights with 16 attention channels, config saying 8
        torch.save({"model": _walnet(16).state_dict(), "args": _args(8), "classes": CLASSES, "epoch": 0}, path)
        return path, (r"does not match model walnet \(backbone resnet18, 8 attention channels\): "
                      r"\d+ shape.s. differ, e\.g\. \S+ \[16, .*\] in the checkpoint, \[8, .*\] in the model")
    raise AssertionError(kind)


KINDS = ["truncated", "random", "empty", "plain-dict", "list", "text", "folder", "bad-classes", "bad-args",
         "other-model", "other-channels"]


@pytest.mark.parametrize("kind", KINDS)
def test_unloadable_checkpoints_give_one_line(kind, tmp_path, good):
    path, words = _unloadable(kind, tmp_path, good[1])
    with pytest.raises(CheckpointError, match=words) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and len(message) < 400
    assert isinstance(info.value, ValueError)  # what the command line reports as one line


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        load_model(tmp_path / "nope.pt")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("kind", ["truncated", "folder", "plain-dict", "other-channels"])
def test_commands_report_unloadable_checkpoints(command, kind, tmp_path, good, capsys):
    path, words = _unloadable(kind, tmp_path, good[1])
    image = tmp_path / "scan.png"
    from PIL import Image
    Image.new("L", (40, 30), 90).save(image)
    if command == "evaluate":
        argv = ["evaluate", "--checkpoint", str(path), "--csv", str(tmp_path / "labels.csv"), "--device", "cpu"]
    else:
        argv = ["predict", "--checkpoint", str(path), str(image), "--output", str(tmp_path / "p.csv"),
                "--device", "cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"walnet {command}: error: checkpoint {path}") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


class _Blocked:
    """Pickled as a call of os.getcwd: a global of a module torch's weights-only load blocks."""

    def __reduce__(self):
        return (os.getcwd, ())


#: Objects no walnet checkpoint holds, and the global torch's weights-only load refuses for each.
REFUSED = {"class": (fractions.Fraction(1, 3), r"fractions\.Fraction"),
           "blocked-module": (_Blocked(), r"(posix|nt)\.getcwd"),
           "numpy": (np.zeros(3), r"numpy\.(_core|core)\.multiarray\._reconstruct")}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_refused_objects_are_one_line_naming_the_file_and_global(kind, tmp_path, capsys):
    """torch's several paragraphs of advice (load with weights_only=False, allowlist the global)
    become walnet's one line: the file, the global torch refused, and what a checkpoint holds."""
    value, name = REFUSED[kind]
    path = tmp_path / f"{kind}.pt"
    torch.save({"model": {}, "args": _args(), "classes": CLASSES, "epoch": 0, "extra": value}, path)
    argv = ["evaluate", "--checkpoint", str(path), "--csv", str(tmp_path / "labels.csv"), "--device", "cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.fullmatch(rf"walnet evaluate: error: checkpoint {re.escape(str(path))} holds Python objects a "
                        rf"weights-only load refuses \({name}\); walnet checkpoints hold tensors, numbers, "
                        r"strings, lists and dicts only \S+ it was not written by walnet train\n", err), err
    assert "weights_only" not in err and "safe_globals" not in err


def test_command_line_error_is_one_line_without_warnings(tmp_path):
    """A plain pickle makes torch warn about its protocol; the user sees only walnet's line."""
    bad = tmp_path / "pickled.pt"
    bad.write_bytes(pickle.dumps({"model": 1}, protocol=4))
    done = subprocess.run([sys.executable, "-m", "walnet", "predict", "--checkpoint", str(bad), str(bad),
                           "--output", str(tmp_path / "p.csv")], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert done.returncode == 2 and done.stderr.startswith(f"walnet predict: error: checkpoint {bad} ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "Warning" not in done.stderr


def test_load_training_state(tmp_path):
    """``train --resume``: the model, optimizer and epoch of a checkpoint, or one line saying
    why it does not fit this run."""
    model = _walnet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 3, 48, 48)).logits.sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "last.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                  "scaler": {}, "epoch": 3, "best_accuracy": 0.5,
                                                  "args": _args(), "classes": CLASSES})
    fresh = _walnet()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    state = load_training_state(path, fresh, fresh_opt)
    assert state["epoch"] == 3 and state["best_accuracy"] == 0.5
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert fresh_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]

    other = _walnet(16)
    with pytest.raises(CheckpointError, match=r"does not match model wide: \d+ shape.s. differ.*args\.json"):
        load_training_state(path, other, torch.optim.Adam(other.parameters()), describe="wide")
    # same weights, another optimizer layout (two parameter groups)
    params = list(fresh.parameters())
    two = torch.optim.Adam([{"params": params[:5]}, {"params": params[5:]}])
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        load_training_state(path, fresh, two)
    # an evaluation-only checkpoint cannot be resumed
    no_opt = save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "epoch": 1})
    with pytest.raises(CheckpointError, match="lacks the key.s. optimizer"):
        load_training_state(no_opt, fresh, fresh_opt)
    with pytest.raises(CheckpointError, match=re.escape(f"is a folder, not a checkpoint file; it holds {no_opt} and {path}")):
        load_training_state(tmp_path, fresh, fresh_opt)


@pytest.mark.parametrize("name", ["walnet", "resnest"])
def test_the_normalisation_buffers_are_required_like_any_weight(name, tmp_path):
    """A state dict without ``input_mean`` / ``input_std`` is not one this walnet writes: loading
    it for evaluation or resuming it is a one-line error naming the missing keys."""
    model = _walnet() if name == "walnet" else create_model(name, num_classes=3)
    args = TrainConfig.from_dict({**_args(), "model": name}).to_dict()
    state = {k: v for k, v in model.state_dict().items() if k not in ("input_mean", "input_std")}
    path = save_checkpoint(tmp_path / "best.pt", {"model": state, "args": args, "classes": CLASSES, "epoch": 0})
    with pytest.raises(CheckpointError, match=r"2 parameter\(s\) missing, e.g. input_mean"):
        load_model(path)
    if name == "walnet":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        last = save_checkpoint(tmp_path / "last.pt", {"model": state, "optimizer": optimizer.state_dict(), "epoch": 0})
        fresh = _walnet()
        with pytest.raises(CheckpointError, match=r"missing, e.g. input_mean"):
            load_training_state(last, fresh, torch.optim.Adam(fresh.parameters(), lr=1e-3))
