"""Videos (``.mp4``, ``.avi``, ``.mov``: cine loops) as images, one per frame, through the optional
extra ``pip install 'walnet[video]'`` (PyAV). PyAV is imported inside the functions that need it,
so walnet imports without it; a video met without it is a :class:`MissingVideoSupportError`
naming the extra. Files are recognised by their extension only; the first video stream is read.

Frame ``k`` (0-based) is the k-th frame the decoder puts out when the file is decoded from its
start (presentation order), the frame a player shows k-th. The first time a process meets a file
it decodes it whole once (:func:`frame_count`): container headers may hold no frame count or a
wrong one, so the frames are counted, and each frame's presentation timestamp and which frames
are seek points (keyframes of the container's index) are noted. That index is kept per process
(least recently used dropped past :data:`INDEX_BUDGET` frames), keyed by the file's identity,
size and modification time; loader workers started by fork inherit the main process's.

Reading frame k then seeks to the last seek point at or before it (by its packet's decoding
timestamp, which demuxers seek by) and decodes forward until the frame with k's timestamp: at
most one group of pictures is decoded (one frame for intra-only streams such as MJPEG or PNG).
Reads that move forward through one file (evaluation and prediction read a loop in order)
continue decoding where the previous read stopped, when that is no further back than the seek
point (one open decoder per process, which a forked child sets aside). A seek that lands past
the frame (a demuxer that seeks by another clock) tries the seek point before, then the start.
A file whose timestamps are missing or not increasing is decoded from its start for each read
(or forward from the previous read).
A frame is therefore the same whatever order frames are read in.

Pixels: FFmpeg converts each frame to 8-bit RGB (alpha dropped; more than 8 bits rounded to 8);
``mode="L"`` is Pillow's conversion of that, as for an RGB PNG. Limits, each a one-line
ValueError naming the file: at most :data:`VIDEO_MAX_FRAMES` frames (counted as decoded; a
header announcing more is refused before decoding); frames within Pillow's decompression-bomb
limit (a warning above it, an error above twice it, as for DICOM and PNG); a container holding
fewer frames than its header announces is cut short; a file FFmpeg cannot open or decode.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from walnet.data.dicom_header import check_pixels, fail, show
from walnet.files import check_input_file

#: The file extensions read as videos (compared ignoring case).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov")
#: What to run to read videos.
VIDEO_INSTALL = "pip install 'walnet[video]'"
#: The most frames a video may have: each frame is a sample, and a loop is indexed by decoding it whole.
VIDEO_MAX_FRAMES = 10_000
#: The most frames whose index a process keeps (8 bytes each): 64 MiB.
INDEX_BUDGET = 2**23


class MissingVideoSupportError(ImportError, ValueError):
    """A video met without PyAV installed (a ValueError too, so the command line reports it as
    one line)."""


def is_video(path) -> bool:
    """Whether `path` names a video (by its extension, :data:`VIDEO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av(path):
    try:
        import av  # optional: the `video` extra
    except ImportError:
        raise MissingVideoSupportError(f"reading {show(path)} needs PyAV: {VIDEO_INSTALL}") from None
    return av


def _line(exc: Exception) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip()  # FFmpeg's words without errno and file
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class VideoIndex:
    """A decoded video's frame count, its frames' presentation timestamps (int64, strictly
    increasing; None when they are not, and frames are then counted from the start) and the
    frames a seek may start decoding at (sorted, 0 always among them), with the timestamp to seek
    to for each: demuxers seek by decoding time, which precedes presentation time."""

    frames: int
    pts: np.ndarray | None
    starts: np.ndarray
    seek_to: np.ndarray | None = None  # per start, its packet's decoding time; None without timestamps

    def position(self, pts) -> int | None:
        """The frame whose timestamp is `pts`, or None."""
        if pts is None:
            return None
        at = int(np.searchsorted(self.pts, pts))
        return at if at < self.frames and self.pts[at] == pts else None


_LOCK = threading.Lock()
_INDEXES: OrderedDict[tuple, VideoIndex] = OrderedDict()
_INDEXED = [0]  # the frames of the indexes kept
_CURSOR = None  # the last read's open decoder (one per process)
_ORPHANS: list = []  # decoders a forked child inherited: kept, never used nor freed (see below)


def _after_fork_in_child() -> None:
    """A forked child (a loader worker) must not use its parent's open decoder, whose file offset
    it shares, nor free it: freeing joins decoder threads that do not exist in the child and
    hangs. The lock is new too, in case another thread held it at the fork."""
    global _CURSOR, _LOCK
    if _CURSOR is not None:
        _ORPHANS.append(_CURSOR)
        _CURSOR = None
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _identity(path: Path) -> tuple:
    """The file's cache key: which file it is, its size and modification time."""
    check_input_file(path, f"video file {show(path)}", "a video")
    st = path.stat()
    return os.fspath(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def frame_count(path) -> int:
    """The number of frames of the video `path`, counted by decoding it (once per process; see
    the module docstring). Raises :class:`MissingVideoSupportError` without PyAV, ValueError
    naming the file for one that cannot be read or passes the limits, FileNotFoundError for a
    missing one."""
    path = Path(path)
    return _index(path, _av(path))[1].frames


def _index(path: Path, av) -> tuple[tuple, VideoIndex]:
    key = _identity(path)
    with _LOCK:
        index = _INDEXES.get(key)
        if index is not None:
            _INDEXES.move_to_end(key)
            return key, index
    index = _build_index(path, av)
    with _LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = index
            _INDEXED[0] += index.frames
        while _INDEXED[0] > INDEX_BUDGET and len(_INDEXES) > 1:
            _INDEXED[0] -= _INDEXES.popitem(last=False)[1].frames
    return key, index


def _open(path: Path, av):
    """The opened container and its first video stream."""
    try:
        container = av.open(os.fspath(path), metadata_errors="ignore")  # a title's bad bytes are no reason to fail
    except (av.error.FFmpegError, OSError) as exc:
        raise fail(path, f"not a video FFmpeg can read ({_line(exc)})") from None
    if not container.streams.video:
        container.close()
        raise fail(path, "it has no video stream")
    return container, container.streams.video[0]


def _check_frame(frame, path: Path, sizes: set) -> None:
    size = (frame.width, frame.height)
    if size not in sizes:  # the bomb check (and its warning) once per size
        check_pixels(frame.width * frame.height, path)
        sizes.add(size)


def _build_index(path: Path, av) -> VideoIndex:
    """Decodes the whole file once: frame count, timestamps, seek points (module docstring)."""
    container, stream = _open(path, av)
    with container:
        announced = int(stream.frames or 0)
        if announced > VIDEO_MAX_FRAMES:
            raise fail(path, f"its header announces {announced} frames, more than the {VIDEO_MAX_FRAMES} walnet "
                       "reads from one video (each frame is a sample): cut it into loops")
        context = stream.codec_context
        sizes: set = set()
        if context.width and context.height:
            check_pixels(context.width * context.height, path)
            sizes.add((context.width, context.height))
        pts, seek_points, packets = [], [], 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
                    if packet.is_keyframe and packet.pts is not None:
                        seek_points.append((packet.pts, packet.pts if packet.dts is None else packet.dts))
                for frame in packet.decode():  # the last, empty packet flushes the decoder
                    _check_frame(frame, path, sizes)
                    pts.append(frame.pts)
                    if len(pts) > VIDEO_MAX_FRAMES:
                        raise fail(path, f"it has more than {VIDEO_MAX_FRAMES} frames, the most walnet reads from "
                                   "one video (each frame is a sample): cut it into loops")
        except (av.error.FFmpegError, OSError) as exc:
            raise fail(path, f"decoding stops after {len(pts)} frame(s) ({_line(exc)}); the file is damaged or "
                       "cut short") from None
    if not pts:
        raise fail(path, "its video stream holds no frame that can be decoded")
    if announced and packets < announced:
        raise fail(path, f"its header announces {announced} frames but it holds {packets} (the file is cut short)")
    if any(p is None for p in pts) or any(b <= a for a, b in zip(pts, pts[1:])):
        return VideoIndex(len(pts), None, np.zeros(1, np.int64))
    stamps = np.asarray(pts, np.int64)
    index = VideoIndex(len(pts), stamps, np.zeros(1, np.int64))
    seeks = {0: int(stamps[0])}
    for pts_, dts in seek_points:
        at = index.position(pts_)
        if at is not None:
            seeks[at] = min(seeks.get(at, dts), dts)
    starts = sorted(seeks)
    return VideoIndex(len(pts), stamps, np.asarray(starts, np.int64), np.asarray([seeks[a] for a in starts], np.int64))


class _Cursor:
    """An open video decoding forward; `last` is the frame it returned last (-1: none yet)."""

    def __init__(self, key: tuple, path: Path, av, index: VideoIndex, start: int):
        self.key, self.last = key, -1
        self.container, stream = _open(path, av)
        if start > 0:
            at = int(np.searchsorted(index.starts, start))
            self.container.seek(int(index.seek_to[at]), backward=True, any_frame=False, stream=stream)
        self.frames = self.container.decode(stream)

    def close(self) -> None:
        self.container.close()

    def advance(self, index: VideoIndex, k: int) -> np.ndarray | None:
        """Frame `k` as uint8 RGB, or None when the decoder passes it or ends first."""
        for frame in self.frames:
            at = self.last + 1 if index.pts is None else index.position(frame.pts)
            if at is None or at > k:
                return None
            self.last = at
            if at == k:
                return frame.to_ndarray(format="rgb24")
        return None


def _starts(index: VideoIndex, k: int) -> list[int]:
    """Where to start decoding for frame `k`: the last seek point at or before it, the one
    before that, then the file's start."""
    if index.pts is None:
        return [0]
    at = int(np.searchsorted(index.starts, k, side="right")) - 1
    return sorted({int(index.starts[at]), int(index.starts[max(at - 1, 0)]), 0}, reverse=True)


def _decode(path: Path, av, key: tuple, index: VideoIndex, k: int) -> np.ndarray:
    """Frame `k` of the file as uint8 RGB [h, w, 3], found as the module docstring says."""
    global _CURSOR
    starts = _starts(index, k)
    with _LOCK:
        cursor, _CURSOR = _CURSOR, None
        if cursor is not None and (cursor.key != key or not starts[0] <= cursor.last + 1 <= k):
            cursor.close()
            cursor = None
        tries = ([cursor] if cursor is not None else []) + starts
        for attempt in tries:
            try:
                cursor = attempt if isinstance(attempt, _Cursor) else _Cursor(key, path, av, index, attempt)
                values = cursor.advance(index, k)
            except (av.error.FFmpegError, OSError) as exc:
                raise fail(path, f"frame {k} cannot be decoded ({_line(exc)})") from None
            if values is not None:
                _CURSOR = cursor
                return values
            cursor.close()
    raise fail(path, f"frame {k} of its {index.frames} cannot be found again (the file changed while read, or its "
               "timestamps are damaged)")


def read_video(path, mode: str, frame: int | None = None) -> Image.Image:
    """Frame `frame` (0-based) of the video `path` as :func:`walnet.data.images.open_image`
    returns images: an 8-bit image in `mode` ("RGB" or "L"). `frame` may be None only for a
    video of one frame. Errors name the file: ValueError for a video that cannot be decoded,
    passes the limits (module docstring) or lacks the frame; FileNotFoundError for a missing
    file; :class:`MissingVideoSupportError` without PyAV."""
    path = Path(path)
    av = _av(path)
    key, index = _index(path, av)
    if frame is None and index.frames > 1:
        raise fail(path, f"it has {index.frames} frames; give the frame to read")
    k = 0 if frame is None else int(frame)
    if not 0 <= k < index.frames:
        raise fail(path, f"frame {k} is out of range (the video has {index.frames} frame"
                   f"{'s' if index.frames != 1 else ''}, numbered from 0)")
    img = Image.fromarray(np.ascontiguousarray(_decode(path, av, key, index, k)))  # uint8 [h, w, 3]: RGB
    return img if mode == "RGB" else img.convert(mode)
