"""The charts of an evaluation, after the paper, and the one way every walnet figure is saved.

Charts: ROC curves per class with their micro- and macro-averages (paper Fig. 4), the confusion
matrix (Fig. 5) and a reliability diagram of the top-label confidence. The image panels
(segmentations, attention overlays) are in :mod:`walnet.engine.panels`.

:func:`save_figure` writes every figure: at :data:`DPI` dots per inch, as PNG, vector PDF (fonts
embedded as TrueType, as journals ask) or both, under the same base name; each file is written
to a temporary name in the target folder and renamed over the final name, so a crash never
leaves a half-written figure under that name. Drawn with matplotlib's object API on the Agg
canvas (no pyplot, so no global figure state and no display needed).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from walnet.files import atomic_open
from walnet.engine.metrics import roc_auc, roc_curve

#: Resolution of every figure walnet writes (a PNG's pixels; a PDF's raster images, its text
#: and lines being vector).
DPI = 300
#: ``--figure-format``'s values and the files each writes.
FORMAT_EXTENSIONS = {"png": ("png",), "pdf": ("pdf",), "both": ("png", "pdf")}


def figure_paths(path, formats="png") -> list[Path]:
    """The files :func:`save_figure` writes for `path` (its suffix replaced by each format's):
    `formats` is a ``--figure-format`` value (png, pdf, both) or a sequence of extensions."""
    extensions = FORMAT_EXTENSIONS.get(formats) if isinstance(formats, str) else tuple(formats)
    if not extensions or any(e not in ("png", "pdf") for e in extensions):
        raise ValueError(f"figure format must be one of {', '.join(FORMAT_EXTENSIONS)}, got {formats!r}")
    path = Path(path)
    return [path.with_suffix(f".{e}") for e in extensions]


def figure_names(names, formats="png") -> list[str]:
    """The file names of the figures `names` (base names, e.g. ``"roc"``) in `formats`, in the
    order given, each figure's formats together."""
    return [p.name for name in names for p in figure_paths(name, formats)]


def save_figure(fig: Figure, path, formats="png") -> list[Path]:
    """Writes `fig` at :data:`DPI` to `path` in `formats` (see :func:`figure_paths`: a PDF beside
    or instead of the PNG, same base name), each file atomically; returns the files written.
    The figure keeps its size in inches (rounded to whole pixels): a PNG is ``figsize x DPI`` pixels."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    # whole pixels: matplotlib truncates figsize x dpi, which would lose a row to rounding (4.75 in x 300)
    fig.set_size_inches(np.round(fig.get_size_inches() * DPI) / DPI)
    written = []
    # TrueType fonts in the PDF (not Type 3): editable text, which journals' production asks for
    with matplotlib.rc_context({"pdf.fonttype": 42}):
        for target in figure_paths(path, formats):
            kind = target.suffix[1:]
            metadata = {"CreationDate": None} if kind == "pdf" else None  # the same figure, the same bytes
            with atomic_open(target) as f:
                fig.savefig(f, format=kind, dpi=DPI, metadata=metadata)
            written.append(target)
    return written


def class_title(predicted: str, probability: float, true: str | None = None, wrap: bool = False) -> str:
    """The title of one image's panel: ``"true X / predicted Y (p=0.87)"``, without the true
    class where it is not known; `wrap`: a line break after the "/" (a narrow panel)."""
    text = f"predicted {predicted} (p={probability:.2f})"
    sep = "\n" if wrap else " "
    return text if true is None else f"true {true} /{sep}{text}"


def as_array(x) -> np.ndarray | None:
    """`x` (a tensor, list or array) as a numpy array; None stays None."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def macro_roc(targets, probs) -> tuple[np.ndarray, np.ndarray, float, list[int]]:
    """The macro-average ROC curve: the mean TPR of the one-vs-rest curves over the common grid
    of all their FPR values (scikit-learn's example interpolates onto a fixed grid instead). A
    vertical step of a curve (one FPR, several TPRs) is kept on the grid as both its ends, so
    the mean curve's trapezoid area equals the mean of the classes' AUCs exactly: the
    ``auc_macro`` of ``metrics.json``. Only classes with positives and negatives take part.
    Returns (fpr, tpr, auc, the classes averaged); NaN AUC and empty curves when none can."""
    targets = as_array(targets).astype(np.int64).ravel()
    probs = as_array(probs).astype(float)
    curves, used = [], []
    for c in range(probs.shape[1]):
        positive = targets == c
        if positive.any() and not positive.all():
            curves.append(roc_curve(probs[:, c], positive))
            used.append(c)
    if not curves:
        return np.zeros(0), np.zeros(0), float("nan"), used
    grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    low, high = np.mean([_step_limits(fpr, tpr, grid) for fpr, tpr in curves], axis=0)
    fpr = np.repeat(grid, 2)  # each grid FPR twice: the mean curve's lower, then upper TPR there
    tpr = np.stack([low, high], axis=1).ravel()
    return fpr, tpr, float(np.trapezoid(tpr, fpr)), used


def _step_limits(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """[2, G]: the lowest and highest TPR of the piecewise-linear ROC curve (`fpr`, `tpr`) at each
    of `grid`'s FPRs (different where the curve rises vertically there; equal elsewhere)."""
    xs, first = np.unique(fpr, return_index=True)
    last = np.r_[first[1:] - 1, fpr.size - 1]
    lo, hi = tpr[first], tpr[last]  # the curve enters each FPR at its lowest TPR, leaves at its highest
    i = np.clip(np.searchsorted(xs, grid, side="right") - 1, 0, xs.size - 1)
    j = np.minimum(i + 1, xs.size - 1)
    on = xs[i] == grid
    span = np.where(j > i, xs[j] - xs[i], 1.0)
    between = hi[i] + (lo[j] - hi[i]) * (grid - xs[i]) / span
    return np.stack([np.where(on, lo[i], between), np.where(on, hi[i], between)])


def roc_figure(path, targets, probs, class_names=None, title: str = "ROC", formats="png") -> Figure:
    """One-vs-rest ROC curve of every class, the micro-average (all classes' scores pooled) and
    the macro-average (:func:`macro_roc`, whose AUC is ``metrics.json``'s ``auc_macro``), AUC in
    the legend, chance diagonal dotted. `targets` [N] class indices, `probs` [N,K]. A class
    absent from `targets` (no curve possible) is listed with "AUC n/a". Saved by
    :func:`save_figure` in `formats`; returns the Figure."""
    targets = as_array(targets).astype(np.int64).ravel()
    probs = as_array(probs).astype(float)
    if probs.ndim != 2 or probs.shape[0] != targets.size:
        raise ValueError(f"probs must be [N,K] with N = {targets.size}, got {probs.shape}")
    k = probs.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    fig = Figure(figsize=(5.5, 6.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for c in range(k):
        positive = targets == c
        auc = roc_auc(probs[:, c], positive)
        if np.isnan(auc):
            ax.plot([], [], label=f"{names[c]} (AUC n/a)")
            continue
        ax.plot(*roc_curve(probs[:, c], positive), linewidth=1.5, label=f"{names[c]} (AUC {auc:.3f})")
    pooled = (np.eye(k, dtype=bool)[targets]).ravel()
    micro = roc_auc(probs.ravel(), pooled)
    if np.isnan(micro):
        ax.plot([], [], ":", color="0.3", label="micro-average (AUC n/a)")
    else:
        ax.plot(*roc_curve(probs.ravel(), pooled), ":", color="0.3", linewidth=2,
                label=f"micro-average (AUC {micro:.3f})")
    fpr, tpr, macro, used = macro_roc(targets, probs)
    over = "" if len(used) == k else f", {len(used)} of {k} classes"
    ax.plot(fpr, tpr, "--", color="black", linewidth=2,
            label=f"macro-average (AUC {'n/a' if np.isnan(macro) else f'{macro:.3f}'}{over})")
    ax.plot([0, 1], [0, 1], color="0.75", linewidth=0.8, zorder=0)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.set_aspect("equal")
    # below the plot: inside, it would hide the curves of a poor model (lower right)
    fig.legend(loc="outside lower center", ncol=2, fontsize="small", frameon=False)
    save_figure(fig, path, formats)
    return fig


def confusion_figure(path, confusion, class_names=None, title: str = "Confusion matrix", formats="png") -> Figure:
    """Confusion matrix [K,K] (rows true, columns predicted): colour is the row-normalised
    rate (recall per true class), each cell annotated with its count and rate. Saved by
    :func:`save_figure` in `formats`; returns the Figure."""
    cm = as_array(confusion).astype(np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square [K,K] matrix, got shape {cm.shape}")
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows != 0)
    fig = Figure(figsize=(1.3 * k + 3, 1.2 * k + 2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{rate[i, j]:.0%}", ha="center", va="center",
                    color="white" if rate[i, j] > 0.5 else "black", fontsize="medium")
    ax.set_xticks(range(k), names, rotation=30, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    save_figure(fig, path, formats)
    return fig


def reliability_figure(path, calibration: dict, ece: float | None = None, title: str = "Reliability",
                       formats="png") -> Figure:
    """Reliability diagram of `calibration` (the per-bin ``count``, ``accuracy`` and
    ``confidence`` of :func:`~walnet.engine.calibration_metrics.calibration_bins`, equal-width
    bins over (0, 1]): above, each non-empty bin's accuracy as a bar over its confidence range,
    its mean confidence as a dot and the diagonal of perfect calibration; below, the images per
    bin. `ece` (when given) joins the title. Saved by :func:`save_figure` in `formats`;
    returns the Figure."""
    count = np.asarray(calibration["count"], dtype=np.int64)
    bins = int(calibration["bins"])
    if count.shape != (bins,) or len(calibration["accuracy"]) != bins or len(calibration["confidence"]) != bins:
        raise ValueError(f"calibration must hold {bins} counts, accuracies and confidences")
    edges = np.linspace(0, 1, bins + 1)
    filled = count > 0
    accuracy = np.array([a if a is not None else np.nan for a in calibration["accuracy"]], dtype=float)
    confidence = np.array([c if c is not None else np.nan for c in calibration["confidence"]], dtype=float)
    fig = Figure(figsize=(5.5, 6.5), dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1][filled], accuracy[filled], width=1 / bins, align="edge", color="tab:blue", alpha=0.7,
            edgecolor="black", linewidth=0.6, label="accuracy")
    top.plot(confidence[filled], accuracy[filled], "o", color="tab:red", markersize=4,
             label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="Accuracy")
    top.set_title(title + ("" if ece is None or np.isnan(ece) else f", ECE {ece:.3f}"))
    # below the figure, not over the bars: any corner of the diagram can hold bars
    fig.legend(loc="outside lower center", ncol=3, fontsize="small", frameon=False)
    bottom.bar(edges[:-1], count, width=1 / bins, align="edge", color="grey", edgecolor="black", linewidth=0.6)
    bottom.set(xlim=(0, 1), xlabel="Confidence (top-label probability)", ylabel="Images")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, path, formats)
    return fig
