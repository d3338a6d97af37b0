"""DICOM headers read within bounds (walnet.data.dicom reads the pixels).

A header is read up to its pixel data element (Pixel Data, Float Pixel Data or Double Float
Pixel Data), whose place and length are noted without reading its value. For the Deflated
Explicit VR Little Endian transfer syntax the data set is inflated step by step until that
element is reached (at most :data:`HEADER_LIMIT` bytes), never as a whole: a small deflated file
can inflate to gigabytes of pixels.

The header's geometry is then checked against what the file holds before anything is decoded
(:func:`checked_geometry`): NumberOfFrames, Rows, Columns, SamplesPerPixel and BitsAllocated must
be whole numbers in range; Rows x Columns must stay within Pillow's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``: a warning above it, an error above twice it, as Pillow does);
uncompressed pixel data must hold every frame the header announces, and encapsulated pixel data
at least one fragment per frame. Every failure is a one-line ValueError naming the file.

pydicom's own warnings about a file (invalid values, guessed VRs) are gathered while it is read
and shown as one :class:`DicomWarning` line naming the file (:func:`quiet`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

#: The pixel data elements, by tag: (keyword, bytes per sample or None when BitsAllocated says).
PIXEL_TAGS = {0x7FE00010: ("PixelData", None), 0x7FE00008: ("FloatPixelData", 4),
              0x7FE00009: ("DoubleFloatPixelData", 8)}
#: Deflated Explicit VR Little Endian.
DEFLATED = "1.2.840.10008.1.2.1.99"
#: The most bytes a deflated file's header (its data set before the pixel data) may inflate to.
HEADER_LIMIT = 64 * 2**20
_UNDEFINED = 0xFFFFFFFF
_CHUNK = 2**16
#: Explicit VRs whose element header has a 4-byte length (12 bytes in all, else 8).
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def show(path) -> str:
    text = str(path)
    return text if text.isprintable() else repr(text)


def fail(path, why: str) -> ValueError:
    """The one-line error of a DICOM file (or a video, walnet.data.video) that cannot be read."""
    return ValueError(f"cannot read image {show(path)}: {why}")


class DicomWarning(UserWarning):
    """Something about a DICOM file that walnet reads all the same (one line naming the file)."""


#: walnet's own warnings about a file, passed on as they are by :func:`quiet`.
_OWN = (DicomWarning, Image.DecompressionBombWarning)


@contextlib.contextmanager
def quiet(path):
    """Within the block, pydicom's warnings about the file (some come when a value is first
    used, not when the file is parsed) are gathered and shown afterwards as one
    :class:`DicomWarning` line naming `path`; walnet's own warnings pass as they are."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    others = [w for w in caught if not issubclass(w.category, _OWN)]
    for w in caught:
        if issubclass(w.category, _OWN):
            warnings.warn(w.message, stacklevel=4)
    if others:
        lines = str(others[0].message).strip().splitlines()
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        warnings.warn(DicomWarning(f"{show(path)}: pydicom: {lines[0] if lines else 'a warning'}{more}"),
                      stacklevel=4)


@dataclass(frozen=True)
class PixelElement:
    """Where the pixel data element is: its tag, the file offset of its value (in the inflated
    data set for a deflated file) and its length (None: undefined, i.e. encapsulated)."""

    tag: int
    offset: int
    length: int | None

    @property
    def keyword(self) -> str:
        return PIXEL_TAGS[self.tag][0]


@dataclass(frozen=True)
class Header:
    """A header read up to its pixel data: the pydicom data set without the pixel data, its
    pixel element (None without one) and whether the file is deflated."""

    dataset: object
    pixel: PixelElement | None
    deflated: bool


@dataclass(frozen=True)
class Geometry:
    """The checked numbers of a header's pixel data."""

    frames: int
    rows: int
    columns: int
    samples: int
    bits: int

    def frame_bytes(self, frames: int = 1) -> int:
        """Bytes of `frames` uncompressed frames (bits packed for 1-bit data)."""
        return math.ceil(frames * self.rows * self.columns * self.samples * self.bits / 8)


def read_header(path: Path, pydicom) -> Header:
    """The header of the DICOM file `path`, read up to its pixel data (see the module
    docstring); pydicom's parse errors become one ValueError naming the file."""
    from pydicom import filereader

    try:
        with open(path, "rb") as fp:
            preamble = filereader.read_preamble(fp, False)
            meta = filereader._read_file_meta_info(fp)  # the transfer syntax decides how to go on
            if str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
                dataset, pixel = _inflated_header(fp, filereader, path)
                ds = pydicom.dataset.FileDataset(str(path), dataset, preamble, meta, False, True)
                return Header(ds, pixel, True)
            fp.seek(0)
            found: list[PixelElement] = []
            ds = filereader.read_partial(fp, stop_when=_stopper(found, fp))
            return Header(ds, found[0] if found else None, False)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, struct.error,
            zlib.error) as exc:
        raise fail(path, f"not a DICOM file pydicom can parse ({_line(exc)})") from exc


def _line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _stopper(found: list, fp):
    """A pydicom ``stop_when`` that stops at the top-level pixel data element and notes it (the
    file is then at the element's value)."""
    def stop(tag, vr, length) -> bool:
        if int(tag) not in PIXEL_TAGS:
            return False
        found.append(PixelElement(int(tag), fp.tell(), None if length == _UNDEFINED else int(length)))
        return True
    return stop


class Inflater:
    """The inflated data set of a deflated file, inflated on demand from where `fp` stands."""

    def __init__(self, fp):
        self.fp, self.data = fp, bytearray()
        self.zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self.done = False

    def fill(self, size: int) -> None:
        """Inflates until `size` bytes are there or the data set ends."""
        while len(self.data) < size and not self.done:
            source = self.zlib.unconsumed_tail or self.fp.read(_CHUNK)
            if not source:
                self.done = True
                break
            self.data += self.zlib.decompress(source, size - len(self.data))
            self.done = self.zlib.eof


def _inflated_header(fp, filereader, path):
    """The data set of a deflated file up to its pixel data, inflating four times more at each
    try, up to :data:`HEADER_LIMIT` bytes."""
    inflater, size = Inflater(fp), _CHUNK
    while True:
        inflater.fill(size)
        buffer, found = io.BytesIO(bytes(inflater.data)), []
        try:
            dataset = filereader.read_dataset(buffer, False, True, stop_when=_stopper(found, buffer))
        except (ValueError, EOFError, KeyError, TypeError, struct.error):
            if inflater.done:  # all of it inflated: the data set itself is broken
                raise
            dataset = None  # cut inside an element: inflate more
        if found or (inflater.done and dataset is not None):
            return dataset, (found[0] if found else None)
        if size >= HEADER_LIMIT:
            raise fail(path, f"its deflated header inflates to more than {HEADER_LIMIT // 2**20} MiB before its "
                       "pixel data")
        size *= 4


def _whole(header, keyword: str, path, default: int | None = None, low: int = 1) -> int:
    """The header's `keyword` as a whole number >= `low` (`default` when absent or empty)."""
    value = header.get(keyword, None)
    if value is None or value == "":
        if default is None:
            raise fail(path, f"its header has no {keyword}")
        return default
    if isinstance(value, bool) or not isinstance(value, int) or int(value) < low:
        raise fail(path, f"its {keyword} {str(value)!r} is not a whole number from {low}")
    return int(value)


def frame_count(header, path) -> int:
    """NumberOfFrames (1 when absent, empty or 0), or a ValueError naming the file when it is
    not a whole number."""
    return max(_whole(header, "NumberOfFrames", path, default=1, low=0), 1)


def checked_geometry(head: Header, path) -> Geometry:
    """The frames, rows, columns, samples and bits of `head`'s pixel data, checked against the
    decompression-bomb limit and against what the pixel data holds (the module docstring)."""
    ds, pixel = head.dataset, head.pixel
    frames = frame_count(ds, path)
    if pixel is None:
        raise fail(path, "it has no Pixel Data (nor Float or Double Float Pixel Data) element")
    rows, columns = _whole(ds, "Rows", path), _whole(ds, "Columns", path)
    samples = _whole(ds, "SamplesPerPixel", path, default=1)
    if samples not in (1, 3):
        raise fail(path, f"{samples} samples per pixel; walnet reads grayscale and 3-sample colour images")
    bits = PIXEL_TAGS[pixel.tag][1]
    bits = bits * 8 if bits else _whole(ds, "BitsAllocated", path)
    if bits != 1 and (bits % 8 or bits > 64):
        raise fail(path, f"its BitsAllocated {bits} is not 1 or a multiple of 8 up to 64")
    check_pixels(rows * columns, path)
    geometry = Geometry(frames, rows, columns, samples, bits)
    if pixel.length is None:
        _check_fragments(path, pixel, frames, head.deflated)
    else:
        need = geometry.frame_bytes(frames)
        have = pixel.length if head.deflated else min(pixel.length, max(path.stat().st_size - pixel.offset, 0))
        if have < need:
            raise fail(path, f"its {pixel.keyword} holds {have} bytes, fewer than the {need} its {frames} frame(s) "
                       f"of {rows}x{columns}x{samples} at {bits} bits need (NumberOfFrames, Rows, Columns, "
                       "SamplesPerPixel or BitsAllocated is wrong, or the file is cut short)")
    return geometry


def check_pixels(pixels: int, path) -> None:
    """Pillow's decompression-bomb rule for one frame of `pixels` pixels (of a DICOM file or a
    video, walnet.data.video): a warning above ``Image.MAX_IMAGE_PIXELS``, an error above twice it."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or pixels <= limit:
        return
    if pixels > 2 * limit:
        raise fail(path, f"its frames have {pixels} pixels, more than twice Pillow's decompression-bomb limit "
                   f"(Image.MAX_IMAGE_PIXELS = {limit}); crop or downscale it")
    warnings.warn(Image.DecompressionBombWarning(
        f"{show(path)}: its frames have {pixels} pixels, more than Pillow's decompression-bomb limit "
        f"(Image.MAX_IMAGE_PIXELS = {limit})"), stacklevel=4)


def _check_fragments(path, pixel: PixelElement, frames: int, deflated: bool) -> None:
    """Encapsulated pixel data: its offset table item, then at least one fragment per frame.
    The items' headers are read (8 bytes each), never their contents."""
    if deflated:
        raise fail(path, "its deflated pixel data has an undefined length (encapsulated data is never deflated)")
    count = -1  # the first item is the basic offset table
    with open(path, "rb") as fp:
        fp.seek(pixel.offset)
        end = fp.seek(0, io.SEEK_END)
        fp.seek(pixel.offset)
        while count < frames:
            head = fp.read(8)
            if len(head) < 8:
                break
            group, element, length = struct.unpack("<HHI", head)
            if (group, element) != (0xFFFE, 0xE000) or fp.tell() + length > end:
                break  # the sequence delimiter, or an item that is not (whole) there
            count += 1
            fp.seek(length, io.SEEK_CUR)
    if count < frames:
        raise fail(path, f"its encapsulated {pixel.keyword} has {max(count, 0)} fragment(s) for {frames} frame(s) "
                   "(NumberOfFrames is wrong, or the file is cut short)")


def inflated_frames(path, head: Header, geometry: Geometry, frames: int):
    """A copy of the deflated file's data set whose pixel data is its first `frames` frames,
    uncompressed (Explicit VR Little Endian), the file inflated only that far."""
    from pydicom import filereader
    from pydicom.uid import ExplicitVRLittleEndian

    pixel = head.pixel
    end = pixel.offset + geometry.frame_bytes(frames)
    with open(path, "rb") as fp:
        filereader.read_preamble(fp, False)
        filereader._read_file_meta_info(fp)
        inflater = Inflater(fp)
        inflater.fill(end)
    if len(inflater.data) < end:
        raise fail(path, f"its deflated data ends before the {pixel.keyword} of frame {frames - 1} (the file is cut "
                   "short)")
    ds = copy.deepcopy(head.dataset)  # a header without pixels: small
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    setattr(ds, pixel.keyword, bytes(inflater.data[pixel.offset:end]))
    if geometry.frames > 1:
        ds.NumberOfFrames = frames
    return ds
