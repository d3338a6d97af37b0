"""Rendering one phantom image: the scene around a plaque, speckle and the display chain.

The scene (docs/design.md §7):

* tissue: low-frequency layered reflectivity with depth attenuation;
* a horizontal, nearly anechoic lumen band whose walls carry the bright
  intima / dark media / bright adventitia double-line pattern;
* a plaque grown from the near (top) or far (bottom) wall into the lumen, with a randomly
  perturbed half-ellipse outline (walnet.data.phantom_geometry); its echogenicity is the class
  (walnet.data.phantom_echo):

  - 0 ``hyperechoic``: brighter than tissue, with an acoustic shadow below it;
  - 1 ``hypoechoic``: darker than tissue (but above the lumen), sometimes a thin
    bright fibrous cap;
  - 2 ``mixed-echoic``: heterogeneous, bright and dark blobs, a weak partial shadow;

* optionally, class-like distractors outside the plaque (walnet.data.phantom_distractors);
* fully developed speckle (Rayleigh envelope of low-pass complex noise, grain size
  following the physical scale), an extra random PSF blur, log compression with a
  random dynamic range, a random overall gain and a random depth (TGC) ramp.

By default the image is the plaque's ROI box with random margins and a random aspect ratio (the
resize to a square then stretches anisotropically); with ``plaque_area`` it is a wider view in
which the plaque covers a share of the image drawn from that range. The gain/contrast
randomisation is strong enough that mean image brightness says little about the class, while the
plaque-vs-surrounding contrast still does (see ``tests/test_phantom.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from walnet.data.phantom_distractors import Distractor, draw_distractors, paint_distractors
from walnet.data.phantom_echo import plaque_echo, smooth_noise
from walnet.data.phantom_geometry import physical_scale, plaque_mask, roi_geometry, scan_geometry

__all__ = ["Scene", "check_distractors", "check_plaque_area", "render_sample", "render_scene"]


def _tissue(rng: np.random.Generator, S: int, yy: np.ndarray, up: np.ndarray,
            scale: dict) -> tuple[np.ndarray, np.ndarray]:
    """The reflectivity of tissue, lumen and the two walls (tissue ~ 1), and the lumen's mask."""
    # Depth into the wall tissue below/above the lumen: distance from the lumen boundary.
    # Lumen occupies 0 <= up <= lumen_px (the opposite wall is at up = lumen_px).
    d_wall = -up  # tissue side of the plaque-bearing wall (d > 0 inside tissue)
    d_opp = up - scale["lumen_px"]  # tissue side of the opposite wall
    lumen = (up > 0) & (up < scale["lumen_px"])
    att = rng.uniform(0.0, 0.8)
    tissue = np.exp(-att * yy / S) * (1.0 + 0.25 * smooth_noise(rng, (S, S), (rng.integers(3, 7), rng.integers(2, 5))))
    # horizontal layering typical of tissue around the artery
    layers = smooth_noise(rng, (S, S), (rng.integers(6, 14), 2))
    tissue = np.clip(tissue * (1.0 + 0.2 * layers), 0.2, None)
    R = np.where(lumen, rng.uniform(0.02, 0.06), tissue).astype(np.float32)
    imt_px = scale["imt_mm"] / scale["sy"]
    for d in (d_wall, d_opp):
        wl = (rng.uniform(2.0, 3.2) * np.exp(-(((d - 0.15 * imt_px) / (0.18 * imt_px + 0.6)) ** 2))
              + rng.uniform(2.0, 3.5) * np.exp(-(((d - 0.85 * imt_px) / (0.22 * imt_px + 0.6)) ** 2)))
        media = (d > 0.3 * imt_px) & (d < 0.7 * imt_px)
        R = np.where(media, R * 0.45, R) + wl.astype(np.float32)
    return R, lumen


def _speckle(rng: np.random.Generator, R: np.ndarray, S: int, scale: dict) -> np.ndarray:
    """The echo amplitude: the reflectivity times the envelope of low-pass complex noise (grain in
    mm, turned into pixels), optionally blurred by the point spread function."""
    lat = np.clip(rng.uniform(0.25, 0.45) / scale["sx"], 0.6, 4.0)
    ax = np.clip(rng.uniform(0.10, 0.22) / scale["sy"], 0.5, 3.0)
    zr = ndimage.gaussian_filter(rng.standard_normal((S, S)).astype(np.float32), (ax, lat))
    zi = ndimage.gaussian_filter(rng.standard_normal((S, S)).astype(np.float32), (ax, lat))
    env = np.hypot(zr, zi)
    env /= np.sqrt(np.mean(env**2)) + 1e-8
    A = np.sqrt(np.maximum(R, 1e-4)) * env
    psf = rng.uniform(0.0, 1.6)
    if psf > 0.3:
        A = ndimage.gaussian_filter(A, (psf * rng.uniform(0.4, 0.8), psf))
    return A


def _display(rng: np.random.Generator, A: np.ndarray, tissue: np.ndarray, S: int, yy: np.ndarray) -> np.ndarray:
    """The B-mode image (uint8 grey): log compression, dynamic range, gain and a TGC ramp, the
    strong global randomisation; `tissue` marks the pixels whose median sets the gain."""
    db = 20.0 * np.log10(A + 1e-4)
    ref = float(np.median(db[tissue])) if np.any(tissue) else float(np.median(db))
    dr = rng.uniform(35.0, 70.0)
    tissue_level = rng.uniform(0.2, 0.72)
    ramp = rng.uniform(-0.15, 0.15) * (yy / S - 0.5)
    v = (db - ref) / dr + tissue_level + ramp
    gamma = rng.uniform(0.8, 1.25)
    v = np.clip(v, 0.0, 1.0) ** gamma
    return np.round(v * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    """One rendered phantom image: ``image`` uint8 ``(size, size, 3)`` (grey replicated in three
    channels), ``mask`` uint8 ``(size, size)`` with the true plaque = 255, else 0, and the
    distractors drawn outside the plaque."""

    image: np.ndarray
    mask: np.ndarray
    distractors: tuple[Distractor, ...] = ()


def check_plaque_area(plaque_area, size: int) -> tuple[float, float] | None:
    """`plaque_area` as a ``(low, high)`` pair of floats, or None; a ValueError naming it unless
    ``0 < low <= high <= 0.3`` and the smallest plaque has at least 16 pixels at `size`."""
    if plaque_area is None:
        return None
    try:
        low, high = (float(v) for v in plaque_area)
    except (TypeError, ValueError):
        raise ValueError(f"plaque_area must be a pair (low, high) of shares of the image, "
                         f"got {plaque_area!r}") from None
    if not 0.0 < low <= high <= 0.3:
        raise ValueError(f"plaque_area must satisfy 0 < low <= high <= 0.3 (shares of the image's area), "
                         f"got ({low}, {high})")
    if low * size * size < 16:
        raise ValueError(f"plaque_area's low end {low} leaves a plaque of under 16 pixels at size {size}: "
                         "give a larger share or a larger size")
    return low, high


def check_distractors(distractors) -> int:
    """`distractors` as an int, a ValueError naming it unless it is 0 to 8."""
    try:
        count = int(distractors)
    except (TypeError, ValueError):
        count = None
    if count is None or count != distractors or not 0 <= count <= 8:
        raise ValueError(f"distractors must be a whole number from 0 to 8, got {distractors!r}")
    return count


def render_scene(rng: np.random.Generator, label: int, size: int = 224, *, plaque_area=None,
                 distractors: int = 0) -> Scene:
    """Render one phantom image of class `label` (0 hyperechoic, 1 hypoechoic, 2 mixed-echoic).

    `rng` is the source of all randomness: the result is a pure function of its state. With
    ``plaque_area=(low, high)`` the view is wider than the plaque's ROI and the plaque covers a
    share of the image drawn uniformly from that range (about, as the outline's pixels fall);
    `distractors` class-like blobs are drawn outside the plaque from a stream split off `rng`
    (the same for every label). Defaults: the ROI crop, no distractors.
    """
    label, size, distractors = int(label), int(size), check_distractors(distractors)
    if label not in (0, 1, 2):
        raise ValueError(f"label must be 0, 1 or 2, got {label}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    plaque_area = check_plaque_area(plaque_area, size)
    S = size
    # split before any draw: the distractors' stream does not depend on the label
    side = rng.spawn(1)[0] if distractors else None
    g = roi_geometry(rng, S) if plaque_area is None else scan_geometry(rng, S, plaque_area)
    yy = np.arange(S, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(S, dtype=np.float32)[None, :] + 0.5
    plaque, up = plaque_mask(g, yy, xx)
    scale = physical_scale(rng, g)
    R, lumen = _tissue(rng, S, yy, up, scale)
    R = plaque_echo(rng, label, S, g, plaque, lumen, R)
    found: list[Distractor] = []
    if side is not None:
        found = draw_distractors(side, distractors, plaque, lumen)
        R = paint_distractors(side, found, R, plaque, lumen)
    A = _speckle(rng, R, S, scale)
    img8 = _display(rng, A, ~lumen & ~plaque, S, yy)
    image = np.repeat(img8[:, :, None], 3, axis=2)
    return Scene(image, plaque.astype(np.uint8) * 255, tuple(found))


def render_sample(rng: np.random.Generator, label: int, size: int = 224, *, plaque_area=None,
                  distractors: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` of :func:`render_scene` (same arguments)."""
    scene = render_scene(rng, label, size, plaque_area=plaque_area, distractors=distractors)
    return scene.image, scene.mask
