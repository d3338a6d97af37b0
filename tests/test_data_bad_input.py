"""Bad data files reach the user as one ValueError (FileNotFoundError for a missing file) naming
the file, the line and the column: CSV encodings and cells, ROI boxes and masks that do not fit
their image, images Pillow refuses, and a fuzz of the CSV reader."""
from __future__ import annotations

import csv
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from walnet.data import PAPER_CLASSES, PlaqueDataset, Record, read_csv, scan_image_folder


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


# --- the CSV file itself --------------------------------------------------------------------


def test_a_byte_order_mark_is_accepted(tmp_path):
    _png(tmp_path / "a.png", _gray())
    path = _write(tmp_path / "d.csv", ("path", "label"), [("a.png", "hypoechoic")], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    records, _ = read_csv(path)
    assert [r.label for r in records] == [1]


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    _write(tmp_path / "d.csv", ("path", "label"), [("a.png", "hypoechoic"), ("é.png", "hypoechoic")],
           encoding="latin-1")
    with pytest.raises(ValueError, match=r"d\.csv:3: byte 0xe9 \(offset 30, column 1\) is not UTF-8"):
        read_csv(tmp_path / "d.csv")


def test_a_folder_or_missing_file_as_the_csv(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} is a folder, not a CSV file"):
        read_csv(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"CSV file .*nothing\.csv does not exist"):
        read_csv(tmp_path / "nothing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        read_csv(tmp_path / "empty.csv")


def test_header_problems(tmp_path):
    (tmp_path / "d.csv").write_text(" Path , LABEL\na.png,hypoechoic\n")  # spaces and case in names are fine
    assert len(read_csv(tmp_path / "d.csv")[0]) == 1
    (tmp_path / "d.csv").write_text("path,label,y1,x1\na.png,hypoechoic,1,2\n")
    with pytest.raises(ValueError, match=r"d\.csv:1: .*box column\(s\) \['y1', 'x1'\] but not \['y2', 'x2'\]"):
        read_csv(tmp_path / "d.csv")
    (tmp_path / "d.csv").write_text("path,label,label\na.png,hypoechoic,x\n")
    with pytest.raises(ValueError, match="column 'label' twice"):
        read_csv(tmp_path / "d.csv")


@pytest.mark.parametrize(
    "row, message",
    [
        (("a.png", "hypoechoic", "abc", 0, 5, 5), r"d\.csv:3: column 'y1': 'abc' is not a number"),
        # float() and int() read digit-group underscores: "1_0" would be 10
        (("a.png", "hypoechoic", 0, 0, "1_0", 5), r"d\.csv:3: column 'y2': '1_0' is not a number"),
        (("a.png", "hypoechoic", 0, "1.5", 5, 5), r"d\.csv:3: column 'x1': '1.5' is not a whole number"),
        (("a.png", "hypoechoic", 0, 0, "inf", 5), r"d\.csv:3: column 'y2': 'inf' is not a whole number"),
        (("a.png", "hypoechoic", 0, 0, 5, ""), r"d\.csv:3: column 'x2' is empty but other ROI box columns"),
        (("a.png", "hypoechoic", 6, 0, 5, 5), r"d\.csv:3: ROI box .* = \(6, 0, 5, 5\) is not a box"),
        (("", "hypoechoic", 0, 0, 5, 5), r"d\.csv:3: column 'path' is empty"),
        (("a.png", " ", 0, 0, 5, 5), r"d\.csv:3: column 'label' is empty"),
        (("a.png", "hypoechoic", 0, 0, 5, 5, "x"), r"d\.csv:3: 7 fields but the header has 6 columns"),
    ],
)
def test_bad_cells_name_the_line_and_column(tmp_path, row, message):
    _write(tmp_path / "d.csv", BOXED, [("a.png", "hypoechoic", "0", "0.0", "5", "5"), row])
    with pytest.raises(ValueError, match=message):
        read_csv(tmp_path / "d.csv")


def test_whole_numbers_written_as_floats_and_rows_without_a_box(tmp_path):
    rows = [("a.png", "hypoechoic", "0.0", "1", "5.0", "6"), ("b.png", "hyperechoic", "", "", "", "")]
    _write(tmp_path / "d.csv", BOXED, rows)
    records, _ = read_csv(tmp_path / "d.csv")
    assert [r.box for r in records] == [(0, 1, 5, 6), None]


def test_xmin_ymin_boxes_read_as_y1_x1_boxes(tmp_path):
    _write(tmp_path / "yx.csv", BOXED, [("a.png", "hypoechoic", 2, 3, 7, 9), ("b.png", "hyperechoic", "", "", "", "")])
    _write(tmp_path / "xy.csv", ("path", "label", "xmin", "ymin", "xmax", "ymax"),
           [("a.png", "hypoechoic", 3, 2, 9, 7), ("b.png", "hyperechoic", "", "", "", "")])
    assert read_csv(tmp_path / "xy.csv") == read_csv(tmp_path / "yx.csv")
    assert read_csv(tmp_path / "xy.csv")[0][0].box == (2, 3, 7, 9)


@pytest.mark.parametrize("header, message", [
    ("path,label,y1,x1,y2,x2,xmin,ymin,xmax,ymax", r"d\.csv:1: the header has ROI box columns of both conventions "
                                                   r"\(\['y1', 'x1', 'y2', 'x2'\] and \['xmin', 'ymin', 'xmax', 'ymax'\]\)"),
    ("path,label,xmin,ymin,xmax", r"d\.csv:1: .*box column\(s\) \['xmin', 'ymin', 'xmax'\] but not \['ymax'\]"),
])
def test_box_conventions_are_not_mixed(tmp_path, header, message):
    (tmp_path / "d.csv").write_text(header + "\n")
    with pytest.raises(ValueError, match=message):
        read_csv(tmp_path / "d.csv")


def test_xmin_boxes_name_their_columns_in_errors(tmp_path):
    _write(tmp_path / "d.csv", ("path", "label", "xmin", "ymin", "xmax", "ymax"), [("a.png", "hypoechoic", 5, 0, 4, 5)])
    with pytest.raises(ValueError, match=r"d\.csv:2: ROI box \(xmin, ymin, xmax, ymax\) = \(5, 0, 4, 5\) is not a "
                                         r"box: it needs 0 <= xmin <= xmax"):
        read_csv(tmp_path / "d.csv")


def test_labels_are_optional_for_prediction(tmp_path):
    (tmp_path / "d.csv").write_text("path,xmin,ymin,xmax,ymax\na.png,1,2,3,4\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['label'\]"):
        read_csv(tmp_path / "d.csv")
    records, _ = read_csv(tmp_path / "d.csv", labels=False)
    assert [(r.label, r.box) for r in records] == [(0, (2, 1, 4, 3))]


def test_bad_split_and_quoted_multiline_rows(tmp_path):
    (tmp_path / "d.csv").write_text('path,label,split\n"a\nb.png",hypoechoic,Train\nc.png,hypoechoic,holdout\n')
    with pytest.raises(ValueError, match=r"d\.csv:4: column 'split': 'holdout' is not one of train, val, test"):
        read_csv(tmp_path / "d.csv")
    (tmp_path / "d.csv").write_text('path,label,split\n"a\nb.png",hypoechoic,Train \n')
    assert [r.split for r in read_csv(tmp_path / "d.csv")[0]] == ["train"]


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
    with pytest.raises(ValueError, match="is a file, not a folder"):
        scan_image_folder(_png(tmp_path / "x.png", _gray()))


# --- fuzz ---------------------------------------------------------------------------------------

_JUNK = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_PATHS = st.sampled_from(["a.png", "./a.png", "sub/../a.png", "m.png", "missing.png", "", " ", "..", "/", "a\0.png",
                          "a.png\n", 'q"a.png', "é.png", "x" * 300])
_LABELS = st.sampled_from([*PAPER_CLASSES, "Hyperechoic ", " HYPO  ECHOIC", "hyperechoc", "plaque", "", " "])
_NUMBERS = st.one_of(st.integers(-5, 50).map(str), st.integers(-(2**70), 2**70).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["", " 3 ", "1e3", "0x10"]))
_BY_COLUMN = {
    "path": _PATHS, "mask_path": st.one_of(st.just(""), _PATHS), "label": _LABELS,
    "patient_id": st.sampled_from(["", "P1", "P2", " P1 "]),
    "split": st.sampled_from(["", "train", "val", "test", "Test ", "holdout"]),
    **{c: _NUMBERS for c in ("y1", "x1", "y2", "x2")},
}


@st.composite
def _csv_table(draw):
    """A header (mostly well-formed, sometimes missing or repeating a column) and rows whose cells
    suit their column (paths, labels, numbers), sometimes replaced by junk or cut short/long."""
    optional = draw(st.lists(st.sampled_from(["patient_id", "mask_path", "split", "box", "y1", "extra"]), unique=True))
    header = ["path", "label"] + [c for o in optional for c in (("y1", "x1", "y2", "x2") if o == "box" else (o,))]
    header = draw(st.permutations(list(dict.fromkeys(header))))
    if draw(st.integers(0, 9)) == 0:
        header = draw(st.lists(st.sampled_from([*header, "PATH ", " label", ""]), max_size=8))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        row = [draw(_BY_COLUMN.get(c.strip().lower(), _JUNK)) for c in header]
        if draw(st.integers(0, 4)) == 0:
            row[draw(st.integers(0, max(len(row) - 1, 0)))::] = draw(st.lists(_JUNK, max_size=3))
        rows.append(row)
    return header, rows


@pytest.mark.filterwarnings("ignore::walnet.data.DuplicateRowWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=_csv_table(), raw=st.one_of(st.none(), st.none(), st.none(), st.binary(max_size=40)), bom=st.booleans())
def test_fuzz_read_csv_gives_records_or_one_clear_error(tmp_path, table, raw, bom):
    """Whatever the rows, cells and bytes, read_csv returns records or raises ValueError /
    FileNotFoundError with a one-line message naming the CSV file; never another exception."""
    if not (tmp_path / "a.png").exists():
        _png(tmp_path / "a.png", _gray(8, 8))
        _png(tmp_path / "m.png", _gray(8, 8))
    path = tmp_path / "f.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        _write(path, *table, encoding="utf-8-sig" if bom else "utf-8")
    try:
        records, classes = read_csv(path)
    except (ValueError, FileNotFoundError) as exc:
        message = str(exc)
        assert str(path) in message, message
        assert "\n" not in message and "\r" not in message, message
        return
    assert classes == PAPER_CLASSES
    assert len({r.path for r in records}) == len(records)
    for r in records:
        assert 0 <= r.label < len(classes) and r.path.is_absolute()
        assert r.box is None or (len(r.box) == 4 and all(isinstance(v, int) and v >= 0 for v in r.box))
