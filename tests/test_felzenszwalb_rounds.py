"""Round counts of Kruskal by deterministic reservations, as the CPU runs the CUDA kernels' rounds
step for step ("reservations": warp rounds; "block": 1,024-edge rounds): against an independent
counter (felzenszwalb_rounds.py) for every combination of round rules, against the numbers of
the design study's round simulator on the benchmark's images, and on degenerate images; and the
labels at the edges of the warp kernel's shared-memory layouts. A change to the round structure
fails here even where the labels stay right."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from walnet import ops
from walnet.ops.felzenszwalb import SM90_SHARED_BYTES, _weights, warp_plan

from conftest import DEVICES, HAS_CUDA
from felzenszwalb_oracle import PARAMS, assert_labels_equal, corpus, require_op, u8_to_walnet
from felzenszwalb_rounds import reservation_rounds, sorted_edges

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.felzenszwalb_table import FZ_PARAMS, fz_images_u8  # noqa: E402
from benchmarks.sanitize_ops import layout_limits  # noqa: E402

ALL_RULES = [ops.RoundRules(w, c, p, ch) for w, c, p, ch in itertools.product((32, 64), (True, False), (True, False),
                                                                               (True, False))]


def _rounds(u8: np.ndarray, algorithm: str, rules=None, params=FZ_PARAMS):
    x = u8_to_walnet(u8)
    labels, rounds = ops.felzenszwalb(x, *params, algorithm=algorithm, rules=rules, return_rounds=True)
    sequential = ops.felzenszwalb(x, *params, algorithm="sequential")
    assert_labels_equal(labels, list(sequential.numpy()), [f"image {i}" for i in range(len(u8))], f"{algorithm} {rules}")
    return rounds.double()


def _counted(image: np.ndarray, scale: float, sigma: float, min_size: int, rules) -> tuple[np.ndarray, int, int]:
    """The independent counter's (roots, merge rounds, min_size rounds) of one H x W x C float64
    image."""
    p, q, w = sorted_edges(image, sigma)
    return reservation_rounds(p, q, w, image.shape[0] * image.shape[1], scale, min_size, window=rules.window,
                              compact=rules.compact, prefilter=rules.prefilter, chain=rules.chain)


@pytest.mark.parametrize("rules", ALL_RULES, ids=repr)
def test_rounds_equal_the_independent_counter(rules):
    """Per image, both passes, on the benchmark's 8 x 56^2 photos: the CPU run of the warp
    kernel's rounds counts what the rules say, and ends with skimage's labels."""
    require_op("cpu")
    u8 = fz_images_u8(8, 56)
    got = _rounds(u8, "reservations", rules)
    scale, sigma, min_size = FZ_PARAMS
    for i, img in enumerate(u8):
        roots, merge, small = _counted(img * (1.0 / 255), scale, sigma, min_size, rules)
        assert got[i].tolist() == [merge, small], f"image {i}"
        labels = ops.felzenszwalb(u8_to_walnet(img[None]), *FZ_PARAMS, algorithm="sequential")[0].numpy().ravel()
        assert np.array_equal(np.unique(roots, return_inverse=True)[1], labels), f"image {i}: the counter's components"


#: Mean rounds per image (merge pass, min_size pass) of the design study's round simulator on
#: benchmarks/felzenszwalb_table.py's images (scale 64, sigma 0.5, min_size 10); None where it
#: does not count that pass. The warp kernel's default rules are the first row.
DESIGN_STUDY_56 = [
    (ops.RoundRules(), 407.8, 27.1),
    (ops.RoundRules(chain=False), 1194.1, 39.9),
    (ops.RoundRules(chain=False, prefilter=False), 1194.1, 193.2),
    (ops.RoundRules(compact=False, chain=False, prefilter=False), 1256.4, 200.1),
    (ops.RoundRules(window=32, chain=False), 1254.4, 63.8),
    (ops.RoundRules(window=32, chain=False, prefilter=False), 1254.4, 382.8),
    (ops.RoundRules(window=32, compact=False, chain=False, prefilter=False), 1361.9, 386.1),
    (ops.RoundRules(window=32), 505.2, None),
]
DESIGN_STUDY_224 = [(ops.RoundRules(), 4058.6, 247.4), (ops.RoundRules(chain=False), 11056.2, 379.8)]
BLOCK = {56: (1170.4, 35.8), 224: (9925.3, 367.8)}


def _check_means(rounds: torch.Tensor, merge: float, small: float | None, what: str) -> None:
    mean = rounds.mean(0).tolist()
    assert round(mean[0], 1) == merge, f"{what}: merge-pass rounds {mean[0]:.3f}, the simulator counts {merge}"
    if small is not None:
        assert round(mean[1], 1) == small, f"{what}: min_size-pass rounds {mean[1]:.3f}, the simulator counts {small}"


@pytest.mark.parametrize("n, size, table", [(8, 56, DESIGN_STUDY_56), (16, 224, DESIGN_STUDY_224)],
                         ids=["8x56", "16x224"])
def test_rounds_of_the_design_study(n, size, table):
    require_op("cpu")
    u8 = fz_images_u8(n, size)
    for rules, merge, small in table:
        _check_means(_rounds(u8, "reservations", rules), merge, small, repr(rules))
    _check_means(_rounds(u8, "block"), *BLOCK[size], "block")


def _small_images():
    """(name, H x W x C float64 image, params): shapes from 1 x 1 up, flat and tied images,
    scale 0, min_size 0 and larger than the image."""
    rng = np.random.default_rng(7)
    out = []
    for h, w in [(1, 1), (1, 2), (2, 1), (1, 37), (37, 1), (2, 2), (3, 5), (9, 13)]:
        out.append((f"random-{h}x{w}", rng.random((h, w, 3)), (64, 0.5, 10)))
    ties = (rng.integers(0, 3, (20, 24, 1)) / 2).astype(np.float64)
    out += [
        ("flat", np.full((16, 16, 3), 0.5), (64, 0.5, 10)),
        ("ties", ties, (64, 0.0, 10)),
        ("ties-scale0", ties, (0, 0.0, 10)),
        ("noise-min_size0", rng.random((18, 21, 3)), (1, 0.5, 0)),
        ("noise-min_size-huge", rng.random((18, 21, 3)), (1, 0.5, 1000)),
        ("noise-scale0", rng.random((18, 21, 3)), (0, 0.8, 20)),
        ("checker", np.indices((24, 24)).sum(0)[..., None] % 2 * 1.0, (300, 0.0, 5)),
    ]
    return out


@pytest.mark.parametrize("rules", [ops.RoundRules(), ops.RoundRules(window=32, compact=False, prefilter=False),
                                   ops.RoundRules(chain=False, prefilter=False)], ids=repr)
def test_rounds_on_small_and_degenerate_images(rules):
    require_op("cpu")
    for name, img, (scale, sigma, min_size) in _small_images():
        x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
        labels, rounds = ops.felzenszwalb(x, scale, sigma, min_size, algorithm="reservations", rules=rules,
                                          return_rounds=True)
        roots, merge, small = _counted(img, scale, sigma, min_size, rules)
        assert rounds[0].tolist() == [merge, small], name
        want = ops.felzenszwalb(x, scale, sigma, min_size, algorithm="sequential")
        assert torch.equal(labels, want), name
        assert np.array_equal(np.unique(roots, return_inverse=True)[1], want[0].numpy().ravel()), name


def _largest(layout: str) -> int:
    """The largest pixel count that sm_90's plan keeps in `layout` (its plan is monotone in size)."""
    lo, hi = 1, 1 << 20
    assert warp_plan(1, lo, SM90_SHARED_BYTES)[0] == "shared"
    while hi - lo > 1:  # the largest n whose layout is `layout` or an earlier one
        mid = (lo + hi) // 2
        order = ("shared", "split", "global")
        if order.index(warp_plan(1, mid, SM90_SHARED_BYTES)[0]) <= order.index(layout):
            lo = mid
        else:
            hi = mid
    return lo


def test_warp_plan():
    """The state fits sm_90's 227 KiB with the warp's scratch; uint16 indices up to 65,535 pixels."""
    require_op("cpu")
    layout, nbytes = warp_plan(56, 56, SM90_SHARED_BYTES)
    assert layout == "shared" and 8 * 56 * 56 < nbytes <= SM90_SHARED_BYTES
    layout, nbytes = warp_plan(224, 224, SM90_SHARED_BYTES)
    assert layout == "split" and 4 * 224 * 224 < nbytes <= SM90_SHARED_BYTES
    assert warp_plan(512, 512, SM90_SHARED_BYTES)[0] == "global"
    shared, split = _largest("shared"), _largest("split")
    scratch = warp_plan(1, 1, SM90_SHARED_BYTES)[1] - 8
    assert shared == (SM90_SHARED_BYTES - scratch) // 8 and split == (SM90_SHARED_BYTES - scratch) // 4
    assert warp_plan(1, shared, SM90_SHARED_BYTES)[1] <= SM90_SHARED_BYTES
    assert warp_plan(1, split, SM90_SHARED_BYTES)[1] <= SM90_SHARED_BYTES
    # with more shared memory, the uint16 index is the limit
    assert warp_plan(1, 65535, 300_000)[0] == "split" and warp_plan(1, 65536, 300_000)[0] == "global"
    with pytest.raises(ValueError, match="height"):
        warp_plan(0, 5)


def test_labels_at_the_layout_boundaries():
    """The largest image of each shared-memory layout on sm_90 and one pixel more (where the CPU
    changes the index type of the state: uint16 to int32), as 1 x N rows and as near-square
    images."""
    require_op("cpu")
    rng = np.random.default_rng(3)
    shapes = []
    for n in (_largest("shared"), _largest("shared") + 1, _largest("split"), _largest("split") + 1):
        shapes.append((1, n))
        h = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
        if h >= 16:
            shapes.append((h, n // h))
    assert ("global" in {warp_plan(h, w, SM90_SHARED_BYTES)[0] for h, w in shapes})
    for h, w in shapes:
        u8 = (rng.integers(0, 4, (1, h, w, 3)) * 85).astype(np.uint8)  # 4 levels: ties
        x = u8_to_walnet(u8)
        want = ops.felzenszwalb(x, *FZ_PARAMS, algorithm="sequential")
        for rules in (ops.RoundRules(), ops.RoundRules(window=32, compact=False, prefilter=False, chain=False)):
            got = ops.felzenszwalb(x, *FZ_PARAMS, algorithm="reservations", rules=rules)
            assert torch.equal(got, want), f"{h}x{w} ({warp_plan(h, w, SM90_SHARED_BYTES)[0]}) {rules}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", ["ship-rgb56-u8", "ties56-gray-f64", "crop-rgb-37x83-u8"])
def test_every_state_layout(device, group):
    """The warp kernel's three state layouts (shared, split, global), forced on small images by
    the shared memory it may plan with: the same labels and rounds as each other and as the
    CPU's default plan. (On the CPU the global layout's int32 state replaces uint16.)"""
    require_op(device)
    require_op("cpu")
    g = corpus()[group]
    for scale, sigma, min_size in PARAMS[:3]:
        args = (_weights(sigma), scale / 255, min_size, "reservations", 64, True, True, True)
        want_labels, want_rounds = torch.ops.walnet.felzenszwalb(g.images, *args)
        assert_labels_equal(want_labels, list(ops.felzenszwalb(g.images, scale, sigma, min_size).numpy()), g.names,
                            "default plan")
        for layout, limit in layout_limits(*g.images.shape[-2:]).items():
            labels, rounds = torch.ops.walnet.felzenszwalb(g.images.to(device), *args, limit)
            assert torch.equal(labels.cpu(), want_labels), f"{device} {layout} layout {group}"
            assert torch.equal(rounds.cpu(), want_rounds), f"{device} {layout} layout {group}: rounds"


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("rules", ALL_RULES, ids=repr)
def test_cuda_rounds_equal_the_cpu(rules):
    """The warp kernel on a GPU counts the rounds its CPU emulation counts, image by image, with
    the same labels: 8 x 56^2 with every rule, 16 x 224^2 (the split layout) with the default."""
    require_op("cuda")
    configs = [(8, 56)] + ([(16, 224)] if rules == ops.RoundRules() else [])
    with ops.preview_kernels(True):
        for n, size in configs:
            x = u8_to_walnet(fz_images_u8(n, size))
            cpu = ops.felzenszwalb(x, *FZ_PARAMS, algorithm="reservations", rules=rules, return_rounds=True)
            cuda = ops.felzenszwalb(x.cuda(), *FZ_PARAMS, algorithm="reservations", rules=rules, return_rounds=True)
            assert torch.equal(cuda[0].cpu(), cpu[0]), f"{n} x {size}: labels"
            assert torch.equal(cuda[1].cpu(), cpu[1]), f"{n} x {size}: rounds"


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_labels_at_the_layout_boundaries():
    """The largest image of each layout of this GPU's plan and one pixel more."""
    require_op("cuda")
    rng = np.random.default_rng(4)
    order = ("shared", "split", "global")
    with ops.preview_kernels(True):
        for layout in ("shared", "split"):
            lo, hi = 1, 1 << 20
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if order.index(warp_plan(1, mid)[0]) <= order.index(layout) else (lo, mid)
            for n in (lo, lo + 1):
                x = u8_to_walnet((rng.integers(0, 4, (1, 1, n, 3)) * 85).astype(np.uint8))
                cpu = ops.felzenszwalb(x, *FZ_PARAMS, algorithm="reservations", return_rounds=True)
                cuda = ops.felzenszwalb(x.cuda(), *FZ_PARAMS, algorithm="reservations", return_rounds=True)
                assert torch.equal(cuda[0].cpu(), cpu[0]) and torch.equal(cuda[1].cpu(), cpu[1]), (layout, n)
