"""DICOM files (``.dcm``, ``.dicom``) as images, through the optional extra
``pip install 'walnet[dicom]'`` (pydicom, and pylibjpeg's decoders for JPEG / JPEG-LS /
JPEG 2000 transfer syntaxes). pydicom is imported inside the functions that need it, so walnet
imports without it; a DICOM file met without it is a :class:`MissingDicomSupportError` naming
the extra.

Files are recognised by their extension only (an extension-less file is never probed).
Pixels follow the conventions of walnet.data.images: stored values are scaled by the full range
of their stored bits (``BitsStored``; signed values shifted to start at 0) onto the 8-bit scale
[0, 255]; no rescale slope or VOI window is applied, as for a 16-bit PNG. Photometric
interpretations: MONOCHROME2, MONOCHROME1 (inverted, so bright is always high), RGB, YBR_FULL and
YBR_FULL_422 (pydicom's decoder returns them as RGB) and PALETTE COLOR (its lookup table applied).

A multi-frame file (a cine loop) is one sample per frame; a frame is chosen by its 0-based index.
When the header holds a Sequence of Ultrasound Regions (0018,6011), the image is cropped to its
largest region (by area; the first of equal ones): scanners put the B-mode image there, beside
smaller Doppler, ECG or caption regions, and everything outside it (annotations, scales, patient
data burnt into the pixels) is no tissue. ``dicom_region=False`` (``--no-dicom-region``) keeps
the whole frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from walnet.files import special_kind

#: The file extensions read as DICOM (compared ignoring case).
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: What to run to read DICOM files.
DICOM_INSTALL = "pip install 'walnet[dicom]'"


class MissingDicomSupportError(ImportError, ValueError):
    """A DICOM file met without pydicom installed (a ValueError too, so the command line reports
    it as one line)."""


def is_dicom(path) -> bool:
    """Whether `path` names a DICOM file (by its extension, :data:`DICOM_EXTENSIONS`)."""
    return Path(path).suffix.lower() in DICOM_EXTENSIONS


def _pydicom(path):
    try:
        import pydicom  # optional: the `dicom` extra
        import pydicom.pixels
    except ImportError:
        raise MissingDicomSupportError(f"cannot read {_show(path)}: DICOM files need pydicom, which is not "
                                       f"installed; {DICOM_INSTALL}") from None
    return pydicom


def _show(path) -> str:
    text = str(path)
    return text if text.isprintable() else repr(text)


@dataclass(frozen=True)
class DicomInfo:
    """What the records need from a DICOM header: its frame count and PatientID (None if empty)."""

    frames: int
    patient: str | None


def read_info(path) -> DicomInfo:
    """The frame count and PatientID of the DICOM file `path`, read from its header only.

    Raises :class:`MissingDicomSupportError` without pydicom, and ValueError (naming the file)
    for a file pydicom cannot parse; FileNotFoundError for a missing one.
    """
    header = _header(Path(path))
    frames = int(header.get("NumberOfFrames", 1) or 1)
    patient = str(header.get("PatientID", "") or "").strip() or None
    return DicomInfo(max(frames, 1), patient)


def _header(path: Path):
    pydicom = _pydicom(path)
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"image file {_show(path)} is a folder, not an image")
        if special_kind(path) is not None:
            raise ValueError(f"image file {_show(path)} is {special_kind(path)}, not a regular file")
        raise FileNotFoundError(f"image file {_show(path)} does not exist")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise ValueError(f"cannot read image {_show(path)}: not a DICOM file pydicom can parse ({exc})") from exc


def region_of(header, path) -> tuple[int, int, int, int] | None:
    """The largest ultrasound region of `header` as (y1, x1, y2, x2), inclusive pixels, or None
    when the header has none (regions without all four corners are ignored)."""
    best, area = None, -1
    corners = ("RegionLocationMinY0", "RegionLocationMinX0", "RegionLocationMaxY1", "RegionLocationMaxX1")
    for item in header.get("SequenceOfUltrasoundRegions", None) or ():
        if not all(item.get(c) is not None for c in corners):
            continue
        y1, x1, y2, x2 = (int(item.get(c)) for c in corners)
        size = (y2 - y1 + 1) * (x2 - x1 + 1)
        if size > area:  # strictly larger: the first of equal regions wins
            best, area = (y1, x1, y2, x2), size
    return best


def read_dicom(path: Path, mode: str, frame: int | None = None, region: bool = True) -> Image.Image:
    """One frame of the DICOM file `path` as :func:`walnet.data.images.open_image` returns images:
    an 8-bit image in `mode` ("RGB" or "L"), or an ``F`` image on the 8-bit scale [0, 255] for
    grayscale of more than 8 stored bits. Colour of more than 8 bits is rounded to 8 (Pillow has
    no floating-point colour mode).

    `frame` (0-based) is required for a multi-frame file; a single-frame file takes None or 0.
    With `region`, the frame is cropped to the header's largest ultrasound region (see the module
    docstring). Errors name the file: ValueError for anything that cannot be decoded, a frame out
    of range or a region outside the image; :class:`MissingDicomSupportError` without pydicom.
    """
    path = Path(path)
    header = _header(path)
    pydicom = _pydicom(path)
    frames = max(int(header.get("NumberOfFrames", 1) or 1), 1)
    if frame is None and frames > 1:
        raise ValueError(f"cannot read image {_show(path)}: it has {frames} frames; give the frame to read")
    index = 0 if frame is None else int(frame)
    if not 0 <= index < frames:
        raise ValueError(f"cannot read image {_show(path)}: frame {index} is out of range (the file has "
                         f"{frames} frame{'s' if frames != 1 else ''}, numbered from 0)")
    try:
        # by path and index: only this frame is read and decoded; YBR_FULL(_422) comes back as RGB
        values = pydicom.pixels.pixel_array(path, index=index if frames > 1 else None)
    except Exception as exc:  # pydicom's decoders raise many kinds (missing plugin, bad lengths, ...)
        raise ValueError(f"cannot read image {_show(path)}: its pixel data cannot be decoded "
                         f"({type(exc).__name__}: {exc})") from exc
    img = _to_image(values, header, path, pydicom)
    box = region_of(header, path) if region else None
    if box is not None:
        y1, x1, y2, x2 = box
        if not (0 <= y1 <= y2 < img.height and 0 <= x1 <= x2 < img.width):
            raise ValueError(f"cannot read image {_show(path)}: its ultrasound region (y1, x1, y2, x2) = {box} "
                             f"does not lie inside its {img.height}x{img.width} pixels; pass --no-dicom-region to "
                             "read the whole image")
        img = img.crop((x1, y1, x2 + 1, y2 + 1))
    if img.mode == "F":
        return img
    return img if img.mode == mode else img.convert(mode)


def _to_image(values: np.ndarray, header, path: Path, pydicom) -> Image.Image:
    """The decoded pixels as an 8-bit L / RGB image, or an F image on the 8-bit scale."""
    photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        values = pydicom.pixels.apply_color_lut(values, header)
        if values.dtype != np.uint8:  # a 16-bit lookup table: 0..65535
            values = np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(values), mode="RGB")
    bits = int(header.get("BitsStored", 0) or values.dtype.itemsize * 8)
    top = float(2**bits - 1)
    data = values.astype(np.float64)
    if int(header.get("PixelRepresentation", 0) or 0) == 1:  # signed: shift the range to start at 0
        data = data + 2 ** (bits - 1)
    data = np.clip(data, 0.0, top)
    if samples == 1:
        if photometric == "MONOCHROME1":  # 0 is white: inverted, so tissue is bright as in MONOCHROME2
            data = top - data
        elif photometric not in ("MONOCHROME2", ""):
            raise ValueError(f"cannot read image {_show(path)}: photometric interpretation {photometric!r} is not "
                             "supported for single-sample images (MONOCHROME1, MONOCHROME2, PALETTE COLOR)")
        if bits == 8:
            return Image.fromarray(data.astype(np.uint8), mode="L")
        return Image.fromarray((data * (255.0 / top)).astype(np.float32), mode="F")
    if samples != 3 or values.ndim != 3:
        raise ValueError(f"cannot read image {_show(path)}: {samples} samples per pixel ({photometric}); walnet "
                         "reads grayscale and 3-sample colour images")
    if bits != 8:
        data = np.rint(data * (255.0 / top))
    return Image.fromarray(data.astype(np.uint8), mode="RGB")
