"""Where records come from: a CSV file or an ImageFolder tree (docs/design.md §7).

CSV: ``path,label[,patient_id][,mask_path][,split]`` plus optional ROI box columns, either
``y1,x1,y2,x2`` or ``xmin,ymin,xmax,ymax`` (the same box in the other order: 0-based pixels,
both corners inclusive), to crop as the paper's preprocessing does, and ``frame`` (0-based) to
pick one frame of a multi-frame DICOM file or a video. Paths are relative to the CSV's folder unless
absolute. That folder (for ImageFolder, the tree's root) is each record's data root, which a
run's split.csv keys images relative to (walnet.data.splits). ``walnet predict --csv`` reads the
same format through the same reader, without needing a label (``labels=False``). ImageFolder:
``root/<class>/<image>``.

DICOM files (``.dcm``, ``.dicom``) have their headers read here, videos (``.mp4``, ``.avi``,
``.mov``) their frames counted (walnet.data.datasets.expand_frames): a multi-frame file or a video
without a frame becomes one record per frame, and a DICOM header's PatientID fills a missing
patient id.

Every bad input is a ValueError (FileNotFoundError for a missing file) whose one-line message
names the file, the line and the column: the CSV is decoded as UTF-8 (a byte-order mark is
accepted), labels must match the known classes (walnet.data.classes), box values must be whole
numbers. One image (or DICOM or video frame) is one sample, keyed by its resolved path (and frame):
rows that list the same file (in
any spelling) and agree are merged with a :class:`DuplicateRowWarning`; rows that disagree are
an error, since keeping both would put one image in two classes or two splits. Prediction reads
rows of one image with different ROI boxes (two plaques) as separate samples (``per_box``).
"""
from __future__ import annotations

import csv
import io
import math
import re
import warnings
from pathlib import Path

from walnet.data.classes import known_classes, match_label, normalize_label
from walnet.data.datasets import IMAGE_EXTENSIONS, Record, expand_frames, show_path
from walnet.data.images import has_frames
from walnet.data.splits import SPLITS
from walnet.files import check_input_file

BOX_COLUMNS = ("y1", "x1", "y2", "x2")
#: The other spelling of the ROI box: ``xmin = x1``, ``ymin = y1``, ``xmax = x2``, ``ymax = y2``.
XY_BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
#: Each box convention's columns, and the order that turns its values into (y1, x1, y2, x2).
_BOX_CONVENTIONS = {BOX_COLUMNS: (0, 1, 2, 3), XY_BOX_COLUMNS: (1, 0, 3, 2)}
REQUIRED_COLUMNS = ("path", "label")


class DuplicateRowWarning(UserWarning):
    """Rows (or folder entries) that list one image file more than once, with the same contents."""


#: The fields of two records of one image that must agree for them to be merged.
_COMPARED = ("label", "patient", "mask_path", "split", "box")


def _shown(record: Record, field: str, names: tuple[str, ...]) -> str:
    return show_path(names[record.label] if field == "label" else getattr(record, field))


def _dedupe(entries, where: str, names: tuple[str, ...], per_box: bool = False) -> list[Record]:
    """`entries` (record, place) in order, one record per resolved image path (and frame; and ROI
    box with `per_box`).

    Entries of one file that agree are merged (the first kept, one warning for all); entries
    that disagree raise ValueError naming the file and both places.
    """
    first: dict[tuple, tuple[Record, str]] = {}
    dropped = []
    for record, place in entries:
        key = (record.path, record.frame, record.box) if per_box else (record.path, record.frame)
        seen = first.get(key)
        if seen is None:
            first[key] = (record, place)
            continue
        other, other_place = seen
        if other != record:
            diff = ", ".join(f"{f} {_shown(other, f, names)} vs {_shown(record, f, names)}"
                             for f in _COMPARED if getattr(other, f) != getattr(record, f))
            image = show_path(record.path) + ("" if record.frame is None else f" frame {record.frame}")
            raise ValueError(f"{where}: {other_place} and {place} both list the image {image} "
                             f"but disagree ({diff}); keep one entry per image")
        dropped.append((other_place, place, record.path))
    if dropped:
        a, b, path = dropped[0]
        warnings.warn(DuplicateRowWarning(
            f"{where}: {len(dropped)} entr{'y lists' if len(dropped) == 1 else 'ies list'} an image listed "
            f"before, with the same contents, and {'is' if len(dropped) == 1 else 'are'} ignored "
            f"(e.g. {a} and {b}: {show_path(path)})"), stacklevel=3)
    return [record for record, _ in first.values()]


# --- ImageFolder ------------------------------------------------------------------------------


def scan_image_folder(root: str | Path, classes=None) -> tuple[list[Record], tuple[str, ...]]:
    """Records of an ImageFolder tree ``root/<class>/<image>`` and the class names.

    Folder names are matched to the known classes (`classes`, the paper's when None) ignoring
    case and spaces; a folder of another name, or a class folder without images, is an error.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data directory {show_path(root)} does not exist")
    if not root.is_dir():
        raise ValueError(f"data directory {show_path(root)} is a file, not a folder of class folders")
    names = known_classes(classes)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{show_path(root)} has no class folders (expected {show_path(root)}/<class>/<image>)")
    entries = []
    for folder in folders:
        try:
            label = match_label(folder.name, names)
        except ValueError as exc:
            raise ValueError(f"class folder {show_path(folder)}: {exc}") from None
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())
        if not images:
            raise ValueError(f"class folder {show_path(folder)} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        records = [Record(p, label, origin=show_path(p), root=root) for p in images]
        entries += [(r, r.where()) for record in records for r in expand_frames(record)]
    return _dedupe(entries, show_path(root), names), names


# --- CSV --------------------------------------------------------------------------------------


def _read_text(csv_path: Path) -> str:
    """The CSV's text, decoded as UTF-8 (a leading byte-order mark dropped)."""
    check_input_file(csv_path, f"CSV file {show_path(csv_path)}", "a CSV file")
    data = csv_path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(f"{show_path(csv_path)}:{line}: byte {data[exc.start]:#04x} (offset {exc.start}, column "
                         f"{column}) is not UTF-8; save the CSV as UTF-8") from None


def _rows(text: str, where: str):
    """(line number, fields) of each non-blank row; the line is where the row starts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    end = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValueError(f"{where}:{end + 1}: not valid CSV ({exc})") from None
        start, end = end + 1, reader.line_num
        if fields:
            yield start, fields


def _header(fields: list[str], where: str, required=REQUIRED_COLUMNS) -> tuple[list[str], tuple[str, ...] | None]:
    """The column names (stripped, lower case) and the ROI box columns the CSV uses (None:
    no box columns)."""
    names = [f.strip().lower() for f in fields]
    seen = set()
    for name in names:
        if name and name in seen:
            raise ValueError(f"{where}:1: the header names column {name!r} twice")
        seen.add(name)
    missing = [c for c in required if c not in seen]
    if missing:
        raise ValueError(f"{where} lacks the column(s) {missing} (header: {','.join(fields)!r}; expected "
                         f"{','.join(required)}[,patient_id][,mask_path][,split][,y1,x1,y2,x2][,frame])")
    used = [columns for columns in _BOX_CONVENTIONS if any(c in seen for c in columns)]
    if len(used) > 1:
        # one box per row: two conventions would leave it unclear which box is meant
        raise ValueError(f"{where}:1: the header has ROI box columns of both conventions "
                         f"({[c for c in BOX_COLUMNS if c in seen]} and {[c for c in XY_BOX_COLUMNS if c in seen]}); "
                         "give either y1,x1,y2,x2 or xmin,ymin,xmax,ymax")
    if not used:
        return names, None
    columns = used[0]
    box = [c for c in columns if c in seen]
    if len(box) < len(columns):
        raise ValueError(f"{where}:1: the header has the ROI box column(s) {box} but not "
                         f"{[c for c in columns if c not in seen]}; give all of {','.join(columns)} or none")
    return names, columns


def _number(text: str) -> float:
    """The number a CSV cell spells, as float() reads it but without its digit-group
    underscores: ``1_0`` is a typo, not 10 (a ValueError like float()'s)."""
    if "_" in text:
        raise ValueError(f"could not convert string to float: {text!r}")
    return float(text)


def _box(row: dict, at: str, columns: tuple[str, ...] | None) -> tuple[int, int, int, int] | None:
    """The row's ROI box as (y1, x1, y2, x2), read from `columns` (either convention), or None
    when its box cells are all empty."""
    if columns is None:
        return None
    values = [row.get(c, "").strip() for c in columns]
    if not any(values):
        return None
    box = []
    for name, text in zip(columns, values):
        if not text:
            raise ValueError(f"{at}: column {name!r} is empty but other ROI box columns are set; give all of "
                             f"{','.join(columns)} or none")
        if re.fullmatch(r"[+-]?[0-9]{1,30}", text):
            box.append(int(text))  # exact: a float would round 123456789012345678901 (and the checks below)
            continue
        try:
            value = _number(text)
        except ValueError:
            raise ValueError(f"{at}: column {name!r}: {text!r} is not a number (ROI box values are pixels)") from None
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{at}: column {name!r}: {text!r} is not a whole number of pixels")
        box.append(int(value))
    y1, x1, y2, x2 = (box[i] for i in _BOX_CONVENTIONS[columns])
    if min(box) < 0 or y1 > y2 or x1 > x2:
        if columns == BOX_COLUMNS:
            rule = "0 <= y1 <= y2 and 0 <= x1 <= x2"
        else:
            rule = "0 <= xmin <= xmax and 0 <= ymin <= ymax"
        # the values as written: 1e20 is no number of pixels to show as 100000000000000000000
        raise ValueError(f"{at}: ROI box ({', '.join(columns)}) = ({', '.join(values)}) is not a box: it needs {rule}")
    return y1, x1, y2, x2


def _file(base: Path, text: str, at: str, column: str) -> Path:
    """The resolved file named by a path cell (relative to the CSV's folder)."""
    try:
        return (base / text).resolve()
    except (ValueError, OSError) as exc:  # a NUL character, a name the system cannot take
        raise ValueError(f"{at}: column {column!r}: {text!r} is not a usable path ({exc})") from None


def _frame(row: dict, at: str, path: Path) -> int | None:
    text = row.get("frame", "").strip()
    if not text:
        return None
    if not has_frames(path):
        raise ValueError(f"{at}: column 'frame': {text!r} is set but {show_path(path)} is no DICOM file or video "
                         "(frames are picked from multi-frame .dcm / .dicom files and .mp4 / .avi / .mov videos "
                         "only); leave it empty")
    try:
        value = _number(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise ValueError(f"{at}: column 'frame': {text!r} is not a frame index (a whole number from 0)")
    return int(value)


def _record(row: dict, at: str, base: Path, names: tuple[str, ...], box_columns, labels: bool = True) -> Record:
    for column in REQUIRED_COLUMNS if labels else ("path",):
        if not row[column].strip():
            raise ValueError(f"{at}: column {column!r} is empty")
    label = 0
    if labels:
        try:
            label = match_label(row["label"], names)
        except ValueError as exc:
            raise ValueError(f"{at}: column 'label': {exc}") from None
    path = _file(base, row["path"].strip(), at, "path")
    mask = row.get("mask_path", "").strip()
    mask_path = _file(base, mask, at, "mask_path") if mask else None
    if mask_path is not None:
        try:
            found = mask_path.is_file()
        except OSError as exc:  # e.g. a name longer than the file system takes
            raise ValueError(f"{at}: column 'mask_path': {mask!r} is not a usable path ({exc.strerror})") from None
        if not found:
            if mask_path.is_dir():
                raise ValueError(f"{at}: column 'mask_path': {show_path(mask_path)} is a folder, not a mask file")
            raise FileNotFoundError(f"{at}: mask file {show_path(mask_path)} does not exist")
    split = normalize_label(row.get("split", "")) or None
    if split is not None and split not in SPLITS:
        raise ValueError(f"{at}: column 'split': {row['split']!r} is not one of {', '.join(SPLITS)} (or empty)")
    patient = row.get("patient_id", "").strip() or None
    return Record(path, label, patient, mask_path, split, _box(row, at, box_columns), _frame(row, at, path),
                  origin=at, root=base)


def read_csv(csv_path: str | Path, classes=None, *, labels: bool = True,
             per_box: bool = False) -> tuple[list[Record], tuple[str, ...]]:
    """Records of a CSV file ``path,label[,patient_id][,mask_path][,split][,y1,x1,y2,x2][,frame]`` and the
    class names (`classes`, the paper's when None; labels are matched to them ignoring case and
    spaces). The ROI box may be given as ``xmin,ymin,xmax,ymax`` instead (both corners
    inclusive); the records hold it as (y1, x1, y2, x2). A CSV with both conventions' columns
    is an error naming them.

    ``labels=False`` (prediction): the ``label`` column is optional and not read (every record
    gets label 0); everything else is read and checked as with labels. ``per_box=True``
    (prediction): rows of one image with different ROI boxes are separate records (one image
    may show two plaques); in training they are an error like any other disagreement.

    Raises FileNotFoundError (a missing CSV or mask file) or ValueError (anything else the CSV
    gets wrong), each naming the file and line; warns (:class:`DuplicateRowWarning`) when rows
    that agree list one image twice.
    """
    csv_path = Path(csv_path)
    where = show_path(csv_path)
    names = known_classes(classes)
    rows = _rows(_read_text(csv_path), where)
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{where} is empty; expected a header line path,label[,patient_id][,mask_path][,split]")
    header, box_columns = _header(first[1], where, REQUIRED_COLUMNS if labels else ("path",))
    base = csv_path.parent
    entries = []
    for line, fields in rows:
        at = f"{where}:{line}"
        if len(fields) > len(header) and any(f.strip() for f in fields[len(header):]):
            raise ValueError(f"{at}: {len(fields)} fields but the header has {len(header)} columns "
                             "(a path with a comma needs quotes)")
        row = dict(zip(header, fields + [""] * (len(header) - len(fields))))
        record = _record(row, at, base, names, box_columns, labels)
        frames = expand_frames(record, at)
        entries += [(r, f"line {line}" if len(frames) == 1 else f"line {line} frame {r.frame}") for r in frames]
    return _dedupe(entries, where, names, per_box), names


def csv_labels(csv_path, records: list[Record], classes) -> list[int | None]:
    """The class index of each of `records` (read from `csv_path` with ``labels=False, per_box=True``,
    as prediction reads it) that the CSV's ``label`` column gives, matched to `classes` as
    :func:`read_csv` matches them; all None where `csv_path` is None or its labels are not
    complete (no column, an empty cell, a class not in `classes`)."""
    if csv_path is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the CSV's warnings were shown when it was first read
                labelled, _ = read_csv(csv_path, classes, per_box=True)
        except ValueError:
            labelled = []
        if [(r.path, r.box, r.frame) for r in labelled] == [(r.path, r.box, r.frame) for r in records]:
            return [r.label for r in labelled]
    return [None] * len(records)


def check_data_path(data_dir=None, csv_path=None) -> None:
    """The data option given is a file (``--csv``) or a folder (``--data-dir``) that exists."""
    if csv_path is not None:
        if Path(csv_path).is_dir():
            raise ValueError(f"--csv {csv_path} is a folder, not a CSV file (an ImageFolder tree is read with "
                             "--data-dir)")
        if not Path(csv_path).is_file():
            raise FileNotFoundError(f"--csv {csv_path}: no such file")
    if data_dir is not None:
        if not Path(data_dir).exists():
            raise FileNotFoundError(f"--data-dir {data_dir}: no such folder")
        if not Path(data_dir).is_dir():
            raise ValueError(f"--data-dir {data_dir} is a file, not a folder (a CSV file is read with --csv)")


def load_records(data_dir=None, csv_path=None, classes=None) -> tuple[list[Record], tuple[str, ...]]:
    """Records and class names from an ImageFolder tree (``--data-dir``) or a CSV file (``--csv``),
    exactly one of them (:func:`scan_image_folder`, :func:`read_csv`)."""
    if (data_dir is None) == (csv_path is None):
        raise ValueError("give exactly one of --data-dir and --csv")
    check_data_path(data_dir, csv_path)
    return scan_image_folder(data_dir, classes) if data_dir is not None else read_csv(csv_path, classes)
