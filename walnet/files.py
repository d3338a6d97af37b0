"""Writing output files safely: the one home of walnet's atomic writes and staged folders.

- :func:`atomic_open` writes a temporary file next to the target and renames it over the target
  only when the write succeeded, so a crash or a full disk never leaves a truncated file under
  the target's name.
- :func:`staged` gives a temporary folder inside a target folder; the files written there move
  into the target together (:meth:`Stage.commit`), or none does, and folders the stage created
  are removed again when the work fails.
- :func:`check_writable` tells, before long work, whether its outputs could be written.
- :func:`move_aside` renames a file out of the way atomically, for one process alone.

Temporaries are named ``.<name>.<host>-<pid>.<random>.tmp``: those left by a killed writer are
recognised and removed by the next write to the same target, those of a live writer are left
alone. A write that fails with an OS error (disk full, no permission) raises :class:`WriteError`,
one line naming the file and saying what became of the existing one.

Also here, for every reader and writer of walnet's files: :func:`first_line` (an error's first
line, for one-line messages) and :func:`weights_mismatch` (how a state dict differs from a
model's).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

__all__ = ["Stage", "WriteError", "append_text", "atomic_open", "check_writable", "first_line", "remove_stale_temps",
           "special_kind", "staged", "temp_prefix", "weights_mismatch", "write_text"]


class WriteError(OSError, ValueError):
    """An output that could not be written (disk full, no permission, a folder in the way).
    An OSError by nature; also a ValueError so that the command line reports it as one line
    like its other input and output errors."""


def first_line(text: str | BaseException, limit: int = 160) -> str:
    """The first non-blank line of `text` (an exception: its message, else its type's name),
    shortened to `limit` characters: for errors reported in one line."""
    if isinstance(text, BaseException):
        text = str(text) or type(text).__name__
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def special_kind(path) -> str | None:
    """What `path` is where it exists but is neither a regular file nor a folder (links
    followed): "a FIFO (named pipe)", "a socket", "a character device" or "a block device";
    None otherwise. Readers name it so in their errors instead of calling it missing (and never
    open it: reading a FIFO would wait for a writer)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), None)


def refuse_special(path, shown: str, instead: str = "a regular file", error: type = ValueError) -> None:
    """Raises `error` ("<shown> is a FIFO (named pipe), not <instead>") where `path` is a FIFO,
    socket or device (:func:`special_kind`); `shown` is how the message names the path."""
    kind = special_kind(path)
    if kind is not None:
        raise error(f"{shown} is {kind}, not {instead}")


def check_input_file(path, shown: str, kind: str) -> None:
    """That `path` is a regular file to read: a ValueError ("<shown> is a folder, not <kind>") for a
    folder, another for a FIFO, socket or device (:func:`refuse_special`), a FileNotFoundError
    ("<shown> does not exist") where there is nothing; `shown` names the path in the messages."""
    path = Path(path)
    if path.is_file():
        return
    if path.is_dir():
        raise ValueError(f"{shown} is a folder, not {kind}")
    refuse_special(path, shown)
    raise FileNotFoundError(f"{shown} does not exist")


# ---------------------------------------------------------------------------------------------
# temporary files


def _host_tag() -> str:
    # pids are only meaningful on their own machine (a shared folder may be written from several)
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_prefix(name: str) -> str:
    """The start of the name of this process' temporaries for a target called `name`:
    ``.<name>.<host>-<pid>.`` (see :func:`remove_stale_temps`)."""
    return f".{name}.{_host_tag()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # ours: another thread of this process may be writing it
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def remove_stale_temps(folder: str | Path, name: str) -> list[Path]:
    """Removes the temporaries (files or folders) for the target `name` in `folder` whose writer
    is dead: named by :func:`temp_prefix` on this host with a pid that no longer runs. Those of
    live processes, of other hosts and any other file are kept. Returns the removed paths."""
    pattern = re.compile(rf"\.{re.escape(name)}\.([0-9a-f]{{8}})-([0-9]+)\..*\.tmp")
    host, removed = _host_tag(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or match[1] != host or int(match[2]) <= 0 or _alive(int(match[2])):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another process cleaned it up first
            pass
        except OSError:
            continue
        removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# writing


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask can only be read by setting it)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: an existing file's own mode, else
    0666 minus the umask (mkstemp's temporaries are 0600)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _kept(path: Path) -> str:
    return f"the existing {path} is unchanged" if path.exists() else "nothing was written"


def check_writable(path: str | Path, flag: str, folder: bool = False) -> None:
    """Raises :class:`WriteError` (naming `flag`, the option that gave the path) unless a file
    (``folder=False``) or a folder of files (``folder=True``) can be written at `path`: the path
    is not a folder (a file) or not a file (a folder), and its nearest existing folder lets this
    process create files. Meant to run before long work whose result would go there."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise WriteError(f"{flag} {path} is a file, not a folder; choose a folder")
    if not folder and path.is_dir():
        raise WriteError(f"{flag} {path} is a folder; give the file to write")
    parent = path if folder else path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise WriteError(f"{flag} {path} lies under the file {parent}; choose a folder")
    remove_stale_temps(parent, "walnet-probe")
    try:  # creating a file is the only test that also holds for root, ACLs and read-only mounts
        fd, probe = tempfile.mkstemp(prefix=temp_prefix("walnet-probe"), suffix=".tmp", dir=parent)
    except OSError as exc:
        raise WriteError(f"{flag} {path}: cannot create files in {parent} ({_reason(exc)})") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_open(path: str | Path, text: bool = False):
    """Opens a temporary file (for writing; binary, or text with ``text=True``) next to `path`
    and renames it over `path` when the block ends without an error (after flushing it to
    disk); on an error it is removed. A crash therefore never leaves a truncated file under
    `path`, and an existing one is only replaced by a complete file, which gets the existing
    file's mode (a new one: 0666 minus the umask, as ``open`` gives).

    Temporaries of earlier writers to `path` that were killed are removed first
    (:func:`remove_stale_temps`). An OSError while writing (including one raised by the block)
    becomes a :class:`WriteError` naming `path`."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {_reason(exc)}") from None
    try:
        os.fchmod(fd, _new_file_mode(path))
        with (os.fdopen(fd, "w", newline="") if text else os.fdopen(fd, "wb")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(f"cannot write {path}: {_reason(exc)}; {_kept(path)}") from exc
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically (:func:`atomic_open`); returns the path."""
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def append_text(path: str | Path, text: str) -> Path:
    """Appends `text` (UTF-8) to the file `path` (made where missing, with the mode ``open``
    gives), flushed to disk. A symbolic link at `path` is refused, not followed (the file is the
    writer's own); an OS error is a :class:`WriteError` naming `path`."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise WriteError(f"cannot append to {path}: it is a symbolic link; walnet writes its own file "
                             "there, never through a link") from None
        raise WriteError(f"cannot write {path}: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "ab") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {_reason(exc)}; its earlier lines are kept") from exc
    return path


class Stage:
    """A temporary folder inside `target` whose files move into `target` on :meth:`commit`."""

    def __init__(self, target: Path, path: Path):
        self.target, self.path = target, path

    def commit(self, names: Iterable[str]) -> None:
        """Moves the staged files `names` (paths relative to the target, subfolders made as needed)
        into the target folder: all of them are flushed to disk first, then each is renamed into
        place. A failure is a :class:`WriteError` naming the file
        and saying how many were moved already."""
        names = list(names)
        for name in names:
            try:
                with open(self.path / name, "rb") as f:
                    os.fsync(f.fileno())
            except OSError as exc:
                raise WriteError(f"cannot write {self.target / name}: {_reason(exc)}; nothing was moved into "
                                 f"{self.target}") from exc
        for k, name in enumerate(names):
            try:
                (self.target / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path / name, self.target / name)
            except OSError as exc:
                moved = f"{k} of its {len(names)} files were moved there already" if k else "none was moved there"
                raise WriteError(f"cannot write {self.target / name}: {_reason(exc)}; {moved}") from exc


@contextlib.contextmanager
def staged(target: str | Path, tag: str) -> Iterator[Stage]:
    """A :class:`Stage`: the folder `target` (made, with its missing parents) and a temporary
    folder in it, named by :func:`temp_prefix` of `tag`. Whatever the block does not commit is
    removed with the temporary folder; when the block fails, the folders this made are removed
    again too (deepest first, only while empty), so a failed run leaves nothing behind."""
    target = Path(target)
    made = [f for f in (target, *target.parents) if not f.exists()]  # deepest first
    done = False
    path = None
    try:
        target.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target, tag)
        path = Path(tempfile.mkdtemp(prefix=temp_prefix(tag), suffix=".tmp", dir=target))
        yield Stage(target, path)
        done = True
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        if not done:
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def move_aside(path: str | Path, tag: str) -> Path | None:
    """Renames `path` to ``.<name>.<pid>.<tag>`` in its folder, atomically: of processes moving
    the same file aside at once, exactly one gets it (a run lock is broken so). Returns the new
    path, or None where `path` no longer exists (another process moved or removed it first)."""
    path = Path(path)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{tag}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    return aside


# ---------------------------------------------------------------------------------------------
# state dicts


def _shape(t) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def weights_mismatch(own: Mapping, given: Mapping, where: str = "in the file", noun: str = "parameter") -> list[str]:
    """How the state dict `given` differs from a model's own (`own`), as short phrases: each of
    differing shapes, missing and unexpected entries with its count and a first example
    ("3 shape(s) differ, e.g. fc.weight [3, 8] in the file, [2, 8] in the model"). Empty where
    the names and shapes fit. `where` says where `given` comes from, `noun` what an entry is."""
    shapes = [f"{k} {_shape(given[k])} {where}, {_shape(own[k])} in the model"
              for k in own if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    return [f"{len(items)} {what}, e.g. {items[0]}"
            for items, what in ((shapes, "shape(s) differ"), (missing, f"{noun}(s) missing"),
                                (unexpected, f"unexpected {noun}(s)")) if items]
