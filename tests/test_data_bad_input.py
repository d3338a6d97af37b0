"""Bad data files reach the user as one ValueError (FileNotFoundError for a missing file) naming
the file: ROI boxes and masks that do not fit their image, images Pillow refuses."""
from __future__ import annotations

import csv
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from walnet.data import PlaqueDataset, Record, read_csv


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _gray(h=40, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)


def _write(path, header, rows, encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


BOXED = ("path", "label", "y1", "x1", "y2", "x2")


# --- geometry: ROI boxes and masks -------------------------------------------------------------


@pytest.mark.parametrize("box", [(0, 0, 40, 29), (0, 0, 39, 30), (50, 50, 60, 60)])
def test_a_box_outside_its_image_is_an_error(tmp_path, box):
    """The audit's case: a box wholly or partly outside the image trained on black padding."""
    _png(tmp_path / "a.png", _gray(40, 30))
    _write(tmp_path / "d.csv", BOXED, [("a.png", "hypoechoic", *box)])
    records, _ = read_csv(tmp_path / "d.csv")
    ds = PlaqueDataset(records, size=8)
    with pytest.raises(ValueError, match=r"d\.csv:2: ROI box .* does not lie inside the image .*a\.png "
                                         "of 40x30 pixels"):
        ds[0]
    skipping = PlaqueDataset(records, size=8, skip_bad=True)
    assert len(skipping) == 0 and skipping.skipped == 1


def test_the_whole_image_as_a_box_is_fine(tmp_path):
    _png(tmp_path / "a.png", _gray(40, 30))
    _write(tmp_path / "d.csv", BOXED, [("a.png", "hypoechoic", 0, 0, 39, 29)])
    records, _ = read_csv(tmp_path / "d.csv")
    assert PlaqueDataset(records, size=8, skip_bad=True)[0]["image"].shape == (3, 8, 8)


def test_a_mask_of_another_size_is_an_error(tmp_path):
    """The audit's case: a 17x300 mask for a 64x64 image was stretched to fit."""
    _png(tmp_path / "a.png", _gray(64, 64))
    _png(tmp_path / "m.png", np.zeros((17, 300), np.uint8))
    _write(tmp_path / "d.csv", ("path", "label", "mask_path"), [("a.png", "hypoechoic", "m.png")])
    records, _ = read_csv(tmp_path / "d.csv")
    with pytest.raises(ValueError, match=r"d\.csv:2: mask .*m\.png is 17x300 pixels but its image .*a\.png is 64x64"):
        PlaqueDataset(records, size=8)[0]
    skipping = PlaqueDataset(records, size=8, skip_bad=True)
    assert len(skipping) == 0 and skipping.skipped == 1


# --- images Pillow refuses ---------------------------------------------------------------------


def _png_header_only(path, width, height):
    """A PNG that declares width x height 8-bit grey pixels; its data stops after one row, which
    is enough for Pillow to check the size (its decompression-bomb check runs on open)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_a_bad_image(tmp_path):
    """The audit's case: a 14000x14000 PNG raised Pillow's DecompressionBombError, which
    --skip-bad did not skip."""
    bomb = _png_header_only(tmp_path / "bomb.png", 14000, 14000)
    _png(tmp_path / "ok.png", _gray())
    records = [Record(bomb, 0), Record(tmp_path / "ok.png", 1)]
    with pytest.raises(ValueError, match=r"cannot read image .*bomb\.png: it has more pixels than Pillow's "
                                         "decompression-bomb limit"):
        PlaqueDataset(records, size=8)[0]
    skipping = PlaqueDataset(records, size=8, skip_bad=True)
    assert len(skipping) == 1 and skipping.skipped == 1 and skipping[0]["label"] == 1
    mask_bomb = [Record(tmp_path / "ok.png", 1, mask_path=bomb)]
    with pytest.raises(ValueError, match=r"bomb\.png: it has more pixels"):
        PlaqueDataset(mask_bomb, size=8)[0]
    assert PlaqueDataset(mask_bomb, size=8, skip_bad=True).skipped == 1


def test_a_folder_named_like_an_image(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ValueError, match=r"dir\.png is a folder, not an image"):
        PlaqueDataset([Record(tmp_path / "dir.png", 0)], size=8)[0]
    assert PlaqueDataset([Record(tmp_path / "dir.png", 0)], size=8, skip_bad=True).skipped == 1
