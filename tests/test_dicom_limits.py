"""DICOM files read within bounds (walnet.data.dicom_header): frame counts checked against the
pixel data, Pillow's decompression-bomb limit before decoding, deflated files read (and their
headers without inflating their pixels), Float Pixel Data scaled, invalid ultrasound regions
ignored, pydicom's warnings as one line; each failure one line naming the file. The files are
written here with pydicom, most of them tiny; a large header is a few numbers, not data."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom", reason="the DICOM tests need the dicom extra: pip install 'walnet[dicom]'")
from pydicom.dataelem import RawDataElement  # noqa: E402
from pydicom.tag import Tag  # noqa: E402
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless  # noqa: E402

from walnet import cli  # noqa: E402
from walnet.data import PlaqueDataset, Record, scan_image_folder  # noqa: E402
from walnet.data.dicom import read_dicom, read_info  # noqa: E402
from walnet.data import dicom_header  # noqa: E402
from walnet.data.dicom_header import DicomWarning  # noqa: E402

from conftest import small_checkpoint  # noqa: E402
from test_dicom import H, W, write_dicom  # noqa: E402


def _edit(path, **values):
    """The DICOM file at `path` with header `values` changed (raw bytes for str values, so that
    malformed ones are written as they are); the pixel data is kept."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        if isinstance(value, bytes):
            tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
            ds[tag] = RawDataElement(tag, pydicom.datadict.dictionary_VR(tag), len(value), value, 0, False, True)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def _gray8(seed=0, frames=None):
    shape = (H, W) if frames is None else (frames, H, W)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _recode(path, syntax):
    """The file at `path` rewritten in the transfer syntax `syntax` (RLE or deflated)."""
    ds = pydicom.dcmread(path)
    if syntax == RLELossless:
        ds.compress(RLELossless)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path)
    return path


@pytest.mark.parametrize("frames", [b"3000000", b"2000000000"])
def test_frame_counts_beyond_the_pixel_data_are_refused_at_once(tmp_path, frames):
    path = _edit(write_dicom(tmp_path / "tiny.dcm", _gray8()), NumberOfFrames=frames)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"tiny\.dcm: its PixelData holds 1280 bytes, fewer than .* "
                                         f"its {int(frames)} frame"):
        read_info(path)
    with pytest.raises(ValueError, match=r"tiny\.dcm.*fewer than"):
        read_dicom(path, "RGB", frame=0)
    (tmp_path / "hypoechoic").mkdir()
    path.rename(tmp_path / "hypoechoic" / "tiny.dcm")
    records, _ = scan_image_folder(tmp_path)  # one record, not one per announced frame
    assert len(records) == 1
    with pytest.raises(ValueError, match=r"tiny\.dcm.*fewer than"):
        PlaqueDataset(records, size=8)[0]
    assert time.perf_counter() - start < 10


def test_encapsulated_frames_need_a_fragment_each(tmp_path):
    path = _recode(write_dicom(tmp_path / "rle.dcm", _gray8(frames=2)), RLELossless)
    assert read_info(path).frames == 2
    np.testing.assert_array_equal(np.asarray(read_dicom(path, "L", frame=1)), _gray8(frames=2)[1])
    _edit(path, NumberOfFrames=b"3000000")
    with pytest.raises(ValueError, match=r"rle\.dcm: its encapsulated PixelData has 2 fragment\(s\) for 3000000"):
        read_info(path)


@pytest.mark.parametrize("frames", [b"abc", b"1.5", b"-3", b"2\\3"])
def test_a_malformed_frame_count_is_one_line_naming_the_file(tmp_path, frames, capsys):
    path = _edit(write_dicom(tmp_path / "odd.dcm", _gray8()), NumberOfFrames=frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWarning)
        with pytest.raises(ValueError, match=r"odd\.dcm: its NumberOfFrames .* is not a whole number"):
            read_info(path)
        ckpt, _ = small_checkpoint(tmp_path / "run" / "best.pt")
        assert cli.main(["predict", "--checkpoint", str(ckpt), str(path), "--output", str(tmp_path / "p.csv"),
                         "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"walnet predict: error: cannot read image {path}: its NumberOfFrames ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_frames_over_the_decompression_bomb_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    big = _recode(write_dicom(tmp_path / "big.dcm", _gray8()), RLELossless)
    _edit(big, Rows=16000, Columns=16000)  # 4 KB of RLE that would decode to 256 MB
    with pytest.raises(ValueError, match=r"big\.dcm: its frames have 256000000 pixels, more than twice Pillow's"):
        read_dicom(big, "RGB")
    small = write_dicom(tmp_path / "small.dcm", _gray8())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W - 1)  # over the limit, under twice it: a warning
    with pytest.warns(Image.DecompressionBombWarning, match=r"small\.dcm"):
        assert read_dicom(small, "L").size == (W, H)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 2 - 1)
    with pytest.raises(ValueError, match=r"small\.dcm.*decompression-bomb limit"):
        read_dicom(small, "L")


def test_deflated_files_are_read(tmp_path):
    one = _recode(write_dicom(tmp_path / "one.dcm", _gray8(1), patient="P3"), DeflatedExplicitVRLittleEndian)
    assert pydicom.dcmread(one).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert read_info(one).patient == "P3" and read_info(one).frames == 1
    np.testing.assert_array_equal(np.asarray(read_dicom(one, "L")), _gray8(1))
    loop = _recode(write_dicom(tmp_path / "loop.dcm", _gray8(2, frames=3)), DeflatedExplicitVRLittleEndian)
    assert read_info(loop).frames == 3
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(read_dicom(loop, "L", frame=k)), _gray8(2, frames=3)[k])
    rgb = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    colour = _recode(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"), DeflatedExplicitVRLittleEndian)
    np.testing.assert_array_equal(np.asarray(read_dicom(colour, "RGB")), rgb)


def test_a_deflated_header_is_read_without_inflating_the_pixels(tmp_path, monkeypatch):
    frames, side = 4, 1500  # 9 MB of zeros deflate to a few KB
    path = _recode(write_dicom(tmp_path / "zeros.dcm", np.zeros((frames, side, side), np.uint8)),
                   DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size < 100_000
    inflated = []
    fill = dicom_header.Inflater.fill

    def spy(self, size):
        fill(self, size)
        inflated.append(len(self.data))

    monkeypatch.setattr(dicom_header.Inflater, "fill", spy)
    assert read_info(path).frames == frames
    assert max(inflated) <= 2**16  # the header's first 64 KiB, not the 9 MB of pixels
    inflated.clear()
    assert np.asarray(read_dicom(path, "L", frame=1)).max() == 0
    assert 2 * side * side <= max(inflated) < 2 * side * side + 2**16  # up to frame 1's end, not all four frames
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match=r"cut\.dcm: .*cut short"):
        read_dicom(cut, "L", frame=frames - 1)


def test_float_pixel_data_is_scaled_by_its_finite_range(tmp_path):
    values = np.linspace(-2.0, 6.0, H * W).reshape(H, W).astype(np.float32)
    values[0, 0], values[0, 1], values[0, 2] = np.nan, np.inf, -np.inf
    path = write_dicom(tmp_path / "float.dcm", _gray8())
    ds = pydicom.dcmread(path)
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()
    ds.save_as(path)
    img = read_dicom(path, "RGB")
    assert img.mode == "F"
    lo, hi = float(values[0, 3]), float(values[-1, -1])  # the finite extremes
    want = (np.clip(np.nan_to_num(values.astype(np.float64), nan=lo, posinf=hi, neginf=lo), lo, hi) - lo) * (
        255.0 / (hi - lo))
    np.testing.assert_allclose(np.asarray(img), want, rtol=1e-5, atol=1e-4)
    assert np.asarray(img)[0, :3].tolist() == [0.0, 255.0, 0.0]
    item = PlaqueDataset([Record(path, 0)], size=8)[0]
    assert 0 <= item["image"].min() and item["image"].max() <= 1 and item["image"].std() > 0.1


def test_invalid_ultrasound_regions_are_ignored(tmp_path):
    values = _gray8(5)
    path = write_dicom(tmp_path / "us.dcm", values, region=(5, 6, 20, 30))
    ds = pydicom.dcmread(path)
    inverted, outside = (pydicom.dataset.Dataset() for _ in range(2))
    inverted.RegionLocationMinY0, inverted.RegionLocationMinX0 = 60, 60  # (60, 60, 0, 0): min past max
    inverted.RegionLocationMaxY1 = inverted.RegionLocationMaxX1 = 0
    outside.RegionLocationMinY0, outside.RegionLocationMinX0 = 100, 100  # wholly below the image
    outside.RegionLocationMaxY1, outside.RegionLocationMaxX1 = 400, 400
    ds.SequenceOfUltrasoundRegions = [inverted, outside, *ds.SequenceOfUltrasoundRegions]
    ds.save_as(path)
    np.testing.assert_array_equal(np.asarray(read_dicom(path, "L")), values[5:21, 6:31])


def test_pydicom_warnings_become_one_line_naming_the_file(tmp_path):
    # "1e0" is no valid IS value: pydicom reads it as 1 and warns, when walnet first uses it
    path = _edit(write_dicom(tmp_path / "noisy.dcm", _gray8()), NumberOfFrames=b"1e0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_info(path).frames == 1
        np.testing.assert_array_equal(np.asarray(read_dicom(path, "L")), _gray8())
    assert len(caught) == 2 and all(w.category is DicomWarning for w in caught), [str(w.message) for w in caught]
    for w in caught:
        text = str(w.message)
        assert text.startswith(f"{path}: pydicom: Invalid value for VR IS: '1e0'") and "\n" not in text
