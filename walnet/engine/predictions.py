"""The per-image predictions file of ``walnet evaluate --save-predictions FILE``, and reading it
back (``walnet experiment --folds`` pools the folds' files).

One row per scored image, in dataset order: ``path`` (the image relative to the data root, as
``split.csv`` keys it: the CSV file's folder or the ``--data-dir`` folder; absolute for an image
outside it), ``frame`` (a DICOM frame, empty otherwise), ``patient`` (empty without one),
``label`` and ``predicted`` (class names) and ``prob_<class>`` per class. A cell that a
spreadsheet would read as a formula is written as the same value in a harmless spelling: a
relative path with ``./`` in front (as ``walnet predict`` writes paths), a patient id with a
leading ``'``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from walnet.constants import FORMULA_PREFIXES, formula_problem
from walnet.data.datasets import relative_path
from walnet.engine.inputs import Inputs
from walnet.files import atomic_open, check_writable, refuse_special

FLAG = "--save-predictions"
#: The columns before the ``prob_<class>`` ones.
COLUMNS = ("path", "frame", "patient", "label", "predicted")


def check_predictions_file(path, reads: Inputs, output, writes) -> None:
    """Before any work: the file `path` can be written, is no input the command `reads`, and is
    none of the files `writes` it writes into its folder `output` (a one-line ValueError naming
    ``--save-predictions`` otherwise). An existing file is replaced; anything else there (a
    folder, a FIFO, a device) is refused."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if path.is_dir():
            raise ValueError(f"{FLAG} {path} is a folder; give the CSV file to write")
        refuse_special(path, f"{FLAG} {path}", "a file")
    reads.check(path, FLAG, "evaluate")
    own = {(Path(output) / name).resolve() for name in writes}
    if path.resolve() in own:
        raise ValueError(f"{FLAG} {path} is where evaluate writes {path.name}; choose another file")
    check_writable(path, FLAG)


def _cell(text: str, guard: str) -> str:
    return guard + text if text.startswith(FORMULA_PREFIXES) else text


def write_predictions(path, records, order, probs, classes) -> Path:
    """Writes the predictions file (see the module docstring) atomically: `probs` [N,K] are the
    class probabilities of the dataset items ``order`` [N] (each row's dataset index, as
    :class:`~walnet.engine.loops.EvalOutputs` holds them), `records` the dataset's records."""
    for name in classes:
        problem = formula_problem(name)
        if problem:
            raise ValueError(f"{FLAG}: the model's class name {name!r} {problem}; it cannot be written into a CSV")
    if order is None or len(order) != len(probs):
        raise ValueError(f"{FLAG}: the scores carry no dataset index to match them to their images")
    probs = np.asarray(probs, dtype=np.float64)
    with atomic_open(path, text=True) as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, *(f"prob_{c}" for c in classes)])
        for k in np.argsort(np.asarray(order), kind="stable"):
            r = records[int(order[k])]
            cells = [_cell(relative_path(r.path, r.root), "./"), "" if r.frame is None else str(r.frame),
                     _cell(r.patient or "", "'"), classes[r.label], classes[int(probs[k].argmax())]]
            writer.writerow(cells + [f"{float(p):.9g}" for p in probs[k]])
    return Path(path)


def read_predictions(path, classes) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A predictions file written by :func:`write_predictions` for the class names `classes`:
    each row's image (``path``, with ``#frame=<k>`` for a frame), the true labels [N] (indices
    into `classes`) and the probabilities [N,K]. A file that is not one is a ValueError naming it."""
    redo = "delete it to score the run again"
    expected = [*COLUMNS, *(f"prob_{c}" for c in classes)]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read the predictions {path} ({exc}); {redo}") from None
    if not rows or rows[0] != expected:
        raise ValueError(f"{path} is not a predictions file of the classes {list(classes)} (expected the columns "
                         f"{','.join(expected)}); {redo}")
    keys, labels, probs = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        try:
            labels.append(list(classes).index(row[3]))
            probs.append([float(v) for v in row[len(COLUMNS):]])
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{line}: not a row of a predictions file; {redo}") from None
        if len(probs[-1]) != len(classes):
            raise ValueError(f"{path}:{line}: {len(probs[-1])} probabilities for {len(classes)} classes; {redo}")
        keys.append(row[0] if not row[1] else f"{row[0]}#frame={row[1]}")
    return keys, np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64).reshape(-1, len(classes))
