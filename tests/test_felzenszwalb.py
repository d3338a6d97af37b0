"""Felzenszwalb superpixels (walnet.ops.felzenszwalb) against skimage, the oracle.

The oracle is ``skimage.segmentation.felzenszwalb`` with ``numpy.argsort`` patched to a stable
sort while it runs: skimage sorts the edge weights with ``np.argsort(costs)`` (numpy's default,
unstable sort), so on images with tied weights its output depends on how numpy breaks the ties.
walnet's spec is the same algorithm with ties broken by edge index (a stable sort). On tie-free
images the unpatched skimage, as users call it, must agree as well.

Inputs are handed to both sides in the form the spec names: a uint8 image ``u`` goes to skimage
as is and to walnet as ``torch.from_numpy(u).double() * (1 / 255)`` (skimage's img_as_float64);
float images go to both unchanged (walnet casts float32 to float64 exactly, as skimage does).
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
import torch

from walnet import ops

from conftest import DEVICES, HAS_CUDA, require_kernel

#: Set by benchmarks/device_check.sh for its compute-sanitizer runs: the CUDA tests then skip the
#: 224^2 batches (thousands of reservation rounds, very slow under the sanitizer's tools).
UNDER_SANITIZER = os.environ.get("WALNET_SANITIZER", "0") not in ("", "0")

# --- the oracle ---------------------------------------------------------------------------

_REAL_ARGSORT = np.argsort
_ARGSORT_CALLS = {"stable": 0, "antistable": 0}


def _stable_argsort(a, axis=-1, kind=None, order=None, **kwargs):
    _ARGSORT_CALLS["stable"] += 1
    return _REAL_ARGSORT(a, axis=axis, kind="stable", order=order, **kwargs)


def _antistable_argsort(a, axis=-1, kind=None, order=None, **kwargs):
    """Ascending by value, ties in *decreasing* index order: the opposite tie rule."""
    _ARGSORT_CALLS["antistable"] += 1
    a = np.asarray(a)
    assert a.ndim == 1 and order is None
    rev = _REAL_ARGSORT(a[::-1], kind="stable")
    return (a.size - 1 - rev)  # stable on the reversed array = ties by decreasing index


def skimage_labels(image: np.ndarray, scale: float, sigma: float, min_size: int, *, tie_rule="stable"):
    """skimage's labels [H, W] (intp) of an H x W x C (or H x W, grayscale) image.

    tie_rule: "stable" (the oracle), "numpy" (unpatched, as users call it) or "antistable"."""
    from skimage.segmentation import felzenszwalb

    if image.ndim == 2:
        image = image[..., None]
    patch = {"stable": _stable_argsort, "antistable": _antistable_argsort}.get(tie_rule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # skimage warns about C > 3
        if patch is None:
            return felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)
        with mock.patch("numpy.argsort", patch):
            return felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)


def _u8_to_walnet(u: np.ndarray) -> torch.Tensor:
    """The spec's mapping of a uint8 image batch [N,H,W,C] to walnet's float64 input [N,C,H,W]."""
    return (torch.from_numpy(np.ascontiguousarray(u)).double() * (1.0 / 255)).permute(0, 3, 1, 2).contiguous()


def _float_to_walnet(f: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(f)).permute(0, 3, 1, 2).contiguous()


def assert_labels_equal(got: torch.Tensor, want, names, what: str) -> None:
    """got: int labels [N,H,W] (any device); want: N arrays [H,W]. Reports, per differing image,
    the number of differing pixels, the first one in raster order and the segment counts."""
    got = got.cpu()
    assert got.dtype == torch.int32, got.dtype
    assert got.shape[0] == len(want), (tuple(got.shape), len(want))
    bad = []
    for i, (g, w) in enumerate(zip(got.numpy(), want)):
        w = np.asarray(w)
        if g.shape != w.shape:
            bad.append(f"  {names[i]}: shape {g.shape} vs {w.shape}")
            continue
        diff = np.flatnonzero(g.ravel() != w.ravel())
        if diff.size:
            y, x = divmod(int(diff[0]), w.shape[1])
            bad.append(
                f"  {names[i]}: {diff.size} pixels differ, first at (y={y}, x={x}): got {g[y, x]}, want {w[y, x]};"
                f" segments got {int(g.max()) + 1}, want {int(w.max()) + 1}"
            )
    assert not bad, f"{what}: {len(bad)} of {len(want)} images differ\n" + "\n".join(bad[:12])


def _require_op(device: str) -> None:
    """The house rule (require_kernel: fail, never skip, without kernels) plus the op itself."""
    require_kernel(device)
    if not hasattr(ops, "felzenszwalb"):
        pytest.fail("walnet.ops.felzenszwalb does not exist")
    if not torch._C._dispatch_has_kernel_for_dispatch_key("walnet::felzenszwalb", device.upper()):
        pytest.fail(f"walnet::felzenszwalb has no {device} kernel in this build")


# --- the image corpus ---------------------------------------------------------------------


@dataclass
class Group:
    """A batch of same-shaped images: walnet's input [N,C,H,W] and skimage's N H x W x C arrays."""

    names: list
    images: torch.Tensor
    sk_inputs: list

    def __len__(self):
        return len(self.names)


def _group_u8(items) -> Group:
    names, arrs = zip(*items)
    arrs = [a[..., None] if a.ndim == 2 else a for a in arrs]
    assert all(a.dtype == np.uint8 for a in arrs)
    return Group(list(names), _u8_to_walnet(np.stack(arrs)), list(arrs))


def _group_float(items) -> Group:
    names, arrs = zip(*items)
    arrs = [a[..., None] if a.ndim == 2 else a for a in arrs]
    dtype = arrs[0].dtype
    assert dtype in (np.float32, np.float64) and all(a.dtype == dtype for a in arrs)
    return Group(list(names), _float_to_walnet(np.stack(arrs)), list(arrs))


#: skimage.data images that are files shipped with the package (no download).
RGB_NAMES = ["astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry",
             "retina", "rocket", "stereo_motorcycle", "logo"]
GRAY_NAMES = ["brick", "camera", "cell", "checkerboard", "clock", "coins", "grass", "gravel", "horse",
              "microaneurysms", "moon", "page", "text", "binary_blobs"]


@functools.lru_cache(maxsize=None)
def _shipped(name: str):
    """A shipped skimage.data image as uint8 (H x W or H x W x 3), or None if it is missing."""
    import skimage.data

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = skimage.data.binary_blobs(256, rng=1) if name == "binary_blobs" else getattr(skimage.data, name)()
    except Exception:  # noqa: BLE001  a data file that is not shipped in this build of skimage
        return None
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 3 and img.shape[2] == 4:  # logo: RGBA
        img = img[..., :3]
    return np.ascontiguousarray(img)


def _resize(img, size, out_dtype):
    """Anti-aliased resize to size x size: float64 in [0, 1], float32 of it, or uint8 (rounded).
    Large images are first subsampled to about 2 * size (keeps the corpus quick to build)."""
    from skimage.transform import resize

    step = min(img.shape[:2]) // (2 * size)
    if step > 1:
        img = img[::step, ::step]
    shape = (size, size) + img.shape[2:]
    r = resize(img, shape, anti_aliasing=True)
    if out_dtype == np.uint8:
        return np.clip(np.round(r * 255), 0, 255).astype(np.uint8)
    return r.astype(out_dtype)


def _center_crop(img, h, w):
    y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[y : y + h, x : x + w])


def _random_crop(img, h, w, rng):
    y = int(rng.integers(0, img.shape[0] - h + 1))
    x = int(rng.integers(0, img.shape[1] - w + 1))
    return np.ascontiguousarray(img[y : y + h, x : x + w])


def _strided(img, size):
    s = max(1, min(img.shape[:2]) // size)
    return np.ascontiguousarray(img[::s, ::s][:size, :size])


def _rgb2gray_u8(img):
    from skimage.color import rgb2gray

    return np.clip(np.round(rgb2gray(img) * 255), 0, 255).astype(np.uint8)


def _smooth_noise(rng, h, w, c, sigma):
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(rng.random((h, w, c)), sigma=(sigma, sigma, 0))
    return (x - x.min()) / (x.max() - x.min())


def _tie_patterns(h, w, levels=(0.0, 1.0)):
    """Float images (H x W) full of exactly tied edge weights: flat, stripes, checkerboards,
    ramps and quantised blobs. Values are taken from `levels`."""
    lo, hi = levels[0], levels[-1]
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(h * 1000 + w)
    blobs = _smooth_noise(rng, h, w, 1, 3.0)[..., 0]
    nl = len(levels)
    q = np.minimum((blobs * nl).astype(int), nl - 1)
    return {
        "flat-lo": np.full((h, w), lo),
        "flat-hi": np.full((h, w), hi),
        "vstripes": np.where(xx % 4 < 2, lo, hi),
        "hstripes": np.where(yy % 3 == 0, hi, lo),
        "dstripes": np.where((xx + yy) % 5 < 2, lo, hi),
        "checker1": np.where((xx + yy) % 2 == 0, lo, hi),
        "checker4": np.where((xx // 4 + yy // 4) % 2 == 0, lo, hi),
        "xramp": np.asarray(levels)[np.minimum(xx * nl // w, nl - 1)],
        "yramp": np.asarray(levels)[np.minimum(yy * nl // h, nl - 1)],
        "blobs": np.asarray(levels)[q],
        "stripes+blobs": np.where(xx % 6 == 0, hi, np.asarray(levels)[q]),
    }


@functools.lru_cache(maxsize=None)
def corpus() -> dict:
    """name -> Group. About 230 images: shipped skimage images (downsampled to 56^2 and 224^2,
    cropped, strided), LFW faces, random images, and images full of ties; grayscale, RGB, two
    and four channels; uint8-derived, float32 and float64 inputs; square and non-square."""
    rng = np.random.default_rng(1234)
    rgb = [(n, _shipped(n)) for n in RGB_NAMES if _shipped(n) is not None]
    gray = [(n, _shipped(n)) for n in GRAY_NAMES if _shipped(n) is not None]
    g = {}

    items = []
    for n, img in rgb:
        items += [(f"{n}/resize56", _resize(img, 56, np.uint8)), (f"{n}/crop56", _center_crop(img, 56, 56)),
                  (f"{n}/stride56", _strided(img, 56))]
    g["ship-rgb56-u8"] = _group_u8(items)

    items = []
    for n, img in rgb:
        items += [(f"{n}/resize56-f32", _resize(img, 56, np.float32)),
                  (f"{n}/rcrop56-f32", (_random_crop(img, 56, 56, rng) / np.float32(255)).astype(np.float32))]
    g["ship-rgb56-f32"] = _group_float(items)

    items = []
    for n, img in gray:
        items += [(f"{n}/resize56", _resize(img, 56, np.uint8)), (f"{n}/crop56", _center_crop(img, 56, 56)),
                  (f"{n}/stride56", _strided(img, 56))]
    for n, img in rgb:
        items.append((f"{n}/gray-resize56", _rgb2gray_u8(_resize(img, 56, np.uint8))))
    g["ship-gray56-u8"] = _group_u8(items)

    import skimage.data

    phantom = skimage.data.shepp_logan_phantom()  # float64, many exact ties
    items = [(f"{n}/resize56-f64", _resize(img, 56, np.float64)) for n, img in gray]
    items += [("phantom/resize56", _resize(phantom, 56, np.float64)), ("phantom/crop56", _center_crop(phantom, 56, 56)),
              ("phantom/stride56", _strided(phantom, 56))]
    g["ship-gray56-f64"] = _group_float(items)

    faces = skimage.data.lfw_subset()  # 200 x 25 x 25 float64
    g["lfw25-f64"] = _group_float([(f"lfw{i}", faces[i]) for i in range(0, 200, 5)])

    items = []
    for i in range(5):
        items.append((f"uniform{i}", rng.random((56, 56, 3))))
    for i, s in enumerate((0.7, 1.5, 3.0, 6.0)):
        items.append((f"smooth{i}", _smooth_noise(rng, 56, 56, 3, s)))
    items += [("x255", 255 * rng.random((56, 56, 3))), ("smooth-x255", 255 * _smooth_noise(rng, 56, 56, 3, 2.0)),
              ("normal", rng.standard_normal((56, 56, 3))),
              ("normal-smooth", 3 * _smooth_noise(rng, 56, 56, 3, 2) - 1.5),
              ("tiny-range", 1e-3 * rng.random((56, 56, 3)))]
    g["rand56-rgb-f64"] = _group_float(items)

    items = [(f"u8-{i}", rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for i in range(3)]
    items += [(f"u8-levels{k}-{i}", (rng.integers(0, k, (56, 56, 3)) * (255 // (k - 1))).astype(np.uint8))
              for k in (2, 3, 5) for i in range(2)]
    items += [("u8-smooth", np.round(255 * _smooth_noise(rng, 56, 56, 3, 2.0)).astype(np.uint8)),
              ("u8-smooth-q8", (np.round(7 * _smooth_noise(rng, 56, 56, 3, 2.0)) * 36).astype(np.uint8))]
    g["rand56-rgb-u8"] = _group_u8(items)

    items = []
    for name, pat in _tie_patterns(56, 56, (0, 64, 128, 255)).items():
        pat = pat.astype(np.uint8)
        items.append((f"ties/{name}", np.stack([pat, pat, pat], -1)))
        items.append((f"ties/{name}-tint", np.stack([pat, 255 - pat, pat // 2], -1)))
    g["ties56-rgb-u8"] = _group_u8(items)

    items = [(f"ties/{n}", p) for n, p in _tie_patterns(56, 56, (0.0, 0.25, 0.5, 1.0)).items()]
    items += [(f"ties2/{n}", p) for n, p in _tie_patterns(56, 56, (0.125, 0.375)).items()]
    g["ties56-gray-f64"] = _group_float(items)

    pats = list(_tie_patterns(48, 40, (0.0, 0.5, 1.0)).values())
    items = [("c2-rand", rng.random((48, 40, 2))), ("c2-smooth", _smooth_noise(rng, 48, 40, 2, 2.0)),
             ("c2-ties", np.stack([pats[2], pats[9]], -1)), ("c2-ties2", np.stack([pats[5], pats[3]], -1))]
    g["c2-48x40-f64"] = _group_float(items)

    from skimage.data import logo

    rgba = logo()
    items = [("logo-rgba/resize56", _resize(rgba, 56, np.uint8)), ("logo-rgba/crop56", _center_crop(rgba, 56, 56)),
             ("rgba-rand", rng.integers(0, 256, (56, 56, 4), dtype=np.uint8)),
             ("rgba-levels", (rng.integers(0, 2, (56, 56, 4)) * 255).astype(np.uint8))]
    g["c4-56-u8"] = _group_u8(items)

    by_name = dict(rgb)
    items = [(f"{n}/resize224", _resize(by_name[n], 224, np.uint8))
             for n in ("astronaut", "coffee", "chelsea", "rocket") if n in by_name]
    items += [(f"{n}/crop224", _center_crop(by_name[n], 224, 224)) for n in ("astronaut", "hubble_deep_field")
              if n in by_name]
    g["rgb224-u8"] = _group_u8(items)

    gby = dict(gray)
    items = [(f"{n}/resize224", _resize(gby[n], 224, np.uint8)) for n in ("camera", "checkerboard") if n in gby]
    items += [(f"{n}/crop224", _center_crop(gby[n], 224, 224)) for n in ("coins", "moon") if n in gby]
    g["gray224-u8"] = _group_u8(items)

    items = [(f"{n}/crop37x83", _random_crop(img, 37, 83, rng)) for n, img in rgb[:6]]
    g["crop-rgb-37x83-u8"] = _group_u8(items)
    items = [(f"{n}/crop61x29-f32", (_random_crop(img, 61, 29, rng) / np.float32(255)).astype(np.float32))
             for n, img in gray[:6]]
    g["crop-gray-61x29-f32"] = _group_float(items)
    return g


#: (scale, sigma, min_size). The PGM's setting first; sigma = 0 (no smoothing), kernel radii
#: 2 (0.5), 3 (0.8749), 4 (0.875, 0.9), 5 (1.3), 8 (2.0); scales 1, 64, 150, 300; min_size 0..50.
PARAMS = [
    (64, 0.5, 10),
    (1, 0.0, 0),
    (300, 0.9, 50),
    (64, 1.3, 10),
    (1, 2.0, 10),
    (300, 0.0, 10),
    (64, 0.875, 0),
    (1, 0.5, 50),
    (150, 0.8749, 20),
]
PARAMS_224 = [(64, 0.5, 10), (1, 0.0, 0), (300, 0.9, 50), (64, 2.0, 10)]
BIG_GROUPS = ("rgb224-u8", "gray224-u8")
GROUP_NAMES = [
    "ship-rgb56-u8", "ship-rgb56-f32", "ship-gray56-u8", "ship-gray56-f64", "lfw25-f64", "rand56-rgb-f64",
    "rand56-rgb-u8", "ties56-rgb-u8", "ties56-gray-f64", "c2-48x40-f64", "c4-56-u8", "rgb224-u8", "gray224-u8",
    "crop-rgb-37x83-u8", "crop-gray-61x29-f32",
]


def _pid(p):
    return f"s{p[0]:g}-sig{p[1]:g}-m{p[2]}"


CASES = [
    pytest.param(group, p, id=f"{group}-{_pid(p)}")
    for group in GROUP_NAMES
    for p in (PARAMS_224 if group in BIG_GROUPS else PARAMS)
]


@functools.lru_cache(maxsize=None)
def oracle(group: str, params: tuple, tie_rule: str = "stable") -> tuple:
    g = corpus()[group]
    return tuple(skimage_labels(img, *params, tie_rule=tie_rule) for img in g.sk_inputs)


# --- the oracle itself ----------------------------------------------------------------------


def test_corpus_size_and_variety():
    g = corpus()
    assert set(g) == set(GROUP_NAMES)
    assert sum(len(x) for x in g.values()) >= 200
    shipped = [n for n in RGB_NAMES + GRAY_NAMES if _shipped(n) is not None]
    assert len(shipped) >= 20, shipped  # the images ship with skimage: none should be missing
    channels = {x.images.shape[1] for x in g.values()}
    assert channels == {1, 2, 3, 4}
    assert {x.images.dtype for x in g.values()} == {torch.float32, torch.float64}


def test_oracle_patch_takes_effect():
    """The stable argsort patch is really called by skimage, and the tie rule really matters on
    the tie images (the stable and the opposite tie rule give different segmentations)."""
    g = corpus()["ties56-rgb-u8"]
    img = g.sk_inputs[g.names.index("ties/checker4")]
    before = dict(_ARGSORT_CALLS)
    stable = skimage_labels(img, 64, 0.5, 10, tie_rule="stable")
    anti = skimage_labels(img, 64, 0.5, 10, tie_rule="antistable")
    assert _ARGSORT_CALLS["stable"] == before["stable"] + 1
    assert _ARGSORT_CALLS["antistable"] == before["antistable"] + 1
    assert not np.array_equal(stable, anti)
    assert np.array_equal(stable, skimage_labels(img, 64, 0.5, 10, tie_rule="stable"))


@pytest.mark.parametrize("group", ["ties56-rgb-u8", "ties56-gray-f64", "ship-gray56-u8", "rand56-rgb-u8"])
def test_corpus_exercises_ties(group):
    """On these groups the tie rule changes skimage's output for several images, so a walnet
    that broke ties differently from the stable rule would be caught."""
    differ = 0
    for params in (PARAMS[0], PARAMS[5]):
        stable = oracle(group, params)
        anti = oracle(group, params, "antistable")
        differ += sum(not np.array_equal(a, b) for a, b in zip(stable, anti))
    assert differ >= 3, differ


# --- exact and parallel vs the oracle -------------------------------------------------------


@pytest.mark.parametrize("group, params", CASES)
def test_exact_equals_stable_skimage(group, params):
    _require_op("cpu")
    g = corpus()[group]
    out = ops.felzenszwalb(g.images, *params, backend="exact")
    assert out.shape == (len(g), *g.images.shape[2:]) and out.device.type == "cpu" and out.is_contiguous()
    assert_labels_equal(out, oracle(group, params), g.names, f"exact {group} {params}")
    # "auto" is "exact" on the CPU
    assert torch.equal(ops.felzenszwalb(g.images, *params), out)


@pytest.mark.parametrize("group, params", CASES)
def test_parallel_equals_stable_skimage(group, params):
    _require_op("cpu")
    g = corpus()[group]
    out = ops.felzenszwalb(g.images, *params, backend="parallel")
    assert_labels_equal(out, oracle(group, params), g.names, f"parallel {group} {params}")


@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[2], PARAMS[4]], ids=_pid)
def test_parallel_equals_exact_single_images(params):
    """Each image alone (N = 1) gives the same labels as in its batch, in both backends."""
    _require_op("cpu")
    g = corpus()["ties56-rgb-u8"]
    batch = ops.felzenszwalb(g.images, *params, backend="exact")
    for i in range(0, len(g), 3):
        for backend in ("exact", "parallel"):
            assert torch.equal(ops.felzenszwalb(g.images[i : i + 1], *params, backend=backend)[0], batch[i])


def _tiefree_group() -> Group:
    rng = np.random.default_rng(99)
    items = [(f"uniform{i}", rng.random((56, 56, 3))) for i in range(4)]
    items += [(f"smooth{i}", _smooth_noise(rng, 56, 56, 3, s)) for i, s in enumerate((1.0, 2.5, 5.0))]
    items += [(f"normal{i}", rng.standard_normal((56, 56, 3))) for i in range(2)]
    return _group_float(items)


@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[1], PARAMS[2], PARAMS[4]], ids=_pid)
def test_unpatched_skimage_on_tie_free_images(params):
    """What users see: skimage as shipped (numpy's unstable argsort) agrees on images without
    tied edge weights (continuous random values)."""
    _require_op("cpu")
    g = _tiefree_group()
    want = [skimage_labels(img, *params, tie_rule="numpy") for img in g.sk_inputs]
    for backend in ("exact", "parallel"):
        assert_labels_equal(ops.felzenszwalb(g.images, *params, backend=backend), want, g.names,
                            f"{backend} vs unpatched skimage {params}")


def test_unpatched_skimage_on_tie_free_224():
    _require_op("cpu")
    rng = np.random.default_rng(5)
    imgs = [_smooth_noise(rng, 224, 224, 3, 1.5), rng.random((224, 224, 3))]
    g = _group_float([("smooth224", imgs[0]), ("uniform224", imgs[1])])
    want = [skimage_labels(img, 64, 0.5, 10, tie_rule="numpy") for img in imgs]
    for backend in ("exact", "parallel"):
        assert_labels_equal(ops.felzenszwalb(g.images, 64, 0.5, 10, backend=backend), want, g.names, backend)


# --- the reference spec -----------------------------------------------------------------------


def _small_groups() -> list:
    """Images of at most 24 x 24 for the slow Python reference: float64 grayscale and uint8 RGB."""
    g = corpus()
    lfw, ties_gray, ties_rgb = g["lfw25-f64"], g["ties56-gray-f64"], g["ties56-rgb-u8"]
    items = [(f"{lfw.names[i]}/24", lfw.sk_inputs[i][:24, :24]) for i in (0, 7, 21)]
    items += [(f"{n}/24", a[:24, :24]) for n, a in zip(ties_gray.names, ties_gray.sk_inputs) if n == "ties/dstripes"]
    items += [("phantom/24", g["ship-gray56-f64"].sk_inputs[-1][16:40, 16:40])]
    rgb = [(f"{n}/20x24", _center_crop(a, 20, 24)) for n, a in zip(ties_rgb.names, ties_rgb.sk_inputs)
           if n in ("ties/checker4", "ties/blobs-tint", "ties/stripes+blobs")]
    rgb += [("coffee/20x24", _center_crop(_shipped("coffee"), 20, 24))]
    return [_group_float(items), _group_u8(rgb)]


@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[1], PARAMS[2], (64, 2.0, 5)], ids=_pid)
def test_reference_equals_exact_and_skimage(params):
    _require_op("cpu")
    for g in _small_groups():
        ref = ops.felzenszwalb(g.images, *params, backend="reference")
        want = [skimage_labels(img, *params) for img in g.sk_inputs]
        assert_labels_equal(ref, want, g.names, f"reference {params}")
        assert torch.equal(ops.felzenszwalb(g.images, *params, backend="exact"), ref)


# --- small and degenerate shapes ----------------------------------------------------------------

EDGE_SHAPES = [(1, 1), (1, 2), (2, 1), (1, 9), (9, 1), (1, 40), (40, 1), (2, 2), (2, 13), (13, 2), (3, 3), (5, 4)]
EDGE_PARAMS = [(64, 0.5, 10), (1, 0.0, 0), (1, 0.1, 1), (1, 2.0, 2), (300, 4.0, 50), (1, 0.9, 0)]


def _edge_backends(device):
    return ["exact", "parallel", "reference"] if device == "cpu" else ["auto", "parallel"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_small_shapes(device, shape):
    """1x1, 1xW, Hx1 and tiny images, kernels wider than the image (scipy's reflect boundary),
    min_size larger than the image; grayscale and RGB, two images per batch."""
    _require_op(device)
    h, w = shape
    rng = np.random.default_rng(h * 100 + w)
    for c in (1, 3):
        u = rng.integers(0, 256, (2, h, w, c), dtype=np.uint8)
        u[1] = u[1] // 128 * 255  # two levels: ties
        images = _u8_to_walnet(u).to(device)
        for params in EDGE_PARAMS:
            want = [skimage_labels(x, *params) for x in u]
            for backend in _edge_backends(device):
                out = ops.felzenszwalb(images, *params, backend=backend)
                assert out.shape == (2, h, w) and out.device.type == device
                assert_labels_equal(out, want, ["random", "two-level"], f"{backend} {shape} C={c} {params}")


def _threshold_rows(scale: float, size: int) -> np.ndarray:
    """[M, 1, size + 1] float64 rows: `size` zero pixels (one segment, internal difference 0),
    then a pixel at a distance d from them equal to k / size or to its float32 rounding (k =
    scale / 255, skimage's threshold is float32(0 + k / size)), or one ulp either side."""
    k = scale / 255
    ds = []
    for t in (k / size, float(np.float32(k / size))):
        ds += [t, np.nextafter(t, 0.0), np.nextafter(t, 1.0)]
    rows = np.zeros((len(ds), 1, size + 1))
    rows[:, 0, -1] = ds
    return rows


@pytest.mark.parametrize("scale", [0.1, 1.0, 64.0, 300.0])
def test_merge_threshold_rounding(scale):
    """Edge weights on (and one ulp off) the merge threshold: skimage compares the float64
    weight with float32-rounded thresholds, strictly (w < min(float32(cint + k / size)))."""
    _require_op("cpu")
    merged = set()
    for size in (1, 2, 3):
        rows = _threshold_rows(scale, size)
        want = [skimage_labels(r[..., None], scale, 0.0, 0) for r in rows]
        merged |= {int(w.max()) == 0 for w in want}
        images = torch.from_numpy(rows)[:, None]
        names = [f"size{size}-d{r[0, -1]!r}" for r in rows]
        for backend in ("exact", "parallel", "reference"):
            assert_labels_equal(ops.felzenszwalb(images, scale, 0.0, 0, backend=backend), want, names,
                                f"{backend} scale={scale}")
    assert merged == {True, False}  # the rows straddle the threshold


def test_grayscale_2d_skimage_convention():
    """skimage's 2-D grayscale call (channel_axis=None) is the [N,1,H,W] case."""
    _require_op("cpu")
    from skimage.segmentation import felzenszwalb

    u = _shipped("camera")[200:260:2, 100:160:2]
    with mock.patch("numpy.argsort", _stable_argsort):
        want = felzenszwalb(u, scale=64, sigma=0.5, min_size=10, channel_axis=None)
    out = ops.felzenszwalb(_u8_to_walnet(u[None, ..., None]), 64, 0.5, 10)
    assert_labels_equal(out, [want], ["camera/2-D"], "2-D grayscale")


def test_default_parameters():
    """The defaults are scale=64, sigma=0.5, min_size=10 (the PGM's setting)."""
    _require_op("cpu")
    g = corpus()["ship-rgb56-u8"]
    out = ops.felzenszwalb(g.images)
    assert_labels_equal(out, oracle("ship-rgb56-u8", (64, 0.5, 10)), g.names, "defaults")


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    _require_op(device)
    x = torch.rand(0, 3, 5, 7, dtype=torch.float64, device=device)
    for backend in _edge_backends(device):
        out = ops.felzenszwalb(x, backend=backend)
        assert out.shape == (0, 5, 7) and out.dtype == torch.int32 and out.device.type == device
        labels, rounds = ops.felzenszwalb(x.float(), 64.0, 0.5, 10, backend=backend, return_rounds=True)
        assert labels.shape == (0, 5, 7) and rounds.shape == (0, 2) and rounds.dtype == torch.int32
        counts = ops.segment_counts(labels)
        assert counts.shape == (0,) and counts.dtype == torch.int64


# --- layouts, dtypes, determinism -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_layouts(device):
    """channels_last, strided, transposed, stride-0 (expanded) and float32 inputs give the
    contiguous float64 result."""
    _require_op(device)
    g = corpus()["ship-rgb56-f32"]
    x32 = g.images[:6].to(device)
    x = x32.double()
    backends = ["exact", "parallel"] if device == "cpu" else ["auto", "parallel"]
    for backend in backends:
        run = functools.partial(ops.felzenszwalb, scale=64.0, sigma=0.5, min_size=10, backend=backend)
        expected = run(x)
        assert_labels_equal(expected, oracle("ship-rgb56-f32", (64, 0.5, 10))[:6], g.names[:6], backend)
        assert torch.equal(run(x32), expected)
        cl = x.contiguous(memory_format=torch.channels_last)
        assert not cl.is_contiguous()
        assert torch.equal(run(cl), expected)
        assert torch.equal(run(x32.contiguous(memory_format=torch.channels_last)), expected)
        wide = torch.zeros(6, 3, 56, 112, dtype=torch.float64, device=device)
        wide[..., 1::2] = x
        assert torch.equal(run(wide[..., 1::2]), expected)
        t = x.transpose(2, 3).contiguous().transpose(2, 3)
        assert not t.is_contiguous()
        assert torch.equal(run(t), expected)
        strided_batch = torch.stack([x, x], 1).flatten(0, 1)[::2]
        assert torch.equal(run(strided_batch), expected)
        expanded = x[:1].expand(4, -1, -1, -1)
        assert torch.equal(run(expanded), expected[:1].expand(4, -1, -1))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_across_calls_and_threads(device):
    _require_op(device)
    g = corpus()["ties56-rgb-u8"]
    x = torch.cat([g.images, corpus()["ship-rgb56-u8"].images[:10]]).to(device)
    backends = ["exact", "parallel"] if device == "cpu" else ["auto", "parallel"]
    threads = torch.get_num_threads()
    runs = {b: [] for b in backends}
    try:
        for nt in (threads, 1, 2, threads):
            torch.set_num_threads(nt)
            for b in backends:
                runs[b].append(ops.felzenszwalb(x, 64, 0.5, 10, backend=b, return_rounds=True))
    finally:
        torch.set_num_threads(threads)
    for b in backends:
        first_labels, first_rounds = runs[b][0]
        for labels, rounds in runs[b][1:]:
            assert torch.equal(labels, first_labels)
            assert torch.equal(rounds, first_rounds)
    assert torch.equal(runs[backends[0]][0][0], runs[backends[1]][0][0])


# --- numbering, counts, rounds ----------------------------------------------------------------


def _check_numbering(labels: torch.Tensor) -> None:
    """Labels are 0..n-1 and numbered in order of first appearance in raster order."""
    for i, lab in enumerate(labels.cpu().numpy()):
        flat = lab.ravel()
        values, first = np.unique(flat, return_index=True)
        assert np.array_equal(values, np.arange(len(values))), f"image {i}: labels are not 0..n-1"
        assert np.all(np.diff(first) > 0), f"image {i}: first appearances are not in raster order"


@pytest.mark.parametrize("group", ["ship-rgb56-u8", "ties56-gray-f64", "rgb224-u8", "crop-rgb-37x83-u8"])
@pytest.mark.parametrize("backend", ["exact", "parallel"])
def test_numbering_and_segment_counts(group, backend):
    _require_op("cpu")
    g = corpus()[group]
    for params in (PARAMS[0], PARAMS[1]):
        labels = ops.felzenszwalb(g.images, *params, backend=backend)
        _check_numbering(labels)
        counts = ops.segment_counts(labels)
        assert counts.dtype == torch.int64 and counts.shape == (len(g),)
        assert torch.equal(counts, labels.flatten(1).amax(1).long() + 1)
        # against skimage's own count (not walnet's labels)
        want = torch.tensor([int(w.max()) + 1 for w in oracle(group, params)])
        assert torch.equal(counts, want)


def test_segment_counts_varies():
    """The count is per image (flat images give 1, noise many)."""
    _require_op("cpu")
    g = corpus()["ties56-rgb-u8"]
    counts = ops.segment_counts(ops.felzenszwalb(g.images, 64, 0.5, 10))
    flat = [i for i, n in enumerate(g.names) if n.startswith("ties/flat")]
    assert (counts[flat] == 1).all()
    assert counts.max() > 1


def test_rounds():
    _require_op("cpu")
    g = corpus()["ship-rgb56-u8"]
    x = g.images
    labels, rounds = ops.felzenszwalb(x, 64, 0.5, 10, backend="exact", return_rounds=True)
    assert rounds.dtype == torch.int32 and rounds.shape == (len(g), 2)
    assert (rounds == 0).all()
    assert torch.equal(labels, ops.felzenszwalb(x, 64, 0.5, 10, backend="exact"))
    plabels, prounds = ops.felzenszwalb(x, 64, 0.5, 10, backend="parallel", return_rounds=True)
    assert torch.equal(plabels, labels)
    assert prounds.dtype == torch.int32 and prounds.shape == (len(g), 2)
    assert (prounds[:, 0] > 0).all()
    n_edges = 4 * 56 * 56
    assert (prounds <= n_edges).all()
    # small segments exist on noise at scale 1 with min_size 50: the min_size pass has work
    noise = _u8_to_walnet(np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8))
    _, r = ops.felzenszwalb(noise, 1, 0.0, 50, backend="parallel", return_rounds=True)
    assert (r > 0).all()
    # a single pixel has no edges: no round can be needed for it
    _, r1 = ops.felzenszwalb(torch.rand(1, 3, 1, 1, dtype=torch.float64), backend="parallel", return_rounds=True)
    assert r1.shape == (1, 2) and (r1 >= 0).all() and (r1 <= 1).all()


# --- bad input --------------------------------------------------------------------------------


def _bad_cases():
    x = torch.rand(2, 3, 8, 9, dtype=torch.float64)
    nan, inf = x.clone(), x.float().clone()
    nan[1, 2, 3, 4] = float("nan")
    inf[0, 0, 7, 8] = float("-inf")
    return [
        ("nan", (nan,), {}, ValueError, "images"),
        ("inf", (inf,), {}, ValueError, "images"),
        ("3-D", (x[0],), {}, ValueError, "images"),
        ("5-D", (x[None],), {}, ValueError, "images"),
        ("2-D", (x[0, 0],), {}, ValueError, "images"),
        ("uint8", ((x * 255).to(torch.uint8),), {}, TypeError, "images"),
        ("int64", ((x * 255).long(),), {}, TypeError, "images"),
        ("bool", (x > 0.5,), {}, TypeError, "images"),
        ("C = 0", (x[:, :0],), {}, ValueError, "images"),
        ("not a tensor", (x.numpy(),), {}, TypeError, "images"),
        ("scale 0", (x, 0.0), {}, ValueError, "scale"),
        ("scale negative", (x, -64.0), {}, ValueError, "scale"),
        ("scale nan", (x, float("nan")), {}, ValueError, "scale"),
        ("sigma negative", (x, 64.0, -0.5), {}, ValueError, "sigma"),
        ("sigma nan", (x, 64.0, float("nan")), {}, ValueError, "sigma"),
        ("min_size negative", (x, 64.0, 0.5, -1), {}, ValueError, "min_size"),
        ("bad backend", (x,), {"backend": "triton"}, ValueError, "backend"),
        ("bad backend 2", (x,), {"backend": "EXACT"}, ValueError, "backend"),
    ]


@pytest.mark.parametrize("backend", ["auto", "exact", "parallel", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input(case, backend):
    _, args, kwargs, exc, name = case
    kwargs = {"backend": backend, **kwargs}
    with pytest.raises(exc, match=name):
        ops.felzenszwalb(*args, **kwargs)


def test_bad_input_keyword_arguments():
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="scale"):
        ops.felzenszwalb(x, scale=0)
    with pytest.raises(ValueError, match="sigma"):
        ops.felzenszwalb(x, sigma=-1e-9)
    with pytest.raises(ValueError, match="min_size"):
        ops.felzenszwalb(x, min_size=-5)
    with pytest.raises(TypeError):
        ops.felzenszwalb(x, 64.0, 0.5, 10, "exact")  # backend is keyword-only


def test_public_api():
    for name in ("felzenszwalb", "segment_counts"):
        assert name in ops.__all__
        assert getattr(ops, name).__doc__


# --- torch.library integration ----------------------------------------------------------------


def _scipy_weights(sigma: float) -> list:
    """scipy.ndimage.gaussian_filter1d's kernel (truncate=4), centre first: w[j] at distance j."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    phi = phi / phi.sum()
    return [float(v) for v in phi[radius:]]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    _require_op(device)
    u = _shipped("coffee")[100:111:1, 200:213]
    images = _u8_to_walnet(np.stack([u, u[::-1].copy()])).to(device)
    assert images.dtype == torch.float64 and images.is_contiguous()
    op = torch.ops.walnet.felzenszwalb.default
    for parallel in (False, True):
        torch.library.opcheck(op, (images, _scipy_weights(0.5), 64 / 255, 10, parallel))
        torch.library.opcheck(op, (images[:, :1].contiguous(), _scipy_weights(2.0), 1 / 255, 0, parallel))


def test_direct_op_equals_wrapper():
    """The registered op with scipy's kernel (centre first) and k = scale / 255 is the wrapper."""
    _require_op("cpu")
    g = corpus()["ship-rgb56-u8"]
    for scale, sigma, min_size in (PARAMS[0], PARAMS[2], PARAMS[3]):
        for parallel in (False, True):
            labels, rounds = torch.ops.walnet.felzenszwalb(g.images, _scipy_weights(sigma), scale / 255, min_size,
                                                           parallel)
            assert_labels_equal(labels, oracle("ship-rgb56-u8", (scale, sigma, min_size)), g.names, "direct op")
            assert rounds.shape == (len(g), 2) and rounds.dtype == torch.int32
            assert bool((rounds > 0).any()) == parallel


def test_torch_compile_fullgraph():
    _require_op("cpu")
    g = corpus()["ship-rgb56-f32"]
    x = g.images[:8]
    assert x.dtype == torch.float32

    def seg(x):
        labels = ops.felzenszwalb(x, 64.0, 0.5, 10)
        plabels, rounds = ops.felzenszwalb(x * 1.0, 300.0, 0.9, 50, backend="parallel", return_rounds=True)
        return labels, ops.segment_counts(labels), plabels, rounds

    compiled = torch.compile(seg, fullgraph=True)
    got, want = compiled(x), seg(x)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert_labels_equal(got[0], oracle("ship-rgb56-f32", (64, 0.5, 10))[:8], g.names, "compiled")
    assert_labels_equal(got[2], oracle("ship-rgb56-f32", (300, 0.9, 50))[:8], g.names, "compiled parallel")


# --- CUDA == CPU ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", ["ship-rgb56-u8", "ties56-rgb-u8", "ship-gray56-f64", "c4-56-u8", "rgb224-u8"])
def test_device_equals_exact_cpu(device, group):
    """The device's default path (the GPU algorithm on CUDA) equals the CPU's exact labels."""
    _require_op(device)
    _require_op("cpu")
    if UNDER_SANITIZER and group in BIG_GROUPS:
        pytest.skip("224^2 batches are too slow under compute-sanitizer")
    g = corpus()[group]
    for params in (PARAMS_224 if group in BIG_GROUPS else PARAMS[:4]):
        exact = ops.felzenszwalb(g.images, *params, backend="exact")
        for backend in ("auto", "parallel"):
            labels, rounds = ops.felzenszwalb(g.images.to(device), *params, backend=backend, return_rounds=True)
            assert labels.device.type == device and rounds.device.type == device
            assert_labels_equal(labels, [e.numpy() for e in exact], g.names, f"{device} {backend} {params}")
            counts = ops.segment_counts(labels)
            assert counts.device.type == device
            assert torch.equal(counts.cpu(), exact.flatten(1).amax(1).long() + 1)
            if backend == "parallel":
                assert (rounds[:, 0] > 0).all()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_float32_and_layouts():
    _require_op("cuda")
    g = corpus()["ship-rgb56-f32"]
    want = oracle("ship-rgb56-f32", PARAMS[0])
    x = g.images.cuda()
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)
    for inp in (x, x.double(), x.contiguous(memory_format=torch.channels_last), transposed):
        assert_labels_equal(ops.felzenszwalb(inp, *PARAMS[0]), want, g.names, "cuda layouts")
