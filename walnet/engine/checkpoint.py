"""Checkpoints written atomically and read without executing code.

Writing: :func:`save_checkpoint` writes through :func:`walnet.files.atomic_open`, so a crash or a
full disk never leaves a truncated checkpoint under the target's name; a failed write is a
:class:`walnet.files.WriteError` naming the file.

Reading: :func:`load_checkpoint` uses ``torch.load(weights_only=True)`` (a pickle that would run
code is refused) and turns every way a file can fail to be a walnet checkpoint (missing, a
folder, empty, truncated, another format, wrong keys or types) into one :class:`CheckpointError`
line naming the file. :func:`load_weights` and :func:`load_training_state` put a checkpoint
into a model (and optimizer) with the same kind of error when the two do not fit.
"""
from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from walnet.files import atomic_open, first_line, refuse_special, weights_mismatch

#: The keys of a ``walnet train`` checkpoint that rebuilding its model needs (``engine.loading.load_model``).
TRAINED_KEYS = ("model", "args", "classes", "epoch")
#: The keys ``walnet train --resume`` needs (:func:`load_training_state`).
RESUME_KEYS = ("model", "optimizer", "epoch")


class CheckpointError(ValueError):
    """A file that cannot be used as the checkpoint asked for; the message names the file and
    what is wrong with it."""


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


#: Where torch's weights-only unpickler names what it refused: a global outside its allowlist, one
#: of a blocked module (os, sys, ...), or a class it may not build.
_REFUSED_PATTERNS = (r"GLOBAL (\S+) was not an allowed global", r"unsupported GLOBAL (\S+) whose module",
                     r"but got <class '([^']+)'>", r"``([^`]+)``[^\n]* must be imported to load")


def _refused_global(message: str) -> str | None:
    """The global (``module.name``) a weights-only load refused, from torch's error `message`;
    None where the error is of another kind."""
    for pattern in _REFUSED_PATTERNS:
        found = re.search(pattern, message)
        if found:
            name = found.group(1).rstrip(".")
            return name if "." in name else f"builtins.{name}"  # torch drops the "builtins." it names
    return None


def _torch_detail(message: str) -> str:
    """torch's own reason in a weights-only load error, without the paragraphs of advice around
    it (which suggest loading with weights_only=False, i.e. running the file's code)."""
    message = message.split("Check the documentation of torch.load")[0]
    if "WeightsUnpickler error:" in message:
        message = message.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in message.splitlines() if line.strip() and "weights_only" not in line]
    return first_line(lines[0].removeprefix("Weights only load failed.").strip() if lines else "")


def _why_unloadable(path: Path, exc: Exception) -> str:
    """The one-line error for the checkpoint `path` that ``torch.load`` could not read (`exc`)."""
    message = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        refused = _refused_global(message)
        if refused:
            return (f"checkpoint {path} holds Python objects a weights-only load refuses ({refused}); walnet "
                    "checkpoints hold tensors, numbers, strings, lists and dicts only \N{EM DASH} it was not "
                    "written by walnet train")
        if "Weights only load failed" in message or "WeightsUnpickler error:" in message:
            return (f"checkpoint {path} cannot be loaded: it is not a PyTorch checkpoint (unreadable pickle "
                    f"data: {_torch_detail(message) or type(exc).__name__})")
    if isinstance(exc, (EOFError, RuntimeError)):
        sentence = first_line(message).split(". ")[0]  # torch appends paragraphs of advice
        return f"checkpoint {path} cannot be loaded: it is truncated or damaged ({sentence or type(exc).__name__})"
    return (f"checkpoint {path} cannot be loaded: it is not a PyTorch checkpoint ({type(exc).__name__}: "
            f"{first_line(message)})")


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
    "temperature": ("a positive finite number (walnet calibrate's temperature)",
                    lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0),
    "best_epoch": ("an epoch number >= -1", lambda v: _is_int(v) and v >= -1),
    "scheduler": ("a learning-rate schedule state dict", lambda v: isinstance(v, Mapping)),
    "stopped_early": ("True or False", lambda v: isinstance(v, bool)),
}


def load_checkpoint(path: str | Path, map_location="cpu", keys: Iterable[str] = ()) -> dict:
    """Reads a checkpoint with ``torch.load(weights_only=True)``: nothing in the file can run code.

    The file must hold a dict with every key of `keys` (e.g. :data:`TRAINED_KEYS`), and the
    known keys of walnet's checkpoints (model, optimizer, scaler, args, classes, epoch,
    best_metric, best_value, temperature, and older files' best_accuracy) must hold what walnet
    writes there.
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
    refuse_special(path, f"checkpoint {path}", "a checkpoint file", CheckpointError)
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {path} is empty (0 bytes): not a checkpoint")
        with warnings.catch_warnings():  # torch's notes on odd pickles would only add lines to the error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the bytes make torch.load raise, the file is unusable
        raise CheckpointError(_why_unloadable(path, exc)) from None
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


def load_weights(model: torch.nn.Module, weights: Mapping, path: str | Path, describe: str | None = None,
                 hint: str = "") -> None:
    """Loads the state dict `weights` (from the checkpoint `path`) into `model`, strictly. A
    state dict of another model (missing or unexpected parameters, other shapes) is a
    :class:`CheckpointError`: "checkpoint X does not match model Y: ...", the first differences
    and their count; `describe` names the model (default: its class), `hint` is appended."""
    describe = describe or type(model).__name__
    problems = weights_mismatch(model.state_dict(), weights, "in the checkpoint")
    if not problems:
        try:
            model.load_state_dict(weights)
            return
        except RuntimeError as exc:  # dtype or other mismatches load_state_dict finds
            problems.append(first_line(str(exc).replace("Error(s) in loading state_dict", "")))
    raise CheckpointError(f"checkpoint {path} does not match model {describe}: {'; '.join(problems)}"
                          + (f"; {hint}" if hint else ""))


def load_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler=None, map_location="cpu", describe: str | None = None,
                        state: dict | None = None) -> dict:
    """``walnet train --resume``: loads the checkpoint `path` (:data:`RESUME_KEYS` required)
    into `model`, `optimizer` and, where both have one, the gradient `scaler`; returns the
    checkpoint (``epoch`` is the last finished epoch; ``best_metric`` and ``best_value``, where
    saved). `state`: the checkpoint as :func:`load_checkpoint` already read it from `path` (not
    read again). Any file that does not fit this run is a one-line :class:`CheckpointError`
    naming it."""
    if state is None:
        state = load_checkpoint(path, map_location=map_location, keys=RESUME_KEYS)
    hint = "resume with the options of the run that wrote it (its args.json)"
    load_weights(model, state["model"], path, describe, hint=hint)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its optimizer state does not fit this run's optimizer "
                              f"({first_line(str(exc))}); {hint}") from None
    if scaler is not None and state.get("scaler"):
        try:
            scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path}: its gradient scaler state cannot be loaded "
                                  f"({first_line(str(exc))})") from None
    return state
