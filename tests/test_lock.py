"""The run-folder lock (:mod:`walnet.engine.lock`): one writer at a time, stale locks replaced."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from walnet.engine import lock
from walnet.engine.lock import LOCK_NAME, RunLockedError, run_lock


@pytest.fixture
def sleeper():
    """A live process that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder, pid, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": socket.gethostname(), "command": "walnet train", "time": "2024-01-01 00:00:00",
            **extra}
    (folder / LOCK_NAME).write_text(json.dumps(info))
    return folder / LOCK_NAME


def test_lock_holds_this_process_and_is_removed_after_the_block(tmp_path):
    run = tmp_path / "a" / "run"
    with run_lock(run, "walnet train") as path:
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["command"] == "walnet train"
        assert oct(path.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
        (run / "args.json").write_text("{}")
    assert not path.exists() and (run / "args.json").is_file()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_lock_is_removed_after_an_error_and_created_empty_folders_go_too(tmp_path):
    run = tmp_path / "new" / "run"
    with pytest.raises(KeyError):
        with run_lock(run):
            raise KeyError("boom")
    assert not (tmp_path / "new").exists()  # the run wrote nothing: no empty folders left behind
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyError):
        with run_lock(tmp_path / "kept" / "run"):
            (tmp_path / "kept" / "run" / "split.csv").write_text("key,split\n")
            raise KeyError("boom")
    assert sorted(p.name for p in (tmp_path / "kept" / "run").iterdir()) == ["split.csv"]


def test_a_live_lock_stops_a_second_run_at_once(tmp_path, sleeper):
    path = write_lock(tmp_path / "run", sleeper.pid)
    with pytest.raises(RunLockedError) as info:
        with run_lock(tmp_path / "run"):
            pytest.fail("a second writer got the lock")
    message = str(info.value)
    assert str(tmp_path / "run") in message and f"pid {sleeper.pid}" in message and "\n" not in message
    assert json.loads(path.read_text())["pid"] == sleeper.pid  # the other run's lock is left alone


def test_a_lock_held_in_this_process_by_another_block_is_live(tmp_path):
    with run_lock(tmp_path / "run"):
        # a nested block of the same process (walnet experiment -> train) shares it
        with run_lock(tmp_path / "run") as inner:
            assert inner.exists()
        assert (tmp_path / "run" / LOCK_NAME).exists()  # still held by the outer block
    assert not (tmp_path / "run" / LOCK_NAME).exists()


@pytest.mark.parametrize("content", ["pid", "garbage", "reused"])
def test_a_stale_lock_is_reported_and_replaced(tmp_path, content, sleeper, caplog):
    if content == "pid":
        write_lock(tmp_path / "run", dead_pid())
    elif content == "garbage":  # a run killed between creating the file and writing it
        path = tmp_path / "run" / LOCK_NAME
        path.parent.mkdir()
        path.write_text("")
        os.utime(path, (0, 0))
    else:  # the pid is alive, but a process started after the lock's holder owns it
        if lock._start_time(sleeper.pid) is None:
            pytest.skip("no /proc start times on this system")
        write_lock(tmp_path / "run", sleeper.pid, started=lock._start_time(sleeper.pid) - 1)
    caplog.set_level(logging.INFO, logger="walnet")
    with run_lock(tmp_path / "run") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and "stale lock" in logged[0] and str(tmp_path / "run") in logged[0]
    assert not path.exists()
    assert not list((tmp_path / "run").iterdir())  # nothing of the stale lock is left either


def test_a_fresh_empty_lock_is_a_run_starting_not_a_stale_one(tmp_path, monkeypatch):
    path = tmp_path / "run" / LOCK_NAME
    path.parent.mkdir()
    path.write_text("")
    monkeypatch.setattr(lock.time, "sleep", lambda s: None)
    with pytest.raises(RunLockedError):
        with run_lock(tmp_path / "run"):
            pytest.fail("took the lock of a run that is starting")
    assert path.exists()


def test_a_lock_of_another_host_is_kept(tmp_path):
    path = write_lock(tmp_path / "run", dead_pid(), host="some-other-host")
    with pytest.raises(RunLockedError, match="on host some-other-host.*delete the lock file"):
        with run_lock(tmp_path / "run"):
            pass
    assert path.exists()


def test_breaking_a_stale_lock_never_removes_a_new_one(tmp_path, sleeper, caplog):
    """Two runs found the same stale lock; the first replaced it with its own before the second
    moved it aside: the second puts the new lock back and reports it as live."""
    stale = {"pid": dead_pid(), "host": socket.gethostname()}
    path = write_lock(tmp_path / "run", sleeper.pid)  # the first run's new lock
    with pytest.raises(RunLockedError, match=f"pid {sleeper.pid}"):
        lock._break(path, stale)
    assert not caplog.records  # nothing was removed
    assert json.loads(path.read_text())["pid"] == sleeper.pid
    assert [p.name for p in (tmp_path / "run").iterdir()] == [LOCK_NAME]


def test_an_unwritable_folder_is_a_value_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot write the run folder .*file/run"):
        with run_lock(tmp_path / "file" / "run"):
            pass
