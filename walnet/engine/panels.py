"""Image panels of an evaluation and of ``walnet predict --overlays``, saved as every walnet
figure is (:func:`walnet.engine.figures.save_figure`: 300 dpi PNG and/or vector PDF).

- :func:`segmentation_panel`: a row per sample, image | pseudo mask | predicted mask | true mask
  (paper Fig. 6), each row titled with the image, its true and predicted class, the mask
  columns with their IoU against the true mask, and a legend of the mask colours (the grey of
  ignored pixels included).
- :func:`attention_overlay` (one image) and :func:`attention_panel` (several): the fused
  attention map over the image in :data:`ATTENTION_CMAP` with a labelled colour bar, the
  predicted mask's contour and the RCM's box, explained by a legend.

The attention's colour map is viridis: perceptually uniform (equal steps of attention look
equally far apart, unlike jet's false edges at cyan and yellow), readable with the common
colour-vision deficiencies and in greyscale print, and, unlike inferno or magma, neither black
at its low end nor white at its high end, so it stays apart from an ultrasound image's dark
lumen and bright (hyperechoic) plaque beneath it.
"""
from __future__ import annotations

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from walnet.constants import IGNORE_INDEX
from walnet.engine.figures import DPI, as_array, save_figure
from walnet.engine.metrics import mask_iou_dice

#: Colour map of the attention heat maps, and their colour bar's label.
ATTENTION_CMAP = "viridis"
ATTENTION_LABEL = "fused attention (normalised)"
#: Mask colours and what the legend calls them: background, plaque, ignored / unknown.
MASK_COLOURS = {0: (0.0, 0.0, 0.0), 1: (1.0, 1.0, 1.0), IGNORE_INDEX: (0.5, 0.5, 0.5)}
MASK_LABELS = {0: "background", 1: "plaque", IGNORE_INDEX: "ignored (uninformative pseudo mask)"}
#: Width of a single attention overlay in pixels (5 inches at DPI; its height follows the image's aspect).
OVERLAY_WIDTH = 5 * DPI
_CONTOUR = "#ff3fa4"  # pink: apart from every viridis colour; a black edge keeps it on bright pixels
_BOX = "white"
_EDGE = [patheffects.withStroke(linewidth=3, foreground="black")]


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*mask.shape, 3))
    for value, colour in MASK_COLOURS.items():
        rgb[mask == value] = colour
    rgb[(mask != 0) & (mask != 1) & (mask != IGNORE_INDEX)] = MASK_COLOURS[1]
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


def _nearest(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [h, w] grid nearest-upsampled to [height, width] (as torch's "nearest" indexes)."""
    rows = np.arange(height) * grid.shape[0] // height
    cols = np.arange(width) * grid.shape[1] // width
    return grid[rows[:, None], cols[None, :]]


def mask_iou(mask, truth) -> float | None:
    """IoU of `mask`'s plaque (value 1) with `truth`'s, `mask` resized nearest to `truth`'s grid
    (1.0 where both are empty, as :func:`~walnet.engine.metrics.mask_iou_dice`); None where
    either has ignored pixels (an uninformative pseudo mask, an unknown true mask), which the
    evaluation's mean IoUs leave out too."""
    mask, truth = np.asarray(mask), np.asarray(truth)
    if (mask == IGNORE_INDEX).any() or (truth == IGNORE_INDEX).any():
        return None
    if mask.shape != truth.shape:
        mask = _nearest(mask, *truth.shape)
    return mask_iou_dice(mask == 1, truth == 1)[0]


def _mask_legend(fig) -> None:
    handles = [Patch(facecolor=MASK_COLOURS[v], edgecolor="black", linewidth=0.6, label=MASK_LABELS[v])
               for v in MASK_COLOURS]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small", frameon=False)


def segmentation_panel(path, images, pseudo=None, pred=None, truth=None, titles=None,
                       column_titles=("image", "pseudo mask", "predicted mask", "true mask"),
                       formats="png") -> Figure:
    """A row per sample, columns image | pseudo mask | predicted mask | true mask (paper Fig. 6).

    `images` [M,3,H,W] or [M,H,W,3] (or [M,H,W]) in [0,1] (or 0..255); each mask argument is
    [M,h,w] with 0 = background, 1 = plaque, IGNORE_INDEX (255) = ignored / unknown (drawn grey),
    or None to leave its column out. Masks may have another resolution than the images. With
    `truth`, the pseudo and predicted columns' headers give each row's IoU against it
    (:func:`mask_iou`; "n/a" where pixels are ignored). `titles` (one per row, e.g. the file and
    :func:`~walnet.engine.figures.class_title`) head the rows. A legend explains the mask
    colours. Saved by :func:`~walnet.engine.figures.save_figure` in `formats`; returns the Figure."""
    images = as_array(images)
    if images is None or images.shape[0] == 0:
        raise ValueError("segmentation_panel needs at least one image")
    m = images.shape[0]
    columns = [(column_titles[0], images, None)]
    truth_masks = as_array(truth)
    for name, masks, scored in zip(column_titles[1:], (pseudo, pred, truth), (True, True, False)):
        masks = as_array(masks)
        if masks is None:
            continue
        if masks.shape[0] != m:
            raise ValueError(f"{name}: {masks.shape[0]} masks for {m} images")
        columns.append((name, masks, scored and truth_masks is not None))
    if titles is not None and len(titles) != m:
        raise ValueError(f"{len(titles)} titles for {m} images")
    title_lines = 0 if titles is None else max(str(t).count("\n") + 1 for t in titles)
    fig = Figure(figsize=(1.75 * len(columns) + 0.3, (1.8 + 0.17 * title_lines) * m + 0.45), dpi=DPI,
                 layout="constrained")
    rows = fig.subfigures(m, 1, squeeze=False)[:, 0]
    for row, sub in enumerate(rows):
        axes = sub.subplots(1, len(columns), squeeze=False)[0]
        for ax, (name, data, scored) in zip(axes, columns):
            if scored:
                iou = mask_iou(data[row], truth_masks[row])
                name = f"{name}\nIoU vs true {'n/a' if iou is None else f'{iou:.2f}'}"
            ax.imshow((_image_rgb if data is images else _mask_rgb)(np.asarray(data[row])), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize="small")
        if titles is not None:
            sub.suptitle(str(titles[row]), fontsize="medium")
    _mask_legend(fig)
    save_figure(fig, path, formats)
    return fig


def _draw_overlay(ax, image, attention=None, mask=None, box=None, title=None):
    """Draws onto `ax`: `image`, the `attention` heat map stretched over it, `mask`'s contour and
    `box` (all three on one grid of the segmentation's size, mapped to the image's pixels).
    Returns the attention's image (for a colour bar), or None."""
    rgb = _image_rgb(np.asarray(image))
    height, width = rgb.shape[:2]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # pixel centres at integers, as imshow puts them
    ax.imshow(rgb, interpolation="nearest", extent=extent)
    heat = None
    if attention is not None:
        attention = np.asarray(attention, dtype=float)
        # bilinear: the map is coarse (a quarter of the input or less); blocks would hide its shape
        heat = ax.imshow(attention, cmap=ATTENTION_CMAP, alpha=0.5, vmin=0, vmax=1, interpolation="bilinear",
                         extent=extent)
    if mask is not None:
        full = _nearest(np.asarray(mask) == 1, height, width)
        if full.any():  # an empty mask has no contour (matplotlib would warn)
            # a border of background: plaque at the image's edge (or everywhere) is outlined there too
            padded = np.pad(full, 1).astype(float)
            contour = ax.contour(np.arange(-1, width + 1), np.arange(-1, height + 1), padded, levels=[0.5],
                                 colors=_CONTOUR, linewidths=1.5)
            contour.set_path_effects(_EDGE)
    if box is not None:
        grid = np.asarray(mask).shape if mask is not None else np.asarray(attention).shape
        sy, sx = height / grid[0], width / grid[1]
        y1, x1, y2, x2 = (int(v) for v in box)
        # an inclusive grid cell y covers image rows [y * sy, (y + 1) * sy)
        ax.add_patch(Rectangle((x1 * sx - 0.5, y1 * sy - 0.5), (x2 - x1 + 1) * sx, (y2 - y1 + 1) * sy,
                               fill=False, edgecolor=_BOX, linewidth=1.5, linestyle="--", path_effects=_EDGE))
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(str(title), fontsize="small")
    return heat


def _overlay_legend(fig, mask: bool, box: bool) -> None:
    handles = ([Line2D([], [], color=_CONTOUR, linewidth=1.5, path_effects=_EDGE, label="predicted mask")]
               if mask else [])
    if box:
        handles.append(Line2D([], [], color=_BOX, linewidth=1.5, linestyle="--", path_effects=_EDGE,
                              label="RCM box"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize="small", frameon=False,
                   handlelength=3.5)


def _colour_bar(fig, heat, axes) -> None:
    bar = fig.colorbar(heat, ax=axes, shrink=0.85, pad=0.02, aspect=25)
    bar.set_label(ATTENTION_LABEL, fontsize="small")
    bar.solids.set_alpha(1)  # the scale in full colour, not faded like the overlay
    bar.ax.tick_params(labelsize="small")


def attention_overlay(path, image, attention=None, mask=None, box=None, title=None, formats="png") -> Figure:
    """One image's attention overlay, :data:`OVERLAY_WIDTH` pixels wide (height by the image's
    aspect, plus the title and legend): `image` [H,W,3] / [3,H,W] / [H,W] in [0,1] (or 0..255)
    with `attention` [h,w] in [0,1] (the fused map, e.g. :func:`walnet.ops.fuse_attention`) in
    :data:`ATTENTION_CMAP` stretched over it with its colour bar, `mask` [h,w] (1 = plaque)
    drawn as its contour and `box` (y1, x1, y2, x2, inclusive, on the same h x w grid, e.g. the
    RCM's) as a dashed rectangle; each is left out when None. `title`: e.g. the file and
    :func:`~walnet.engine.figures.class_title`. Saved by
    :func:`~walnet.engine.figures.save_figure` in `formats`; returns the Figure."""
    height, width = _image_rgb(np.asarray(image)).shape[:2]
    aspect = min(max(height / width, 0.25), 4.0)  # a sliver of an ROI still gets a readable figure
    lines = 0 if title is None else str(title).count("\n") + 1
    inches = OVERLAY_WIDTH / DPI
    legend = 0.35 if mask is not None or box is not None else 0.0
    fig = Figure(figsize=(inches, 3.9 * aspect + 0.2 * lines + 0.1 + legend), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    heat = _draw_overlay(ax, image, attention, mask, box, title)
    if heat is not None:
        _colour_bar(fig, heat, ax)
    _overlay_legend(fig, mask is not None, box is not None)
    save_figure(fig, path, formats)
    return fig


def attention_panel(path, images, attention, masks=None, boxes=None, titles=None, columns: int = 3,
                    formats="png") -> Figure:
    """Attention overlays (:func:`attention_overlay`) of M samples in a grid of `columns`, one
    colour bar for all: `images` [M,3,H,W] (or [M,H,W,3]), `attention` [M,h,w], `masks` [M,h,w]
    and `boxes` [M,4] (or None), `titles` one per sample. Saved by
    :func:`~walnet.engine.figures.save_figure` in `formats`; returns the Figure."""
    images, attention = as_array(images), as_array(attention)
    if images is None or images.shape[0] == 0:
        raise ValueError("attention_panel needs at least one image")
    m = images.shape[0]
    masks, boxes = as_array(masks), as_array(boxes)
    for name, data in (("attention", attention), ("masks", masks), ("boxes", boxes), ("titles", titles)):
        if data is not None and len(data) != m:
            raise ValueError(f"{name}: {len(data)} for {m} images")
    cols = min(m, columns)
    rows = -(-m // cols)
    lines = 0 if titles is None else max(str(t).count("\n") + 1 for t in titles)
    fig = Figure(figsize=(2.7 * cols + 0.9, (2.6 + 0.2 * lines) * rows + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    heat = None
    for k, ax in enumerate(axes.flat):
        if k >= m:
            ax.set_axis_off()
            continue
        heat = _draw_overlay(ax, images[k], attention[k], None if masks is None else masks[k],
                             None if boxes is None else boxes[k], None if titles is None else titles[k])
    _colour_bar(fig, heat, axes)
    _overlay_legend(fig, masks is not None, boxes is not None)
    save_figure(fig, path, formats)
    return fig
