"""Class-like echo structures outside the phantom's plaque (docs/design.md §7, "Distractors").

A B-mode view around the carotid holds more than the plaque: calcified spots in the walls and
tissue that cast shadows, dark pockets (the jugular vein's edge, lymph nodes, thyroid cysts),
heterogeneous patches (thyroid, muscle). Each distractor is a blob of about the plaque's size,
placed in tissue or wall away from the plaque and the lumen, whose echo is drawn exactly as a
plaque of a random class would be (walnet.data.phantom_echo). Their number is fixed
and their kinds and places come from their own random stream, split off before any draw that
depends on the label: for one seed the distractors are the same whatever the plaque's class, so
they carry no information about it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from walnet.data.phantom_echo import plaque_echo

__all__ = ["Distractor", "draw_distractors", "paint_distractors"]


@dataclass(frozen=True)
class Distractor:
    """One distractor: the class whose plaque echo it copies and its pixels."""

    kind: int
    mask: np.ndarray


def draw_distractors(rng: np.random.Generator, count: int, plaque: np.ndarray, lumen: np.ndarray) -> list[Distractor]:
    """`count` blobs of half to one and a half times the plaque's area (wider than tall, with a
    perturbed outline), each of a random kind, centred on a random tissue pixel at least a few
    pixels from the plaque and outside the lumen, clipped to that free region. A blob the free
    region leaves nothing of is dropped."""
    S = plaque.shape[0]
    free = ~lumen & ~ndimage.binary_dilation(plaque, iterations=max(2, S // 32))
    where = np.flatnonzero(free)
    area = max(int(plaque.sum()), 16)
    yy = np.arange(S, dtype=np.float64)[:, None] + 0.5
    xx = np.arange(S, dtype=np.float64)[None, :] + 0.5
    out = []
    for _ in range(count):
        kind = int(rng.integers(0, 3))
        blob_area = area * rng.uniform(0.5, 1.5)
        aspect = rng.uniform(1.0, 3.0)
        b = np.sqrt(blob_area / (np.pi * aspect))
        a = aspect * b
        k = np.arange(2, 5)
        coef, phase = rng.normal(0.0, 0.08, k.size), rng.uniform(0, 2 * np.pi, k.size)
        if where.size == 0:
            continue
        centre = where[rng.integers(where.size)]
        cy, cx = divmod(int(centre), S)
        dy, dx = (yy - cy - 0.5) / b, (xx - cx - 0.5) / a
        theta = np.arctan2(dy, dx)
        r = 1.0 + (coef[:, None, None] * np.cos(k[:, None, None] * theta[None] + phase[:, None, None])).sum(0)
        mask = (dx**2 + dy**2 <= r**2) & free
        if mask.any():
            out.append(Distractor(kind, mask))
    return out


def paint_distractors(rng: np.random.Generator, distractors: list[Distractor], R: np.ndarray, plaque: np.ndarray,
                      lumen: np.ndarray) -> np.ndarray:
    """The reflectivity `R` with each distractor's echo drawn as a plaque of its kind
    (shadows included). The plaque's own pixels keep their echo: a distractor's shadow may darken
    the tissue below the plaque but never hides the plaque itself."""
    S = R.shape[0]
    out = R
    for d in distractors:
        ys, xs = np.nonzero(d.mask)
        box = {"bh": float(ys.max() - ys.min() + 1), "bw": float(xs.max() - xs.min() + 1)}
        out = plaque_echo(rng, d.kind, S, box, d.mask, lumen, out)
    return np.where(plaque, R, out)
