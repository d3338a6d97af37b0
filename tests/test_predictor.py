"""``walnet.Predictor``: one image in any form (numpy, PIL, tensor, path) gives training's
probabilities, the mask, attention and RCM box at the input's size; batches equal single calls;
bad inputs are named; the exported resize method is read; and ``walnet predict --masks /
--overlays`` mirror the input folder tree. A small untrained checkpoint (conftest)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import walnet
from walnet.data import phantom
from walnet.engine.export import export_model
from walnet.engine.predict import predict

from conftest import CLASSES, small_checkpoint

SIZE = 48
BOX = (5, 7, 40, 50)  # y1, x1, y2, x2 inside the 53 x 71 test image


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    phantom.generate(root / "ph", n=3, seed=2, size=SIZE)
    ckpt, model = small_checkpoint(root / "run" / "best.pt", size=SIZE)
    sources = sorted((root / "ph" / "images").rglob("*.png"))
    # an odd size and a colour image: the resize and the channels matter
    odd = root / "odd.png"
    with Image.open(sources[0]) as img:
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
    rgb[:, :, 1] = np.clip(rgb[:, :, 1] + 40, 0, 255)
    Image.fromarray(rgb.astype(np.uint8)).resize((71, 53), Image.BICUBIC).save(odd)
    return root, ckpt, model, sources, odd, walnet.Predictor.from_pretrained(ckpt, batch_size=2)


def _oracle(model, path: Path, box=None, resample=Image.BILINEAR) -> np.ndarray:
    """The softmax of `model` on `path` preprocessed by Pillow alone (RGB, crop, resize, / 255)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if box is not None:
            y1, x1, y2, x2 = box
            img = img.crop((x1, y1, x2 + 1, y2 + 1))
        x = torch.from_numpy(np.asarray(img.resize((SIZE, SIZE), resample), np.float32) / 255).permute(2, 0, 1)
    with torch.no_grad():
        out = model(x[None])
    return torch.softmax(getattr(out, "logits", out), dim=1)[0].numpy()  # a baseline returns its logits


def _csv_probs(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        return np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in csv.DictReader(f)])


def test_every_input_kind_gives_training_s_probabilities(setup, tmp_path):
    root, ckpt, model, _, odd, predictor = setup
    pixels = np.array(Image.open(odd))
    alpha = np.full(pixels.shape[:2], 9, np.uint8)
    exact = {"path": odd, "str": str(odd), "numpy": pixels, "numpy RGBA": np.dstack([pixels, alpha]),
             "PIL": Image.open(odd), "tensor": torch.from_numpy(pixels).permute(2, 0, 1)}
    floats = {"numpy float": pixels / 255.0, "tensor float": torch.from_numpy(pixels).permute(2, 0, 1).float() / 255}
    want = _oracle(model, odd)
    predict(ckpt, [odd], tmp_path / "p.csv", device="cpu")
    np.testing.assert_allclose(_csv_probs(tmp_path / "p.csv")[0], want, atol=1e-6)
    for name, item in exact.items():
        result = predictor(item)
        np.testing.assert_allclose(result.probabilities, want, atol=1e-6, err_msg=name)
        assert result.probabilities.dtype == np.float32 and result.predicted == CLASSES[int(want.argmax())]
        assert result.classes == tuple(CLASSES)
    for name, item in floats.items():  # resized without rounding to 8 bits: close, not equal
        np.testing.assert_allclose(predictor(item).probabilities, want, atol=5e-3, err_msg=name)


def test_grey_inputs_read_as_training_reads_grey_files(setup, tmp_path):
    root, _, model, sources, _, predictor = setup
    grey = tmp_path / "grey.png"
    with Image.open(sources[1]) as img:
        img.convert("L").resize((61, 45)).save(grey)
    pixels = np.array(Image.open(grey))
    want = _oracle(model, grey)
    for item in (grey, pixels, pixels[:, :, None], Image.open(grey), torch.from_numpy(pixels)):
        np.testing.assert_allclose(predictor(item).probabilities, want, atol=1e-6)
    # 16-bit grey: scaled by its bit depth as a 16-bit file is
    deep = (pixels.astype(np.uint16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(predictor(deep).probabilities, predictor(tmp_path / "deep.png").probabilities,
                               atol=1e-6)
    np.testing.assert_allclose(predictor(deep).probabilities, want, atol=5e-3)


def test_mask_attention_and_box_at_the_input_size(setup):
    root, _, model, _, odd, predictor = setup
    result = predictor(odd)
    assert result.mask.shape == (53, 71) and result.mask.dtype == np.uint8 and set(np.unique(result.mask)) <= {0, 1}
    assert result.attention.shape == (53, 71) and result.attention.dtype == np.float32
    assert 0 <= result.attention.min() and result.attention.max() <= 1 + 1e-6
    y1, x1, y2, x2 = result.box
    assert 0 <= y1 <= y2 < 53 and 0 <= x1 <= x2 < 71
    # the mask is the segmentation's argmax, resized nearest to the image (torch's own nearest as the oracle)
    x = torch.from_numpy(np.asarray(Image.open(odd).resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255)
    with torch.no_grad():
        seg = model(x.permute(2, 0, 1)[None]).seg_logits.argmax(dim=1)[None].float()
    want = torch.nn.functional.interpolate(seg, size=(53, 71), mode="nearest")[0, 0].numpy()
    assert (result.mask != want).mean() < 0.02  # Pillow and torch may round a border pixel apart
    # with an ROI box: everything lies in the box, 0 outside it, and the crop's probabilities are training's
    boxed = predictor(odd, box=BOX)
    np.testing.assert_allclose(boxed.probabilities, _oracle(model, odd, BOX), atol=1e-6)
    outside = np.ones((53, 71), bool)
    outside[BOX[0]:BOX[2] + 1, BOX[1]:BOX[3] + 1] = False
    assert not boxed.mask[outside].any() and not boxed.attention[outside].any()
    by1, bx1, by2, bx2 = boxed.box
    assert BOX[0] <= by1 <= by2 <= BOX[2] and BOX[1] <= bx1 <= bx2 <= BOX[3]


def test_models_without_a_pgm_have_no_maps(setup, tmp_path):
    root, _, _, _, odd, _ = setup
    for name in ("walnet_no_pgm", "resnest"):
        ckpt, model = small_checkpoint(tmp_path / f"{name}.pt", name, size=SIZE)
        result = walnet.Predictor.from_pretrained(ckpt)(odd)
        assert result.mask is None and result.attention is None and result.box is None
        np.testing.assert_allclose(result.probabilities, _oracle(model, odd), atol=1e-5)


def test_a_batch_equals_single_calls(setup):
    root, _, _, sources, odd, predictor = setup
    images = [odd, *sources, np.asarray(Image.open(sources[0]))]
    boxes = [BOX, None, (2, 3, 30, 40), None, None]
    batch = predictor(images, box=boxes)  # batch_size 2: three forward passes
    assert len(batch) == len(images)
    for item, box, got in zip(images, boxes, batch):
        one = predictor(item, box=box)
        np.testing.assert_allclose(got.probabilities, one.probabilities, atol=1e-5)
        np.testing.assert_array_equal(got.mask, one.mask)
        assert got.box == one.box and got.predicted == one.predicted


@pytest.mark.parametrize("call, error, message", [
    (lambda p, img: p([]), ValueError, r"images: an empty list"),
    (lambda p, img: p(np.zeros((2, 3, 8, 8), np.uint8)), ValueError, r"images: an array of shape \(2, 3, 8, 8\)"),
    (lambda p, img: p(torch.zeros(2, 3, 8, 8)), ValueError, r"images: a tensor of shape \(2, 3, 8, 8\)"),
    (lambda p, img: p(np.zeros((8, 8, 2), np.uint8)), ValueError, r"images: an array of shape \(8, 8, 2\)"),
    (lambda p, img: p([img, np.zeros((8, 8), np.int32)]), ValueError, r"images\[1\]: dtype int32"),
    (lambda p, img: p(np.full((8, 8), np.nan)), ValueError, r"images: holds NaN"),
    (lambda p, img: p(np.full((8, 8), 2.0)), ValueError, r"images: floating-point values span \[2, 2\]"),
    (lambda p, img: p([img, img], box=[None]), ValueError, r"box: for a list of 2 images, give a list of 2"),
    (lambda p, img: p(img, box=(0, 0, 60, 10)), ValueError, r"box: ROI box .* does not lie inside images of 53x71"),
    (lambda p, img: p([img], box=[(0, 0, 5)]), ValueError, r"box\[0\]: an ROI box is 4 integers"),
    (lambda p, img: p(np.zeros((8, 8), np.uint8), frame=1), ValueError, r"frame: given for images, which is no file"),
    (lambda p, img: p(img, batch_size=0), ValueError, r"batch_size must be an integer >= 1"),
    (lambda p, img: p(3.5), TypeError, r"images: a float; give a numpy array"),
    (lambda p, img: p("nope.png"), FileNotFoundError, r"nope\.png"),
])
def test_bad_inputs_are_named(setup, call, error, message):
    root, _, _, _, odd, predictor = setup
    with pytest.raises(error, match=message):
        call(predictor, np.asarray(Image.open(odd)))


def test_an_export_records_the_resize_method_and_predictor_reads_it(setup, tmp_path):
    root, ckpt, model, _, odd, predictor = setup
    export_model(ckpt, tmp_path / "m", device="cpu")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["input"]["resize"] == "bilinear"
    np.testing.assert_allclose(walnet.Predictor.from_pretrained(tmp_path / "m")(odd).probabilities,
                               predictor(odd).probabilities, atol=1e-6)
    for value, works in (("nearest", True), ("cubic", False), (None, True)):
        folder = tmp_path / f"m_{value}"
        shutil.copytree(tmp_path / "m", folder)
        changed = json.loads(json.dumps(config))
        if value is None:
            del changed["input"]["resize"]  # a folder exported before the key: training's method
        else:
            changed["input"]["resize"] = value
        (folder / "config.json").write_text(json.dumps(changed))
        if not works:
            with pytest.raises(ValueError, match=r"input\.resize' must be one of \['bilinear'"):
                walnet.Predictor.from_pretrained(folder)
            continue
        resample = Image.NEAREST if value == "nearest" else Image.BILINEAR
        np.testing.assert_allclose(walnet.Predictor.from_pretrained(folder)(odd).probabilities,
                                   _oracle(model, odd, resample=resample), atol=1e-6)


def test_masks_and_overlays_mirror_the_input_tree(setup, tmp_path):
    root, ckpt, _, sources, odd, _ = setup
    scans = tmp_path / "scans"
    for rel, src in (("a/b/img.png", sources[0]), ("a/img.png", sources[1]), ("c/img.png", sources[2]),
                     ("top.png", sources[0]), ("top.jpg", sources[1])):
        (scans / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(src).convert("RGB").save(scans / rel)
    loose = tmp_path / "loose" / "img.png"  # a file given itself keeps its flat name
    loose.parent.mkdir()
    shutil.copy(odd, loose)
    predict(ckpt, [scans, loose], tmp_path / "p.csv", masks_dir=tmp_path / "masks",
            overlays_dir=tmp_path / "overlays", device="cpu")
    want = ["a/b/img.png", "a/img.png", "c/img.png", "img.png", "top.png", "top_1.png"]
    for what in ("masks", "overlays"):
        folder = tmp_path / what
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == want
    with open(tmp_path / "p.csv", newline="") as f:
        rows = {Path(r["path"]).relative_to(tmp_path).as_posix(): r for r in csv.DictReader(f)}
    assert rows["scans/a/b/img.png"]["mask"] == str(tmp_path / "masks" / "a" / "b" / "img.png")
    assert rows["scans/top.png"]["overlay"] == str(tmp_path / "overlays" / "top_1.png")  # top.jpg sorts first
    with Image.open(tmp_path / "masks" / "img.png") as mask:
        assert mask.size == (71, 53)
    # nothing is replaced without --overwrite; a subfolder's place taken by a file is named
    with pytest.raises(FileExistsError, match="img.png already exists"):
        predict(ckpt, [scans], tmp_path / "q.csv", masks_dir=tmp_path / "masks", device="cpu")
    (tmp_path / "other" / "a").mkdir(parents=True)
    (tmp_path / "other" / "a" / "b").write_text("a file")
    with pytest.raises(ValueError, match=r"b is a file where a folder of masks would go"):
        predict(ckpt, [scans], tmp_path / "q.csv", masks_dir=tmp_path / "other", device="cpu")
    assert not (tmp_path / "q.csv").exists()
    predict(ckpt, [scans], tmp_path / "q.csv", masks_dir=tmp_path / "masks", device="cpu", overwrite=True)


def test_dicom_frames_in_a_tree_and_from_the_predictor(setup, tmp_path):
    pytest.importorskip("pydicom", reason="needs the dicom extra")
    from test_dicom import _cine

    root, ckpt, _, _, _, predictor = setup
    (tmp_path / "in" / "sub").mkdir(parents=True)
    loop = _cine(tmp_path / "in" / "sub", "loop.dcm", frames=2)
    predict(ckpt, [tmp_path / "in"], tmp_path / "p.csv", masks_dir=tmp_path / "m", device="cpu")
    assert sorted(p.name for p in (tmp_path / "m" / "sub").iterdir()) == ["loop_frame0.png", "loop_frame1.png"]
    np.testing.assert_allclose(predictor([loop, loop], frame=[0, 1])[1].probabilities,
                               _csv_probs(tmp_path / "p.csv")[1], atol=1e-6)
    with pytest.raises(ValueError, match="images: .*2 frames; give the frame"):
        predictor(loop)


def test_output_names_never_share_a_path():
    from walnet.data import Record
    from walnet.engine.image_tree import output_names

    def names(*given):
        records = [Record(Path("/data") / (rel or flat), 0, frame=frame) for rel, flat, frame in given]
        return output_names(records, [rel for rel, _, _ in given])

    assert names(("a/x.png", None, None), ("b/x.png", None, None), (None, "x.jpg", None), (None, "X.png", None),
                 ("c/loop.dcm", None, 1)) == ["a/x.png", "b/x.png", "x.png", "X_1.png", "c/loop_frame1.png"]
    # a folder named like an image's mask: the image steps aside, or (the other order) the run is refused
    assert names(("x.png/y.png", None, None), ("x.png", None, None)) == ["x.png/y.png", "x_1.png"]
    with pytest.raises(ValueError, match="has that folder's name"):
        names(("x.png", None, None), ("x.png/y.png", None, None))
