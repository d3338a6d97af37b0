"""Checkpoints written atomically and read without executing code (weights_only=True)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch


@contextlib.contextmanager
def atomic_open(path: str | Path, text: bool = False):
    """Opens a temporary file (for writing; binary, or text with ``text=True``) next to `path`
    and renames it over `path` when the block ends without an error (after flushing it to
    disk); on an error it is removed. A crash therefore never leaves a truncated file under
    `path`, and an existing one is only replaced by a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "w", newline="") if text else os.fdopen(fd, "wb")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Writes `state` (tensors, numbers, strings, lists, dicts) to `path` atomically
    (:func:`atomic_open`)."""
    with atomic_open(path) as f:
        torch.save(state, f)
    return Path(path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Reads a checkpoint with ``torch.load(weights_only=True)``: nothing in the file can run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)
