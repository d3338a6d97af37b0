"""Plaque images as a torch Dataset: the :class:`Record` of one image and :class:`PlaqueDataset`,
which reads, crops and resizes them (docs/design.md §7). Records come from a CSV file or an
ImageFolder tree (walnet.data.sources).

Images are read as RGB (grayscale becomes three channels; 16-bit grayscale is scaled by its bit
depth, walnet.data.images), cropped to the record's ROI box, resized to ``size`` x ``size`` and
scaled to [0, 1]. A box that does not lie inside its image, or a mask whose size differs from its
image's, is an error when the item is read: cropping or resizing it would silently train on
padding or on a mask of another shape.

DICOM files (walnet.data.dicom) and videos (walnet.data.video) are images too. A multi-frame
DICOM file or a video (a cine loop) is one record per frame (:func:`expand_frames`; a video
always, even of one frame), all in one patient group (a DICOM header's PatientID, else the file),
so a loop never spans two splits; a DICOM file's PatientID fills a record's missing patient id.
A DICOM image is cropped to its ultrasound region before the record's ROI box, which is
therefore in the region's pixels (``dicom_region=False`` reads the whole frame).

A dataset given an :class:`~walnet.data.augment.Augmentation` (the training split of ``walnet
train --augment``) augments each item as a function of (seed, epoch, index); the epoch comes
with the key (``dataset[index, epoch]``, as :class:`~walnet.data.augment.EpochSampler` yields
them) or from :meth:`PlaqueDataset.set_epoch`. Without one, items are exactly as read.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from walnet.constants import IGNORE_INDEX, PLAQUE_CLASSES as PAPER_CLASSES, RESIZE_METHODS, TRAIN_RESIZE
from walnet.data.dicom import DICOM_EXTENSIONS, is_dicom, read_info
from walnet.data.images import has_frames, open_image, show_path, to_array
from walnet.data.video import VIDEO_EXTENSIONS, frame_count

if TYPE_CHECKING:  # torchvision is imported only by runs that augment
    from walnet.data.augment import Augmentation

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_EXTENSIONS, *VIDEO_EXTENSIONS)

#: Pillow's filter of each resize method (:data:`walnet.constants.RESIZE_METHODS`).
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "nearest": Image.NEAREST}
assert tuple(RESAMPLE) == RESIZE_METHODS


def crop_box(img: Image.Image, box: tuple[int, int, int, int] | None) -> Image.Image:
    """`img` cropped to the ROI `box` (y1, x1, y2, x2, inclusive), or `img` itself without a box:
    the one crop of training, evaluation and prediction (the box is checked by
    :class:`PlaqueDataset` to lie inside the image)."""
    if box is None:
        return img
    y1, x1, y2, x2 = box
    return img.crop((x1, y1, x2 + 1, y2 + 1))


def model_input(img: Image.Image, box, size: int, resize: str = TRAIN_RESIZE) -> torch.Tensor:
    """What the model sees of an image as read (:func:`walnet.data.images.open_image`, an ``F``
    image on the 8-bit scale included): cropped to the ROI `box`, resized to `size` x `size` by
    the method `resize` and scaled to [0, 1], float32 [3, size, size]. The one preprocessing of
    training, evaluation and prediction (:class:`PlaqueDataset`, :class:`walnet.Predictor`)."""
    img = crop_box(img, box).resize((size, size), RESAMPLE[resize])
    return torch.from_numpy(to_array(img, 3) / 255.0).permute(2, 0, 1).contiguous()


def relative_path(path: Path, root: Path | None) -> str:
    """`path` (resolved) relative to the folder `root` (resolved), with posix separators, where
    it lies under it; else `path` itself, absolute."""
    if root is not None and path.is_relative_to(root) and path != root:
        return path.relative_to(root).as_posix()
    return str(path)


@dataclass(frozen=True)
class Record:
    """One image: its file, class index, optional patient id, mask file, split, ROI box
    (y1, x1, y2, x2, pixels, inclusive) and, for a frame of a multi-frame DICOM file or a video,
    the frame (0-based; None for every other image).

    ``path`` and ``mask_path`` are stored resolved (absolute, symbolic links and ``..`` followed),
    so one file has one key however it was spelled; ``root`` (resolved too) is the data root the
    record was read from (the CSV's folder, the ImageFolder tree), which :attr:`relative_key`
    keys it by; ``origin`` ("file.csv:7") says where the record was read, for error messages.
    Neither takes part in comparisons.
    """

    path: Path
    label: int
    patient: str | None = None
    mask_path: Path | None = None
    split: str | None = None
    box: tuple[int, int, int, int] | None = None
    frame: int | None = None
    origin: str | None = field(default=None, compare=False)
    root: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        for name in ("path", "mask_path", "root"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)).resolve())

    @property
    def key(self) -> str:
        """The sample's key in a split file: its image path, with ``#frame=<k>`` for a frame."""
        return str(self.path) if self.frame is None else f"{self.path}#frame={self.frame}"

    @property
    def relative_key(self) -> str:
        """The sample's key relative to its data root (posix separators, ``#frame=<k>`` for a
        frame), which holds wherever the root is copied; :attr:`key` for an image outside the
        root or a record without one."""
        path = relative_path(self.path, self.root)
        return path if self.frame is None else f"{path}#frame={self.frame}"

    def where(self) -> str:
        """The record's origin, or its image file when it has none: the prefix of its errors."""
        return self.origin or show_path(self.path)


def expand_frames(record: Record, where: str | None = None) -> list[Record]:
    """`record` with what its file says of its frames: one record per frame of a multi-frame
    DICOM file or a video when the record names no frame (a video's frames always carry their
    index, even a video of one frame); the file itself as patient when the record has none, so
    a loop's frames stay in one split, unless a DICOM header's PatientID fills it (it also fills
    a single-frame DICOM file's). A record of another file comes back as is.

    A frame out of range is a ValueError starting with `where` (default: the record's origin). A
    file whose header or frames cannot be read leaves the record as it is: the dataset reports
    the file when it reads it (or skips it with ``skip_bad``). Without pydicom or PyAV: their
    MissingDicomSupportError / MissingVideoSupportError.
    """
    if not has_frames(record.path):
        return [record]
    video = not is_dicom(record.path)
    try:
        if video:
            frames, patient = frame_count(record.path), None
        else:
            info = read_info(record.path)
            frames, patient = info.frames, info.patient
    except (FileNotFoundError, ValueError) as exc:
        if isinstance(exc, ImportError):  # the extra is missing: no such file can be read at all
            raise
        return [record]
    if record.frame is not None and record.frame >= frames:
        raise ValueError(f"{where or record.where()}: column 'frame': {record.frame} is out of range; "
                         f"{show_path(record.path)} has {frames} frame(s), numbered from 0")
    patient = record.patient or patient
    if frames == 1 and not video:
        return [replace(record, patient=patient, frame=None)]
    patient = patient or str(record.path)
    if record.frame is not None:
        return [replace(record, patient=patient)]
    origin = record.where()
    return [replace(record, patient=patient, frame=k, origin=f"{origin} frame {k}") for k in range(frames)]


class PlaqueDataset(torch.utils.data.Dataset):
    """Images (and masks, where given) of a list of :class:`Record`.

    Each item is a dict: ``image`` float [3,size,size] in [0,1], ``label`` int, ``mask`` uint8
    [size,size] in {0,1} (all IGNORE_INDEX = 255 = unknown when the record has no mask), ``index``.
    A missing or unreadable image (also one over Pillow's decompression-bomb limit), an ROI box
    not inside its image, or a mask of another size than its image raises an error naming the
    file; with ``skip_bad=True`` such records are dropped at construction and counted in
    ``skipped``. ``dicom_region=False`` reads DICOM frames whole instead of cropped to their
    ultrasound region. ``resize``: how images are resized (:data:`walnet.constants.RESIZE_METHODS`;
    masks always nearest).

    ``augment``: an :class:`~walnet.data.augment.Augmentation` applied to every item (None, the
    default: none). An item's key is its index, or ``(index, epoch)``; a plain index takes the
    epoch of the last :meth:`set_epoch` (0 before one). In loader workers, which hold copies of
    the dataset, only the keys carry the epoch reliably:
    :class:`~walnet.data.augment.EpochSampler` yields them.
    """

    def __init__(self, records: list[Record], size: int = 224, skip_bad: bool = False, dicom_region: bool = True,
                 augment: Augmentation | None = None, resize: str = TRAIN_RESIZE):
        if resize not in RESAMPLE:
            raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
        self.size, self.resize = int(size), resize
        self.dicom_region = bool(dicom_region)
        self.augment = augment
        self.epoch = 0
        self.skipped = 0
        if skip_bad:
            kept = []
            for r in records:
                try:
                    self._read(r)
                    kept.append(r)
                except (FileNotFoundError, ValueError):
                    self.skipped += 1
            records = kept
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of the image of item `index` as read, before its ROI box and resizing
        (a DICOM frame after its ultrasound region crop)."""
        return self._read(self.records[index])[0].size

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the augmentation of items read by a plain index (in this process)."""
        self.epoch = int(epoch)

    def _read(self, r: Record) -> tuple[Image.Image, Image.Image | None]:
        """The record's decoded image and mask (None without one), their geometry checked."""
        img = open_image(r.path, "RGB", frame=r.frame, region=self.dicom_region)
        width, height = img.size
        if r.box is not None:
            y1, x1, y2, x2 = r.box
            if not (0 <= y1 <= y2 < height and 0 <= x1 <= x2 < width):
                raise ValueError(f"{r.where()}: ROI box (y1, x1, y2, x2) = {r.box} does not lie inside the image "
                                 f"{show_path(r.path)} of {height}x{width} pixels (height x width; the box is "
                                 f"inclusive, so y2 <= {height - 1} and x2 <= {width - 1})")
        if r.mask_path is None:
            return img, None
        mask = open_image(r.mask_path, "L", frame=r.frame, region=self.dicom_region)
        if mask.size != img.size:
            raise ValueError(f"{r.where()}: mask {show_path(r.mask_path)} is {mask.height}x{mask.width} pixels but "
                             f"its image {show_path(r.path)} is {height}x{width} (height x width); a mask must "
                             "have its image's size")
        return img, mask

    def _prepare(self, img: Image.Image, box, resample) -> Image.Image:
        return crop_box(img, box).resize((self.size, self.size), resample)

    def region(self, index: int) -> np.ndarray:
        """What item `index` shows the model before the resize: the record's image cropped to its
        ROI box (the whole image without one), at the file's resolution, float32 [h, w, 3] in
        [0, 1]. For drawing predictions over the pixels they were made from."""
        r = self.records[index]
        img, _ = self._read(r)
        return to_array(crop_box(img, r.box), 3) / 255.0

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        r = self.records[index]
        img, m = self._read(r)
        image = model_input(img, r.box, self.size, self.resize)
        if m is not None:
            m = self._prepare(m, r.box, Image.NEAREST)
            mask = torch.from_numpy((np.asarray(m) > 127).astype(np.uint8))
        else:
            mask = torch.full((self.size, self.size), IGNORE_INDEX, dtype=torch.uint8)
        if self.augment is not None:
            image, mask = self.augment(image, mask, epoch, index)
        return {"image": image, "label": r.label, "mask": mask, "index": index}
