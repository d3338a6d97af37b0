"""``walnet predict`` like training: ``--csv`` with ROI boxes (cropped by the dataset's code, in
either box convention), its errors, ``--amp``, and ``--overlays`` (attention heat map, mask
contour and RCM box per image), from a small untrained checkpoint."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from walnet.data import phantom
from walnet.engine import panels
from walnet.engine.config import PredictConfig
from walnet.engine.predict import predict

from conftest import CLASSES, small_checkpoint

BOX = (4, 6, 39, 41)  # y1, x1, y2, x2 inside the phantom's 48 x 48 images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_roi")
    phantom.generate(root / "ph", n=4, seed=1, size=48)
    ckpt, _ = small_checkpoint(root / "run" / "best.pt")
    images = sorted((root / "ph" / "images").rglob("*.png"))
    return root, ckpt, images


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _probs(path):
    return np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in _rows(path)])


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_csv_boxes_crop_as_pre_cropped_files_and_both_conventions_agree(setup, tmp_path):
    root, ckpt, images = setup
    y1, x1, y2, x2 = BOX
    cropped = tmp_path / "cropped"
    cropped.mkdir()
    for i, p in enumerate(images):
        with Image.open(p) as img:
            img.crop((x1, y1, x2 + 1, y2 + 1)).save(cropped / f"{i}.png")
    predict(ckpt, [cropped], tmp_path / "files.csv", device="cpu")
    # labels may be missing, or anything: predict does not read them
    yx = _write_csv(tmp_path / "yx.csv", ["path", "y1", "x1", "y2", "x2"], [(p, *BOX) for p in images])
    xy = _write_csv(tmp_path / "xy.csv", ["path", "label", "xmin", "ymin", "xmax", "ymax"],
                    [(p, "not a class", x1, y1, x2, y2) for p in images])
    predict(PredictConfig(checkpoint=ckpt, csv=yx, output=tmp_path / "yx_out.csv", device="cpu",
                          masks_dir=tmp_path / "masks"))
    predict(PredictConfig(checkpoint=ckpt, csv=xy, output=tmp_path / "xy_out.csv", device="cpu"))
    np.testing.assert_array_equal(_probs(tmp_path / "yx_out.csv"), _probs(tmp_path / "files.csv"))
    np.testing.assert_array_equal(_probs(tmp_path / "xy_out.csv"), _probs(tmp_path / "yx_out.csv"))
    rows = _rows(tmp_path / "yx_out.csv")
    assert [Path(r["path"]) for r in rows] == [p.resolve() for p in images]
    # the mask of the crop goes back into the box of a full-size mask, 0 outside it
    with Image.open(rows[0]["mask"]) as mask:
        assert mask.size == (48, 48)
        values = np.asarray(mask)
    outside = np.ones_like(values, dtype=bool)
    outside[y1:y2 + 1, x1:x2 + 1] = False
    assert (values[outside] == 0).all() and set(np.unique(values)) <= {0, 255}


@pytest.mark.parametrize("header, row, message", [
    (["path", "y1", "x1", "y2", "x2"], (0, 0, 48, 40), r"b\.csv:3: ROI box .* does not lie inside the image .*"),
    (["path", "xmin", "ymin", "xmax", "ymax"], (50, 0, 60, 10), r"b\.csv:3: ROI box .* does not lie inside"),
    (["path", "y1", "x1", "y2", "x2"], (20, 0, 10, 40), r"b\.csv:3: ROI box \(y1, x1, y2, x2\) = \(20, 0, 10, 40\) "
                                                          "is not a box"),
    (["path", "xmin", "ymin", "xmax", "ymax"], (30, 0, 10, 40), r"b\.csv:3: ROI box \(xmin, ymin, xmax, ymax\) = "
                                                                r"\(30, 0, 10, 40\) is not a box"),
    (["path", "y1", "x1", "y2", "x2", "xmin"], (0, 0, 5, 5, 1), r"b\.csv:1: .*both conventions \(\['y1', 'x1', "
                                                                 r"'y2', 'x2'\] and \['xmin'\]\)"),
])
def test_bad_boxes_name_the_row_and_write_nothing(setup, tmp_path, header, row, message):
    root, ckpt, images = setup
    rows = [(images[0], 0, 0, 5, 5, *[""] * (len(header) - 5)), (images[1], *row)]
    bad = _write_csv(tmp_path / "b.csv", header, rows)
    with pytest.raises(ValueError, match=message) as info:
        predict(PredictConfig(checkpoint=ckpt, csv=bad, output=tmp_path / "p.csv", device="cpu"))
    if "inside" in message:
        assert images[1].name in str(info.value)
    assert not (tmp_path / "p.csv").exists()


def test_csv_and_inputs_exclude_each_other(setup, tmp_path, capsys):
    root, ckpt, images = setup
    listed = _write_csv(tmp_path / "l.csv", ["path"], [(images[0],)])
    with pytest.raises(ValueError, match=r"exactly one of inputs .* and csv \(--csv\)"):
        PredictConfig(checkpoint=ckpt, inputs=[images[0]], csv=listed, output=tmp_path / "p.csv")
    with pytest.raises(ValueError, match=r"exactly one of inputs .* and csv \(--csv\)"):
        PredictConfig(checkpoint=ckpt, output=tmp_path / "p.csv")
    from walnet import cli

    for extra in ([str(images[0]), "--csv", str(listed)], []):
        assert cli.main(["predict", "--checkpoint", str(ckpt), "--output", str(tmp_path / "p.csv"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("walnet predict: error: give exactly one of inputs") and err.count("\n") == 1
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--csv", str(listed), "--output",
                     str(tmp_path / "p.csv"), "--device", "cpu", "--amp"]) == 0
    assert len(_rows(tmp_path / "p.csv")) == 1


def test_amp_on_cpu_is_finite_and_close_to_float32(setup, tmp_path):
    root, ckpt, images = setup
    predict(ckpt, images, tmp_path / "fp32.csv", device="cpu")
    predict(ckpt, images, tmp_path / "bf16.csv", device="cpu", amp=True)
    full, half = _probs(tmp_path / "fp32.csv"), _probs(tmp_path / "bf16.csv")
    assert np.isfinite(half).all()
    np.testing.assert_allclose(half.sum(axis=1), 1, atol=1e-5)
    # bfloat16 keeps 8 bits of mantissa: the probabilities agree to about two decimals
    np.testing.assert_allclose(half, full, atol=0.03)


def test_overlays_one_png_per_image(setup, tmp_path):
    root, ckpt, images = setup
    listed = _write_csv(tmp_path / "l.csv", ["path", "y1", "x1", "y2", "x2"],
                        [(images[0], *BOX), (images[1], "", "", "", "")])
    out = tmp_path / "overlays"
    predict(PredictConfig(checkpoint=ckpt, csv=listed, output=tmp_path / "p.csv", overlays_dir=out, device="cpu"))
    rows = _rows(tmp_path / "p.csv")
    assert [Path(r["overlay"]).name for r in rows] == [p.name for p in images[:2]]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in images[:2])
    # the figure's width is fixed, its height follows the region the model saw (the square crop, the square image)
    sizes = []
    for r in rows:
        with Image.open(r["overlay"]) as png:
            assert png.format == "PNG" and png.info["dpi"] == pytest.approx((300, 300), abs=0.01)
            sizes.append(png.size)
    assert sizes[0] == sizes[1] and sizes[0][0] == panels.OVERLAY_WIDTH
    # existing overlays are kept without --overwrite
    before = (out / images[0].name).read_bytes()
    with pytest.raises(FileExistsError, match="overlay"):
        predict(PredictConfig(checkpoint=ckpt, csv=listed, output=tmp_path / "q.csv", overlays_dir=out, device="cpu"))
    assert (out / images[0].name).read_bytes() == before and not (tmp_path / "q.csv").exists()
    predict(PredictConfig(checkpoint=ckpt, csv=listed, output=tmp_path / "q.csv", overlays_dir=out, device="cpu",
                          overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in images[:2])  # no staging left
    with pytest.raises(ValueError, match="--masks and --overlays are both"):
        predict(ckpt, images, tmp_path / "r.csv", masks_dir=out, overlays_dir=out, device="cpu", overwrite=True)


def test_overlays_need_a_segmentation_head(setup, tmp_path):
    root, _, images = setup
    ckpt, _ = small_checkpoint(tmp_path / "no_pgm.pt", "walnet_no_pgm")
    with pytest.raises(ValueError, match="no segmentation head; --overlays needs a WAL-Net"):
        predict(ckpt, images, tmp_path / "p.csv", overlays_dir=tmp_path / "o", device="cpu")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "o").exists()


def test_two_boxes_of_one_image_are_two_predictions(setup, tmp_path):
    """Two plaques of one image: a row each, as the boxes cropped into files would be predicted;
    a repeated row is merged, and training still refuses one image listed with two boxes."""
    root, ckpt, images = setup
    other = (10, 2, 30, 45)
    cropped = tmp_path / "cropped"
    cropped.mkdir()
    with Image.open(images[0]) as img:
        for name, (y1, x1, y2, x2) in (("a", BOX), ("b", other)):
            img.crop((x1, y1, x2 + 1, y2 + 1)).save(cropped / f"{name}.png")
    predict(ckpt, [cropped / "a.png", cropped / "b.png"], tmp_path / "files.csv", device="cpu")
    listed = _write_csv(tmp_path / "two.csv", ["path", "label", "y1", "x1", "y2", "x2"],
                        [(images[0], "hypoechoic", *BOX), (images[0], "mixed-echoic", *other),
                         (images[0], "hypoechoic", *BOX)])
    with pytest.warns(UserWarning, match="with the same contents"):
        predict(PredictConfig(checkpoint=ckpt, csv=listed, output=tmp_path / "two_out.csv", device="cpu",
                              masks_dir=tmp_path / "masks"))
    rows = _rows(tmp_path / "two_out.csv")
    assert [Path(r["path"]) for r in rows] == [images[0].resolve()] * 2
    np.testing.assert_array_equal(_probs(tmp_path / "two_out.csv"), _probs(tmp_path / "files.csv"))
    assert [Path(r["mask"]).name for r in rows] == [images[0].name, f"{images[0].stem}_1.png"]
    from walnet.data import read_csv

    with pytest.raises(ValueError, match=r"two\.csv: line 2 and line 3 both list the image .* disagree"):
        read_csv(listed)
