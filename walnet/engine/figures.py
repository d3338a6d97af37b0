"""PNG figures of an evaluation, after the paper: ROC curves (Fig. 4), the confusion matrix
(Fig. 5) and a segmentation panel (Fig. 6: image | pseudo mask | prediction | truth); a
reliability diagram of the top-label confidence; and the
attention overlay of one image (``walnet predict --overlays``) or of a panel of samples
(``walnet evaluate``'s ``attention.png``): the fused attention map as a heat map over the image,
the predicted mask's contour and the RCM's box.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, so no global figure state and
no display needed). Every PNG is written to a temporary name in the target folder and renamed
over the final name, so a crash never leaves a half-written figure under that name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from walnet.constants import IGNORE_INDEX
from walnet.files import atomic_open
from walnet.engine.metrics import roc_auc, roc_curve

# mask colours: background, foreground, ignored / unknown
_MASK_COLOURS = {0: (0.0, 0.0, 0.0), 1: (1.0, 1.0, 1.0), IGNORE_INDEX: (0.5, 0.5, 0.5)}


def _numpy(x) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _save(fig: Figure, path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_open(path) as f:
        fig.savefig(f, format="png")
    return Path(path)


def roc_figure(path, targets, probs, class_names=None, title: str = "ROC") -> Path:
    """One-vs-rest ROC curve of every class and the micro-average (all classes' scores pooled),
    AUC in the legend, chance diagonal dashed. `targets` [N] class indices, `probs` [N,K].
    A class absent from `targets` (no curve possible) is listed with "AUC n/a"."""
    targets = _numpy(targets).astype(np.int64).ravel()
    probs = _numpy(probs).astype(float)
    if probs.ndim != 2 or probs.shape[0] != targets.size:
        raise ValueError(f"probs must be [N,K] with N = {targets.size}, got {probs.shape}")
    k = probs.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    fig = Figure(figsize=(5.5, 5), dpi=100)
    ax = fig.add_subplot()
    curves = [(names[c], probs[:, c], targets == c, "-") for c in range(k)]
    curves.append(("micro-average", probs.ravel(), (np.eye(k, dtype=bool)[targets]).ravel(), "--"))
    for name, scores, positive, style in curves:
        auc = roc_auc(scores, positive)
        if np.isnan(auc):
            ax.plot([], [], style, label=f"{name} (AUC n/a)")
            continue
        fpr, tpr = roc_curve(scores, positive)
        ax.plot(fpr, tpr, style, linewidth=1.8, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def confusion_figure(path, confusion, class_names=None, title: str = "Confusion matrix") -> Path:
    """Confusion matrix [K,K] (rows true, columns predicted): colour is the row-normalised
    rate (recall per true class), each cell annotated with its count and rate."""
    cm = _numpy(confusion).astype(np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square [K,K] matrix, got shape {cm.shape}")
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows != 0)
    fig = Figure(figsize=(1.3 * k + 3, 1.2 * k + 2), dpi=100)
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
    fig.tight_layout()
    return _save(fig, path)


def reliability_figure(path, calibration: dict, ece: float | None = None, title: str = "Reliability") -> Path:
    """Reliability diagram of `calibration` (the per-bin ``count``, ``accuracy`` and
    ``confidence`` of :func:`~walnet.engine.calibration_metrics.calibration_bins`, equal-width
    bins over (0, 1]): above, each non-empty bin's accuracy as a bar over its confidence range,
    its mean confidence as a dot and the diagonal of perfect calibration; below, the images per
    bin. `ece` (when given) joins the title."""
    count = np.asarray(calibration["count"], dtype=np.int64)
    bins = int(calibration["bins"])
    if count.shape != (bins,) or len(calibration["accuracy"]) != bins or len(calibration["confidence"]) != bins:
        raise ValueError(f"calibration must hold {bins} counts, accuracies and confidences")
    edges = np.linspace(0, 1, bins + 1)
    filled = count > 0
    accuracy = np.array([a if a is not None else np.nan for a in calibration["accuracy"]], dtype=float)
    confidence = np.array([c if c is not None else np.nan for c in calibration["confidence"]], dtype=float)
    fig = Figure(figsize=(5.5, 6.5), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1][filled], accuracy[filled], width=1 / bins, align="edge", color="tab:blue", alpha=0.7,
            edgecolor="black", linewidth=0.6, label="accuracy")
    top.plot(confidence[filled], accuracy[filled], "o", color="tab:red", markersize=4,
             label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Accuracy",
            title=title + ("" if ece is None or np.isnan(ece) else f", ECE {ece:.3f}"))
    top.legend(loc="best", fontsize="small")
    bottom.bar(edges[:-1], count, width=1 / bins, align="edge", color="grey", edgecolor="black", linewidth=0.6)
    bottom.set(xlim=(0, 1), xlabel="Confidence (top-label probability)", ylabel="Images")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _save(fig, path)


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*mask.shape, 3))
    for value, colour in _MASK_COLOURS.items():
        rgb[mask == value] = colour
    rgb[(mask != 0) & (mask != 1) & (mask != IGNORE_INDEX)] = _MASK_COLOURS[1]
    return rgb


def _image_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)  # CHW -> HWC
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image.astype(float)
    if image.max(initial=0) > 1.0:
        image = image / 255.0
    return np.clip(image, 0, 1)


def segmentation_panel(path, images, pseudo=None, pred=None, truth=None, titles=None,
                       column_titles=("image", "pseudo mask", "prediction", "true mask")) -> Path:
    """A row per sample, columns image | pseudo mask | predicted mask | true mask (paper Fig. 6).

    `images` [M,3,H,W] or [M,H,W,3] (or [M,H,W]) in [0,1] (or 0..255); each mask argument is
    [M,h,w] with 0 = background, 1 = plaque, IGNORE_INDEX (255) = ignored / unknown (drawn grey), or None to
    leave its column out. Masks may have another resolution than the images. `titles` (one per
    row, e.g. file names) label the rows."""
    images = _numpy(images)
    if images is None or images.shape[0] == 0:
        raise ValueError("segmentation_panel needs at least one image")
    m = images.shape[0]
    columns = [(column_titles[0], images, _image_rgb)]
    for name, masks in zip(column_titles[1:], (pseudo, pred, truth)):
        masks = _numpy(masks)
        if masks is None:
            continue
        if masks.shape[0] != m:
            raise ValueError(f"{name}: {masks.shape[0]} masks for {m} images")
        columns.append((name, masks, _mask_rgb))
    if titles is not None and len(titles) != m:
        raise ValueError(f"{len(titles)} titles for {m} images")
    fig = Figure(figsize=(2.2 * len(columns), 2.2 * m + 0.3), dpi=100)
    axes = fig.subplots(m, len(columns), squeeze=False)
    for row in range(m):
        for col, (name, data, to_rgb) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(to_rgb(np.asarray(data[row])), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize="medium")
        if titles is not None:
            axes[row, 0].set_ylabel(str(titles[row]), fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


#: Width of a single attention overlay in pixels (its height follows the image's aspect).
OVERLAY_WIDTH = 500
_OVERLAY_DPI = 100


def _nearest(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [h, w] grid nearest-upsampled to [height, width] (as torch's "nearest" indexes)."""
    rows = np.arange(height) * grid.shape[0] // height
    cols = np.arange(width) * grid.shape[1] // width
    return grid[rows[:, None], cols[None, :]]


def _draw_overlay(ax, image, attention=None, mask=None, box=None, title=None) -> None:
    """Draws onto `ax`: `image`, the `attention` heat map stretched over it, `mask`'s contour and
    `box` (all three on one grid of the segmentation's size, mapped to the image's pixels)."""
    rgb = _image_rgb(np.asarray(image))
    height, width = rgb.shape[:2]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # pixel centres at integers, as imshow puts them
    ax.imshow(rgb, interpolation="nearest", extent=extent)
    if attention is not None:
        attention = np.asarray(attention, dtype=float)
        # bilinear: the map is coarse (a quarter of the input or less); blocks would hide its shape
        ax.imshow(attention, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear", extent=extent)
    if mask is not None:
        full = _nearest(np.asarray(mask) == 1, height, width)
        if full.any() and not full.all():  # a constant mask has no contour (matplotlib would warn)
            ax.contour(full.astype(float), levels=[0.5], colors="white", linewidths=1.5)
    if box is not None:
        grid = np.asarray(mask).shape if mask is not None else np.asarray(attention).shape
        sy, sx = height / grid[0], width / grid[1]
        y1, x1, y2, x2 = (int(v) for v in box)
        # an inclusive grid cell y covers image rows [y * sy, (y + 1) * sy)
        ax.add_patch(Rectangle((x1 * sx - 0.5, y1 * sy - 0.5), (x2 - x1 + 1) * sx, (y2 - y1 + 1) * sy,
                               fill=False, edgecolor="lime", linewidth=1.5, linestyle="--"))
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(str(title), fontsize="medium")


def attention_overlay(path, image, attention=None, mask=None, box=None, title=None) -> Path:
    """One image's attention overlay as a PNG of :data:`OVERLAY_WIDTH` pixels' width (height by
    the image's aspect, plus the title): `image` [H,W,3] / [3,H,W] / [H,W] in [0,1] (or 0..255)
    with `attention` [h,w] in [0,1] (the fused map, e.g. :func:`walnet.ops.fuse_attention`)
    as a jet heat map stretched over it, `mask` [h,w] (1 = plaque) drawn as its contour and
    `box` (y1, x1, y2, x2, inclusive, on the same h x w grid, e.g. the RCM's) as a dashed
    rectangle; each is left out when None. `title`: e.g. the predicted class and probability."""
    height, width = _image_rgb(np.asarray(image)).shape[:2]
    aspect = min(max(height / width, 0.25), 4.0)  # a sliver of an ROI still gets a readable figure
    inches = OVERLAY_WIDTH / _OVERLAY_DPI
    fig = Figure(figsize=(inches, inches * aspect + 0.6), dpi=_OVERLAY_DPI)
    _draw_overlay(fig.add_subplot(), image, attention, mask, box, title)
    fig.tight_layout()
    return _save(fig, path)


def attention_panel(path, images, attention, masks=None, boxes=None, titles=None, columns: int = 3) -> Path:
    """Attention overlays (:func:`attention_overlay`) of M samples in a grid of `columns`:
    `images` [M,3,H,W] (or [M,H,W,3]), `attention` [M,h,w], `masks` [M,h,w] and `boxes` [M,4]
    (or None), `titles` one per sample."""
    images, attention = _numpy(images), _numpy(attention)
    if images is None or images.shape[0] == 0:
        raise ValueError("attention_panel needs at least one image")
    m = images.shape[0]
    masks, boxes = _numpy(masks), _numpy(boxes)
    for name, data in (("attention", attention), ("masks", masks), ("boxes", boxes), ("titles", titles)):
        if data is not None and len(data) != m:
            raise ValueError(f"{name}: {len(data)} for {m} images")
    cols = min(m, columns)
    rows = -(-m // cols)
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= m:
            ax.set_axis_off()
            continue
        _draw_overlay(ax, images[k], attention[k], None if masks is None else masks[k],
                      None if boxes is None else boxes[k], None if titles is None else titles[k])
    fig.tight_layout()
    return _save(fig, path)
