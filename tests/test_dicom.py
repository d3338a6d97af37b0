"""DICOM images (walnet.data.dicom, the `dicom` extra): pixel conventions per photometric
interpretation, frames of cine loops as samples grouped by file, PatientID as patient, the
ultrasound region crop and its flag, ImageFolder / CSV / predict inputs, and the one-line error
without pydicom. The files are written here with pydicom (uncompressed, tiny)."""
from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="the DICOM tests need the dicom extra: pip install 'walnet[dicom]'")
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import convert_color_space  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from walnet.data import PlaqueDataset, Record, read_csv, scan_image_folder, split_indices  # noqa: E402
from walnet.data.dicom import MissingDicomSupportError, read_dicom  # noqa: E402
from walnet.engine.config import EvalConfig, PredictConfig, TrainConfig  # noqa: E402

from conftest import small_checkpoint  # noqa: E402

H, W = 32, 40
US_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
US_MULTIFRAME_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.3.1"


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=None, patient=None, region=None):
    """`pixels` ([frames,] H, W[, 3], uint8 / uint16) as an uncompressed DICOM file at `path`;
    `region` (y1, x1, y2, x2) becomes a Sequence of Ultrasound Regions item."""
    pixels = np.asarray(pixels)
    color = photometric not in ("MONOCHROME1", "MONOCHROME2")
    frames = pixels.shape[0] if pixels.ndim == (4 if color else 3) else 1
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = US_MULTIFRAME_SOP_CLASS if frames > 1 else US_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    if patient is not None:
        ds.PatientID = patient
    ds.Rows, ds.Columns = pixels.shape[-3 if color else -2], pixels.shape[-2 if color else -1]
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = allocated, bits_stored or allocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if region is not None:
        item = Dataset()
        y1, x1, y2, x2 = region
        item.RegionLocationMinX0, item.RegionLocationMinY0 = x1, y1
        item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x2, y2
        small = Dataset()  # a smaller region listed first: the largest one is used
        small.RegionLocationMinX0, small.RegionLocationMinY0, small.RegionLocationMaxX1, small.RegionLocationMaxY1 = 0, 0, 3, 3
        ds.SequenceOfUltrasoundRegions = [small, item]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _gray16(seed=0):
    return np.random.default_rng(seed).integers(0, 4096, (H, W), dtype=np.uint16)


def test_monochrome2_scales_by_bits_stored(tmp_path):
    values = _gray16()
    img = read_dicom(write_dicom(tmp_path / "a.dcm", values, bits_stored=12), "RGB")
    assert img.mode == "F" and img.size == (W, H)
    np.testing.assert_allclose(np.asarray(img), values * (255.0 / 4095), rtol=1e-6)
    item = PlaqueDataset([Record(tmp_path / "a.dcm", 0)], size=16)[0]
    assert item["image"].shape == (3, 16, 16) and 0 <= item["image"].min() and item["image"].max() <= 1


def test_monochrome1_is_inverted(tmp_path):
    values = _gray16(1)
    img = read_dicom(write_dicom(tmp_path / "a.dcm", values, "MONOCHROME1", bits_stored=12), "RGB")
    np.testing.assert_allclose(np.asarray(img), (4095 - values) * (255.0 / 4095), rtol=1e-6)
    eight = np.random.default_rng(2).integers(0, 256, (H, W), dtype=np.uint8)
    img = read_dicom(write_dicom(tmp_path / "b.dcm", eight, "MONOCHROME1"), "RGB")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img)[..., 0], 255 - eight)


def test_rgb_and_ybr_full_come_back_as_rgb(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    img = read_dicom(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"), "RGB")
    np.testing.assert_array_equal(np.asarray(img), rgb)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    img = read_dicom(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"), "RGB")
    assert img.mode == "RGB"
    # YBR_FULL has 8 bits per component: a round trip is off by at most rounding
    assert np.abs(np.asarray(img).astype(int) - rgb).max() <= 2


def test_region_crop_and_flag(tmp_path):
    values = _gray16(4)
    path = write_dicom(tmp_path / "us.dcm", values, bits_stored=12, region=(5, 6, 20, 30))
    img = read_dicom(path, "RGB")
    assert img.size == (25, 16)
    np.testing.assert_allclose(np.asarray(img), values[5:21, 6:31] * (255.0 / 4095), rtol=1e-6)
    assert read_dicom(path, "RGB", region=False).size == (W, H)
    assert read_dicom(write_dicom(tmp_path / "plain.dcm", values), "RGB").size == (W, H)
    # the CSV's ROI box is in the region's pixels: (0..15, 0..24) fits, one more row does not
    PlaqueDataset([Record(path, 0, box=(0, 0, 15, 24))], size=8)[0]
    with pytest.raises(ValueError, match="does not lie inside"):
        PlaqueDataset([Record(path, 0, box=(0, 0, 16, 24))], size=8)[0]
    PlaqueDataset([Record(path, 0, box=(0, 0, 16, 24))], size=8, dicom_region=False)[0]
    bad = write_dicom(tmp_path / "bad.dcm", values, region=(5, 6, 40, 30))
    with pytest.raises(ValueError, match=r"bad\.dcm.*--no-dicom-region"):
        read_dicom(bad, "RGB")


def test_region_flag_is_an_option_of_train_evaluate_predict():
    assert not TrainConfig(data_dir="d", output="o", dicom_region=False).dicom_region
    assert EvalConfig(checkpoint="c", data_dir="d").dicom_region
    assert not PredictConfig(checkpoint="c", inputs=["x.dcm"], output="p.csv", dicom_region=False).dicom_region


def _cine(tmp_path, name="loop.dcm", frames=3, **kw):
    values = np.stack([np.full((H, W), 1000 * (k + 1), np.uint16) for k in range(frames)])
    return write_dicom(tmp_path / name, values, bits_stored=12, **kw)


def test_frames_are_samples_grouped_by_file(tmp_path):
    _cine(tmp_path, "a.dcm")
    _cine(tmp_path, "b.dcm", patient="P7")
    text = "path,label\na.dcm,hyperechoic\nb.dcm,mixed-echoic\n"
    (tmp_path / "d.csv").write_text(text)
    records, _ = read_csv(tmp_path / "d.csv")
    assert [(r.path.name, r.frame) for r in records] == [("a.dcm", k) for k in range(3)] + [("b.dcm", k) for k in range(3)]
    assert {r.patient for r in records[:3]} == {str(tmp_path / "a.dcm")}
    assert {r.patient for r in records[3:]} == {"P7"}
    assert len({r.key for r in records}) == 6
    splits = split_indices([r.label for r in records], [r.patient for r in records], seed=0)
    assert len(set(splits[:3])) == 1 and len(set(splits[3:])) == 1
    dataset = PlaqueDataset(records, size=8)
    means = [float(dataset[i]["image"].mean()) for i in range(3)]
    np.testing.assert_allclose(means, [1000 * (k + 1) / 4095 for k in range(3)], rtol=1e-5)
    # a frame column picks one frame; a frame out of range names the row
    (tmp_path / "f.csv").write_text("path,label,frame\na.dcm,hyperechoic,2\n")
    (record,), _ = read_csv(tmp_path / "f.csv")
    assert record.frame == 2 and record.patient == str(tmp_path / "a.dcm")
    (tmp_path / "g.csv").write_text("path,label,frame\na.dcm,hyperechoic,3\n")
    with pytest.raises(ValueError, match=r"g\.csv:2: column 'frame': 3 is out of range"):
        read_csv(tmp_path / "g.csv")
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "h.csv").write_text("path,label,frame\nx.png,hyperechoic,0\n")
    with pytest.raises(ValueError, match=r"h\.csv:2: column 'frame'.*no DICOM file"):
        read_csv(tmp_path / "h.csv")


def test_patient_id_fills_patient_and_imagefolder_reads_dcm(tmp_path):
    for cls, patient in (("hyperechoic", "P1"), ("mixed-echoic", "P2"), ("hypoechoic", None)):
        (tmp_path / cls).mkdir()
        write_dicom(tmp_path / cls / "a.dcm", _gray16(), bits_stored=12, patient=patient)
    _cine(tmp_path / "hypoechoic", "loop.dicom", frames=2)
    records, _ = scan_image_folder(tmp_path)
    assert [(r.path.name, r.patient, r.frame) for r in records] == [
        ("a.dcm", "P1", None), ("a.dcm", None, None), ("loop.dicom", str(tmp_path / "hypoechoic" / "loop.dicom"), 0),
        ("loop.dicom", str(tmp_path / "hypoechoic" / "loop.dicom"), 1), ("a.dcm", "P2", None)]
    # a CSV's own patient id wins over the header's
    (tmp_path / "d.csv").write_text("path,label,patient_id\nhyperechoic/a.dcm,hyperechoic,CSV9\n"
                                    "mixed-echoic/a.dcm,mixed-echoic,\n")
    records, _ = read_csv(tmp_path / "d.csv")
    assert [r.patient for r in records] == ["CSV9", "P2"]


def test_predict_on_dicom(tmp_path):
    from walnet.engine.predict import predict

    ckpt, _ = small_checkpoint(tmp_path / "run" / "best.pt")
    (tmp_path / "in").mkdir()
    write_dicom(tmp_path / "in" / "one.dcm", _gray16(), bits_stored=12, region=(2, 2, 29, 37))
    _cine(tmp_path / "in", "loop.dcm", frames=2)
    summary = predict(ckpt, [tmp_path / "in"], tmp_path / "p.csv", masks_dir=tmp_path / "m", device="cpu")
    assert summary["images"] == 3
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"].rsplit("/", 1)[-1], r["frame"]) for r in rows] == [("loop.dcm", "0"), ("loop.dcm", "1"),
                                                                          ("one.dcm", "")]
    from PIL import Image
    with Image.open(tmp_path / "m" / "one.png") as mask:
        assert mask.size == (36, 28)  # the region's size
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["loop_frame0.png", "loop_frame1.png", "one.png"]


def test_without_pydicom_the_error_names_the_extra(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", _gray16())
    (tmp_path / "hyperechoic").mkdir()
    write_dicom(tmp_path / "hyperechoic" / "b.dcm", _gray16())
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(MissingDicomSupportError, match=r"a\.dcm.*pip install 'walnet\[dicom\]'"):
        PlaqueDataset([Record(path, 0)], size=8)[0]
    with pytest.raises(ValueError, match=r"b\.dcm.*pip install 'walnet\[dicom\]'"):
        scan_image_folder(tmp_path)
