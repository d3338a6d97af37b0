"""``walnet predict``: images or folders -> CSV of class probabilities (+ mask PNGs), as a
function and as the command line, from a checkpoint built in the test (no training)."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from walnet.data import PlaqueDataset, Record, phantom
from walnet.engine.config import PredictConfig
from walnet.engine.predict import collect_images, predict

from conftest import CLASSES, small_checkpoint, unwritable_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    phantom.generate(root / "ph", n=6, seed=0, size=48)
    ckpt, model = small_checkpoint(root / "run" / "best.pt")
    return root, ckpt, model


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_function(setup, tmp_path):
    root, ckpt, model = setup
    images = root / "ph" / "images"
    # an odd-sized copy: its mask must come back at its own size
    wide = tmp_path / "wide.png"
    Image.open(images / "hypoechoic" / "00001.png").resize((71, 53)).save(wide)
    out = tmp_path / "preds.csv"
    summary = predict(ckpt, [images, wide], out, masks_dir=tmp_path / "masks", batch_size=4, device="cpu")
    rows = _read(out)
    assert summary["images"] == len(rows) == 7 and sum(summary["counts"].values()) == 7
    assert list(rows[0]) == ["path", "predicted", *(f"prob_{c}" for c in CLASSES), "mask"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert [r["predicted"] for r in rows] == [CLASSES[k] for k in probs.argmax(axis=1)]
    paths = [Path(r["path"]) for r in rows]
    assert paths[:6] == sorted(images.rglob("*.png")) and paths[6] == wide
    # the CSV holds exactly the model's softmax of the images as the dataset reads them
    batch = torch.stack([PlaqueDataset([Record(p, 0)], size=48)[0]["image"] for p in paths])
    with torch.no_grad():
        want = torch.softmax(model(batch).logits, dim=1).numpy()
    np.testing.assert_allclose(probs, want, atol=1e-6)
    for r in rows:
        with Image.open(r["path"]) as src, Image.open(r["mask"]) as mask:
            assert mask.size == src.size and mask.mode == "L"
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Path(rows[6]["mask"]).name == "wide.png"


def test_predict_takes_a_config_or_keywords(setup, tmp_path):
    root, ckpt, _ = setup
    images = root / "ph" / "images"
    by_keywords = predict(ckpt, [images], tmp_path / "a.csv", batch_size=4, device="cpu")
    config = PredictConfig(checkpoint=ckpt, inputs=[images], output=tmp_path / "b.csv", batch_size=4, device="cpu")
    by_config = predict(config)
    assert by_config == {**by_keywords, "output": str(tmp_path / "b.csv")}
    assert [r["prob_hypoechoic"] for r in _read(tmp_path / "a.csv")] == [r["prob_hypoechoic"]
                                                                         for r in _read(tmp_path / "b.csv")]
    with pytest.raises(ValueError, match="either a PredictConfig or"):
        predict(config, device="cpu")
    with pytest.raises(TypeError):  # an option predict does not have
        predict(ckpt, [images], tmp_path / "c.csv", colour=True)


def test_predict_refuses_to_overwrite(setup, tmp_path):
    root, ckpt, _ = setup
    out = tmp_path / "preds.csv"
    out.write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict(ckpt, [root / "ph" / "images"], out, device="cpu")
    assert out.read_text() == "keep me"
    predict(ckpt, [root / "ph" / "images"], out, device="cpu", overwrite=True)
    assert len(_read(out)) == 6


def test_predict_errors_name_the_file(setup, tmp_path):
    root, ckpt, _ = setup
    out = tmp_path / "preds.csv"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predict(ckpt, [root / "ph" / "images", tmp_path / "nope.png"], out, device="cpu")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        predict(ckpt, [bad], out, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        predict(ckpt, [tmp_path / "empty"], out, device="cpu")
    assert not out.exists()


def test_masks_need_a_segmentation_head(setup, tmp_path):
    root, _, _ = setup
    ckpt, _ = small_checkpoint(tmp_path / "no_pgm.pt", "walnet_no_pgm")
    images = root / "ph" / "images"
    with pytest.raises(ValueError, match="segmentation head"):
        predict(ckpt, [images], tmp_path / "p.csv", masks_dir=tmp_path / "m", device="cpu")
    assert not (tmp_path / "p.csv").exists()
    predict(ckpt, [images], tmp_path / "p.csv", device="cpu")  # probabilities alone are fine
    assert len(_read(tmp_path / "p.csv")) == 6


def test_collect_images_dedupes_and_masks_mirror_the_tree(setup, tmp_path):
    root, ckpt, _ = setup
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        shutil.copy(root / "ph" / "images" / "hyperechoic" / "00000.png", tmp_path / "in" / sub / "x.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    found = collect_images([tmp_path / "in", tmp_path / "in" / "a" / "x.png"])
    assert found == [tmp_path / "in" / "a" / "x.png", tmp_path / "in" / "b" / "x.png"]
    predict(ckpt, [tmp_path / "in"], tmp_path / "p.csv", masks_dir=tmp_path / "in" / "masks", device="cpu")
    masks = tmp_path / "in" / "masks"
    assert sorted(p.relative_to(masks).as_posix() for p in masks.rglob("*.png")) == ["a/x.png", "b/x.png"]
    # the masks folder inside the input is not read back as input; existing masks are kept
    with pytest.raises(FileExistsError, match="x.png"):
        predict(ckpt, [tmp_path / "in"], tmp_path / "q.csv", masks_dir=tmp_path / "in" / "masks", device="cpu")
    predict(ckpt, [tmp_path / "in"], tmp_path / "q.csv", masks_dir=tmp_path / "in" / "masks", device="cpu",
            overwrite=True)
    assert len(_read(tmp_path / "q.csv")) == 2


def test_predict_command(setup, tmp_path):
    root, ckpt, _ = setup
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def walnet(*args):
        return subprocess.run([sys.executable, "-m", "walnet", "predict", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    out = tmp_path / "preds.csv"
    done = walnet("--checkpoint", str(ckpt), str(root / "ph" / "images"), "--output", str(out),
                  "--masks", str(tmp_path / "masks"), "-b", "4", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "predicted 6 image(s)" in done.stdout and str(out) in done.stdout
    rows = _read(out)
    assert len(rows) == 6 and len(list((tmp_path / "masks").rglob("*.png"))) == 6  # in its class folders
    again = walnet("--checkpoint", str(ckpt), str(root / "ph" / "images"), "--output", str(out), "--device", "cpu")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    missing = walnet("--checkpoint", str(ckpt), str(tmp_path / "gone.png"), "--output", str(tmp_path / "x.csv"))
    assert missing.returncode == 2 and "gone.png" in missing.stderr


# ---------------------------------------------------------------------------------------------
# what predict refuses to write, decided before the model runs


def _scans(root: Path, folder: Path, n=2) -> list[Path]:
    """`n` phantom images copied into `folder` as p0.png, p1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((root / "ph" / "images").rglob("*.png"))[:n]
    return [Path(shutil.copy(src, folder / f"p{i}.png")) for i, src in enumerate(sources)]


def _cli_error(capsys, *argv) -> str:
    from walnet import cli

    assert cli.main(["predict", *map(str, argv), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("walnet predict: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("overwrite", [True, False])
def test_masks_never_replace_an_input_image(setup, tmp_path, capsys, no_model, overwrite):
    """The audit's case: ``predict scans/p7.png --masks scans --overwrite`` replaced the scan by
    its mask (and without --overwrite called the scan a "mask file")."""
    root, ckpt, _ = setup
    scans = _scans(root, tmp_path / "scans")
    before = scans[0].read_bytes()
    err = _cli_error(capsys, "--checkpoint", ckpt, scans[0], "--output", tmp_path / "p.csv",
                     "--masks", tmp_path / "scans", *(["--overwrite"] if overwrite else []))
    assert f"would write the mask of {scans[0]} over your input image {scans[0]}" in err
    assert "not even with --overwrite" in err and "mask file" not in err
    assert scans[0].read_bytes() == before and not (tmp_path / "p.csv").exists()
    assert sorted(p.name for p in (tmp_path / "scans").iterdir()) == ["p0.png", "p1.png"]


def test_inputs_are_recognised_however_they_are_spelled(setup, tmp_path, no_model):
    root, ckpt, _ = setup
    scans = _scans(root, tmp_path / "scans")
    (tmp_path / "link").symlink_to(tmp_path / "scans")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "p1.png").symlink_to(scans[1])  # a mask name that is a link to an input
    os.link(scans[0], tmp_path / "other" / "p0.png")  # ... and a hard link to one
    cases = [([tmp_path / "scans"], tmp_path / "scans"),  # the input folder itself
             ([tmp_path / "scans"], tmp_path / "scans" / ".." / "scans"),
             ([tmp_path / "link"], tmp_path / "scans"),
             ([tmp_path / "scans" / "p1.png"], tmp_path / "link"),
             ([scans[0]], tmp_path / "other"),
             ([scans[1]], tmp_path / "other")]
    for inputs, masks in cases:
        with pytest.raises(ValueError, match=r"over your input image \S*/p[01]\.png"):
            predict(ckpt, inputs, tmp_path / "p.csv", masks_dir=masks, overwrite=True, device="cpu")
    # the CSV is never written over an input image either
    with pytest.raises(ValueError, match=f"--output {tmp_path / 'link' / 'p0.png'} is one of your input images"):
        predict(ckpt, [tmp_path / "scans"], tmp_path / "link" / "p0.png", overwrite=True, device="cpu")
    assert [p.read_bytes() for p in scans] == [p.read_bytes() for p in _scans(root, tmp_path / "again")]
    assert not (tmp_path / "p.csv").exists()


def test_masks_next_to_inputs_of_another_format(setup, tmp_path):
    """A masks folder that holds the inputs is fine when no mask name is an input's."""
    root, ckpt, _ = setup
    scans = _scans(root, tmp_path / "scans")
    jpgs = []
    for p in scans:
        with Image.open(p) as img:
            img.convert("RGB").save(p.with_suffix(".jpg"), quality=95)
        jpgs.append(p.with_suffix(".jpg"))
        p.unlink()
    before = [p.read_bytes() for p in jpgs]
    predict(ckpt, [tmp_path / "scans"], tmp_path / "p.csv", masks_dir=tmp_path / "scans", device="cpu")
    assert sorted(p.name for p in (tmp_path / "scans").iterdir()) == ["p0.jpg", "p0.png", "p1.jpg", "p1.png"]
    assert [p.read_bytes() for p in jpgs] == before


def test_the_csv_and_a_mask_never_share_a_path(setup, tmp_path, no_model):
    root, ckpt, _ = setup
    scans = _scans(root, tmp_path / "scans")
    with pytest.raises(ValueError, match="is also where --masks writes the mask p0.png"):
        predict(ckpt, scans, tmp_path / "m" / "p0.png", masks_dir=tmp_path / "m", device="cpu")
    assert not (tmp_path / "m").exists()


def test_output_problems_are_found_before_the_model_runs(setup, tmp_path, capsys, no_model):
    """``--output <a folder> --overwrite`` failed only after the whole pass."""
    root, ckpt, _ = setup
    scans = _scans(root, tmp_path / "scans")
    (tmp_path / "out").mkdir()
    err = _cli_error(capsys, "--checkpoint", ckpt, scans[0], "--output", tmp_path / "out", "--overwrite")
    assert f"--output {tmp_path / 'out'} is a folder; give the CSV file to write" in err
    (tmp_path / "file").write_text("x")
    err = _cli_error(capsys, "--checkpoint", ckpt, scans[0], "--output", tmp_path / "file" / "p.csv")
    assert f"lies under the file {tmp_path / 'file'}; choose a folder" in err
    err = _cli_error(capsys, "--checkpoint", ckpt, scans[0], "--output", tmp_path / "p.csv",
                     "--masks", tmp_path / "file")
    assert f"--masks {tmp_path / 'file'} is a file, not a folder" in err
    (tmp_path / "masks" / "p0.png").mkdir(parents=True)
    err = _cli_error(capsys, "--checkpoint", ckpt, scans[0], "--output", tmp_path / "p.csv",
                     "--masks", tmp_path / "masks", "--overwrite")
    assert "p0.png is a folder where a mask file would go" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "masks", "out", "scans"]


def test_unwritable_outputs_are_found_before_the_model_runs(setup, tmp_path, capsys, no_model):
    root, ckpt, _ = setup
    scans = _scans(root, tmp_path / "scans")
    folder = unwritable_folder(tmp_path)
    err = _cli_error(capsys, "--checkpoint", ckpt, scans[0], "--output", folder / "p.csv")
    assert f"--output {folder / 'p.csv'}: cannot create files in {folder}" in err
    err = _cli_error(capsys, "--checkpoint", ckpt, scans[0], "--output", tmp_path / "p.csv",
                     "--masks", folder / "masks")
    assert f"--masks {folder / 'masks'}: cannot create files in {folder}" in err


# ---------------------------------------------------------------------------------------------
# a failed run leaves nothing behind, so the rerun is not refused


def test_an_unreadable_image_stops_predict_before_it_writes(setup, tmp_path, capsys):
    """The audit's case: an unreadable image stopped predict after some masks were written and
    before the CSV; the rerun then refused the masks."""
    root, ckpt, _ = setup
    scans = _scans(root, tmp_path / "scans", n=6)
    good = scans[4].read_bytes()
    scans[4].write_bytes(good[:200])  # truncated
    scans[5].write_bytes(b"not an image")
    out, masks = tmp_path / "p.csv", tmp_path / "out" / "masks"
    err = _cli_error(capsys, "--checkpoint", ckpt, tmp_path / "scans", "--output", out, "--masks", masks, "-b", "2")
    assert f"cannot read image {scans[4]}" in err and "(and 1 more unreadable input image(s)); nothing was written" in err
    assert not out.exists() and not (tmp_path / "out").exists()
    scans[4].write_bytes(good)
    scans[5].unlink()
    predict(ckpt, [tmp_path / "scans"], out, masks_dir=masks, batch_size=2, device="cpu")
    assert len(_read(out)) == 5 and sorted(p.name for p in masks.iterdir()) == [f"p{i}.png" for i in range(5)]


def test_a_failure_during_the_pass_leaves_no_masks(setup, tmp_path, monkeypatch):
    """An image that becomes unreadable after the check (or a mask that cannot be written)
    fails the pass: the masks written so far are not left behind, earlier ones stay as they were."""
    root, ckpt, _ = setup
    scans = _scans(root, tmp_path / "scans", n=6)
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "p0.png").write_bytes(b"an earlier mask")
    monkeypatch.setattr("walnet.engine.predict._check_readable", lambda *args: None)
    good = scans[5].read_bytes()
    scans[5].write_bytes(b"broken")
    with pytest.raises(ValueError, match="p5.png"):
        predict(ckpt, [tmp_path / "scans"], tmp_path / "p.csv", masks_dir=masks, batch_size=2, overwrite=True,
                device="cpu")
    assert [p.name for p in masks.iterdir()] == ["p0.png"] and (masks / "p0.png").read_bytes() == b"an earlier mask"
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(ValueError, match="p5.png"):  # a masks folder it made itself is removed again
        predict(ckpt, [tmp_path / "scans"], tmp_path / "p.csv", masks_dir=tmp_path / "new" / "masks", device="cpu")
    assert not (tmp_path / "new").exists()
    scans[5].write_bytes(good)
    predict(ckpt, [tmp_path / "scans"], tmp_path / "p.csv", masks_dir=tmp_path / "new" / "masks", device="cpu")
    assert len(list((tmp_path / "new" / "masks").iterdir())) == 6


def test_a_killed_run_s_temporary_masks_are_removed_and_not_read(setup, tmp_path):
    root, ckpt, _ = setup
    _scans(root, tmp_path / "scans", n=2)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now free: a writer that died
    from walnet.files import temp_prefix
    host = temp_prefix("x").split(".")[2].split("-")[0]
    masks = tmp_path / "scans" / "masks"
    stale = masks / f".walnet-masks.{host}-{child.pid}.k2j4.tmp"
    stale.mkdir(parents=True)
    Image.new("L", (48, 48)).save(stale / "p0.png")
    (tmp_path / "scans" / "._p0.png").write_bytes(b"macOS metadata, no image")  # hidden: not an input
    assert collect_images([tmp_path / "scans"]) == [tmp_path / "scans" / "p0.png", tmp_path / "scans" / "p1.png"]
    predict(ckpt, [tmp_path / "scans"], tmp_path / "p.csv", masks_dir=masks, device="cpu")
    assert len(_read(tmp_path / "p.csv")) == 2
    assert sorted(p.name for p in masks.iterdir()) == ["p0.png", "p1.png"]
