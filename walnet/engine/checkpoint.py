"""Output files written atomically, and checkpoints read without executing code.

Writing: :func:`atomic_open` writes a temporary file next to the target and renames it over the
target only when the write succeeded, so a crash or a full disk never leaves a truncated file
under the target's name. The temporary's name carries the writer's host and pid
(``.<name>.<host>-<pid>.<random>.tmp``), so temporaries left by a killed writer are recognised
and removed by the next write to the same target, while those of a live writer are left alone.
A write that fails with an OS error (disk full, no permission) raises :class:`WriteError`, one
line naming the file and saying what became of the existing one.

Reading: :func:`load_checkpoint` uses ``torch.load(weights_only=True)`` (a pickle that would run
code is refused) and turns every way a file can fail to be a walnet checkpoint (missing, a
folder, empty, truncated, another format, wrong keys or types) into one :class:`CheckpointError`
line naming the file. :func:`load_weights` and :func:`load_training_state` put a checkpoint
into a model (and optimizer) with the same kind of error when the two do not fit.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import shutil
import socket
import stat
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from walnet.models.normalize import fill_missing_stats

#: The keys of a ``walnet train`` checkpoint that rebuilding its model needs (``load_trained``).
TRAINED_KEYS = ("model", "args", "classes", "epoch")
#: The keys ``walnet train --resume`` needs (:func:`load_training_state`).
RESUME_KEYS = ("model", "optimizer", "epoch")


class CheckpointError(ValueError):
    """A file that cannot be used as the checkpoint asked for; the message names the file and
    what is wrong with it."""


class WriteError(OSError, ValueError):
    """An output that could not be written (disk full, no permission, a folder in the way).
    An OSError by nature; also a ValueError so that the command line reports it as one line
    like its other input and output errors."""


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


class _RecordingWriter:
    """A file's ``write`` that remembers the OSError it raised: torch.save reports a failed
    write only as "enforce fail ... unexpected pos", without the reason."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self):
        self._f.flush()


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Writes `state` (tensors, numbers, strings, lists, dicts) to `path` atomically
    (:func:`atomic_open`). A failed write (disk full, ...) is a :class:`WriteError` naming
    `path` and saying that the previous file under that name is intact."""
    with atomic_open(path) as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None  # atomic_open words it as a WriteError
    return Path(path)


# ---------------------------------------------------------------------------------------------
# reading


def _first_line(text: str, limit: int = 160) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _why_unloadable(exc: Exception) -> str:
    message = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "WeightsUnpickler error:" in message:
        detail = _first_line(message.split("WeightsUnpickler error:", 1)[1])
        if "Unsupported global" in detail:
            detail = _first_line(detail.split(". Please use")[0])
            return (f"it holds Python objects other than tensors and plain data ({detail}); walnet loads "
                    "checkpoints weights-only and never runs code from them")
        return f"it is not a PyTorch checkpoint (unreadable pickle data: {detail})"
    if isinstance(exc, (EOFError, RuntimeError)):
        sentence = _first_line(message).split(". ")[0]  # torch appends paragraphs of advice
        return f"it is truncated or damaged ({sentence or type(exc).__name__})"
    return f"it is not a PyTorch checkpoint ({type(exc).__name__}: {_first_line(message)})"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: What the known keys of a walnet checkpoint hold (checked wherever they are present).
_KEY_CHECKS = {
    "model": ("a state dict (parameter name -> tensor)",
              lambda v: isinstance(v, Mapping) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                       for k, t in v.items())),
    "optimizer": ("an optimizer state dict", lambda v: isinstance(v, Mapping)),
    "scaler": ("a gradient scaler state dict", lambda v: isinstance(v, Mapping)),
    "args": ("a train config (dict)", lambda v: isinstance(v, Mapping)),
    "classes": ("a non-empty list of class names",
                lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(c, str) for c in v)),
    "epoch": ("an epoch number >= 0", lambda v: _is_int(v) and v >= 0),
    "best_accuracy": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "best_metric": ("a metric name", lambda v: isinstance(v, str)),
    "best_value": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
}


def load_checkpoint(path: str | Path, map_location="cpu", keys: Iterable[str] = ()) -> dict:
    """Reads a checkpoint with ``torch.load(weights_only=True)``: nothing in the file can run code.

    The file must hold a dict with every key of `keys` (e.g. :data:`TRAINED_KEYS`), and the
    known keys of walnet's checkpoints (model, optimizer, scaler, args, classes, epoch,
    best_metric, best_value, and older files' best_accuracy) must hold what walnet writes there.
    A missing file is a FileNotFoundError; anything else that makes the file unusable (a folder,
    empty, truncated, not a PyTorch file, code in the pickle, wrong keys) a
    :class:`CheckpointError`; both one line naming `path`."""
    path = Path(path)
    if path.is_dir():
        inside = [n for n in ("best.pt", "last.pt") if (path / n).is_file()]
        hint = f"; it holds {' and '.join(str(path / n) for n in inside)}" if inside else ""
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file{hint}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {path} is empty (0 bytes): not a checkpoint")
        with warnings.catch_warnings():  # torch's notes on odd pickles would only add lines to the error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the bytes make torch.load raise, the file is unusable
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {_why_unloadable(exc)}") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a walnet checkpoint "
                              f"(a dict with {', '.join(TRAINED_KEYS)}, ...)")
    missing = [k for k in keys if k not in state]
    if missing:
        found = ", ".join(map(str, list(state)[:8])) or "none"
        raise CheckpointError(f"checkpoint {path} lacks the key(s) {', '.join(missing)} of a walnet train "
                              f"checkpoint (its keys: {found})")
    for key, (what, ok) in _KEY_CHECKS.items():
        if key in state and not ok(state[key]):
            raise CheckpointError(f"checkpoint {path}: {key!r} is not {what} (got {type(state[key]).__name__})")
    return dict(state)


def _shape(t) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def load_weights(model: torch.nn.Module, weights: Mapping, path: str | Path, describe: str | None = None,
                 hint: str = "") -> None:
    """Loads the state dict `weights` (from the checkpoint `path`) into `model`, strictly. A
    state dict of another model (missing or unexpected parameters, other shapes) is a
    :class:`CheckpointError`: "checkpoint X does not match model Y: ...", the first differences
    and their count; `describe` names the model (default: its class), `hint` is appended.

    The one exception: a checkpoint written before walnet's models normalised their input
    lacks the buffers ``input_mean`` and ``input_std``; they are set to the identity, with which
    the model computes what the one that was saved computed
    (:func:`walnet.models.normalize.fill_missing_stats`)."""
    describe = describe or type(model).__name__
    weights = fill_missing_stats(model, weights)
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {_shape(weights[k])} in the checkpoint, {_shape(own[k])} in the model"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    problems = []
    for items, what in ((shapes, "shape(s) differ"), (missing, "parameter(s) missing"),
                        (unexpected, "unexpected parameter(s)")):
        if items:
            problems.append(f"{len(items)} {what}, e.g. {items[0]}")
    if not problems:
        try:
            model.load_state_dict(weights)
            return
        except RuntimeError as exc:  # dtype or other mismatches load_state_dict finds
            problems.append(_first_line(str(exc).replace("Error(s) in loading state_dict", "")))
    raise CheckpointError(f"checkpoint {path} does not match model {describe}: {'; '.join(problems)}"
                          + (f"; {hint}" if hint else ""))


def load_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler=None, map_location="cpu", describe: str | None = None) -> dict:
    """``walnet train --resume``: loads the checkpoint `path` (:data:`RESUME_KEYS` required)
    into `model`, `optimizer` and, where both have one, the gradient `scaler`; returns the
    checkpoint (``epoch`` is the last finished epoch; ``best_metric`` and ``best_value``, or in
    older files ``best_accuracy``, where saved). Any file that does not fit this run is a
    one-line :class:`CheckpointError` naming it."""
    state = load_checkpoint(path, map_location=map_location, keys=RESUME_KEYS)
    hint = "resume with the options of the run that wrote it (its args.json)"
    load_weights(model, state["model"], path, describe, hint=hint)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its optimizer state does not fit this run's optimizer "
                              f"({_first_line(str(exc))}); {hint}") from None
    if scaler is not None and state.get("scaler"):
        try:
            scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path}: its gradient scaler state cannot be loaded "
                                  f"({_first_line(str(exc))})") from None
    return state
