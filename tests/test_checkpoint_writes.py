"""Writing checkpoints (and every atomic write): a full disk is a one-line error that keeps the old
file, a new file gets the mode a plain ``open`` gives and a replaced one keeps its own, and the
temporaries of killed writers are removed by the next write."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from walnet import cli
from walnet.engine import load_checkpoint, save_checkpoint
from walnet.files import WriteError, atomic_open, remove_stale_temps, temp_prefix

from conftest import small_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class _FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written."""

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, data):
        self._room -= len(data)
        if self._room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_disk_full_during_a_save_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(4)}, "epoch": 1})
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k), 2000))
    big = {"model": {"w": torch.zeros(100_000)}, "epoch": 2}
    with pytest.raises(WriteError) as info:
        save_checkpoint(path, big)
    message = str(info.value)
    assert message == f"cannot write {path}: No space left on device; the existing {path} is unchanged"
    assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'new.pt'}: No space .*nothing was written"):
        save_checkpoint(tmp_path / "new.pt", big)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_disk_full_reaches_the_command_line_as_one_line(tmp_path, monkeypatch, capsys):
    from PIL import Image
    ckpt, _ = small_checkpoint(tmp_path / "run" / "best.pt")
    image = tmp_path / "scan.png"
    Image.new("L", (40, 30), 90).save(image)
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k), 10))
    out = tmp_path / "p.csv"
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(image), "--output", str(out),
                     "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == f"walnet predict: error: cannot write {out}: No space left on device; nothing was written\n"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_new_files_get_the_mode_open_gives(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "last.pt", {"epoch": 0})
        with atomic_open(tmp_path / "metrics.json", text=True) as f:
            f.write("{}")
        with open(tmp_path / "plain.txt", "w") as f:  # what other outputs get
            f.write("x")
    finally:
        os.umask(old)
    for name in ("last.pt", "metrics.json", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 0})
    path.chmod(0o600)  # a user who restricted it
    save_checkpoint(path, {"epoch": 1})
    assert path.stat().st_mode & 0o777 == 0o600 and load_checkpoint(path)["epoch"] == 1


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_removed_by_the_next_save(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = temp_prefix("x").split(".")[2].split("-")[0]
        dead = _dead_pid()
        stale = [tmp_path / f".last.pt.{host}-{dead}.a1b2c3.tmp", tmp_path / f".last.pt.{host}-{dead}.zz.tmp"]
        stale_dir = tmp_path / f".last.pt.{host}-{dead}.dir.tmp"
        kept = [tmp_path / f".last.pt.{host}-{sleeper.pid}.live.tmp",  # a live writer's
                tmp_path / f".last.pt.{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead}.x.tmp",  # another host's
                tmp_path / f".best.pt.{host}-{dead}.x.tmp",  # another target's (cleaned when it is saved)
                tmp_path / f".last.pt.{host}-{os.getpid()}.mine.tmp",  # this process' (maybe another thread)
                tmp_path / ".last.pt.k9x2_abc.tmp"]  # no pid: not a walnet temporary
        for p in stale + kept:
            p.write_bytes(b"partial")
        stale_dir.mkdir()
        (stale_dir / "m.png").write_bytes(b"x")
        save_checkpoint(tmp_path / "last.pt", {"epoch": 0})
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt", *(p.name for p in kept)])
    finally:
        sleeper.kill()
        sleeper.wait()
    # once its writer is gone, the live one is stale too
    assert remove_stale_temps(tmp_path, "last.pt") == [kept[0]]


def test_a_save_killed_mid_write_is_cleaned_up_by_the_next_save(tmp_path):
    """SIGKILL while torch.save writes: last.pt keeps the previous epoch and the temporary it
    leaves is removed by the next save."""
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 0})
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        sys.path.insert(0, {str(ROOT)!r})
        from walnet.engine.checkpoint import save_checkpoint
        real = os.fdopen
        class Slow:
            def __init__(self, f): self.f = f
            def write(self, b):
                n = self.f.write(b); self.f.flush(); print("writing", flush=True); time.sleep(60); return n
            def __getattr__(self, k): return getattr(self.f, k)
            def __enter__(self): return self
            def __exit__(self, *e): self.f.close()
        os.fdopen = lambda *a, **k: Slow(real(*a, **k))
        save_checkpoint({str(path)!r}, {{"epoch": 1, "w": torch.zeros(1000)}})
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        temps = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
        assert len(temps) == 1 and temps[0].name.startswith(".last.pt.") and temps[0].stat().st_size > 0
        save_checkpoint(path, {"epoch": 2})  # the writer lives: its temporary stays
        assert temps[0].exists()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert load_checkpoint(path)["epoch"] == 2
    save_checkpoint(path, {"epoch": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"] and load_checkpoint(path)["epoch"] == 3
