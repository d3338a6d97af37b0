"""Cine loops in videos (walnet.data.video, the `video` extra): frame counts, frame k's pixels
against what was written (lossless codecs exactly; a lossy one against an independent sequential
decode), any read order, records per frame keyed ``#frame=<k>`` in one patient group, ImageFolder /
CSV / predict inputs, the bounds, and the one-line errors (no PyAV, a damaged file). The videos are
written here with PyAV itself (tiny, a few frames of distinct brightness)."""
from __future__ import annotations

import csv
import dataclasses
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av", reason="the video tests need the video extra: pip install 'walnet[video]'")

from walnet import cli  # noqa: E402
from walnet.data import PlaqueDataset, Record, read_csv, scan_image_folder, split_indices  # noqa: E402
from walnet.data import video  # noqa: E402
from walnet.data.video import MissingVideoSupportError, frame_count, read_video  # noqa: E402

from conftest import small_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
H, W, N = 24, 32, 7
#: keyint 3 and no scene cuts: seek points at frames 0, 3, 6, so reads seek and decode forward
X264_LOSSLESS = {"qp": "0", "x264-params": "keyint=3:min-keyint=3:scenecut=0"}


def loop_frames(n=N, seed=0, color=True):
    """`n` frames whose brightness rises 25 levels a frame (a mean far from every other frame's),
    with pixel noise of 0..15 so no frame is flat; colour frames differ per channel."""
    rng = np.random.default_rng(seed)
    shape = (H, W, 3) if color else (H, W)
    return [(30 + 25 * k + rng.integers(0, 16, shape)).astype(np.uint8) for k in range(n)]


def encoder(name):
    try:
        av.codec.Codec(name, "w")
    except Exception:  # the wheel's FFmpeg was built without it
        pytest.skip(f"PyAV's FFmpeg has no {name} encoder")


def write_video(path, frames, codec, pix_fmt, options=None):
    """`frames` (uint8 [H, W, 3] RGB or [H, W] grey) as a video at `path`, 10 frames a second."""
    encoder(codec)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10, options=options or {})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for values in frames:
            frame = av.VideoFrame.from_ndarray(values, format="gray" if values.ndim == 2 else "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def lossless_loop(path, frames=None):
    """FFV1 in AVI: lossless RGB, a seek point every 3 frames."""
    return write_video(path, frames or loop_frames(), "ffv1", "bgr0", {"g": "3"})


def decoded(path):
    """Every frame of `path` as uint8 RGB, decoded from the start by PyAV (the oracle of what a
    player shows k-th)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def orders(n):
    return [list(range(n)), list(reversed(range(n))), random.Random(0).sample(range(n), n)]


# --- frames -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, codec, pix_fmt, options", [
    ("loop.avi", "ffv1", "bgr0", {"g": "3"}),
    ("loop.mp4", "libx264rgb", "rgb24", X264_LOSSLESS),
    ("loop.MOV", "png", "rgb24", {}),  # intra only: every frame a seek point; the extension in capitals
])
def test_lossless_videos_give_back_every_frame_in_any_order(tmp_path, name, codec, pix_fmt, options):
    frames = loop_frames()
    path = write_video(tmp_path / name, frames, codec, pix_fmt, options)
    assert frame_count(path) == N
    for order in orders(N):
        for k in order:
            img = read_video(path, "RGB", k)
            assert img.mode == "RGB" and img.size == (W, H)
            np.testing.assert_array_equal(np.asarray(img), frames[k], err_msg=f"frame {k}")
    # masks are read in mode L: Pillow's conversion of the RGB frame, as for an RGB PNG
    grey = Image.fromarray(frames[4]).convert("L")
    np.testing.assert_array_equal(np.asarray(read_video(path, "L", 4)), np.asarray(grey))


def test_grey_h264_is_within_one_level(tmp_path):
    """libx264 stores grey in limited-range YUV 4:2:0: grey has neutral chroma (nothing lost to
    subsampling), and luma 16..235 quantises 0..255 in steps of 255/219 < 2, so with qp 0 every
    value comes back within 1 of what was written."""
    frames = loop_frames(color=False)
    path = write_video(tmp_path / "grey.mp4", frames, "libx264", "yuv420p", X264_LOSSLESS)
    assert frame_count(path) == N
    for k in random.Random(1).sample(range(N), N):
        values = np.asarray(read_video(path, "RGB", k)).astype(int)
        assert np.abs(values - frames[k][..., None]).max() <= 1, k


@pytest.mark.parametrize("name, codec, options", [
    ("b.mp4", "libx264", {"crf": "18", "x264-params": "keyint=5:min-keyint=5:scenecut=0:bframes=3"}),
    ("b.avi", "mpeg4", {"qscale": "2", "g": "4", "bf": "2"}),
])
def test_b_frames_read_as_a_sequential_decode_shows_them(tmp_path, name, codec, options):
    """Lossy streams whose frames are stored out of order (B-frames): frame k read in any order,
    seeking or not, is bit for bit the k-th frame of a decode from the start, and its mean
    brightness is nearest to that of the k-th frame written (25 levels apart; the codec moves a
    frame's mean by a few levels)."""
    frames = loop_frames(n=12, seed=2)
    path = write_video(tmp_path / name, frames, codec, "yuv420p", options)
    oracle = decoded(path)
    assert frame_count(path) == len(oracle) == 12
    written = np.array([f.mean() for f in frames])
    for order in orders(12):
        for k in order:
            values = np.asarray(read_video(path, "RGB", k))
            np.testing.assert_array_equal(values, oracle[k], err_msg=f"frame {k}")
            assert np.argmin(np.abs(written - values.mean())) == k


def test_reading_a_loop_in_order_decodes_it_once(tmp_path, monkeypatch):
    """Forward reads continue the open decoder (no reopening, no seek); a read behind it seeks."""
    path = lossless_loop(tmp_path / "loop.avi")
    frame_count(path)
    opened = []
    real = video._Cursor.__init__
    monkeypatch.setattr(video._Cursor, "__init__", lambda self, *a: (opened.append(a[-1]), real(self, *a))[1])
    for k in range(N):
        read_video(path, "RGB", k)
    assert opened == [0]
    read_video(path, "RGB", 4)
    assert opened == [0, 3]  # frame 4: from the seek point at frame 3
    # a seek that lands past the frame (here: every seek goes to the last seek point) falls back
    key, index = video._index(Path(path), av)
    video._INDEXES[key] = dataclasses.replace(index, seek_to=np.full_like(index.seek_to, index.seek_to[-1]))
    opened.clear()
    frames = loop_frames()
    for k in (4, 1, 5):
        np.testing.assert_array_equal(np.asarray(read_video(path, "RGB", k)), frames[k])
    assert opened == [3, 0, 0, 3, 0]  # 4: from 3 (lands at 6), then from the start; 1: the start; 5: likewise


def test_loader_workers_read_the_same_frames(tmp_path):
    """Workers forked while the main process holds an open decoder and the index read alike
    (freeing the inherited decoder in a worker would hang it: the loader's timeout fails the test)."""
    import torch

    path = lossless_loop(tmp_path / "loop.avi")
    records = [Record(path, 0, frame=k) for k in range(N)]
    dataset = PlaqueDataset(records, size=8)
    alone = torch.stack([dataset[i]["image"] for i in range(N)])  # leaves a decoder open here
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, shuffle=False, timeout=120)
    torch.testing.assert_close(torch.cat([batch["image"] for batch in loader]), alone, rtol=0, atol=0)


def test_frame_choice_and_a_rewritten_file(tmp_path):
    path = lossless_loop(tmp_path / "loop.avi")
    with pytest.raises(ValueError, match=r"loop\.avi: it has 7 frames; give the frame to read"):
        read_video(path, "RGB")
    with pytest.raises(ValueError, match=r"loop\.avi: frame 7 is out of range \(the video has 7 frames"):
        read_video(path, "RGB", 7)
    one = loop_frames(n=1, seed=5)
    lossless_loop(path, one)  # the same path, rewritten: the index kept for it no longer holds
    assert frame_count(path) == 1
    np.testing.assert_array_equal(np.asarray(read_video(path, "RGB")), one[0])


# --- records, splits, predict -------------------------------------------------------------------


def test_videos_are_records_per_frame_in_one_patient_group(tmp_path):
    for cls in ("hyperechoic", "mixed-echoic", "hypoechoic"):
        (tmp_path / cls).mkdir()
        Image.fromarray(loop_frames(n=1)[0]).save(tmp_path / cls / "still.png")
    lossless_loop(tmp_path / "hyperechoic" / "a.avi", loop_frames(n=3))
    write_video(tmp_path / "hypoechoic" / "b.MP4", loop_frames(n=2), "libx264rgb", "rgb24", X264_LOSSLESS)
    records, _ = scan_image_folder(tmp_path)
    assert [(r.relative_key, r.patient) for r in records] == [
        ("hyperechoic/a.avi#frame=0", str(tmp_path / "hyperechoic" / "a.avi")),
        ("hyperechoic/a.avi#frame=1", str(tmp_path / "hyperechoic" / "a.avi")),
        ("hyperechoic/a.avi#frame=2", str(tmp_path / "hyperechoic" / "a.avi")),
        ("hyperechoic/still.png", None),
        ("hypoechoic/b.MP4#frame=0", str(tmp_path / "hypoechoic" / "b.MP4")),
        ("hypoechoic/b.MP4#frame=1", str(tmp_path / "hypoechoic" / "b.MP4")),
        ("hypoechoic/still.png", None), ("mixed-echoic/still.png", None)]
    assert records[1].key == f"{tmp_path / 'hyperechoic' / 'a.avi'}#frame=1"
    # the dataset reads frame k: brightness 30 + 25 k (+ 7.5 on average from the noise)
    dataset = PlaqueDataset(records[:3], size=8)
    means = [float(dataset[i]["image"].mean()) * 255 for i in range(3)]
    np.testing.assert_allclose(means, [37.5 + 25 * k for k in range(3)], atol=1.5)


def test_csv_rows_name_loops_and_frames_and_a_loop_stays_in_one_split(tmp_path):
    for i in range(6):
        lossless_loop(tmp_path / f"v{i}.avi", loop_frames(n=4, seed=i))
    classes = ["hyperechoic", "mixed-echoic", "hypoechoic"]
    rows = [f"v{i}.avi,{classes[i % 3]}" + (",P9" if i == 5 else ",") for i in range(6)]
    (tmp_path / "d.csv").write_text("path,label,patient_id\n" + "\n".join(rows) + "\n")
    records, _ = read_csv(tmp_path / "d.csv")
    assert len(records) == 24 and [r.frame for r in records[:4]] == [0, 1, 2, 3]
    assert {r.patient for r in records[:4]} == {str(tmp_path / "v0.avi")}
    assert {r.patient for r in records[20:]} == {"P9"}  # the CSV's patient id wins
    for seed in range(5):
        splits = split_indices([r.label for r in records], [r.patient for r in records], seed=seed)
        assert all(len(set(splits[4 * i:4 * i + 4])) == 1 for i in range(6)), splits
    # a frame column picks one frame; out of range names the line
    (tmp_path / "f.csv").write_text("path,label,frame\nv1.avi,hypoechoic,2\n")
    (record,), _ = read_csv(tmp_path / "f.csv")
    assert record.frame == 2 and record.patient == str(tmp_path / "v1.avi") and record.key.endswith("v1.avi#frame=2")
    (tmp_path / "g.csv").write_text("path,label,frame\nv1.avi,hypoechoic,4\n")
    with pytest.raises(ValueError, match=r"g\.csv:2: column 'frame': 4 is out of range; .*v1\.avi has 4 frame"):
        read_csv(tmp_path / "g.csv")
    Image.fromarray(loop_frames(n=1)[0]).save(tmp_path / "x.png")
    (tmp_path / "h.csv").write_text("path,label,frame\nx.png,hypoechoic,0\n")
    with pytest.raises(ValueError, match=r"h\.csv:2: column 'frame'.*no DICOM file or video"):
        read_csv(tmp_path / "h.csv")


def test_walnet_predict_writes_a_row_per_frame(tmp_path, capsys):
    """A folder with a loop and a PNG of its frame 1: one row per frame, and frame 1's
    probabilities are the PNG's (FFV1 is lossless, so the model sees the same pixels)."""
    ckpt, _ = small_checkpoint(tmp_path / "run" / "best.pt")
    frames = loop_frames(n=3, seed=3)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    lossless_loop(tmp_path / "in" / "sub" / "loop.avi", frames)
    Image.fromarray(frames[1]).save(tmp_path / "in" / "frame1.png")
    out = tmp_path / "p.csv"
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "in"), "--output", str(out),
                     "--device", "cpu"]) == 0, capsys.readouterr().err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r["path"]).name, r["frame"]) for r in rows] == [
        ("frame1.png", ""), ("loop.avi", "0"), ("loop.avi", "1"), ("loop.avi", "2")]
    probs = [[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows]
    assert probs[2] == probs[0] and probs[1] != probs[0]


# --- bounds and errors --------------------------------------------------------------------------


def test_bounds(tmp_path, monkeypatch):
    path = lossless_loop(tmp_path / "long.avi")
    monkeypatch.setattr(video, "VIDEO_MAX_FRAMES", 4)
    with pytest.raises(ValueError, match=r"long\.avi: its header announces 7 frames, more than the 4"):
        frame_count(path)
    monkeypatch.setattr(video, "VIDEO_MAX_FRAMES", 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 2 - 1)  # a frame is more than twice the limit
    with pytest.raises(ValueError, match=r"long\.avi: its frames have 768 pixels, more than twice"):
        frame_count(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W - 1)  # more than the limit: a warning, read all the same
    with pytest.warns(Image.DecompressionBombWarning, match=r"long\.avi"):
        assert frame_count(path) == N


def _one_line_error(path, capsys, tmp_path, match):
    """`path` fails alike through the reader, the dataset and `walnet predict` (one line)."""
    with pytest.raises(ValueError, match=match):
        read_video(path, "RGB", 0)
    with pytest.raises(ValueError, match=match):
        PlaqueDataset([Record(path, 0)], size=8)[0]
    ckpt, _ = small_checkpoint(tmp_path / "run" / "best.pt")
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(path), "--output", str(tmp_path / "p.csv"),
                     "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("walnet predict: error: ") and "\n" not in err, err
    assert re.search(match, err), err
    assert not (tmp_path / "p.csv").exists()


def test_damaged_videos_are_one_line_errors_naming_them(tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video " * 64)
    _one_line_error(junk, capsys, tmp_path, r"cannot read image .*junk\.mp4: not a video FFmpeg can read")
    whole = write_video(tmp_path / "whole.mp4", loop_frames(), "libx264rgb", "rgb24", X264_LOSSLESS)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # its index (moov) is at the end: gone
    _one_line_error(cut, capsys, tmp_path, r"cut\.mp4: not a video FFmpeg can read")
    whole = lossless_loop(tmp_path / "whole.avi")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])  # frames and the AVI index lost
    _one_line_error(cut, capsys, tmp_path, r"cut\.avi: .*cut short")
    with av.open(str(whole)) as container:  # cut where frame 5 starts: 5 whole frames, nothing to decode wrong
        start = [p.pos for p in container.demux(video=0) if p.size][5]
    cut.write_bytes(whole.read_bytes()[:start])
    _one_line_error(cut, capsys, tmp_path, r"cut\.avi: its header announces 7 frames but it holds 5 \(the file is cut")
    (tmp_path / "empty.mov").write_bytes(b"")
    _one_line_error(tmp_path / "empty.mov", capsys, tmp_path, r"empty\.mov: not a video")


def test_without_pyav_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    path = lossless_loop(tmp_path / "a.avi")
    (tmp_path / "hyperechoic").mkdir()
    lossless_loop(tmp_path / "hyperechoic" / "b.avi")
    frame_count(path)  # indexed with PyAV: the index must not stand in for it
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    expected = f"reading {path} needs PyAV: pip install 'walnet[video]'"
    with pytest.raises(MissingVideoSupportError) as info:
        PlaqueDataset([Record(path, 0, frame=0)], size=8)[0]
    assert str(info.value) == expected
    with pytest.raises(ValueError, match=r"reading .*b\.avi needs PyAV: pip install 'walnet\[video\]'$"):
        scan_image_folder(tmp_path)
    (tmp_path / "d.csv").write_text("path,label\na.avi,hypoechoic\n")
    with pytest.raises(MissingVideoSupportError, match="needs PyAV"):
        read_csv(tmp_path / "d.csv")
    ckpt, _ = small_checkpoint(tmp_path / "run" / "best.pt")
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(path), "--output", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err == f"walnet predict: error: {expected}\n"


def test_video_extra_is_what_the_reader_names():
    """`pip install 'walnet[video]'` installs PyAV, and the make-test environment pins it."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["video"] == ["av>=12"]
    assert "walnet[video]" in video.VIDEO_INSTALL
    pinned = [line.split("==")[0].lower() for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")]
    assert "av" in pinned
