"""Datasets of plaque images: an ImageFolder tree or a CSV file (docs/design.md §7).

ImageFolder: ``root/<class>/*.png|jpg|...``. CSV: ``path,label[,patient_id][,mask_path][,split]``
plus optional ROI box columns ``y1,x1,y2,x2`` (pixels, inclusive) to crop as the paper's
preprocessing does. Paths are relative to the CSV's folder unless absolute. The class order is
pinned by a class map (default: the paper's hyperechoic, hypoechoic, mixed-echoic when those are
the names found). Images are read as RGB (grayscale becomes three channels), cropped, resized
to ``size`` x ``size`` and scaled to [0, 1].
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from walnet.constants import IGNORE_INDEX, PLAQUE_CLASSES as PAPER_CLASSES

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Record:
    """One image: its file, class index, optional patient id, mask file, split and ROI box."""

    path: Path
    label: int
    patient: str | None = None
    mask_path: Path | None = None
    split: str | None = None
    box: tuple[int, int, int, int] | None = None


def class_map(names, classes: tuple[str, ...] | list[str] | None = None) -> tuple[str, ...]:
    """The pinned class order: `classes` if given (every name must be in it), else the paper's
    order when the names are exactly the paper's classes, else sorted names."""
    found = sorted(set(names))
    if classes is not None:
        unknown = [n for n in found if n not in classes]
        if unknown:
            raise ValueError(f"labels {unknown} are not in the class map {tuple(classes)}")
        return tuple(classes)
    if set(found) == set(PAPER_CLASSES):
        return PAPER_CLASSES
    return tuple(found)


def scan_image_folder(root: str | Path, classes=None) -> tuple[list[Record], tuple[str, ...]]:
    """Records of an ImageFolder tree ``root/<class>/<image>``; an empty class folder is an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    names = class_map([f.name for f in folders], classes)
    records = []
    for folder in folders:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise ValueError(f"class folder {folder} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        records += [Record(p, names.index(folder.name)) for p in images]
    return records, names


def read_csv(csv_path: str | Path, classes=None) -> tuple[list[Record], tuple[str, ...]]:
    """Records of a CSV file ``path,label[,patient_id][,mask_path][,split][,y1,x1,y2,x2]``."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        rows = list(reader)
    missing = {"path", "label"} - columns
    if missing:
        raise ValueError(f"{csv_path} lacks the column(s) {sorted(missing)}")
    box_cols = ("y1", "x1", "y2", "x2")
    has_box = set(box_cols) <= columns
    names = class_map([r["label"] for r in rows], classes)
    base = csv_path.parent
    records = []
    for line, r in enumerate(rows, start=2):
        mask = r.get("mask_path") or None
        mask_path = base / mask if mask else None
        if mask_path is not None and not mask_path.is_file():
            raise FileNotFoundError(f"{csv_path}:{line}: mask file {mask_path} does not exist")
        box = None
        if has_box and all(r.get(c) not in (None, "") for c in box_cols):
            box = tuple(int(float(r[c])) for c in box_cols)
            if box[0] > box[2] or box[1] > box[3] or min(box) < 0:
                raise ValueError(f"{csv_path}:{line}: ROI box {box} is not (y1, x1, y2, x2) with y1<=y2, x1<=x2")
        records.append(
            Record(base / r["path"], names.index(r["label"]), r.get("patient_id") or None, mask_path,
                   r.get("split") or None, box)
        )
    return records, names


def _open(path: Path, mode: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


class PlaqueDataset(torch.utils.data.Dataset):
    """Images (and masks, where given) of a list of :class:`Record`.

    Each item is a dict: ``image`` float [3,size,size] in [0,1], ``label`` int, ``mask`` uint8
    [size,size] in {0,1} (all IGNORE_INDEX = 255 = unknown when the record has no mask), ``index``.
    A missing or unreadable image raises an error naming the file; with ``skip_bad=True`` such
    records are dropped at construction and counted in ``skipped``.
    """

    def __init__(self, records: list[Record], size: int = 224, skip_bad: bool = False):
        self.size = int(size)
        self.skipped = 0
        if skip_bad:
            kept = []
            for r in records:
                try:
                    _open(r.path, "RGB")
                    kept.append(r)
                except (FileNotFoundError, ValueError):
                    self.skipped += 1
            records = kept
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def _prepare(self, img: Image.Image, box, resample) -> Image.Image:
        if box is not None:
            y1, x1, y2, x2 = box
            img = img.crop((x1, y1, x2 + 1, y2 + 1))
        return img.resize((self.size, self.size), resample)

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        img = self._prepare(_open(r.path, "RGB"), r.box, Image.BILINEAR)
        image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        if r.mask_path is not None:
            m = self._prepare(_open(r.mask_path, "L"), r.box, Image.NEAREST)
            mask = torch.from_numpy((np.asarray(m) > 127).astype(np.uint8))
        else:
            mask = torch.full((self.size, self.size), IGNORE_INDEX, dtype=torch.uint8)
        return {"image": image, "label": r.label, "mask": mask, "index": index}
