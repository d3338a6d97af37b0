"""The embedded synthetic carotid-plaque dataset (no download needed).

:func:`generate` writes ``n`` images rendered by walnet.data.phantom_render (B-mode-like views of
one plaque whose echogenicity is the class; by default the plaque's ROI crop, optionally a wider
view with a chosen plaque size and class-like distractors around it) into a dataset folder::

    out_dir/
      images/<class>/<id>.png     8-bit RGB (grey replicated)
      masks/<id>.png              8-bit L, plaque = 255
      labels.csv                  path,label,patient_id,mask_path, the plaque's true box
                                  (plaque_y1,plaque_x1,plaque_y2,plaque_x2) and its share of the image
      .walnet_phantom             marker (JSON of the generation parameters)

The plaque's box columns are not named like the ROI box columns the CSV reader crops to
(walnet.data.sources): they describe the image, they do not change what a model sees.

Everything is deterministic per seed: sample ``i`` uses an rng derived from
``SeedSequence(seed, spawn_key=(i,))`` so its pixels depend only on ``(seed, i, label)`` and the
rendering options.
"""
from __future__ import annotations

import csv
import json
import pathlib

import numpy as np

from walnet.constants import PLAQUE_CLASSES
from walnet.data.phantom_render import check_distractors, check_plaque_area, render_sample
from walnet.files import atomic_open, write_text

__all__ = ["CLASSES", "COLUMNS", "PAPER_COUNTS", "class_counts", "generate", "is_phantom", "render_sample"]

#: Class names, index = label.
CLASSES = PLAQUE_CLASSES
#: Per-class image counts of the paper's dataset (1270 images).
PAPER_COUNTS = (301, 605, 364)
#: The columns of a phantom's labels.csv: the plaque's true box is 0-based, both corners inclusive.
COLUMNS = ("path", "label", "patient_id", "mask_path", "plaque_y1", "plaque_x1", "plaque_y2", "plaque_x2",
           "plaque_share")

#: The file that marks a folder written by :func:`generate` (JSON of its parameters).
MARKER = ".walnet_phantom"
_CSV = "labels.csv"
_FORMAT_VERSION = 2


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


def _box(mask: np.ndarray) -> tuple[int, int, int, int, str]:
    """The plaque's bounding box in ``mask`` (y1, x1, y2, x2; 0-based, inclusive) and its share of
    the image's pixels (4 decimals)."""
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()), f"{ys.size / mask.size:.4f}"


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
             patients_per_class_ratio: float = 0.5, *, plaque_area=None, distractors: int = 0) -> pathlib.Path:
    """Write a phantom dataset of ``n`` images to ``out_dir`` and return its ``labels.csv``.

    Class counts follow :func:`class_counts` (the paper's ratio). Rows of ``labels.csv`` hold
    :data:`COLUMNS`: paths relative to ``out_dir``, ``label`` the class name, the plaque's true
    box and its share of the image's pixels; every patient has images of one class only, about
    ``1 / patients_per_class_ratio`` images each. Sample ``i`` is rendered with an rng
    seeded from ``SeedSequence(seed, spawn_key=(i,))``: the same seed gives the same bytes.
    ``plaque_area`` (a ``(low, high)`` share of the image) and ``distractors`` (class-like blobs
    outside the plaque, 0..8) are walnet.data.phantom_render.render_scene's; by default each image
    is the plaque's ROI crop without distractors.

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
    plaque_area = check_plaque_area(plaque_area, size)
    distractors = check_distractors(distractors)
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
                  patients_per_class_ratio=float(patients_per_class_ratio),
                  plaque_area=None if plaque_area is None else list(plaque_area), distractors=distractors)
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
        image, mask = render_sample(rng, lab, size, plaque_area=plaque_area, distractors=distractors)
        sid = f"{i:05d}"
        ipath = f"images/{CLASSES[lab]}/{sid}.png"
        mpath = f"masks/{sid}.png"
        Image.fromarray(image).save(out / ipath, format="PNG")
        Image.fromarray(mask).save(out / mpath, format="PNG")
        rows.append((ipath, CLASSES[lab], pid, mpath, *_box(mask)))

    csv_path = out / _CSV
    with atomic_open(csv_path, text=True) as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(COLUMNS)
        wr.writerows(rows)
    return csv_path
