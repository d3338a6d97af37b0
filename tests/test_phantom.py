"""Synthetic plaque phantom: rendering, class split, dataset writing, and its difficulty."""
from __future__ import annotations

import csv
import functools
import hashlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from walnet.data.phantom import CLASSES, COLUMNS, PAPER_COUNTS, class_counts, generate, render_sample
from walnet.data.phantom_render import render_scene


def _rng(seed: int, i: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))


# --------------------------------------------------------------------------- render_sample
@pytest.mark.parametrize("label", [0, 1, 2])
@pytest.mark.parametrize("size", [224, 96])
def test_render_shapes_and_mask(label, size):
    for i in range(4):
        img, mask = render_sample(_rng(1, i), label, size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert mask.shape == (size, size) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
        frac = (mask > 0).mean()
        assert 0.03 <= frac <= 0.60, frac
        # a single connected plaque that does not touch the image border (ROI margins)
        _, n = ndimage.label(mask > 0)
        assert n == 1
        m = mask > 0
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
        assert img.std() > 5  # not a flat image


def test_render_deterministic():
    a = render_sample(np.random.default_rng(5), 2)
    b = render_sample(np.random.default_rng(5), 2)
    c = render_sample(np.random.default_rng(6), 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_render_bad_label():
    with pytest.raises(ValueError):
        render_sample(np.random.default_rng(0), 3)


# --------------------------------------------------------------------------- class_counts
def test_class_counts():
    assert class_counts(1270) == list(PAPER_COUNTS) == [301, 605, 364]
    assert len(CLASSES) == 3
    for n in [3, 4, 5, 7, 10, 30, 100, 127, 635, 1000, 2540, 12345]:
        c = class_counts(n)
        assert sum(c) == n and min(c) >= 1, (n, c)
        exact = np.array(PAPER_COUNTS) * n / sum(PAPER_COUNTS)
        if n >= 10:
            assert np.all(np.abs(np.array(c) - exact) < 1.0), (n, c, exact)
    assert class_counts(2540) == [602, 1210, 728]
    assert class_counts(0) == [0, 0, 0]


# --------------------------------------------------------------------------- generate
def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(csv_path):
    with open(csv_path, newline="") as f:
        rd = csv.DictReader(f)
        assert rd.fieldnames == ["path", "label", "patient_id", "mask_path", "plaque_y1", "plaque_x1", "plaque_y2",
                                 "plaque_x2", "plaque_share"] == list(COLUMNS)
        return list(rd)


def test_generate(tmp_path):
    out = tmp_path / "ph"
    csv_path = generate(out, n=30, seed=3, size=64)
    assert csv_path == out / "labels.csv" and csv_path.is_file()
    rows = _rows(csv_path)
    assert len(rows) == 30
    labels = [r["label"] for r in rows]
    assert [labels.count(c) for c in CLASSES] == class_counts(30)
    patient_class: dict[str, str] = {}
    for r in rows:
        ip, mp = out / r["path"], out / r["mask_path"]
        assert ip.is_file() and mp.is_file()
        assert r["path"].startswith(f"images/{r['label']}/")
        with Image.open(ip) as im, Image.open(mp) as mk:
            assert im.mode == "RGB" and mk.mode == "L" and im.size == mk.size == (64, 64)
            assert set(np.unique(np.asarray(mk))) == {0, 255}
        assert patient_class.setdefault(r["patient_id"], r["label"]) == r["label"]
        # the plaque's true box and share, counted from the mask file here
        with Image.open(mp) as mk:
            ys, xs = np.nonzero(np.asarray(mk))
        assert [int(r[f"plaque_{c}"]) for c in ("y1", "x1", "y2", "x2")] == [ys.min(), xs.min(), ys.max(), xs.max()]
        assert float(r["plaque_share"]) == pytest.approx(ys.size / 64**2, abs=5e-5)
    # patients group several images (about 2 on average at ratio 0.5)
    assert len(rows) / len(patient_class) >= 1.5
    assert len(patient_class) >= 3

    # deterministic: a second run with the same seed gives identical bytes ...
    out2 = tmp_path / "ph2"
    generate(out2, n=30, seed=3, size=64)
    assert _digest(out) == _digest(out2)
    # ... sample i does not depend on n
    out4 = tmp_path / "ph4"
    generate(out4, n=31, seed=3, size=64)
    assert (out4 / "images/hyperechoic/00000.png").read_bytes() == (out / "images/hyperechoic/00000.png").read_bytes()
    # ... and a different seed differs
    out3 = tmp_path / "ph3"
    generate(out3, n=30, seed=4, size=64)
    d1, d3 = _digest(out), _digest(out3)
    assert d1.keys() - {"labels.csv", ".walnet_phantom"} == d3.keys() - {"labels.csv", ".walnet_phantom"}
    assert all(d1[k] != d3[k] for k in d1 if k.endswith(".png"))

    # regenerating into an earlier phantom is allowed and replaces its files (no stale images)
    generate(out, n=10, seed=3, size=64)
    assert len(_rows(csv_path)) == 10
    assert len(list(out.rglob("*.png"))) == 20


def test_generate_refuses_foreign_dir(tmp_path):
    foreign = tmp_path / "user_data"
    foreign.mkdir()
    keep = foreign / "scan.png"
    keep.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="user_data"):
        generate(foreign, n=5)
    assert keep.read_bytes() == b"precious" and sorted(p.name for p in foreign.iterdir()) == ["scan.png"]
    # an existing empty directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, n=3, size=32)
    assert len(_rows(empty / "labels.csv")) == 3


# --------------------------------------------------------------------------- difficulty
def _fit_intervals(x: np.ndarray, y: np.ndarray):
    """Best 1-D classifier with two thresholds (three intervals, each labelled by any class)."""
    o = np.argsort(x, kind="stable")
    xs, ys = x[o], y[o]
    n = len(xs)
    cum = np.zeros((n + 1, 3))
    cum[1:] = np.cumsum(np.eye(3)[ys], 0)
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    score = cum[i].max(-1) + (cum[j] - cum[i]).max(-1) + (cum[n] - cum[j]).max(-1)
    a, b = np.unravel_index(np.argmax(np.where(i <= j, score, -1)), score.shape)

    def cut(k):
        return -np.inf if k == 0 else np.inf if k == n else (xs[k - 1] + xs[k]) / 2

    t1, t2 = cut(a), cut(b)
    lab = [cum[a].argmax(), (cum[b] - cum[a]).argmax(), (cum[n] - cum[b]).argmax()]
    return lambda z: np.where(z < t1, lab[0], np.where(z < t2, lab[1], lab[2]))


@functools.lru_cache(maxsize=None)
def _features(n: int = 150, seed: int = 7):
    counts = class_counts(n)
    labels = np.array([c for c, k in enumerate(counts) for _ in range(k)])
    labels = labels[np.random.default_rng(123).permutation(n)]
    glob, local = [], []
    for i, lab in enumerate(labels):
        img, mask = render_sample(_rng(seed, i), int(lab))
        g = img[..., 0].astype(np.float64)
        m = mask > 0
        ring = ndimage.binary_dilation(m, iterations=10) & ~m
        glob.append(g.mean())
        # plaque contrast relative to its surrounding ring, in units of the image's spread
        local.append((g[m].mean() - g[ring].mean()) / (g.std() + 1.0))
    return labels, np.array(glob), np.array(local)


def test_classifier_helper_can_separate():
    # the helper itself must be able to reach high accuracy (so the < 0.6 check is meaningful)
    y = np.repeat([1, 0, 2], 20)
    x = np.arange(60, dtype=float)
    assert (_fit_intervals(x, y)(x) == y).mean() == 1.0


def test_difficulty_global_brightness_vs_local_contrast():
    labels, glob, local = _features()
    h = len(labels) // 2
    majority = np.bincount(labels[h:]).max() / (len(labels) - h)
    acc_global = (_fit_intervals(glob[:h], labels[:h])(glob[h:]) == labels[h:]).mean()
    acc_local = (_fit_intervals(local[:h], labels[:h])(local[h:]) == labels[h:]).mean()
    print(f"majority {majority:.3f}  mean-intensity {acc_global:.3f}  local contrast {acc_local:.3f}")
    assert acc_global < 0.6
    assert acc_local > 0.75
    assert acc_local - acc_global > 0.25
    # the per-image gain/contrast randomisation is what drowns the class in brightness:
    # within every class, image brightness spreads widely (about 13 grey levels without it)
    assert min(glob[labels == c].std() for c in range(3)) > 25


# --------------------------------------------------------------------------- plaque size, distractors
@pytest.mark.parametrize("area", [(0.2, 0.3), (0.08, 0.15), (0.03, 0.06)])
def test_plaque_area_sets_the_plaque_share(area):
    shares = []
    for i in range(12):
        img, mask = render_sample(_rng(2, i), i % 3, 96, plaque_area=area)
        m = mask > 0
        shares.append(m.mean())
        assert ndimage.label(m)[1] == 1  # one plaque, inside the view
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
        assert img.std() > 5
    # the outline's pixels make the share approximate, never another size class
    assert area[0] * 0.85 <= min(shares) and max(shares) <= area[1] * 1.15, shares
    assert np.ptp(shares) > (area[1] - area[0]) * 0.3  # drawn from the range, not one value
    a = render_sample(_rng(2, 0), 1, 96, plaque_area=area)
    assert all(np.array_equal(x, y) for x, y in zip(a, render_sample(_rng(2, 0), 1, 96, plaque_area=area)))


def test_distractors_lie_outside_the_plaque_and_ignore_the_label():
    kinds = []
    for i in range(10):
        scenes = [render_scene(_rng(4, i), label, 96, plaque_area=(0.03, 0.06), distractors=3) for label in range(3)]
        first = scenes[0]
        assert first.distractors, "a view of tissue has room for a distractor"
        plaque = first.mask > 0
        for d in first.distractors:
            assert d.kind in (0, 1, 2) and d.mask.any() and not (d.mask & plaque).any()
        # the same seed draws the same distractors, whatever the plaque's class
        for other in scenes[1:]:
            assert np.array_equal(other.mask, first.mask)
            assert [d.kind for d in other.distractors] == [d.kind for d in first.distractors]
            assert all(np.array_equal(a.mask, b.mask) for a, b in zip(other.distractors, first.distractors))
        kinds += [d.kind for d in first.distractors]
    assert set(kinds) == {0, 1, 2}
    # without distractors the default image is the plain ROI crop
    assert render_scene(_rng(4, 0), 0, 64).distractors == ()


def test_phantom_options_are_checked(tmp_path):
    for bad, match in (((0.1, 0.05), "plaque_area"), ((0.0, 0.1), "plaque_area"), ((0.2, 0.5), "plaque_area"),
                       ((0.001, 0.01), "16 pixels"), ("wide", "plaque_area")):
        with pytest.raises(ValueError, match=match):
            generate(tmp_path / "ph", n=3, size=64, plaque_area=bad)
    for bad in (9, -1, 1.5, "two", None):
        with pytest.raises(ValueError, match="distractors must be a whole number from 0 to 8"):
            generate(tmp_path / "ph", n=3, size=64, distractors=bad)
    assert not (tmp_path / "ph").exists()  # checked before anything is written


def test_plaque_box_columns_do_not_crop(tmp_path):
    from walnet.data.sources import read_csv

    csv_path = generate(tmp_path / "ph", n=6, size=64, plaque_area=(0.05, 0.1), distractors=2)
    records, _ = read_csv(csv_path)
    assert len(records) == 6 and all(r.box is None for r in records)


def _region_contrast(scene, region: np.ndarray) -> float:
    """The mean of `region` against the image's median, in units of the image's spread."""
    g = scene.image[..., 0].astype(np.float64)
    return (g[region].mean() - np.median(g)) / (g.std() + 1.0)


def test_small_plaques_among_distractors_hide_the_class_from_the_whole_image():
    counts = class_counts(150)
    labels = np.array([c for c, k in enumerate(counts) for _ in range(k)])[np.random.default_rng(123).permutation(150)]
    whole, inside = [], []
    for i, lab in enumerate(labels):
        scene = render_scene(_rng(7, i), int(lab), 96, plaque_area=(0.03, 0.06), distractors=3)
        whole.append(_region_contrast(scene, np.ones(scene.mask.shape, bool)))
        inside.append(_region_contrast(scene, scene.mask > 0))
    h = len(labels) // 2
    majority = np.bincount(labels[h:]).max() / (len(labels) - h)
    acc = {name: (_fit_intervals(x[:h], labels[:h])(x[h:]) == labels[h:]).mean()
           for name, x in (("whole", np.array(whole)), ("inside", np.array(inside)))}
    print(f"majority {majority:.3f}  whole image {acc['whole']:.3f}  inside the mask {acc['inside']:.3f}")
    assert acc["whole"] < majority + 0.05  # no better than always naming the commonest class
    assert acc["inside"] > 0.8
    assert acc["inside"] - acc["whole"] > 0.35

