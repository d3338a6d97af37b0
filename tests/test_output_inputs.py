"""``walnet train``, ``evaluate`` and ``export`` never write what they read (as predict does not,
tests/test_predict_inputs.py): an output folder that is an input, a link to one, a folder
holding one under a name the command writes, or the input's own folder where the command would
write a file of the input's name, is refused in one line (exit status 2) before any work, and
every input stays byte-for-byte as it was (hypothesis, derandomized)."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from walnet import cli
from walnet.data import phantom
from walnet.engine.checks import EVAL_FILES, RUN_FILES
from walnet.engine.export import EXPORT_FILES

from conftest import small_checkpoint

#: What each command reads, by the name the test gives it.
SOURCES = {
    "train": ("csv", "image", "data-image", "pretrained", "resume"),
    "evaluate": ("ckpt", "csv", "image", "data-image", "split"),
    "export": ("ckpt", "metrics", "split"),
}
#: The files each command writes in its output folder.
WRITES = {"train": RUN_FILES, "evaluate": EVAL_FILES, "export": EXPORT_FILES}
RELATIONS = ("itself", "symlink", "hardlink", "folder", "same-name")
TRAIN = ["--backbone", "resnet18", "--attention-channels", "8", "--size", "32", "-b", "4", "--device", "cpu",
         "--epochs", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What the commands read: a phantom with its labels.csv, the same images as an ImageFolder
    tree, a checkpoint with its run's metrics.json and split.csv, and resnet18 weights."""
    import timm

    root = tmp_path_factory.mktemp("reads")
    labels = phantom.generate(root / "ph", n=6, seed=0, size=32)
    tree = root / "tree"
    for image in sorted((root / "ph" / "images").rglob("*.png"))[:3]:
        (tree / "hyperechoic").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, tree / "hyperechoic" / image.name)
    ckpt, _ = small_checkpoint(root / "run" / "best.pt", size=32)
    (root / "run" / "metrics.json").write_text('{"split": "test"}\n')
    (root / "run" / "split.csv").write_text("path,split\n")
    torch.save(timm.create_model("resnet18").state_dict(), root / "resnet18.pth")
    return root


def _files(root: Path) -> list[Path]:
    """The regular files under `root` (links left out: their targets are listed themselves)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _digest(path: Path) -> str:
    """The SHA-256 of the file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _source(world: Path, source: str) -> Path:
    """The world's file of `source`."""
    return {"csv": world / "ph" / "labels.csv", "image": sorted((world / "ph" / "images").rglob("*.png"))[0],
            "data-image": sorted((world / "tree").rglob("*.png"))[0], "pretrained": world / "resnet18.pth",
            "ckpt": world / "run" / "best.pt", "metrics": world / "run" / "metrics.json",
            "split": world / "run" / "split.csv", "resume": world / "run" / "best.pt"}[source]


def _place(path: Path, at: Path, how: str) -> Path:
    """`path` at `at` as a symlink, a hard link or a copy (`how`); returns `at`."""
    at.parent.mkdir(parents=True, exist_ok=True)
    if how == "symlink":
        at.symlink_to(path)
    elif how == "hardlink":
        os.link(path, at)
    else:
        shutil.copy(path, at)
    return at


def _command(command: str, world: Path, scratch: Path, given: dict[str, Path], output: Path) -> list[str]:
    """The command line reading `given` (its sources where the example moved them) and the
    world's other files."""
    ckpt = given.get("ckpt", world / "run" / "best.pt")
    if command == "export":
        return ["export", "--checkpoint", ckpt, "--output", output, "--device", "cpu"]
    csv_file = given.get("csv", world / "ph" / "labels.csv")
    data = ["--data-dir", given["data-image"].parents[1]] if "data-image" in given else ["--csv", csv_file]
    if command == "evaluate":
        return ["evaluate", "--checkpoint", ckpt, *data, "--output", output, "--device", "cpu", "--no-figures"]
    extra = ["--pretrained-file", given["pretrained"]] if "pretrained" in given else []
    extra += ["--resume", given["resume"]] if "resume" in given else []
    return ["train", *data, "--output", output, *TRAIN, *extra]


def _case(command: str, source: str, relation: str, name: str, deep: bool, world: Path, scratch: Path):
    """(inputs as given, output folder) of one example: the source is the world's file, or a copy
    of it in `scratch` where the example needs it under a name of its own."""
    original = _source(world, source)
    given = {source: original}
    if source == "resume":  # a run's checkpoint resumed in its own folder, with one of its files a link to it
        run = scratch / "run"
        given["resume"] = _place(original, run / "last.pt", "copy")
        if relation == "itself":
            return given, given["resume"]
        assume(relation != "same-name" and name not in ("last.pt", "best.pt"))
        _place(given["resume"], run / name, "symlink" if relation == "symlink" else "hardlink")
        return given, run
    # the run folder's split.csv and metrics.json are read under those names, which no command writes
    assume(not (source in ("split", "metrics") and relation == "same-name"))
    if relation == "itself":
        return given, original
    if relation in ("symlink", "hardlink"):
        return given, _place(original, scratch / "out", relation)
    if relation == "folder":
        if source == "data-image":  # the --data-dir tree, or a class folder in it
            return given, original.parent if deep else original.parent.parent
        return given, _place(original, scratch / "holder" / name, "hardlink").parent
    # same-name: the input in a folder of its own, under a name the command writes there
    folder = scratch / "own"
    if source == "image":  # the CSV names the image by a path relative to its own folder
        given["csv"] = _place(_source(world, "csv"), folder.parent / "labels.csv", "copy")
        image = folder / name
        text = given["csv"].read_text().replace(str(original.relative_to(world / "ph")), f"own/{name}", 1)
        given["csv"].write_text(text)
        given["image"] = _place(original, image, "copy")
        return given, folder
    if source == "data-image":  # an ImageFolder tree of its own, the image under that name in a class folder
        shutil.copytree(original.parents[1], scratch / "tree")
        given[source] = _place(original, scratch / "tree" / original.parent.name / name, "copy")
        return given, given[source].parent
    given[source] = _place(original, folder / name, "copy")
    return given, folder


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(sorted(SOURCES)), data=st.data())
def test_no_output_lands_on_an_input(world, capsys, command, data):
    source = data.draw(st.sampled_from(SOURCES[command]), label="source")
    relation = data.draw(st.sampled_from(RELATIONS), label="relation")
    name = data.draw(st.sampled_from(WRITES[command]), label="name")
    deep = data.draw(st.booleans(), label="deep")
    before = {p: _digest(p) for p in _files(world)}
    with tempfile.TemporaryDirectory(dir=world.parent) as scratch:
        scratch = Path(scratch)
        given, output = _case(command, source, relation, name, deep, world, scratch)
        inputs = {p: _digest(p) for p in given.values()}
        code = cli.main([str(a) for a in _command(command, world, scratch, given, output)])
        err = capsys.readouterr().err
        assert code == 2, (command, source, relation, err)
        assert err.startswith(f"walnet {command}: error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
        if not (source == "resume" and relation == "itself"):  # refused as no checkpoint of its folder
            assert "never writes what it reads" in err, err
        assert {p: _digest(p) for p in given.values()} == inputs
    assert {p: _digest(p) for p in _files(world)} == before
