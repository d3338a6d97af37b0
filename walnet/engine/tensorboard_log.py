"""``walnet train --tensorboard``: every epoch's ``metrics.csv`` row as TensorBoard scalars
(:class:`torch.utils.tensorboard.SummaryWriter`) in ``<output>/tensorboard/``, written by rank 0.

The scalars are named after their columns: ``train/loss``, ``train/cls_loss``,
``train/seg_loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``, ``val/macro_f1``,
``val/kappa``, ``val/auc``, ``lr`` and ``time/epoch_s``, at the epoch as their step. The
``tensorboard`` package is an optional extra (``pip install 'walnet[tensorboard]'``), checked
before a run starts (:func:`check_tensorboard`).
"""
from __future__ import annotations

from pathlib import Path

#: The folder of the event files in the run folder.
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_INSTALL = "pip install 'walnet[tensorboard]'"


class MissingTensorBoardError(ImportError, ValueError):
    """``--tensorboard`` without the tensorboard package (a ValueError too, so the command line
    reports it as one line)."""


def check_tensorboard() -> None:
    """A :class:`MissingTensorBoardError` naming the extra unless TensorBoard logging can run."""
    try:
        import tensorboard  # noqa: F401 - torch's SummaryWriter writes with it
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise MissingTensorBoardError(f"--tensorboard needs the tensorboard package ({exc}); "
                                      f"{TENSORBOARD_INSTALL}") from None


def scalar_name(column: str) -> str | None:
    """The scalar a metrics.csv column is written as (None: ``epoch``, the step)."""
    if column == "epoch":
        return None
    if column.startswith("val_"):
        return "val/" + column[4:]
    if column in ("loss", "cls_loss", "seg_loss"):
        return "train/" + column
    if column.startswith("train_"):
        return "train/" + column[6:]
    return "time/" + column if column.endswith("_s") else column


class TensorBoardLog:
    """The event file of a run in ``<folder>/tensorboard/``, opened at the first row: a resumed
    run purges the events of the epochs it trains again (those of a run killed before their
    checkpoint). Every row is flushed at once, so a killed run keeps its epochs."""

    def __init__(self, folder):
        self.folder = Path(folder) / TENSORBOARD_DIR
        self.writer = None

    def add(self, row: dict) -> None:
        """Writes the scalars of one metrics.csv row (numbers; its ``epoch`` is the step)."""
        epoch = int(row["epoch"])
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder), purge_step=epoch if epoch > 0 else None)
        for column, value in row.items():
            name = scalar_name(column)
            if name is not None and value is not None and value != "":
                self.writer.add_scalar(name, float(value), epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
