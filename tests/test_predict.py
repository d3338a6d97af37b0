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
from walnet.engine.checkpoint import save_checkpoint
from walnet.engine.config import PredictConfig, TrainConfig
from walnet.engine.predict import collect_images, predict
from walnet.models import create_model

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["hyperechoic", "hypoechoic", "mixed-echoic"]


def _checkpoint(path: Path, model_name="walnet") -> tuple[Path, torch.nn.Module]:
    """A checkpoint shaped like `walnet train`'s (model, args, classes, epoch) of an untrained
    model; the heads are randomised so the classes' probabilities differ."""
    torch.manual_seed(0)
    kw = dict(backbone="resnet18", attention_channels=8, rcm_warmup_epochs=1)
    if model_name == "walnet_no_pgm":
        kw["use_pgm"] = False
    model = create_model("walnet", num_classes=3, **kw)
    with torch.no_grad():
        for head in model.heads:
            head.weight.normal_(0, 0.5)
    args = TrainConfig(csv="labels.csv", output=path.parent, model=model_name, backbone="resnet18", size=48,
                       attention_channels=8, rcm_warmup=1, epochs=1, batch_size=8)
    save_checkpoint(path, {"model": model.state_dict(), "args": args.to_dict(), "classes": CLASSES, "epoch": 0})
    return path, model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    phantom.generate(root / "ph", n=6, seed=0, size=48)
    ckpt, model = _checkpoint(root / "run" / "best.pt")
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
    ckpt, _ = _checkpoint(tmp_path / "no_pgm.pt", "walnet_no_pgm")
    images = root / "ph" / "images"
    with pytest.raises(ValueError, match="segmentation head"):
        predict(ckpt, [images], tmp_path / "p.csv", masks_dir=tmp_path / "m", device="cpu")
    assert not (tmp_path / "p.csv").exists()
    predict(ckpt, [images], tmp_path / "p.csv", device="cpu")  # probabilities alone are fine
    assert len(_read(tmp_path / "p.csv")) == 6


def test_collect_images_dedupes_and_disambiguates_mask_names(setup, tmp_path):
    root, ckpt, _ = setup
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        shutil.copy(root / "ph" / "images" / "hyperechoic" / "00000.png", tmp_path / "in" / sub / "x.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    found = collect_images([tmp_path / "in", tmp_path / "in" / "a" / "x.png"])
    assert found == [tmp_path / "in" / "a" / "x.png", tmp_path / "in" / "b" / "x.png"]
    predict(ckpt, [tmp_path / "in"], tmp_path / "p.csv", masks_dir=tmp_path / "in" / "masks", device="cpu")
    assert sorted(p.name for p in (tmp_path / "in" / "masks").iterdir()) == ["x.png", "x_1.png"]
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
    assert len(rows) == 6 and len(list((tmp_path / "masks").glob("*.png"))) == 6
    again = walnet("--checkpoint", str(ckpt), str(root / "ph" / "images"), "--output", str(out), "--device", "cpu")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    missing = walnet("--checkpoint", str(ckpt), str(tmp_path / "gone.png"), "--output", str(tmp_path / "x.csv"))
    assert missing.returncode == 2 and "gone.png" in missing.stderr
