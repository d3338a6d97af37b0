"""Felzenszwalb superpixels (walnet.ops.felzenszwalb): the labels of every algorithm, the reference
and every device against skimage, the oracle (see felzenszwalb_oracle.py), on the corpus and on
small, degenerate and threshold-straddling images; numbering, counts, rounds, layouts and
determinism. The round counts themselves are tested in test_felzenszwalb_rounds.py."""
from __future__ import annotations

import functools
from unittest import mock

import numpy as np
import pytest
import torch

from walnet import ops

from conftest import DEVICES, HAS_CUDA
from felzenszwalb_oracle import (BIG_GROUPS, CASES, PARAMS, PARAMS_224, assert_labels_equal, corpus, group_float,
                                 oracle, pid, require_op, shipped, skimage_labels, small_groups, smooth_noise,
                                 stable_argsort, tiefree_group, u8_to_walnet)
from felzenszwalb_variants import gpu_algorithms, kernel_variants, variant_name

# --- both algorithms vs the oracle ------------------------------------------------------------


@pytest.mark.parametrize("group, params", CASES)
def test_sequential_equals_stable_skimage(group, params):
    require_op("cpu")
    g = corpus()[group]
    out = ops.felzenszwalb(g.images, *params, algorithm="sequential")
    assert out.shape == (len(g), *g.images.shape[2:]) and out.device.type == "cpu" and out.is_contiguous()
    assert_labels_equal(out, oracle(group, params), g.names, f"sequential {group} {params}")
    # "auto" is "sequential" on the CPU
    assert torch.equal(ops.felzenszwalb(g.images, *params), out)


@pytest.mark.parametrize("group, params", CASES)
@pytest.mark.parametrize("algorithm", ["reservations", "block"])
def test_reservations_equals_stable_skimage(group, params, algorithm):
    """Both GPU algorithms, as the CPU runs them step for step (default round rules)."""
    require_op("cpu")
    g = corpus()[group]
    out = ops.felzenszwalb(g.images, *params, algorithm=algorithm)
    assert_labels_equal(out, oracle(group, params), g.names, f"{algorithm} {group} {params}")


#: Round rules other than the default, each changing the rounds but never the labels.
OTHER_RULES = [ops.RoundRules(chain=False), ops.RoundRules(window=32), ops.RoundRules(compact=False, prefilter=False),
               ops.RoundRules(window=32, compact=False, prefilter=False, chain=False)]


@pytest.mark.parametrize("rules", OTHER_RULES, ids=repr)
@pytest.mark.parametrize("group", ["ship-rgb56-u8", "ties56-rgb-u8", "ties56-gray-f64", "rand56-rgb-u8", "lfw25-f64",
                                   "c2-48x40-f64", "crop-rgb-37x83-u8", "crop-gray-61x29-f32"])
def test_round_rules_keep_the_labels(group, rules):
    require_op("cpu")
    g = corpus()[group]
    for params in PARAMS[:5]:
        out = ops.felzenszwalb(g.images, *params, algorithm="reservations", rules=rules)
        assert_labels_equal(out, oracle(group, params), g.names, f"{rules} {group} {params}")


@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[2], PARAMS[4]], ids=pid)
def test_single_images_equal_their_batch(params):
    """Each image alone (N = 1) gives the same labels as in its batch, with both algorithms."""
    require_op("cpu")
    g = corpus()["ties56-rgb-u8"]
    batch = ops.felzenszwalb(g.images, *params, algorithm="sequential")
    for i in range(0, len(g), 3):
        for algorithm in ("sequential", "reservations", "block"):
            assert torch.equal(ops.felzenszwalb(g.images[i : i + 1], *params, algorithm=algorithm)[0], batch[i])


@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[1], PARAMS[2], PARAMS[4]], ids=pid)
def test_unpatched_skimage_on_tie_free_images(params):
    """What users see: skimage as shipped (numpy's unstable argsort) agrees on images without
    tied edge weights (continuous random values)."""
    require_op("cpu")
    g = tiefree_group()
    want = [skimage_labels(img, *params, tie_rule="numpy") for img in g.sk_inputs]
    for algorithm in ("sequential", "reservations", "block"):
        assert_labels_equal(ops.felzenszwalb(g.images, *params, algorithm=algorithm), want, g.names,
                            f"{algorithm} vs unpatched skimage {params}")


def test_unpatched_skimage_on_tie_free_224():
    require_op("cpu")
    rng = np.random.default_rng(5)
    imgs = [smooth_noise(rng, 224, 224, 3, 1.5), rng.random((224, 224, 3))]
    g = group_float([("smooth224", imgs[0]), ("uniform224", imgs[1])])
    want = [skimage_labels(img, 64, 0.5, 10, tie_rule="numpy") for img in imgs]
    for algorithm in ("sequential", "reservations", "block"):
        assert_labels_equal(ops.felzenszwalb(g.images, 64, 0.5, 10, algorithm=algorithm), want, g.names, algorithm)


# --- the reference spec -----------------------------------------------------------------------


@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[1], PARAMS[2], (64, 2.0, 5), (0, 0.8, 20)], ids=pid)
def test_reference_equals_kernel_and_skimage(params):
    require_op("cpu")
    for g in small_groups():
        ref = ops.felzenszwalb(g.images, *params, backend="reference")
        want = [skimage_labels(img, *params) for img in g.sk_inputs]
        assert_labels_equal(ref, want, g.names, f"reference {params}")
        assert torch.equal(ops.felzenszwalb(g.images, *params, algorithm="sequential"), ref)


# --- small and degenerate shapes ----------------------------------------------------------------

EDGE_SHAPES = [(1, 1), (1, 2), (2, 1), (1, 9), (9, 1), (1, 40), (40, 1), (2, 2), (2, 13), (13, 2), (3, 3), (5, 4)]
EDGE_PARAMS = [(64, 0.5, 10), (1, 0.0, 0), (1, 0.1, 1), (1, 2.0, 2), (300, 4.0, 50), (1, 0.9, 0), (0, 0.8, 3)]


def _edge_variants(device):
    """Both compiled algorithms for the device and, on the CPU, the reference."""
    return kernel_variants(device) + ([{"backend": "reference"}] if device == "cpu" else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_small_shapes(device, shape):
    """1x1, 1xW, Hx1 and tiny images, kernels wider than the image (scipy's reflect boundary),
    min_size larger than the image, scale 0; grayscale and RGB, two images per batch."""
    require_op(device)
    h, w = shape
    rng = np.random.default_rng(h * 100 + w)
    for c in (1, 3):
        u = rng.integers(0, 256, (2, h, w, c), dtype=np.uint8)
        u[1] = u[1] // 128 * 255  # two levels: ties
        images = u8_to_walnet(u).to(device)
        for params in EDGE_PARAMS:
            want = [skimage_labels(x, *params) for x in u]
            for kwargs in _edge_variants(device):
                out = ops.felzenszwalb(images, *params, **kwargs)
                assert out.shape == (2, h, w) and out.device.type == device
                assert_labels_equal(out, want, ["random", "two-level"],
                                    f"{variant_name(kwargs)} {shape} C={c} {params}")


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
    require_op("cpu")
    merged = set()
    for size in (1, 2, 3):
        rows = _threshold_rows(scale, size)
        want = [skimage_labels(r[..., None], scale, 0.0, 0) for r in rows]
        merged |= {int(w.max()) == 0 for w in want}
        images = torch.from_numpy(rows)[:, None]
        names = [f"size{size}-d{r[0, -1]!r}" for r in rows]
        for kwargs in _edge_variants("cpu"):
            assert_labels_equal(ops.felzenszwalb(images, scale, 0.0, 0, **kwargs), want, names,
                                f"{variant_name(kwargs)} scale={scale}")
    assert merged == {True, False}  # the rows straddle the threshold


def test_grayscale_2d_skimage_convention():
    """skimage's 2-D grayscale call (channel_axis=None) is the [N,1,H,W] case."""
    require_op("cpu")
    from skimage.segmentation import felzenszwalb

    u = shipped("camera")[200:260:2, 100:160:2]
    with mock.patch("numpy.argsort", stable_argsort):
        want = felzenszwalb(u, scale=64, sigma=0.5, min_size=10, channel_axis=None)
    out = ops.felzenszwalb(u8_to_walnet(u[None, ..., None]), 64, 0.5, 10)
    assert_labels_equal(out, [want], ["camera/2-D"], "2-D grayscale")


# --- layouts, dtypes, determinism -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_layouts(device):
    """channels_last, strided, transposed, stride-0 (expanded) and float32 inputs give the
    contiguous float64 result."""
    require_op(device)
    g = corpus()["ship-rgb56-f32"]
    x32 = g.images[:6].to(device)
    x = x32.double()
    for kwargs in kernel_variants(device):
        run = functools.partial(ops.felzenszwalb, scale=64.0, sigma=0.5, min_size=10, **kwargs)
        expected = run(x)
        assert_labels_equal(expected, oracle("ship-rgb56-f32", (64, 0.5, 10))[:6], g.names[:6], variant_name(kwargs))
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
    require_op(device)
    g = corpus()["ties56-rgb-u8"]
    x = torch.cat([g.images, corpus()["ship-rgb56-u8"].images[:10]]).to(device)
    variants = kernel_variants(device)
    threads = torch.get_num_threads()
    runs = [[] for _ in variants]
    try:
        for nt in (threads, 1, 2, threads):
            torch.set_num_threads(nt)
            for kwargs, got in zip(variants, runs):
                got.append(ops.felzenszwalb(x, 64, 0.5, 10, return_rounds=True, **kwargs))
    finally:
        torch.set_num_threads(threads)
    for got in runs:
        first_labels, first_rounds = got[0]
        for labels, rounds in got[1:]:
            assert torch.equal(labels, first_labels)
            assert torch.equal(rounds, first_rounds)
    assert torch.equal(runs[0][0][0], runs[1][0][0])


# --- numbering, counts, rounds ----------------------------------------------------------------


def _check_numbering(labels: torch.Tensor) -> None:
    """Labels are 0..n-1 and numbered in order of first appearance in raster order."""
    for i, lab in enumerate(labels.cpu().numpy()):
        flat = lab.ravel()
        values, first = np.unique(flat, return_index=True)
        assert np.array_equal(values, np.arange(len(values))), f"image {i}: labels are not 0..n-1"
        assert np.all(np.diff(first) > 0), f"image {i}: first appearances are not in raster order"


@pytest.mark.parametrize("group", ["ship-rgb56-u8", "ties56-gray-f64", "rgb224-u8", "crop-rgb-37x83-u8"])
@pytest.mark.parametrize("algorithm", ["sequential", "reservations", "block"])
def test_numbering_and_segment_counts(group, algorithm):
    require_op("cpu")
    g = corpus()[group]
    for params in (PARAMS[0], PARAMS[1]):
        labels = ops.felzenszwalb(g.images, *params, algorithm=algorithm)
        _check_numbering(labels)
        counts = ops.segment_counts(labels)
        assert counts.dtype == torch.int64 and counts.shape == (len(g),)
        assert torch.equal(counts, labels.flatten(1).amax(1).long() + 1)
        # against skimage's own count (not walnet's labels)
        want = torch.tensor([int(w.max()) + 1 for w in oracle(group, params)])
        assert torch.equal(counts, want)


def test_segment_counts_varies():
    """The count is per image (flat images give 1, noise many)."""
    require_op("cpu")
    g = corpus()["ties56-rgb-u8"]
    counts = ops.segment_counts(ops.felzenszwalb(g.images, 64, 0.5, 10))
    flat = [i for i, n in enumerate(g.names) if n.startswith("ties/flat")]
    assert (counts[flat] == 1).all()
    assert counts.max() > 1


def test_rounds():
    require_op("cpu")
    g = corpus()["ship-rgb56-u8"]
    x = g.images
    labels, rounds = ops.felzenszwalb(x, 64, 0.5, 10, algorithm="sequential", return_rounds=True)
    assert rounds.dtype == torch.int32 and rounds.shape == (len(g), 2)
    assert (rounds == 0).all()
    assert torch.equal(labels, ops.felzenszwalb(x, 64, 0.5, 10, algorithm="sequential"))
    n_edges = 4 * 56 * 56
    for algorithm in ("reservations", "block"):
        plabels, prounds = ops.felzenszwalb(x, 64, 0.5, 10, algorithm=algorithm, return_rounds=True)
        assert torch.equal(plabels, labels)
        assert prounds.dtype == torch.int32 and prounds.shape == (len(g), 2)
        assert (prounds[:, 0] > 0).all()
        assert (prounds <= n_edges).all()
        # small segments exist on noise at scale 1 with min_size 50: the min_size pass has work
        noise = u8_to_walnet(np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8))
        _, r = ops.felzenszwalb(noise, 1, 0.0, 50, algorithm=algorithm, return_rounds=True)
        assert (r > 0).all()
        # scale 0: the merge pass merges nothing, yet its edges are still decided in rounds
        _, r0 = ops.felzenszwalb(noise, 0, 0.0, 50, algorithm=algorithm, return_rounds=True)
        assert (r0 > 0).all()
        # a single pixel has no edges: no round can be needed for it
        _, r1 = ops.felzenszwalb(torch.rand(1, 3, 1, 1, dtype=torch.float64), algorithm=algorithm,
                                 return_rounds=True)
        assert r1.shape == (1, 2) and (r1 >= 0).all() and (r1 <= 1).all()
    # the reference runs the sequential algorithm: no rounds
    _, rr = ops.felzenszwalb(noise[:, :, :8, :8], 1, 0.0, 50, backend="reference", return_rounds=True)
    assert rr.shape == (2, 2) and rr.dtype == torch.int32 and (rr == 0).all()


# --- every device == the CPU ----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", ["ship-rgb56-u8", "ties56-rgb-u8", "ship-gray56-f64", "c4-56-u8", "rgb224-u8"])
def test_device_equals_sequential_cpu(device, group):
    """The device's default path and every reservation algorithm it runs equal the CPU's
    sequential labels, and each algorithm reports the rounds its CPU emulation reports."""
    require_op(device)
    require_op("cpu")
    g = corpus()[group]
    for params in (PARAMS_224 if group in BIG_GROUPS else PARAMS[:4]):
        sequential = ops.felzenszwalb(g.images, *params, algorithm="sequential")
        for algorithm in ["auto"] + gpu_algorithms(device):
            labels, rounds = ops.felzenszwalb(g.images.to(device), *params, algorithm=algorithm, return_rounds=True)
            assert labels.device.type == device and rounds.device.type == device
            assert_labels_equal(labels, [e.numpy() for e in sequential], g.names, f"{device} {algorithm} {params}")
            counts = ops.segment_counts(labels)
            assert counts.device.type == device
            assert torch.equal(counts.cpu(), sequential.flatten(1).amax(1).long() + 1)
            if algorithm != "auto":
                assert (rounds[:, 0] > 0).all()
                _, cpu_rounds = ops.felzenszwalb(g.images, *params, algorithm=algorithm, return_rounds=True)
                assert torch.equal(rounds.cpu(), cpu_rounds), f"{device} {algorithm} {params}: rounds differ from the CPU's"


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_float32_and_layouts():
    require_op("cuda")
    g = corpus()["ship-rgb56-f32"]
    want = oracle("ship-rgb56-f32", PARAMS[0])
    x = g.images.cuda()
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)
    for inp in (x, x.double(), x.contiguous(memory_format=torch.channels_last), transposed):
        assert_labels_equal(ops.felzenszwalb(inp, *PARAMS[0]), want, g.names, "cuda layouts")
