"""The oracle and the image corpus of the Felzenszwalb tests (a helper module, not a test module).

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
import warnings
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
import torch

from walnet import ops

from conftest import require_kernel

# --- the oracle ---------------------------------------------------------------------------

_REAL_ARGSORT = np.argsort
ARGSORT_CALLS = {"stable": 0, "antistable": 0}


def stable_argsort(a, axis=-1, kind=None, order=None, **kwargs):
    ARGSORT_CALLS["stable"] += 1
    return _REAL_ARGSORT(a, axis=axis, kind="stable", order=order, **kwargs)


def _antistable_argsort(a, axis=-1, kind=None, order=None, **kwargs):
    """Ascending by value, ties in *decreasing* index order: the opposite tie rule."""
    ARGSORT_CALLS["antistable"] += 1
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
    patch = {"stable": stable_argsort, "antistable": _antistable_argsort}.get(tie_rule)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # skimage warns about C > 3
        if patch is None:
            return felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)
        with mock.patch("numpy.argsort", patch):
            return felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)


def u8_to_walnet(u: np.ndarray) -> torch.Tensor:
    """The spec's mapping of a uint8 image batch [N,H,W,C] to walnet's float64 input [N,C,H,W]."""
    return (torch.from_numpy(np.ascontiguousarray(u)).double() * (1.0 / 255)).permute(0, 3, 1, 2).contiguous()


def float_to_walnet(f: np.ndarray) -> torch.Tensor:
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


def require_op(device: str) -> None:
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


def group_u8(items) -> Group:
    names, arrs = zip(*items)
    arrs = [a[..., None] if a.ndim == 2 else a for a in arrs]
    assert all(a.dtype == np.uint8 for a in arrs)
    return Group(list(names), u8_to_walnet(np.stack(arrs)), list(arrs))


def group_float(items) -> Group:
    names, arrs = zip(*items)
    arrs = [a[..., None] if a.ndim == 2 else a for a in arrs]
    dtype = arrs[0].dtype
    assert dtype in (np.float32, np.float64) and all(a.dtype == dtype for a in arrs)
    return Group(list(names), float_to_walnet(np.stack(arrs)), list(arrs))


#: skimage.data images that are files shipped with the package (no download).
RGB_NAMES = ["astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry",
             "retina", "rocket", "stereo_motorcycle", "logo"]
GRAY_NAMES = ["brick", "camera", "cell", "checkerboard", "clock", "coins", "grass", "gravel", "horse",
              "microaneurysms", "moon", "page", "text", "binary_blobs"]


@functools.lru_cache(maxsize=None)
def shipped(name: str):
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


def center_crop(img, h, w):
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


def smooth_noise(rng, h, w, c, sigma):
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(rng.random((h, w, c)), sigma=(sigma, sigma, 0))
    return (x - x.min()) / (x.max() - x.min())


def _tie_patterns(h, w, levels=(0.0, 1.0)):
    """Float images (H x W) full of exactly tied edge weights: flat, stripes, checkerboards,
    ramps and quantised blobs. Values are taken from `levels`."""
    lo, hi = levels[0], levels[-1]
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(h * 1000 + w)
    blobs = smooth_noise(rng, h, w, 1, 3.0)[..., 0]
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
    rgb = [(n, shipped(n)) for n in RGB_NAMES if shipped(n) is not None]
    gray = [(n, shipped(n)) for n in GRAY_NAMES if shipped(n) is not None]
    g = {}

    items = []
    for n, img in rgb:
        items += [(f"{n}/resize56", _resize(img, 56, np.uint8)), (f"{n}/crop56", center_crop(img, 56, 56)),
                  (f"{n}/stride56", _strided(img, 56))]
    g["ship-rgb56-u8"] = group_u8(items)

    items = []
    for n, img in rgb:
        items += [(f"{n}/resize56-f32", _resize(img, 56, np.float32)),
                  (f"{n}/rcrop56-f32", (_random_crop(img, 56, 56, rng) / np.float32(255)).astype(np.float32))]
    g["ship-rgb56-f32"] = group_float(items)

    items = []
    for n, img in gray:
        items += [(f"{n}/resize56", _resize(img, 56, np.uint8)), (f"{n}/crop56", center_crop(img, 56, 56)),
                  (f"{n}/stride56", _strided(img, 56))]
    for n, img in rgb:
        items.append((f"{n}/gray-resize56", _rgb2gray_u8(_resize(img, 56, np.uint8))))
    g["ship-gray56-u8"] = group_u8(items)

    import skimage.data

    phantom = skimage.data.shepp_logan_phantom()  # float64, many exact ties
    items = [(f"{n}/resize56-f64", _resize(img, 56, np.float64)) for n, img in gray]
    items += [("phantom/resize56", _resize(phantom, 56, np.float64)), ("phantom/crop56", center_crop(phantom, 56, 56)),
              ("phantom/stride56", _strided(phantom, 56))]
    g["ship-gray56-f64"] = group_float(items)

    faces = skimage.data.lfw_subset()  # 200 x 25 x 25 float64
    g["lfw25-f64"] = group_float([(f"lfw{i}", faces[i]) for i in range(0, 200, 5)])

    items = []
    for i in range(5):
        items.append((f"uniform{i}", rng.random((56, 56, 3))))
    for i, s in enumerate((0.7, 1.5, 3.0, 6.0)):
        items.append((f"smooth{i}", smooth_noise(rng, 56, 56, 3, s)))
    items += [("x255", 255 * rng.random((56, 56, 3))), ("smooth-x255", 255 * smooth_noise(rng, 56, 56, 3, 2.0)),
              ("normal", rng.standard_normal((56, 56, 3))),
              ("normal-smooth", 3 * smooth_noise(rng, 56, 56, 3, 2) - 1.5),
              ("tiny-range", 1e-3 * rng.random((56, 56, 3)))]
    g["rand56-rgb-f64"] = group_float(items)

    items = [(f"u8-{i}", rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for i in range(3)]
    items += [(f"u8-levels{k}-{i}", (rng.integers(0, k, (56, 56, 3)) * (255 // (k - 1))).astype(np.uint8))
              for k in (2, 3, 5) for i in range(2)]
    items += [("u8-smooth", np.round(255 * smooth_noise(rng, 56, 56, 3, 2.0)).astype(np.uint8)),
              ("u8-smooth-q8", (np.round(7 * smooth_noise(rng, 56, 56, 3, 2.0)) * 36).astype(np.uint8))]
    g["rand56-rgb-u8"] = group_u8(items)

    items = []
    for name, pat in _tie_patterns(56, 56, (0, 64, 128, 255)).items():
        pat = pat.astype(np.uint8)
        items.append((f"ties/{name}", np.stack([pat, pat, pat], -1)))
        items.append((f"ties/{name}-tint", np.stack([pat, 255 - pat, pat // 2], -1)))
    g["ties56-rgb-u8"] = group_u8(items)

    items = [(f"ties/{n}", p) for n, p in _tie_patterns(56, 56, (0.0, 0.25, 0.5, 1.0)).items()]
    items += [(f"ties2/{n}", p) for n, p in _tie_patterns(56, 56, (0.125, 0.375)).items()]
    g["ties56-gray-f64"] = group_float(items)

    pats = list(_tie_patterns(48, 40, (0.0, 0.5, 1.0)).values())
    items = [("c2-rand", rng.random((48, 40, 2))), ("c2-smooth", smooth_noise(rng, 48, 40, 2, 2.0)),
             ("c2-ties", np.stack([pats[2], pats[9]], -1)), ("c2-ties2", np.stack([pats[5], pats[3]], -1))]
    g["c2-48x40-f64"] = group_float(items)

    from skimage.data import logo

    rgba = logo()
    items = [("logo-rgba/resize56", _resize(rgba, 56, np.uint8)), ("logo-rgba/crop56", center_crop(rgba, 56, 56)),
             ("rgba-rand", rng.integers(0, 256, (56, 56, 4), dtype=np.uint8)),
             ("rgba-levels", (rng.integers(0, 2, (56, 56, 4)) * 255).astype(np.uint8))]
    g["c4-56-u8"] = group_u8(items)

    by_name = dict(rgb)
    items = [(f"{n}/resize224", _resize(by_name[n], 224, np.uint8))
             for n in ("astronaut", "coffee", "chelsea", "rocket") if n in by_name]
    items += [(f"{n}/crop224", center_crop(by_name[n], 224, 224)) for n in ("astronaut", "hubble_deep_field")
              if n in by_name]
    g["rgb224-u8"] = group_u8(items)

    gby = dict(gray)
    items = [(f"{n}/resize224", _resize(gby[n], 224, np.uint8)) for n in ("camera", "checkerboard") if n in gby]
    items += [(f"{n}/crop224", center_crop(gby[n], 224, 224)) for n in ("coins", "moon") if n in gby]
    g["gray224-u8"] = group_u8(items)

    items = [(f"{n}/crop37x83", _random_crop(img, 37, 83, rng)) for n, img in rgb[:6]]
    g["crop-rgb-37x83-u8"] = group_u8(items)
    items = [(f"{n}/crop61x29-f32", (_random_crop(img, 61, 29, rng) / np.float32(255)).astype(np.float32))
             for n, img in gray[:6]]
    g["crop-gray-61x29-f32"] = group_float(items)
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


def pid(p):
    return f"s{p[0]:g}-sig{p[1]:g}-m{p[2]}"


CASES = [
    pytest.param(group, p, id=f"{group}-{pid(p)}")
    for group in GROUP_NAMES
    for p in (PARAMS_224 if group in BIG_GROUPS else PARAMS)
]


@functools.lru_cache(maxsize=None)
def oracle(group: str, params: tuple, tie_rule: str = "stable") -> tuple:
    g = corpus()[group]
    return tuple(skimage_labels(img, *params, tie_rule=tie_rule) for img in g.sk_inputs)


def tiefree_group() -> Group:
    rng = np.random.default_rng(99)
    items = [(f"uniform{i}", rng.random((56, 56, 3))) for i in range(4)]
    items += [(f"smooth{i}", smooth_noise(rng, 56, 56, 3, s)) for i, s in enumerate((1.0, 2.5, 5.0))]
    items += [(f"normal{i}", rng.standard_normal((56, 56, 3))) for i in range(2)]
    return group_float(items)


def small_groups() -> list:
    """Images of at most 24 x 24 for the slow Python reference: float64 grayscale and uint8 RGB."""
    g = corpus()
    lfw, ties_gray, ties_rgb = g["lfw25-f64"], g["ties56-gray-f64"], g["ties56-rgb-u8"]
    items = [(f"{lfw.names[i]}/24", lfw.sk_inputs[i][:24, :24]) for i in (0, 7, 21)]
    items += [(f"{n}/24", a[:24, :24]) for n, a in zip(ties_gray.names, ties_gray.sk_inputs) if n == "ties/dstripes"]
    items += [("phantom/24", g["ship-gray56-f64"].sk_inputs[-1][16:40, 16:40])]
    rgb = [(f"{n}/20x24", center_crop(a, 20, 24)) for n, a in zip(ties_rgb.names, ties_rgb.sk_inputs)
           if n in ("ties/checker4", "ties/blobs-tint", "ties/stripes+blobs")]
    rgb += [("coffee/20x24", center_crop(shipped("coffee"), 20, 24))]
    return [group_float(items), group_u8(rgb)]
