"""``curves.png``: a training run's curves per epoch, drawn from its ``metrics.csv`` rows
(:class:`~walnet.engine.run_files.RunLog`) and redrawn by rank 0 after every epoch.

Three panels: the training losses (total, classification, segmentation) and the validation
loss; the validation metrics (accuracy, macro F1, Cohen's kappa, micro ROC-AUC); the learning
rate, on a log scale. An epoch without a value (a column that an older walnet's metrics.csv
lacks, an undefined score) leaves a gap. matplotlib is imported only when a figure is drawn;
the file is written atomically with the other figures' settings (:mod:`walnet.engine.figures`).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

_log = logging.getLogger(__name__)

#: The file's name in the run folder.
CURVES_FILE = "curves.png"
#: The figure's size in inches (width, height): three panels side by side.
FIGSIZE = (14.0, 4.8)
#: (column, legend label, line style) of the loss panel and of the validation panel.
LOSS_CURVES = (("loss", "train loss", "-"), ("cls_loss", "train cls loss", "--"),
               ("seg_loss", "train seg loss", ":"), ("val_loss", "val loss (cls)", "-"))
SCORE_CURVES = (("val_accuracy", "accuracy", "-"), ("val_macro_f1", "macro F1", "-"), ("val_kappa", "kappa", "-"),
                ("val_auc", "micro AUC", "-"))


def _number(value) -> float:
    """A metrics.csv cell as a float: NaN where it is empty or no number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def draw_curves(path, rows: list[dict]) -> Path:
    """Draws the curves of `rows` (metrics.csv rows, strings or numbers, keyed by its columns)
    into the PNG file `path` (replaced atomically); returns its path."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from walnet.engine.figures import DPI, save_figure  # the figures' saving: their dpi and atomic write

    epochs = [int(_number(r.get("epoch"))) for r in rows]
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")  # constrained: room for the legends below the panels
    losses, scores, rates = fig.subplots(1, 3, sharex=True)
    for ax, curves in ((losses, LOSS_CURVES), (scores, SCORE_CURVES)):
        for column, label, style in curves:
            ax.plot(epochs, [_number(r.get(column)) for r in rows], style, marker="o", markersize=3, label=label)
    lr = [_number(r.get("lr")) for r in rows]
    rates.plot(epochs, lr, "-", marker="o", markersize=3, color="tab:purple", label="learning rate")
    if any(v > 0 for v in lr):  # a log axis needs a positive value (files of an older walnet have no lr)
        rates.set_yscale("log")
    losses.set(title="Losses", ylabel="loss")
    scores.set(title="Validation metrics", ylabel="score")
    rates.set(title="Learning rate", ylabel="learning rate")
    for ax in (losses, scores, rates):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize="small", frameon=False)
    return save_figure(fig, path)[0]


def redraw(folder, rows: list[dict]) -> bool:
    """Draws ``curves.png`` of a run into `folder`; a failure is logged as a warning naming it
    and returns False (the run goes on: its curves are a view of metrics.csv, which is kept)."""
    try:
        draw_curves(Path(folder) / CURVES_FILE, rows)
    except Exception as exc:  # noqa: BLE001 - any failure to draw is reported, never fatal to training
        _log.warning(f"{Path(folder) / CURVES_FILE} was not drawn ({type(exc).__name__}: {exc}); the run goes on, "
                     "metrics.csv holds its numbers")
        return False
    return True
