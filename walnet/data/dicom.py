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
Float and Double Float Pixel Data (grayscale) have their finite minimum..maximum scaled to [0, 255].
Headers are read and checked by walnet.data.dicom_header before any pixel is decoded (frame counts
against the pixel data, Pillow's decompression-bomb limit, deflated files inflated only as far as
needed); pydicom's warnings about a file come as one line naming it.

A multi-frame file (a cine loop) is one sample per frame; a frame is chosen by its 0-based index.
When the header holds a Sequence of Ultrasound Regions (0018,6011), the image is cropped to its
largest valid region (by area; the first of equal ones; empty, inverted and wholly outside
regions are ignored): scanners put the B-mode image there, beside
smaller Doppler, ECG or caption regions, and everything outside it (annotations, scales, patient
data burnt into the pixels) is no tissue. ``dicom_region=False`` (``--no-dicom-region``) keeps
the whole frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from walnet.data.dicom_header import Header, checked_geometry, inflated_frames, quiet, read_header
from walnet.files import check_input_file

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
    """The frame count and PatientID of the DICOM file `path`, read from its header only, its
    geometry checked against its pixel data (walnet.data.dicom_header.checked_geometry).

    Raises :class:`MissingDicomSupportError` without pydicom, and ValueError (naming the file)
    for a file pydicom cannot parse or whose header does not fit its pixel data;
    FileNotFoundError for a missing one.
    """
    head = _header(Path(path))
    with quiet(path):
        geometry = checked_geometry(head, path)
        patient = str(head.dataset.get("PatientID", "") or "").strip() or None
    return DicomInfo(geometry.frames, patient)


def _header(path: Path) -> Header:
    pydicom = _pydicom(path)
    check_input_file(path, f"image file {_show(path)}", "an image")
    with quiet(path):
        return read_header(path, pydicom)


def region_of(header, path, size: tuple[int, int] | None = None) -> tuple[int, int, int, int] | None:
    """The largest ultrasound region of `header` as (y1, x1, y2, x2), inclusive pixels, or None
    when the header has none. Regions without all four corners, empty or inverted ones (a
    minimum past its maximum) and, given the image's `size` (rows, columns), those wholly outside
    it are ignored: they describe no pixels, and their corners' arithmetic would rank them."""
    best, area = None, -1
    corners = ("RegionLocationMinY0", "RegionLocationMinX0", "RegionLocationMaxY1", "RegionLocationMaxX1")
    for item in header.get("SequenceOfUltrasoundRegions", None) or ():
        values = [item.get(c) for c in corners]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            continue
        y1, x1, y2, x2 = (int(v) for v in values)
        if y1 > y2 or x1 > x2 or (size is not None and (y1 >= size[0] or x1 >= size[1] or y2 < 0 or x2 < 0)):
            continue
        extent = (y2 - y1 + 1) * (x2 - x1 + 1)
        if extent > area:  # strictly larger: the first of equal regions wins
            best, area = (y1, x1, y2, x2), extent
    return best


def read_dicom(path: Path, mode: str, frame: int | None = None, region: bool = True) -> Image.Image:
    """One frame of the DICOM file `path` as :func:`walnet.data.images.open_image` returns images:
    an 8-bit image in `mode` ("RGB" or "L"), or an ``F`` image on the 8-bit scale [0, 255] for
    grayscale of more than 8 stored bits or of floating-point pixels. Colour of more than 8 bits
    is rounded to 8 (Pillow has no floating-point colour mode).

    `frame` (0-based) is required for a multi-frame file; a single-frame file takes None or 0.
    With `region`, the frame is cropped to the header's largest ultrasound region (see the module
    docstring). The header is checked before any pixel is decoded
    (walnet.data.dicom_header.checked_geometry). Errors name the file: ValueError for anything
    that cannot be decoded, a frame out of range or a region outside the image;
    :class:`MissingDicomSupportError` without pydicom.
    """
    path = Path(path)
    head = _header(path)
    with quiet(path):  # pydicom warns of a bad value when it is first used
        return _read_frame(path, head, mode, frame, region)


def _read_frame(path: Path, head: Header, mode: str, frame: int | None, region: bool) -> Image.Image:
    pydicom = _pydicom(path)
    geometry = checked_geometry(head, path)
    frames = geometry.frames
    if frame is None and frames > 1:
        raise ValueError(f"cannot read image {_show(path)}: it has {frames} frames; give the frame to read")
    index = 0 if frame is None else int(frame)
    if not 0 <= index < frames:
        raise ValueError(f"cannot read image {_show(path)}: frame {index} is out of range (the file has "
                         f"{frames} frame{'s' if frames != 1 else ''}, numbered from 0)")
    try:
        values = _decode(path, head, geometry, index, pydicom)
    except ValueError as exc:
        if str(exc).startswith(f"cannot read image {_show(path)}"):
            raise
        raise _undecodable(path, exc) from exc
    except Exception as exc:  # pydicom's decoders raise many kinds (missing plugin, bad lengths, ...)
        raise _undecodable(path, exc) from exc
    img = _to_image(values, head, path, pydicom)
    box = region_of(head.dataset, path, (geometry.rows, geometry.columns)) if region else None
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


def _undecodable(path: Path, exc: Exception) -> ValueError:
    text = str(exc).strip().splitlines()
    return ValueError(f"cannot read image {_show(path)}: its pixel data cannot be decoded "
                      f"({type(exc).__name__}: {text[0] if text else ''})")


def _decode(path: Path, head: Header, geometry, index: int, pydicom) -> np.ndarray:
    """Frame `index` of the file, decoded. By path and index, only this frame is read and
    decoded; a deflated file is inflated up to the end of this frame only. YBR_FULL(_422) comes
    back as RGB."""
    if not head.deflated:
        return pydicom.pixels.pixel_array(path, index=index if geometry.frames > 1 else None)
    ds = inflated_frames(path, head, geometry, index + 1)
    return pydicom.pixels.get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=index)[0]


def _to_image(values: np.ndarray, head: Header, path: Path, pydicom) -> Image.Image:
    """The decoded pixels as an 8-bit L / RGB image, or an F image on the 8-bit scale."""
    header = head.dataset
    photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    if head.pixel.keyword != "PixelData":
        return _float_image(values, samples, photometric, path)
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


def _float_image(values: np.ndarray, samples: int, photometric: str, path: Path) -> Image.Image:
    """Float or Double Float Pixel Data as an F image: floats have no fixed range, so their finite
    minimum..maximum is scaled to [0, 255] (NaN and -inf as the minimum, +inf as the maximum)."""
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2", ""):
        raise ValueError(f"cannot read image {_show(path)}: floating-point pixel data of {samples} sample(s) "
                         f"({photometric or 'no photometric interpretation'}); walnet reads it as MONOCHROME1 or "
                         "MONOCHROME2")
    data = values.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        raise ValueError(f"cannot read image {_show(path)}: its floating-point pixel data holds no finite value")
    lo, hi = float(data[finite].min()), float(data[finite].max())
    data = np.clip(np.nan_to_num(data, nan=lo, posinf=hi, neginf=lo), lo, hi)
    scaled = (data - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(data)
    if photometric == "MONOCHROME1":  # 0 is white: inverted, so bright is high
        scaled = 255.0 - scaled
    return Image.fromarray(scaled.astype(np.float32), mode="F")
