"""A run folder's lock: one ``walnet train`` / ``walnet experiment`` run writes a folder at a time.

While a run writes its folder, ``<folder>/walnet.lock`` holds its pid, host, process start time
and command (JSON). The file is created with ``O_CREAT | O_EXCL``, so of two runs starting at once
exactly one gets it; the other fails at once with an error naming the folder and the pid. The
lock is removed when the run ends, also on an error. A lock left by a killed run is stale when
its pid is not running on this host (or now belongs to a process that started later); it is
reported, replaced, and the run goes on. A lock from another host cannot be checked and is
treated as live (the error says to delete the file if no run is active there), unless it was
taken in a SLURM job (it records ``SLURM_JOB_ID``) that no longer runs: this process's own job
(requeued after a preemption, so its earlier run was stopped) or one ``squeue`` lists in no
running state; so a preempted job array resubmitted resumes its runs on any node.

Locks are re-entrant within a process: ``walnet experiment`` holds a run's folder across its
training and scoring, and the ``train`` it calls inside finds the folder already held by itself.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from walnet.files import move_aside

_log = logging.getLogger(__name__)

LOCK_NAME = "walnet.lock"

#: Folders this process holds (resolved paths), for re-entrant use.
_held: set[str] = set()


class RunLockedError(RuntimeError):
    """The folder is locked by a live run (or one on another host)."""


def _start_time(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks after boot (Linux ``/proc``), else None.
    With it a lock recognises its pid reused by a later process (common in restarted
    containers, where runs get the same low pids)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        # the command name (field 2) may hold spaces and parentheses: split after its last ')'
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, started: int | None) -> bool:
    """Whether process `pid` (started at `started`, if known) runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if started is not None:
        now = _start_time(pid)
        if now is not None and now != started:
            return False  # the pid belongs to a process started after the lock's
    return True


def _describe(info: dict) -> str:
    parts = [f"pid {info.get('pid')}"]
    if info.get("host") and info.get("host") != socket.gethostname():
        parts.append(f"on host {info['host']}")
    if info.get("slurm_job"):
        parts.append(f"in SLURM job {info['slurm_job']}")
    if info.get("command"):
        parts.append(f"({info['command']}, since {info.get('time', '?')})")
    return " ".join(parts)


def _read(path: Path) -> dict | None:
    """The lock's content; {} when it cannot be parsed (a run killed while writing it); None
    when the file is gone."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else {}
    except ValueError:
        return {}


#: How long an empty lock file counts as one being written (its run between create and write).
_WRITE_GRACE_S = 5.0


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


#: SLURM job states in which a job's processes run (``squeue -o %T``).
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                  "RESIZING"}


def _slurm_job_ended(job: str) -> bool:
    """Whether SLURM job `job` runs no more: it is this process's job (SLURM runs a job once at a
    time, so a lock of it on another host is that of a requeued job's earlier run), or squeue
    lists it in no running state (or no more). False where squeue cannot tell."""
    if job == os.environ.get("SLURM_JOB_ID"):
        return True
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    if done.returncode != 0:
        return "invalid job id" in done.stderr.lower()  # purged from SLURM's memory: long ended
    return not set(done.stdout.split()) & _SLURM_RUNNING


def _is_stale(info: dict) -> bool:
    if not info:
        return True
    if info.get("host") != socket.gethostname():
        # another host's processes cannot be seen; a SLURM job's state can
        return info.get("slurm_job") is not None and _slurm_job_ended(str(info["slurm_job"]))
    return not _alive(info["pid"], info.get("started"))


def _create(path: Path, command: str) -> bool:
    """Creates the lock file with this process's details; False when it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
            "command": command, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job"] = os.environ["SLURM_JOB_ID"]
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return True


def _break(path: Path, stale: dict) -> None:
    """Removes the stale lock `stale` at `path`, unless another process replaced it meanwhile.

    The lock is first renamed to a name of this process (atomic: of two processes breaking it,
    one gets it); if what was renamed is not the stale lock judged (a starter replaced it in
    between), it is linked back (never over a newer lock) and the run reports it as live."""
    aside = move_aside(path, "stale")
    if aside is None:
        return  # another process removed it first
    moved = _read(aside)
    if moved == stale:
        _log.info(f"removing the stale lock {path} of {_describe(stale) if stale else 'an unknown process'} "
            "(no longer running)")
        aside.unlink(missing_ok=True)
        return
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)
    raise RunLockedError(f"{path.parent} is locked by {_describe(moved or {})}: another run writes it")


def _remove_empty(folders: list[Path]) -> None:
    """Removes `folders` (innermost first) up to the first one that holds something."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def run_lock(folder: str | Path, command: str = "walnet") -> Iterator[Path]:
    """Holds `folder`'s lock for the block (created, with its parents, if missing).

    Raises :class:`RunLockedError` when a live run holds it, and :class:`ValueError` when the
    folder cannot be created or written (naming the folder and why). A stale lock is reported
    (logged on the ``walnet`` logger) and replaced. Nested use on the same folder in one process is a no-op."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _held:
        yield folder / LOCK_NAME
        return
    path = folder / LOCK_NAME
    # the folders this call creates: removed again if the run leaves them empty (a run that
    # fails its checks leaves nothing behind)
    created = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(50):  # each round takes the lock, fails, removes a stale one, or waits 0.1 s
            if _create(path, command):
                break
            info = _read(path)
            if info is None:
                continue  # released just now
            if not info and _age(path) < _WRITE_GRACE_S:
                time.sleep(0.1)  # created by a run this instant; its details follow
                continue
            if not _is_stale(info):
                hint = ("; if no run is active there, delete the lock file" if info.get("host") != socket.gethostname()
                        else "; wait for it to end or choose another folder")
                raise RunLockedError(f"{folder} is locked by {_describe(info)}: another run writes it{hint} "
                                     f"({path})")
            _break(path, info)
        else:
            raise RunLockedError(f"{folder}: could not take the lock {path} (other runs keep replacing it)")
    except OSError as exc:
        _remove_empty(created)
        reason = exc.strerror or str(exc)
        raise ValueError(f"cannot write the run folder {folder}: {reason}"
                         + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(folder) else "")) from exc
    _held.add(key)
    try:
        yield path
    finally:
        _held.discard(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _remove_empty(created)
