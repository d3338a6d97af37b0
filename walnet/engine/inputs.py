"""The files a command reads, kept apart from the paths it writes: an output never replaces an input.

A command lists what it reads in an :class:`Inputs` (its images, CSV, checkpoint, model folder)
and asks, for each path it will write, which input that path is (:meth:`Inputs.owner`). A path
is an input when it names the same file (compared by device and inode, so symbolic links, hard
links, ``..`` and other spellings count as the input itself), or when it is or lies inside an
input folder (compared by real path, the folder's own links resolved). The checks run before any
work and hold with ``--overwrite`` too.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path


__all__ = ["Inputs", "file_id"]

#: The commands with an ``--overwrite`` flag, whose errors say that it does not reach inputs.
_OVERWRITING = frozenset({"predict", "export"})


def _never(command: str) -> str:
    """The end of a refusal: the command never writes its inputs (nor with --overwrite, where it has one)."""
    return f"{command} never writes what it reads" + (", not even with --overwrite" if command in _OVERWRITING else "")


def file_id(path) -> tuple[int, int] | None:
    """(device, inode) of the file `path` names, links followed; None where it does not exist
    (or cannot be looked at)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _places(path) -> set[str]:
    """Where a write to `path` may land: its real path, and its real folder joined with its
    name (a write that replaces a link writes there, one that follows it writes at the target)."""
    path = os.path.abspath(path)
    return {os.path.realpath(path), os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))}


class Inputs:
    """The files and folders a command reads, each with the words that name it in an error
    ("the checkpoint run/best.pt")."""

    def __init__(self):
        self._files: dict[tuple[int, int], str] = {}
        self._folders: list[tuple[str, str]] = []

    def add_file(self, path, what: str) -> None:
        """Registers the file `path`, named `what` in errors; a missing one is skipped (its
        reader reports it)."""
        ident = file_id(path)
        if ident is not None:
            self._files.setdefault(ident, what)

    def add_folder(self, path, what: str) -> None:
        """Registers the folder `path` (named `what`): nothing is written in it, and none of the
        files in it (hard links to them included) is replaced anywhere else."""
        self._folders.append((os.path.realpath(path), what))
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for entry in entries:
            self.add_file(entry.path, f"{entry.name} of {what}")

    def add_tree(self, path, what: str) -> None:
        """Registers the folder `path` (:meth:`add_folder`) and every file below it, at any depth
        (an ImageFolder tree: its images lie in class folders)."""
        self.add_folder(path, what)
        for dirpath, _, names in os.walk(path):
            for name in names:
                self.add_file(os.path.join(dirpath, name), f"{name} of {what}")

    def add_csv(self, path, what: str) -> None:
        """Registers the CSV file `path` and the image and mask files its rows name (``path`` and
        ``mask_path`` columns, relative ones from the CSV's folder). A CSV that cannot be read is
        its reader's to report: only the file itself is registered then."""
        self.add_file(path, what)
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeError, csv.Error):
            return
        base = Path(path).parent
        for row in rows:
            for column in ("path", "mask_path"):
                value = row.get(column) if isinstance(row, dict) else None
                if isinstance(value, str) and value.strip():
                    self.add_file(base / value.strip(), f"{value.strip()} (listed in {what})")

    def owner(self, path) -> str | None:
        """How `path` is an input ("is the checkpoint run/best.pt", "lies in the model folder m"),
        or None where writing it touches no input."""
        ident = file_id(path)
        if ident is not None and ident in self._files:
            return f"is {self._files[ident]}"
        for place in _places(path):
            for folder, what in self._folders:
                if place == folder:
                    return f"is {what}"
                if place.startswith(folder.rstrip(os.sep) + os.sep):
                    return f"lies in {what}"
        return None

    def check(self, path, flag: str, command: str) -> None:
        """A :class:`ValueError` (one line naming `flag` and `path`) where `path` is an input."""
        relation = self.owner(path)
        if relation is not None:
            raise ValueError(f"{flag} {Path(path)} {relation}; choose another path: {_never(command)}")

    def check_folder(self, folder, names, flag: str, command: str) -> None:
        """A :class:`ValueError` (one line naming `flag`) where the output folder `folder` is an
        input, lies in an input folder, or where a file `names` lists, written in it, would be an
        input (an input under that name in it, or a link to one)."""
        self.check(folder, flag, command)
        for name in names:
            target = Path(folder) / name
            relation = self.owner(target)
            if relation is not None:
                raise ValueError(f"{flag} {Path(folder)} would write {name} where {target} {relation}; choose "
                                 f"another folder: {_never(command)}")
