"""``walnet predict`` never writes what it reads: its CSV, masks and overlays are refused (one
line, exit status 2, before the model loads) wherever they would land on an input image, the
--csv file, the checkpoint, or the model folder and its files, however the path is spelled."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from walnet import cli
from walnet.data import phantom
from walnet.engine.export import export_model

from conftest import small_checkpoint


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs of every kind predict reads: phantom images and their labels.csv, a checkpoint and
    an exported model folder."""
    root = tmp_path_factory.mktemp("reads")
    labels = phantom.generate(root / "ph", n=3, seed=0, size=48)
    ckpt, _ = small_checkpoint(root / "run" / "best.pt")
    export_model(ckpt, root / "model", device="cpu")
    images = sorted((root / "ph" / "images").rglob("*.png"))
    return {"root": root, "labels": labels, "ckpt": ckpt, "model": root / "model", "images": images}


def _digests(world) -> dict[str, str]:
    files = [*world["images"], world["labels"], world["ckpt"], *sorted(world["model"].iterdir())]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _refused(capsys, *argv) -> str:
    assert cli.main(["predict", *map(str, argv), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("walnet predict: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_the_csv_never_replaces_the_checkpoint(world, capsys, no_model):
    """The audit's case: ``--output run/best.pt --overwrite`` replaced the checkpoint by a CSV."""
    before = _digests(world)
    err = _refused(capsys, "--checkpoint", world["ckpt"], world["images"][0], "--output", world["ckpt"], "--overwrite")
    assert f"--output {world['ckpt']} is the checkpoint {world['ckpt']}" in err and "not even with --overwrite" in err
    assert _digests(world) == before


def test_the_csv_never_replaces_the_roi_csv_or_the_model_folder(world, capsys, no_model):
    before = _digests(world)
    err = _refused(capsys, "--checkpoint", world["ckpt"], "--csv", world["labels"], "--output", world["labels"],
                   "--overwrite")
    assert f"is the --csv file {world['labels']}" in err
    config = world["model"] / "config.json"
    err = _refused(capsys, "--model", world["model"], world["images"][0], "--output", config, "--overwrite")
    assert f"--output {config} is config.json of the model folder {world['model']}" in err
    err = _refused(capsys, "--model", world["model"], world["images"][0], "--output", world["model"] / "p.csv")
    assert f"lies in the model folder {world['model']}" in err
    err = _refused(capsys, "--model", world["model"], world["images"][0], "--output", "p.csv",
                   "--masks", world["model"], "--overwrite")
    assert f"--masks {world['model']} is the model folder {world['model']}" in err
    assert _digests(world) == before and not Path("p.csv").exists()


def _link(kind: str, source: Path, at: Path) -> Path:
    if kind == "symlink":
        at.symlink_to(source)
    elif kind == "hardlink":
        os.link(source, at)
    else:
        return source
    return at


_SOURCES = ("image", "labels", "ckpt", "config.json", "model.safetensors")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from(_SOURCES), link=st.sampled_from(("itself", "symlink", "hardlink")),
       role=st.sampled_from(("--output", "--masks", "--overlays", "inside-model")),
       use_model=st.booleans(), use_csv=st.booleans(), overwrite=st.booleans())
def test_no_output_lands_on_an_input(world, capsys, no_model, source, link, role, use_model, use_csv, overwrite):
    read = {"image": True, "labels": use_csv, "ckpt": not use_model, "config.json": use_model,
            "model.safetensors": use_model}
    assume(read[source] or role == "inside-model")
    before = _digests(world)
    paths = {"image": world["images"][0], "labels": world["labels"], "ckpt": world["ckpt"],
             "config.json": world["model"] / "config.json", "model.safetensors": world["model"] / "model.safetensors"}
    with tempfile.TemporaryDirectory(dir=world["root"]) as scratch:
        scratch = Path(scratch)
        model = ["--model", world["model"]] if use_model else ["--checkpoint", world["ckpt"]]
        inputs = ["--csv", world["labels"]] if use_csv else [world["images"][0]]
        stem = world["images"][0].name  # the mask name of the first image (in both input modes)
        if role == "--output":
            target = _link(link, paths[source], scratch / "out.csv")
            argv = ["--output", target]
        elif role == "inside-model":
            target = world["model"] / ("p.csv" if link == "itself" else "sub" / Path("p.csv"))
            assume(use_model)
            argv = ["--output", target] if source != "image" else ["--output", scratch / "p.csv", "--masks",
                                                                   world["model"] / "masks"]
        else:
            (scratch / "pngs").mkdir()
            _link("hardlink" if link == "itself" else link, paths[source], scratch / "pngs" / stem)
            argv = ["--output", scratch / "p.csv", role, scratch / "pngs"]
        err = _refused(capsys, *model, *inputs, *argv, *(["--overwrite"] if overwrite else []))
        assert "input" in err or "never writes what it reads" in err
        assert not (scratch / "p.csv").exists()
    assert _digests(world) == before
    assert sorted(p.name for p in world["model"].iterdir()) == ["README.md", "config.json", "model.safetensors"]
