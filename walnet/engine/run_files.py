"""The files a training run writes every epoch: ``metrics.csv`` (:class:`RunLog`) and its
checkpoints ``last.pt`` and ``best.pt`` (:class:`RunCheckpoints`).

``best.pt`` holds what inference and evaluation need: the weights (the model's state dict, its
input normalisation buffers included), the train config under ``"args"`` (from which the model's
spec is rebuilt), ``classes``, ``epoch``, ``best_metric`` and ``best_value``. ``last.pt`` holds
the same and the training state a resume needs: the optimizer's, the gradient scaler's and the
learning-rate schedule's (``"scheduler"``), the epoch of best.pt (``best_epoch``) and whether the
run stopped early (``stopped_early``, ``--patience``).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from walnet.data.splits import save_run_record
from walnet.engine.checkpoint import save_checkpoint
from walnet.files import append_text, atomic_open

#: The key in :func:`~walnet.engine.loops.evaluate`'s result of each ``--eval-metric``.
EVAL_METRIC_KEYS = {"accuracy": "accuracy", "macro_f1": "macro_f1", "kappa": "kappa", "auc": "auc_micro"}
#: The columns of metrics.csv: the training losses and accuracy, the validation loss (the mean
#: cross-entropy of the validation images, unweighted), every ``--eval-metric``'s ``val_<metric>``,
#: ``epoch_s`` (the epoch's wall-clock seconds, training and validation) and ``lr`` (the learning
#: rate the epoch trained with).
METRIC_FIELDS = ("epoch", "loss", "cls_loss", "seg_loss", "train_accuracy", "val_loss",
                 *(f"val_{metric}" for metric in EVAL_METRIC_KEYS), "epoch_s", "lr")
#: The columns of metrics.csv that time the run: the only ones in which a resumed run's rows may
#: differ from an uninterrupted run's.
TIMING_FIELDS = ("epoch_s",)


class RunLog:
    """A run's ``metrics.csv``: one row per epoch, with the columns of :data:`METRIC_FIELDS`."""

    def __init__(self, path: Path):
        self.path = path

    def resume_at(self, epoch: int) -> None:
        """Drops the rows of epochs >= `epoch` (written by a run killed before its checkpoint)
        and writes the file again with the columns of :data:`METRIC_FIELDS` (a column that a
        file of an older walnet lacks is empty in its rows)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < epoch]
        with atomic_open(self.path, text=True) as f:
            writer = csv.DictWriter(f, METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def rows(self) -> list[dict]:
        """The rows written so far, as the file holds them (strings; a column that a file of an
        older walnet lacks is empty); none before the first."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return [{name: r.get(name) or "" for name in METRIC_FIELDS} for r in csv.DictReader(f)]

    def append(self, row: dict) -> None:
        """Appends the row of one epoch (the header first, to a new file)."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, METRIC_FIELDS)
        if not self.path.exists():
            writer.writeheader()
        writer.writerow(row)
        append_text(self.path, text.getvalue())


class RunCheckpoints:
    """A run's ``last.pt`` (every epoch) and ``best.pt`` (the epoch with the best validation
    score by ``config.eval_metric`` so far; of equal scores the later one, trained longer; an
    undefined (NaN) score never). `best` and `best_epoch`: the best score so far and its epoch
    (-1: none yet). Every process of a run keeps the count (:meth:`update`, with the score rank
    0 found), so that all stop early together; rank 0 writes the files (:meth:`save`)."""

    def __init__(self, config, classes, best: float = -math.inf, best_epoch: int = -1, record=None):
        self.output, self.metric, self.best, self.best_epoch = Path(config.output), config.eval_metric, best, best_epoch
        self.args, self.classes = config.to_dict(), list(classes)
        self.record = record  # a new run's split and data record: written just before its first last.pt

    def update(self, epoch: int, value: float) -> bool:
        """Epoch `epoch` scored `value`: whether it becomes best.pt."""
        improved = value >= self.best
        if improved:
            self.best, self.best_epoch = value, epoch
        return improved

    def stale(self, epoch: int) -> int:
        """The epochs up to `epoch` since best.pt's (all of them while there is none)."""
        return epoch - self.best_epoch

    def save(self, epoch: int, improved: bool, model, training: dict) -> None:
        """Writes last.pt of epoch `epoch` (with `training`, the state a resume needs: optimizer,
        scaler, scheduler, stopped_early) and, where the epoch `improved`, best.pt (without it)."""
        state = {"model": model.state_dict(), "args": self.args, "classes": self.classes, "epoch": epoch,
                 "best_metric": self.metric, "best_value": self.best}
        if self.record is not None:
            # before last.pt: a folder with last.pt always has its split; one killed in between
            # has no last.pt, so its split.csv counts for nothing and the next run replaces it
            save_run_record(self.output, *self.record)
            self.record = None
        save_checkpoint(self.output / "last.pt", {**state, **training, "best_epoch": self.best_epoch})
        if improved:
            save_checkpoint(self.output / "best.pt", state)
