"""The inference API: :class:`Predictor` runs a trained model (a checkpoint or a ``walnet export``
folder) on images given as numpy arrays, Pillow images, torch tensors or file paths, one or a
list, and returns a :class:`Prediction` per image: the class probabilities (with the model's
calibrated temperature), the predicted class and, for a WAL-Net with its PGM, the predicted
plaque mask, the fused attention map and the RCM's box, each at the input's size.

Every input is read and preprocessed by training's own code: a file by
:func:`walnet.data.images.open_image` (a DICOM frame cropped to its ultrasound region as the model
was trained), a Pillow image or an 8-bit array converted as a decoded file is
(:func:`walnet.data.images.as_read`: grey becomes RGB, alpha is dropped, 16-bit grey is scaled by
its bit depth), then cropped to its ROI box, resized by the model's recorded method and scaled to
[0, 1] (:func:`walnet.data.datasets.model_input`). A floating-point array in [0, 1] is read as
training reads a 16-bit scan, without rounding to 8 bits. ``walnet predict``
(:mod:`walnet.engine.predict`) runs its model through :meth:`Predictor.batches`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from walnet import ops
from walnet.data.datasets import model_input
from walnet.data.images import as_read, open_image
from walnet.engine.checks import pick_device
from walnet.engine.loading import TrainedModel, load_model
from walnet.engine.runtime import loader_workers
from walnet.engine.step import check_finite, forward, probabilities

__all__ = ["Prediction", "Predictor", "place"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's result. ``probabilities``: float32 [K] (softmax of the logits divided by the
    model's temperature), in the order of ``classes``; ``predicted``: the most probable class.
    For a model with a segmentation head: ``mask``, uint8 [H, W] (1 = plaque) at the input's size
    (0 outside its ROI box); ``attention``, float32 [H, W] in [0, 1], the fused attention
    A1·A2·A3 as the PGM fuses it, resized bilinearly to the input's size (0 outside the box);
    ``box``, the box the RCM crops as (y1, x1, y2, x2) input pixels, inclusive, or None where the
    RCM crops nothing. All three are None for a model without a PGM (a baseline)."""

    probabilities: np.ndarray
    predicted: str
    classes: tuple[str, ...]
    mask: np.ndarray | None = None
    attention: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Outputs:
    """The model's outputs for a batch: ``index`` of each item, ``probabilities`` [B, K], and
    with a segmentation head ``seg`` (uint8 [B, h, w], the argmax), ``attention`` (float32 [B, h,
    w], fused) and ``boxes`` (int [B, 4] on that grid, None without a cropping RCM)."""

    index: np.ndarray
    probabilities: np.ndarray
    seg: np.ndarray | None = None
    attention: np.ndarray | None = None
    boxes: np.ndarray | None = None


def place(grid: np.ndarray, box, width: int, height: int, resample=Image.NEAREST) -> np.ndarray:
    """`grid` (a map on the model's grid) at the input's size `width` x `height`: resized by
    `resample` over the ROI `box` (y1, x1, y2, x2, inclusive; None: the whole image) and 0
    elsewhere, in `grid`'s dtype (uint8 or float32)."""
    img = Image.fromarray(grid)
    if box is None:
        return np.asarray(img.resize((width, height), resample))
    y1, x1, y2, x2 = box
    full = Image.new(img.mode, (width, height), 0)
    full.paste(img.resize((x2 - x1 + 1, y2 - y1 + 1), resample), (x1, y1))
    return np.asarray(full)


def pixel_box(grid_box, grid: tuple[int, int], box, width: int, height: int) -> tuple[int, int, int, int]:
    """The RCM's `grid_box` (cells of a `grid` of h x w over the ROI `box`, or the whole image)
    as the input pixels those cells cover: cell y covers rows [y * H / h, (y + 1) * H / h)."""
    top, left, bottom, right = box if box is not None else (0, 0, height - 1, width - 1)
    sy, sx = (bottom - top + 1) / grid[0], (right - left + 1) / grid[1]
    y1, x1, y2, x2 = (int(v) for v in grid_box)
    return (top + int(np.floor(y1 * sy)), left + int(np.floor(x1 * sx)),
            min(bottom, top + int(np.ceil((y2 + 1) * sy)) - 1), min(right, left + int(np.ceil((x2 + 1) * sx)) - 1))


class Predictor:
    """A trained model ready for inference. ``Predictor.from_pretrained(source)`` loads a
    checkpoint or an exported folder; calling it on one image returns a :class:`Prediction`, on a
    list a list of them (see :meth:`__call__`).

    Args:
        trained: the loaded model (:func:`walnet.engine.loading.load_model`).
        device: where the model runs (a torch device; "auto": CUDA if available).
        amp: run under bfloat16 autocast (probabilities differ in the second or third decimal).
        batch_size: images per forward pass.
        dicom_region: crop DICOM frames to their ultrasound region (also off where the model was
            trained without it).
    """

    def __init__(self, trained: TrainedModel, device="cpu", amp: bool = False, batch_size: int = 16,
                 dicom_region: bool = True):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.trained = trained
        self.device = device if isinstance(device, torch.device) else pick_device(str(device))
        self.model = trained.model.to(self.device).eval()
        self.amp_dtype = torch.bfloat16 if amp else None
        self.batch_size = batch_size
        self.dicom_region = bool(dicom_region) and trained.dicom_region
        self.classes, self.size, self.resize = trained.classes, trained.size, trained.resize
        self.temperature = trained.temperature
        self.has_maps = trained.spec.has_pgm
        origin = "model" if trained.train_config is None else "checkpoint"
        self._source = f"{origin} {trained.source}"

    @classmethod
    def from_pretrained(cls, source: str | Path, device="cpu", amp: bool = False, batch_size: int = 16,
                        dicom_region: bool = True) -> Predictor:
        """The predictor of a training checkpoint (``best.pt``) or a ``walnet export`` folder
        (:func:`~walnet.engine.loading.load_model`; errors name the file); the other arguments
        as in :class:`Predictor`."""
        return cls(load_model(source, pick_device(str(device))), device, amp, batch_size, dicom_region)

    def __call__(self, images, box=None, frame=None, batch_size: int | None = None):
        """The :class:`Prediction` of `images`: one image, or a list of them (a list of
        predictions, in order). An image is a numpy array (H x W, or H x W x C with C 1, 3 or 4;
        uint8, uint16 grey, or floating point in [0, 1]), a Pillow image, a torch tensor (H x W or
        C x H x W, values as for arrays), or the path of an image file (DICOM included).

        `box`: the ROI (y1, x1, y2, x2, pixels, inclusive) to crop to as training crops its CSV
        boxes; for a list, a list with one box (or None) per image. `frame`: the frame of a
        multi-frame DICOM file (a list for a list of images). Wrong shapes, dtypes, values
        (NaN, outside [0, 1]), boxes or an empty list are a ValueError naming the argument."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            raise ValueError("images: an empty list; give one image or a list of images")
        boxes = _per_item("box", box, len(items), single)
        frames = _per_item("frame", frame, len(items), single)
        step = self.batch_size if batch_size is None else batch_size
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {step!r}")
        results = []
        for start in range(0, len(items), step):
            chunk = range(start, min(start + step, len(items)))
            names = ["images" if single else f"images[{i}]" for i in chunk]
            read = [self._read(items[i], names[k], frames[i]) for k, i in enumerate(chunk)]
            for k, i in enumerate(chunk):
                _check_box(boxes[i], _size(read[k]), "box" if single else f"box[{i}]", names[k])
            batch = torch.stack([_model_input(img, boxes[i], self.size, self.resize) for img, i in zip(read, chunk)])
            out = self.forward(batch, np.arange(len(read)))
            results += [self._result(out, k, boxes[i], *_size(read[k])) for k, i in enumerate(chunk)]
        return results[0] if single else results

    def _read(self, item, where: str, frame):
        """`item` as training reads an image: a Pillow image (RGB, or ``F`` on the 8-bit scale),
        or for a floating-point colour array its three channels as ``F`` images."""
        if isinstance(item, (str, Path)):
            try:
                return open_image(Path(item), "RGB", frame=frame, region=self.dicom_region)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        if frame is not None:
            raise ValueError(f"frame: given for {where}, which is no file (only multi-frame DICOM files have frames)")
        if isinstance(item, Image.Image):
            return as_read(item, "RGB", where)
        if isinstance(item, torch.Tensor):
            item = _tensor_array(item, where)
        if not isinstance(item, np.ndarray):
            raise TypeError(f"{where}: a {type(item).__name__}; give a numpy array, a PIL image, a torch tensor or "
                            "the path of an image file")
        return _array_image(item, where)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, index, maps: bool = True) -> Outputs:
        """The model's :class:`Outputs` for preprocessed `images` [B, 3, size, size] (items
        `index`); the segmentation, attention and boxes only with `maps` (and a PGM). Outputs
        that are not finite are an error naming the model's file."""
        out = forward(self.model, images.to(self.device), self.amp_dtype)
        check_finite(out.logits, self.model, self._source)
        probs = probabilities(out.logits, self.temperature).cpu().numpy()
        if not (maps and self.has_maps and out.seg_logits is not None):
            return Outputs(np.asarray(index), probs)
        seg_logits = out.seg_logits.float()
        seg = seg_logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        fused = ops.fuse_attention(*(a.float() for a in out.attention)).cpu().numpy()
        boxes = self.model.rcm_boxes(seg_logits) if hasattr(self.model, "rcm_boxes") else None
        return Outputs(np.asarray(index), probs, seg, fused, None if boxes is None else boxes.cpu().numpy())

    def batches(self, dataset, batch_size: int | None = None, workers: int | None = None, maps: bool = True):
        """:meth:`forward` over a :class:`walnet.data.PlaqueDataset` (or any dataset of dicts
        with ``image`` and ``index``), batch by batch, read by a DataLoader with `workers`
        processes (None: 0 on CPU, more on CUDA)."""
        loader = torch.utils.data.DataLoader(dataset, batch_size or self.batch_size,
                                             num_workers=loader_workers(workers, self.device),
                                             pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield self.forward(batch["image"], batch["index"].numpy(), maps)

    def _result(self, out: Outputs, k: int, box, width: int, height: int) -> Prediction:
        p = out.probabilities[k]
        predicted = self.classes[int(p.argmax())]
        if out.seg is None:
            return Prediction(p, predicted, self.classes)
        mask = place(out.seg[k], box, width, height)
        attention = place(out.attention[k].astype(np.float32), box, width, height, Image.BILINEAR)
        rcm = None if out.boxes is None else pixel_box(out.boxes[k], out.seg.shape[1:], box, width, height)
        return Prediction(p, predicted, self.classes, mask, attention, rcm)


def _per_item(name: str, value, count: int, single: bool) -> list:
    """`value` (a box or frame) as one entry per image: as given for one image; for a list of
    images, None or a list of `count` entries."""
    if single or value is None:
        return [value] * count
    if not isinstance(value, (list, tuple, range)) or len(value) != count:
        raise ValueError(f"{name}: for a list of {count} images, give a list of {count} (one per image, or None), "
                         f"got {value!r}"[:300])
    return list(value)


def _size(read) -> tuple[int, int]:
    """(width, height) of an image as :meth:`Predictor._read` returns it."""
    return read[0].size if isinstance(read, tuple) else read.size


def _model_input(read, box, size: int, resize: str) -> torch.Tensor:
    if isinstance(read, tuple):  # a float colour image: each channel as training reads a deep grey scan
        return torch.cat([model_input(channel, box, size, resize)[:1] for channel in read])
    return model_input(read, box, size, resize)


def _check_box(box, size: tuple[int, int], name: str, where: str) -> None:
    if box is None:
        return
    ok = isinstance(box, (list, tuple)) and len(box) == 4 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box)
    if not ok:
        raise ValueError(f"{name}: an ROI box is 4 integers (y1, x1, y2, x2), got {box!r}"[:300])
    y1, x1, y2, x2 = (int(v) for v in box)
    width, height = size
    if not (0 <= y1 <= y2 < height and 0 <= x1 <= x2 < width):
        raise ValueError(f"{name}: ROI box (y1, x1, y2, x2) = {(y1, x1, y2, x2)} does not lie inside {where} of "
                         f"{height}x{width} pixels (height x width; the box is inclusive)")


def _tensor_array(tensor: torch.Tensor, where: str) -> np.ndarray:
    """A tensor (H x W or C x H x W) as a numpy array (H x W or H x W x C)."""
    if tensor.ndim not in (2, 3):
        raise ValueError(f"{where}: a tensor of shape {tuple(tensor.shape)}; give H x W or C x H x W (C = 1, 3 "
                         "or 4), one image per list entry")
    values = tensor.detach().cpu()
    if values.dtype == torch.bfloat16 or values.dtype == torch.float16:
        values = values.float()
    values = values.numpy()
    return values if values.ndim == 2 else np.moveaxis(values, 0, -1)


def _array_image(values: np.ndarray, where: str):
    """A numpy image as training reads a file of its kind (see :meth:`Predictor._read`)."""
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[2] not in (3, 4)) or 0 in values.shape:
        raise ValueError(f"{where}: an array of shape {values.shape}; give H x W or H x W x C (C = 1, 3 or 4; C x H x "
                         "W for a tensor), one image per list entry")
    if values.dtype == np.uint8 or (values.dtype == np.uint16 and values.ndim == 2):
        return as_read(Image.fromarray(np.ascontiguousarray(values)), "RGB", where)
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"{where}: dtype {values.dtype}; give uint8, uint16 (grey) or floating point in [0, 1]")
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: holds NaN or infinite values")
    if values.min() < 0 or values.max() > 1:
        raise ValueError(f"{where}: floating-point values span [{values.min():.4g}, {values.max():.4g}]; give them "
                         "in [0, 1] (or uint8 values 0..255)")
    scaled = (values.astype(np.float64) * 255.0).astype(np.float32)  # the 8-bit scale of a deep scan as read
    if scaled.ndim == 2:
        return Image.fromarray(scaled)  # float32: an F image
    return tuple(Image.fromarray(np.ascontiguousarray(scaled[:, :, c])) for c in range(3))
