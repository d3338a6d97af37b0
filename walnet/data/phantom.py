"""Synthetic carotid-plaque ultrasound phantom (no download needed).

Each sample is a B-mode-like crop around one plaque, rendered directly at the output
size (as if the plaque ROI box had been cut out of a longitudinal carotid scan and
resized to ``size x size``, the paper's preprocessing):

* tissue: low-frequency layered reflectivity with depth attenuation;
* a horizontal, nearly anechoic lumen band whose walls carry the bright
  intima / dark media / bright adventitia double-line pattern;
* a plaque grown from the near (top) or far (bottom) wall into the lumen, with a
  randomly perturbed half-ellipse outline; its echogenicity is the class:

  - 0 ``hyperechoic``: brighter than tissue, with an acoustic shadow below it;
  - 1 ``hypoechoic``: darker than tissue (but above the lumen), sometimes a thin
    bright fibrous cap;
  - 2 ``mixed-echoic``: heterogeneous, bright and dark blobs, a weak partial shadow;

* fully developed speckle (Rayleigh envelope of low-pass complex noise, grain size
  following the random crop scale), an extra random PSF blur, log compression with a
  random dynamic range, a random overall gain and a random depth (TGC) ramp.

The ROI box has random margins around the plaque and a random aspect ratio (the resize
to a square then stretches anisotropically). The gain/contrast randomisation is
strong enough that mean image brightness says little about the class, while the
plaque-vs-surrounding contrast still does (see ``tests/test_phantom.py``).

:func:`render_sample` draws one (image, mask) pair from a :class:`numpy.random.Generator`;
:func:`generate` writes a dataset folder::

    out_dir/
      images/<class>/<id>.png     8-bit RGB (grey replicated)
      masks/<id>.png              8-bit L, plaque = 255
      labels.csv                  path,label,patient_id,mask_path
      .walnet_phantom             marker (JSON of the generation parameters)

Everything is deterministic per seed: sample ``i`` uses an rng derived from
``SeedSequence(seed, spawn_key=(i,))`` so its pixels depend only on ``(seed, i, label)``.
"""
from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
from scipy import ndimage

from walnet.constants import PLAQUE_CLASSES
from walnet.files import atomic_open, write_text

__all__ = ["CLASSES", "PAPER_COUNTS", "class_counts", "generate", "is_phantom", "render_sample"]

#: Class names, index = label.
CLASSES = PLAQUE_CLASSES
#: Per-class image counts of the paper's dataset (1270 images).
PAPER_COUNTS = (301, 605, 364)

#: The file that marks a folder written by :func:`generate` (JSON of its parameters).
MARKER = ".walnet_phantom"
_CSV = "labels.csv"
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- helpers
def _bspline_matrix(n_out: int, cells: int) -> np.ndarray:
    """``(n_out, cells + 3)`` cubic B-spline weights sampling ``cells`` spans uniformly."""
    u = (np.arange(n_out) + 0.5) / n_out * cells + 1.0  # node k sits at k - 1 + 0.5 ... padded
    t = np.abs(u[:, None] - (np.arange(cells + 3)[None, :] - 0.5))
    w = np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field: cubic B-spline through a ``cells`` grid of normals."""
    h, w = shape
    ch, cw = max(1, int(cells[0])), max(1, int(cells[1]))
    small = rng.standard_normal((ch + 3, cw + 3))
    # einsum (not BLAS matmul): tiny products, and no thread-pool overhead on busy machines
    tmp = np.einsum("ik,kl->il", _bspline_matrix(h, ch), small, optimize=False)
    f = np.einsum("il,jl->ij", tmp, _bspline_matrix(w, cw), optimize=False)
    s = f.std()
    return ((f - f.mean()) / (s if s > 1e-8 else 1.0)).astype(np.float32)


def _plaque_geometry(rng: np.random.Generator, size: int):
    """Pick the ROI margins / plaque box in output pixels and the plaque outline."""
    # Margins around the plaque box, as fractions of the box size (random ROI crop).
    ml, mr = rng.uniform(0.08, 0.45, 2)
    mt, mb = rng.uniform(0.10, 0.60, 2)
    bw = size / (1.0 + ml + mr)
    bh = size / (1.0 + mt + mb)
    x0, y0 = ml * bw, mt * bh
    far = rng.random() < 0.6  # far-wall plaques are the common (better imaged) case
    embed = bh * rng.uniform(0.06, 0.16)  # part of the plaque sunk into the wall
    b = bh - embed
    wall = y0 + bh - embed if far else y0 + embed
    cx = x0 + bw / 2.0
    a = bw / 2.0
    # Radial perturbation r(theta) in (1 - amp, 1]: keeps the outline inside the box.
    k = np.arange(2, 7)
    coef = rng.normal(0.0, 1.0, k.size) / k
    phase = rng.uniform(0, 2 * np.pi, k.size)
    amp = rng.uniform(0.05, 0.25)
    skew = rng.uniform(-0.35, 0.35)  # asymmetric shoulders
    return dict(far=far, wall=wall, cx=cx, a=a, b=b, embed=embed, k=k, coef=coef,
                phase=phase, amp=amp, skew=skew, bw=bw, bh=bh)


def _plaque_mask(g: dict, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _physical_scale(rng: np.random.Generator, g: dict) -> dict:
    """mm per pixel (lateral sx, axial sy), the lumen's height in pixels and the intima-media
    thickness in mm: they set the speckle grain and the wall's look."""
    length_mm = rng.uniform(6.0, 20.0)
    lumen_mm = rng.uniform(5.0, 8.0)
    thick_mm = min(length_mm * rng.uniform(0.18, 0.45), lumen_mm * rng.uniform(0.35, 0.8))
    sx = length_mm / (2 * g["a"])  # mm / px, lateral
    sy = thick_mm / (g["bh"])  # mm / px, axial
    return {"sx": sx, "sy": sy, "lumen_px": lumen_mm / sy, "imt_mm": rng.uniform(0.5, 1.0)}


def _tissue(rng: np.random.Generator, S: int, yy: np.ndarray, up: np.ndarray,
            scale: dict) -> tuple[np.ndarray, np.ndarray]:
    """The reflectivity of tissue, lumen and the two walls (tissue ~ 1), and the lumen's mask."""
    # Depth into the wall tissue below/above the lumen: distance from the lumen boundary.
    # Lumen occupies 0 <= up <= lumen_px (the opposite wall is at up = lumen_px).
    d_wall = -up  # tissue side of the plaque-bearing wall (d > 0 inside tissue)
    d_opp = up - scale["lumen_px"]  # tissue side of the opposite wall
    lumen = (up > 0) & (up < scale["lumen_px"])
    att = rng.uniform(0.0, 0.8)
    tissue = np.exp(-att * yy / S) * (1.0 + 0.25 * _smooth_noise(rng, (S, S), (rng.integers(3, 7), rng.integers(2, 5))))
    # horizontal layering typical of tissue around the artery
    layers = _smooth_noise(rng, (S, S), (rng.integers(6, 14), 2))
    tissue = np.clip(tissue * (1.0 + 0.2 * layers), 0.2, None)
    R = np.where(lumen, rng.uniform(0.02, 0.06), tissue).astype(np.float32)
    imt_px = scale["imt_mm"] / scale["sy"]
    for d in (d_wall, d_opp):
        wl = (rng.uniform(2.0, 3.2) * np.exp(-(((d - 0.15 * imt_px) / (0.18 * imt_px + 0.6)) ** 2))
              + rng.uniform(2.0, 3.5) * np.exp(-(((d - 0.85 * imt_px) / (0.22 * imt_px + 0.6)) ** 2)))
        media = (d > 0.3 * imt_px) & (d < 0.7 * imt_px)
        R = np.where(media, R * 0.45, R) + wl.astype(np.float32)
    return R, lumen


def _plaque_echo(rng: np.random.Generator, label: int, S: int, g: dict, inside: np.ndarray, lumen: np.ndarray,
                 R: np.ndarray) -> np.ndarray:
    """The plaque's echogenicity, which gives its class: bright with an acoustic shadow
    (hyperechoic), dark with an optional bright cap (hypoechoic), or bright and dark blobs with a
    shadow under the bright parts (mixed)."""
    w = None
    if label == 0:
        level = rng.uniform(1.8, 3.0)
        tex = 1.0 + 0.25 * _smooth_noise(rng, (S, S), (8, 8))
        Rp = level * tex
        shadow_strength = rng.uniform(0.65, 0.92)
    elif label == 1:
        level = rng.uniform(0.15, 0.42)
        tex = 1.0 + 0.3 * _smooth_noise(rng, (S, S), (8, 8))
        Rp = level * np.clip(tex, 0.3, None)
        shadow_strength = 0.0
    else:
        bright = rng.uniform(2.0, 3.2)
        dark = rng.uniform(0.1, 0.3)
        frac = rng.uniform(0.35, 0.65)
        # blobs sized relative to the plaque: 2.5-5 cells across its width / height
        cx_, cy_ = rng.uniform(2.5, 5.0, 2)
        field = _smooth_noise(rng, (S, S), (int(round(cy_ * S / g["bh"])), int(round(cx_ * S / g["bw"]))))
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


def render_sample(rng: np.random.Generator, label: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Render one phantom plaque crop.

    Args:
        rng: source of all randomness (the result is a pure function of its state).
        label: class index, 0 hyperechoic, 1 hypoechoic, 2 mixed-echoic.
        size: output side in pixels.

    Returns:
        ``(image, mask)``: ``image`` uint8 ``(size, size, 3)`` (grey replicated in three
        channels), ``mask`` uint8 ``(size, size)`` with the true plaque = 255, else 0.
    """
    label = int(label)
    if label not in (0, 1, 2):
        raise ValueError(f"label must be 0, 1 or 2, got {label}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    S = int(size)
    g = _plaque_geometry(rng, S)
    yy = np.arange(S, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(S, dtype=np.float32)[None, :] + 0.5
    plaque, up = _plaque_mask(g, yy, xx)
    scale = _physical_scale(rng, g)
    R, lumen = _tissue(rng, S, yy, up, scale)
    R = _plaque_echo(rng, label, S, g, plaque, lumen, R)
    A = _speckle(rng, R, S, scale)
    img8 = _display(rng, A, ~lumen & ~plaque, S, yy)
    image = np.repeat(img8[:, :, None], 3, axis=2)
    return image, plaque.astype(np.uint8) * 255


def class_counts(n: int) -> list[int]:
    """Split ``n`` images over the classes in the paper's ratio 301:605:364.

    Largest-remainder rounding (ties to the lower class index); the counts sum to ``n``
    and, when ``n >= 3``, every class gets at least one image.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    total = sum(PAPER_COUNTS)
    exact = [n * c / total for c in PAPER_COUNTS]
    counts = [int(e) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    if n >= len(counts):
        for i in range(len(counts)):
            while counts[i] < 1:
                j = max(range(len(counts)), key=lambda k: counts[k])
                counts[j] -= 1
                counts[i] += 1
    return counts


def is_phantom(path) -> bool:
    """Whether `path` is a folder written by :func:`generate` (it holds the phantom's marker)."""
    return (pathlib.Path(path) / MARKER).is_file()


def _remove_previous(out: pathlib.Path) -> None:
    """Delete only what an earlier phantom run listed in its labels.csv (and the csv)."""
    csv_path = out / _CSV
    dirs: set[pathlib.Path] = set()
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                for key in ("path", "mask_path"):
                    rel = row.get(key)
                    if not rel:
                        continue
                    p = (out / rel).resolve()
                    if out.resolve() not in p.parents:  # never step outside out_dir
                        continue
                    if p.is_file():
                        p.unlink()
                    dirs.add(p.parent)
        csv_path.unlink()
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        while d != out.resolve() and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent


def _patients(rng: np.random.Generator, labels: list[int], ratio: float) -> list[str]:
    """Group same-class images into patients (about ``1/ratio`` images each)."""
    pids = [""] * len(labels)
    next_id = 0
    for c in range(len(CLASSES)):
        idx = [i for i, l in enumerate(labels) if l == c]
        if not idx:
            continue
        n_p = int(min(len(idx), max(1, round(len(idx) * ratio))))
        # every patient gets one image, the rest go to random patients
        owner = np.concatenate([np.arange(n_p), rng.integers(0, n_p, len(idx) - n_p)])
        owner = np.sort(owner)  # consecutive images of a patient
        for i, o in zip(idx, owner):
            pids[i] = f"P{next_id + int(o):05d}"
        next_id += n_p
    return pids


def generate(out_dir, n: int = 1270, seed: int = 0, size: int = 224,
             patients_per_class_ratio: float = 0.5) -> pathlib.Path:
    """Write a phantom dataset of ``n`` images to ``out_dir`` and return its ``labels.csv``.

    Class counts follow :func:`class_counts` (the paper's ratio). Rows of ``labels.csv``
    are ``path,label,patient_id,mask_path`` with paths relative to ``out_dir`` and
    ``label`` the class name; every patient has images of one class only, about
    ``1 / patients_per_class_ratio`` images each. Sample ``i`` is rendered with an rng
    seeded from ``SeedSequence(seed, spawn_key=(i,))``: the same seed gives the same bytes.

    ``out_dir`` may be missing, empty, or an earlier phantom (whose listed files are
    replaced); any other non-empty directory raises :class:`FileExistsError`, so user
    data is never overwritten. Every argument is checked before anything is removed.
    """
    n, seed, size = int(n), int(seed), int(size)
    for name, value, ok, want in (("n", n, n >= 1, ">= 1"), ("seed", seed, seed >= 0, ">= 0"),
                                  ("size", size, size >= 16, ">= 16"),
                                  ("patients_per_class_ratio", patients_per_class_ratio,
                                   0.0 < patients_per_class_ratio <= 1.0, "in (0, 1]")):
        if not ok:
            raise ValueError(f"{name} must be {want}, got {value}")
    from PIL import Image

    out = pathlib.Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            if not is_phantom(out):
                raise FileExistsError(
                    f"refusing to write the phantom into non-empty directory {out} "
                    f"(it is not an earlier phantom: no {MARKER} marker)")
            _remove_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(format=_FORMAT_VERSION, n=n, seed=seed, size=size,
                  patients_per_class_ratio=float(patients_per_class_ratio))
    write_text(out / MARKER, json.dumps(params, sort_keys=True) + "\n")

    counts = class_counts(n)
    labels = [c for c, k in enumerate(counts) for _ in range(k)]
    pids = _patients(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31,))),
                     labels, patients_per_class_ratio)
    for name in CLASSES:
        (out / "images" / name).mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    rows = []
    for i, (lab, pid) in enumerate(zip(labels, pids)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        image, mask = render_sample(rng, lab, size)
        sid = f"{i:05d}"
        ipath = f"images/{CLASSES[lab]}/{sid}.png"
        mpath = f"masks/{sid}.png"
        Image.fromarray(image).save(out / ipath, format="PNG")
        Image.fromarray(mask).save(out / mpath, format="PNG")
        rows.append((ipath, CLASSES[lab], pid, mpath))

    csv_path = out / _CSV
    with atomic_open(csv_path, text=True) as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(("path", "label", "patient_id", "mask_path"))
        wr.writerows(rows)
    return csv_path
