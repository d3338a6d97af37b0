"""Reading image and mask files for the datasets: one error type (ValueError naming the file)
for every file that cannot be decoded, and no silent loss of range.

8-bit files go through Pillow's own mode conversion (RGB for images, L for masks).
Grayscale files of more than 8 bits (Pillow modes ``I;16*``, and ``I`` holding 16-bit values)
are scaled by their bit depth into a float (``F``) image on the 8-bit scale [0, 255], because
Pillow's conversion to RGB or L clips every value above 255 (a 16-bit scan would turn white).
DICOM files (``.dcm``, ``.dicom``) are read by walnet.data.dicom under the same conventions,
videos (``.mp4``, ``.avi``, ``.mov``) frame by frame by walnet.data.video.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from walnet.data.dicom import DICOM_EXTENSIONS, is_dicom, read_dicom
from walnet.data.video import VIDEO_EXTENSIONS, is_video, read_video
from walnet.files import refuse_special

#: Pillow modes of 16-bit grayscale files (PNG, TIFF), scaled by 1/65535.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
SIXTEEN_BIT_MAX = 65535

#: What Pillow raises for a file it cannot decode: unknown format (UnidentifiedImageError is an
#: OSError), truncated data (OSError), bad header fields (ValueError, SyntaxError, EOFError,
#: IndexError, depending on the format plugin).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError)
#: The files that hold frames (multi-frame DICOM files, videos), which a record's frame picks from.
FRAME_EXTENSIONS = (*DICOM_EXTENSIONS, *VIDEO_EXTENSIONS)


def has_frames(path) -> bool:
    """Whether `path` names a file of frames (:data:`FRAME_EXTENSIONS`: DICOM or video)."""
    return is_dicom(path) or is_video(path)


def show_path(path) -> str:
    """`path` for an error message: as is, or quoted when it holds characters (a newline, a
    control character) that would break the message's single line."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _check_file(path: Path) -> None:
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:  # e.g. a name longer than the file system takes
        raise ValueError(f"cannot read image {show_path(path)}: {exc.strerror}") from None
    if is_dir:
        raise ValueError(f"image file {show_path(path)} is a folder, not an image")
    if not is_file:
        refuse_special(path, f"image file {show_path(path)}")
        raise FileNotFoundError(f"image file {show_path(path)} does not exist")


def _bomb_message(path: Path, exc: Exception) -> str:
    return (f"cannot read image {show_path(path)}: it has more pixels than Pillow's decompression-bomb limit "
            f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}); crop or downscale it ({exc})")


def _scale_deep(img: Image.Image, path: Path) -> Image.Image:
    """A grayscale image of more than 8 bits as an ``F`` image on the 8-bit scale [0, 255]."""
    values = np.asarray(img)
    if img.mode == "I":  # a 32-bit container; Pillow gives 16-bit files (some TIFFs) this mode
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > SIXTEEN_BIT_MAX:
            raise ValueError(f"cannot read image {show_path(path)}: its 32-bit values span [{lo}, {hi}], outside the "
                             f"16-bit range [0, {SIXTEEN_BIT_MAX}] walnet scales to [0, 1]")
    scaled = values.astype(np.float64) * (255.0 / SIXTEEN_BIT_MAX)
    return Image.fromarray(scaled.astype(np.float32), mode="F")


def open_image(path: Path, mode: str, *, frame: int | None = None, region: bool = True) -> Image.Image:
    """The decoded image at `path`: in `mode` ("RGB" or "L") for 8-bit files, or an ``F`` image on
    the 8-bit scale for 16-bit grayscale files.

    A DICOM file is read by :func:`walnet.data.dicom.read_dicom`: `frame` picks a frame of a
    multi-frame file, `region` crops to its ultrasound region; a video by
    :func:`walnet.data.video.read_video`, `frame` picking its frame; both are ignored for other files.

    Raises FileNotFoundError for a missing file and ValueError (naming the file) for a folder, a
    file Pillow cannot decode, or one over Pillow's decompression-bomb limit.
    """
    _check_file(path)
    if is_dicom(path):
        return read_dicom(path, mode, frame, region)
    if is_video(path):
        return read_video(path, mode, frame)
    try:
        with Image.open(path) as img:
            deep = _is_deep(img)
            img = img.copy() if deep else img.convert(mode)  # both decode the pixels
    except Image.DecompressionBombError as exc:
        raise ValueError(_bomb_message(path, exc)) from exc
    except _DECODE_ERRORS as exc:
        raise ValueError(f"cannot read image {show_path(path)}: {exc}") from exc
    return _scale_deep(img, path) if deep else img


def _is_deep(img: Image.Image) -> bool:
    return img.mode in SIXTEEN_BIT_MODES or img.mode == "I"


def as_read(img: Image.Image, mode: str, where) -> Image.Image:
    """A decoded Pillow image converted as :func:`open_image` converts a file's pixels (to `mode`,
    or a 16-bit grayscale one to an ``F`` image on the 8-bit scale); `where` names it in errors."""
    return _scale_deep(img, where) if _is_deep(img) else img.convert(mode)


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """float32 [H, W, channels] on the 8-bit scale [0, 255] of an image from :func:`open_image`
    (an ``F`` image is replicated into every channel, as Pillow does for grey -> RGB)."""
    values = np.asarray(img, dtype=np.float32)
    if values.ndim == 2:
        values = np.repeat(values[:, :, None], channels, axis=2)
    return values
