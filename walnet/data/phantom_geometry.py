"""Where the phantom's plaque lies and what shape it has (walnet.data.phantom_render draws the
rest of the scene around it).

Two framings of the same plaque:

* :func:`roi_geometry`, the default: the image is the plaque's ROI box with random margins, cut
  out of a longitudinal scan and resized to a square (the paper's preprocessing), so the plaque
  fills about a fifth to a third of it and the resize stretches it anisotropically;
* :func:`scan_geometry`: the image is a wider field of view with isotropic pixels, in which the
  plaque covers a chosen share of the area (``plaque_area``, a range), at a random place along
  a horizontal vessel.

Both return a dict of the plaque's box (``bw``, ``bh`` in pixels), its wall line and outline
parameters, which :func:`plaque_mask` turns into pixels and :func:`physical_scale` into mm per
pixel.
"""
from __future__ import annotations

import numpy as np

__all__ = ["physical_scale", "plaque_mask", "roi_geometry", "scan_geometry"]

#: Harmonics of the plaque outline's radial perturbation.
_HARMONICS = np.arange(2, 7)


def _outline(rng: np.random.Generator) -> dict:
    """The random perturbation of the half-ellipse outline: harmonics, their amplitude and phase,
    and the asymmetry of the shoulders."""
    coef = rng.normal(0.0, 1.0, _HARMONICS.size) / _HARMONICS
    phase = rng.uniform(0, 2 * np.pi, _HARMONICS.size)
    amp = rng.uniform(0.05, 0.25)
    skew = rng.uniform(-0.35, 0.35)  # asymmetric shoulders
    return dict(k=_HARMONICS, coef=coef, phase=phase, amp=amp, skew=skew)


def _placed(rng: np.random.Generator, x0: float, y0: float, bw: float, bh: float) -> dict:
    """The plaque in the box (x0, y0, bw, bh): its wall (far wall at the bottom of the box, near
    wall at the top), the part sunk into the wall, and its outline."""
    far = rng.random() < 0.6  # far-wall plaques are the common (better imaged) case
    embed = bh * rng.uniform(0.06, 0.16)  # part of the plaque sunk into the wall
    wall = y0 + bh - embed if far else y0 + embed
    return dict(far=far, wall=wall, cx=x0 + bw / 2.0, a=bw / 2.0, b=bh - embed, embed=embed, bw=bw, bh=bh,
                **_outline(rng))


def roi_geometry(rng: np.random.Generator, size: int) -> dict:
    """The plaque in an ROI crop: random margins around the plaque box, as fractions of the box."""
    ml, mr = rng.uniform(0.08, 0.45, 2)
    mt, mb = rng.uniform(0.10, 0.60, 2)
    bw = size / (1.0 + ml + mr)
    bh = size / (1.0 + mt + mb)
    return _placed(rng, ml * bw, mt * bh, bw, bh)


def _fill(g: dict) -> float:
    """The share of its box that the plaque outline `g` covers, counted on a fine grid of the box
    (which :func:`_placed` put at the origin). The outline is scale-free in box units, so this
    fixes the box size for a wanted area."""
    n = 96
    yy = (np.arange(n, dtype=np.float64)[:, None] + 0.5) / n * g["bh"]
    xx = (np.arange(n, dtype=np.float64)[None, :] + 0.5) / n * g["bw"]
    return float(plaque_mask(g, yy, xx)[0].mean())


def scan_geometry(rng: np.random.Generator, size: int, plaque_area: tuple[float, float]) -> dict:
    """The plaque in a wider view: its length and thickness in mm (as :func:`physical_scale`
    draws them) set its aspect in isotropic pixels, a share of the image drawn uniformly from
    `plaque_area` sets its size, and it lies anywhere along the vessel with a small border."""
    length_mm = rng.uniform(6.0, 20.0)
    lumen_mm = rng.uniform(5.0, 8.0)
    thick_mm = min(length_mm * rng.uniform(0.18, 0.45), lumen_mm * rng.uniform(0.35, 0.8))
    share = rng.uniform(*plaque_area)
    pos = rng.random(2)
    g = _placed(rng, 0.0, 0.0, length_mm, thick_mm)  # the outline, in mm for now
    area = share * size * size / _fill(g)  # the box's area in pixels
    aspect = length_mm / thick_mm
    bh = np.sqrt(area / aspect)
    bw = min(aspect * bh, 0.92 * size)  # a plaque longer than the view is cut to fit
    bh = min(area / bw, 0.75 * size)
    border = 0.04 * size
    x0 = border + pos[1] * max(size - 2 * border - bw, 0.0)
    y0 = border + pos[0] * max(size - 2 * border - bh, 0.0)
    ratio = bh / thick_mm
    embed = g["embed"] * ratio
    g.update(wall=y0 + bh - embed if g["far"] else y0 + embed, cx=x0 + bw / 2.0, a=bw / 2.0, b=g["b"] * ratio,
             embed=embed, bw=bw, bh=bh, dims_mm=(length_mm, lumen_mm, thick_mm))
    return g


def plaque_mask(g: dict, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plaque mask (a perturbed half-ellipse on the wall, plus the part inside the wall) and
    the height above the wall of every pixel (positive into the lumen)."""
    up = (g["wall"] - yy) if g["far"] else (yy - g["wall"])
    dx = (xx - g["cx"]) / g["a"]
    dy = up / g["b"]
    theta = np.arctan2(dy, dx)
    pert = (g["coef"][:, None, None] * np.cos(g["k"][:, None, None] * theta[None] + g["phase"][:, None, None])).sum(0)
    pert = (pert - pert.min()) / max(float(np.ptp(pert)), 1e-6)  # in [0, 1]
    r = 1.0 - g["amp"] * pert
    dxs = dx * (1.0 + g["skew"] * np.clip(dy, 0, 1) * np.sign(dx))  # shoulder asymmetry
    plaque = (dxs**2 + np.maximum(dy, 0) ** 2 <= r**2) & (up >= -g["embed"]) & (np.abs(dx) <= 1.0)
    # Make sure the in-wall part tapers like the plaque foot (no rectangular slab).
    plaque &= (up >= 0) | (np.abs(dx) <= np.sqrt(np.clip(1.0 + up / g["embed"], 0, 1)) * 0.98)
    return plaque, up


def physical_scale(rng: np.random.Generator, g: dict) -> dict:
    """mm per pixel (lateral sx, axial sy), the lumen's height in pixels and the intima-media
    thickness in mm: they set the speckle grain and the wall's look. A scan geometry brings its
    plaque's size in mm; an ROI crop's is drawn here."""
    if "dims_mm" in g:
        length_mm, lumen_mm, thick_mm = g["dims_mm"]
    else:
        length_mm = rng.uniform(6.0, 20.0)
        lumen_mm = rng.uniform(5.0, 8.0)
        thick_mm = min(length_mm * rng.uniform(0.18, 0.45), lumen_mm * rng.uniform(0.35, 0.8))
    sx = length_mm / (2 * g["a"])  # mm / px, lateral
    sy = thick_mm / (g["bh"])  # mm / px, axial
    return {"sx": sx, "sy": sy, "lumen_px": lumen_mm / sy, "imt_mm": rng.uniform(0.5, 1.0)}
