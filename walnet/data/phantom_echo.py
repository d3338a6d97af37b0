"""The phantom's textures: smooth random fields and the plaque echo that gives the class.

:func:`smooth_noise` is a zero-mean, unit-std field of a chosen number of cells (tissue layering,
plaque texture, the mixed plaque's blobs); :func:`plaque_echo` paints a region with the echo of
a plaque of one class (walnet.data.phantom_render for the plaque, walnet.data.phantom_distractors
for look-alikes elsewhere).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["plaque_echo", "smooth_noise"]


def _bspline_matrix(n_out: int, cells: int) -> np.ndarray:
    """``(n_out, cells + 3)`` cubic B-spline weights sampling ``cells`` spans uniformly."""
    u = (np.arange(n_out) + 0.5) / n_out * cells + 1.0  # node k sits at k - 1 + 0.5 ... padded
    t = np.abs(u[:, None] - (np.arange(cells + 3)[None, :] - 0.5))
    w = np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field: cubic B-spline through a ``cells`` grid of normals."""
    h, w = shape
    ch, cw = max(1, int(cells[0])), max(1, int(cells[1]))
    small = rng.standard_normal((ch + 3, cw + 3))
    # einsum (not BLAS matmul): tiny products, and no thread-pool overhead on busy machines
    tmp = np.einsum("ik,kl->il", _bspline_matrix(h, ch), small, optimize=False)
    f = np.einsum("il,jl->ij", tmp, _bspline_matrix(w, cw), optimize=False)
    s = f.std()
    return ((f - f.mean()) / (s if s > 1e-8 else 1.0)).astype(np.float32)


def plaque_echo(rng: np.random.Generator, label: int, S: int, g: dict, inside: np.ndarray, lumen: np.ndarray,
                R: np.ndarray) -> np.ndarray:
    """The plaque's echogenicity, which gives its class: bright with an acoustic shadow
    (hyperechoic), dark with an optional bright cap (hypoechoic), or bright and dark blobs with a
    shadow under the bright parts (mixed)."""
    w = None
    if label == 0:
        level = rng.uniform(1.8, 3.0)
        tex = 1.0 + 0.25 * smooth_noise(rng, (S, S), (8, 8))
        Rp = level * tex
        shadow_strength = rng.uniform(0.65, 0.92)
    elif label == 1:
        level = rng.uniform(0.15, 0.42)
        tex = 1.0 + 0.3 * smooth_noise(rng, (S, S), (8, 8))
        Rp = level * np.clip(tex, 0.3, None)
        shadow_strength = 0.0
    else:
        bright = rng.uniform(2.0, 3.2)
        dark = rng.uniform(0.1, 0.3)
        frac = rng.uniform(0.35, 0.65)
        # blobs sized relative to the plaque: 2.5-5 cells across its width / height
        cx_, cy_ = rng.uniform(2.5, 5.0, 2)
        field = smooth_noise(rng, (S, S), (int(round(cy_ * S / g["bh"])), int(round(cx_ * S / g["bw"]))))
        vals = field[inside]
        thr = np.quantile(vals, 1.0 - frac) if vals.size else 0.0
        w = 1.0 / (1.0 + np.exp(-(field - thr) * 6.0))  # soft bright/dark partition
        Rp = dark + (bright - dark) * w
        shadow_strength = rng.uniform(0.0, 0.35)
    R = np.where(inside, Rp, R)
    if label == 1 and rng.random() < 0.5:  # thin bright fibrous cap on the lumen side
        cap = ndimage.binary_dilation(inside, iterations=2) & ~inside & lumen
        R = np.where(cap, R + rng.uniform(0.8, 1.6), R)
    if shadow_strength > 0:
        # Everything deeper than the plaque in its columns, with soft lateral edges.
        below = np.maximum.accumulate(inside, axis=0) & ~inside
        if label == 2:  # shadow only under the bright parts
            bright_part = inside & (w > 0.5)
            below = np.maximum.accumulate(bright_part, axis=0) & ~inside
        sh = ndimage.gaussian_filter(below.astype(np.float32), (0.5, rng.uniform(1.0, 3.0)))
        R = R * (1.0 - shadow_strength * sh)
    return R
