"""The Felzenszwalb op's contract: skimage's defaults, empty batches, the choice of algorithm and
backend (incl. WALNET_FORCE_REFERENCE and the CPU kernel for a device without one), bad input,
and the torch.library integration (opcheck, the registered op, torch.compile)."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import walnet
from walnet import ops
from walnet.ops import _dispatch, _library, reference

from conftest import DEVICES, HAS_CUDA, spy_on
from felzenszwalb_oracle import PARAMS, assert_labels_equal, corpus, oracle, require_op, shipped, u8_to_walnet
from felzenszwalb_variants import gpu_algorithms, kernel_variants, variant_name


def test_defaults_are_skimages():
    """Defaults are skimage's own (read from skimage's signature), so swapping the call keeps
    the segments; the labels with no arguments equal skimage's with none."""
    require_op("cpu")
    from skimage.segmentation import felzenszwalb

    theirs = inspect.signature(felzenszwalb).parameters
    ours = inspect.signature(ops.felzenszwalb).parameters
    for name in ("scale", "sigma", "min_size"):
        assert ours[name].default == theirs[name].default, name
    g = corpus()["ship-rgb56-u8"]
    params = tuple(theirs[name].default for name in ("scale", "sigma", "min_size"))
    assert_labels_equal(ops.felzenszwalb(g.images), oracle("ship-rgb56-u8", params), g.names, "defaults")


def test_pgm_passes_its_own_parameters(monkeypatch):
    """The PGM's superpixels use the paper's (scale 64, sigma 0.5, min_size 10), passed
    explicitly, not the op's defaults."""
    calls = spy_on(monkeypatch, ops, "felzenszwalb")
    images = torch.rand(2, 3, 16, 16)
    attention = [torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 4), torch.rand(2, 1, 2, 2)]
    mask = walnet.PseudoMaskGenerator()(images, attention)
    assert [args[1:] for args in calls] == [(64.0, 0.5, 10)]
    assert mask.shape == (2, 8, 8)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    require_op(device)
    x = torch.rand(0, 3, 5, 7, dtype=torch.float64, device=device)
    for kwargs in kernel_variants(device) + [{"backend": "reference"}]:
        out = ops.felzenszwalb(x, **kwargs)
        assert out.shape == (0, 5, 7) and out.dtype == torch.int32 and out.device.type == device
        labels, rounds = ops.felzenszwalb(x.float(), 64.0, 0.5, 10, return_rounds=True, **kwargs)
        assert labels.shape == (0, 5, 7) and rounds.shape == (0, 2) and rounds.dtype == torch.int32
        counts = ops.segment_counts(labels)
        assert counts.shape == (0,) and counts.dtype == torch.int64


def test_segment_counts_refuses_labels_that_are_no_segment_numbers():
    for bad in (torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)):
        with pytest.raises(TypeError, match="labels must be an integer tensor"):
            ops.segment_counts(bad)
    negative = torch.zeros(1, 4, 4, dtype=torch.int32)
    negative[0, 1, 1] = -3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, H\*W\)"):
        ops.segment_counts(negative)
    too_big = torch.zeros(1, 4, 4, dtype=torch.int64)
    too_big[0, 0, 0] = 16
    with pytest.raises(ValueError, match="labels"):
        ops.segment_counts(too_big)
    with ops.value_checks(False):  # the value checks off: no host sync, the count as computed
        assert ops.segment_counts(negative).tolist() == [1]


# --- algorithm and backend ----------------------------------------------------------------------


def test_backend_and_force_reference(monkeypatch):
    """backend="reference" and WALNET_FORCE_REFERENCE=1 (with "auto") run the reference;
    "kernel" runs the kernel even then. Every path gives the same labels."""
    require_op("cpu")
    x = u8_to_walnet(shipped("coffee")[None, 100:116, 200:218])
    calls = spy_on(monkeypatch, reference, "felzenszwalb")
    want = ops.felzenszwalb(x, 64, 0.5, 10)
    assert calls == []
    assert torch.equal(ops.felzenszwalb(x, 64, 0.5, 10, backend="reference"), want) and len(calls) == 1
    monkeypatch.setenv("WALNET_FORCE_REFERENCE", "1")
    assert torch.equal(ops.felzenszwalb(x, 64, 0.5, 10), want) and len(calls) == 2
    for algorithm in ("sequential", "reservations", "block"):
        assert torch.equal(ops.felzenszwalb(x, 64, 0.5, 10, algorithm=algorithm, backend="kernel"), want)
    assert len(calls) == 2


def test_algorithm_choice_per_device():
    """"auto" is "sequential" on the CPU and, on CUDA, the block kernel unless preview kernels are
    on; CUDA's warp kernel ("reservations") is a preview kernel and "sequential" is CPU-only."""
    from walnet.ops.felzenszwalb import _resolve_algorithm

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with ops.preview_kernels(False):
        assert _resolve_algorithm("auto", cpu) == "sequential"
        assert _resolve_algorithm("auto", None) == "sequential"
        assert _resolve_algorithm("auto", cuda) == "block"
        for algorithm in ("sequential", "reservations", "block"):
            assert _resolve_algorithm(algorithm, cpu) == algorithm
        assert _resolve_algorithm("block", cuda) == "block"
        with pytest.raises(ValueError, match="preview kernel not yet confirmed on a GPU"):
            _resolve_algorithm("reservations", cuda)
        with pytest.raises(ValueError, match="algorithm='sequential' runs on the CPU only"):
            _resolve_algorithm("sequential", cuda)
    with ops.preview_kernels(True):
        assert _resolve_algorithm("auto", cuda) == "reservations"
        assert _resolve_algorithm("reservations", cuda) == "reservations"
        assert _resolve_algorithm("auto", cpu) == "sequential"


def test_preview_setting_is_restored():
    from walnet.ops._preview import preview_kernels_enabled

    before = preview_kernels_enabled()
    try:
        ops.set_preview_kernels(True)
        assert preview_kernels_enabled()
        with ops.preview_kernels(False):
            assert not preview_kernels_enabled()
        assert preview_kernels_enabled()
    finally:
        ops.set_preview_kernels(before)
    assert "felzenszwalb" in ops.PREVIEW


def test_round_rules_arguments():
    require_op("cpu")
    x = u8_to_walnet(shipped("coffee")[None, 100:116, 200:218])
    want = ops.felzenszwalb(x, 64, 0.5, 10)
    assert torch.equal(ops.felzenszwalb(x, 64, 0.5, 10, algorithm="reservations", rules=ops.RoundRules(32)), want)
    assert ops.RoundRules() == ops.RoundRules(window=64, compact=True, prefilter=True, chain=True)
    for bad in (16, 128, 0, True, 64.0):
        with pytest.raises(ValueError, match="window must be 32 or 64"):
            ops.RoundRules(window=bad)
    with pytest.raises(TypeError, match="RoundRules.chain must be a bool"):
        ops.RoundRules(chain=1)
    with pytest.raises(TypeError, match="rules must be a walnet.ops.RoundRules"):
        ops.felzenszwalb(x, algorithm="reservations", rules={"window": 32})
    for algorithm in ("auto", "sequential", "block"):
        with pytest.raises(ValueError, match="rules apply to algorithm='reservations' only"):
            ops.felzenszwalb(x, algorithm=algorithm, rules=ops.RoundRules())


def test_no_kernel_for_the_device(monkeypatch):
    """A device without a kernel runs the CPU kernel through a host copy (the reference is plain
    Python); with no kernel at all, "auto" runs the reference and "kernel" is an error."""
    require_op("cpu")
    cuda = torch.device("cuda")
    monkeypatch.setattr(_library, "has_kernel", lambda op, dev: dev == "cpu")
    for backend in ("auto", "kernel"):
        assert _dispatch.kernel_device("felzenszwalb", cuda, backend, host_fallback=True) == torch.device("cpu")
        assert _dispatch.kernel_device("felzenszwalb", torch.device("cpu"), backend, host_fallback=True).type == "cpu"
    assert _dispatch.kernel_device("pseudo_mask", cuda, "auto") is None  # other ops: their reference
    assert _dispatch.kernel_device("felzenszwalb", cuda, "reference", host_fallback=True) is None

    x = u8_to_walnet(shipped("coffee")[None, 100:116, 200:218])
    want = ops.felzenszwalb(x, 64, 0.5, 10)
    calls = spy_on(monkeypatch, reference, "felzenszwalb")
    monkeypatch.setattr(_library, "has_kernel", lambda op, dev: False)
    assert torch.equal(ops.felzenszwalb(x, 64, 0.5, 10), want) and len(calls) == 1
    with pytest.raises(RuntimeError, match="no cpu kernel for felzenszwalb"):
        ops.felzenszwalb(x, 64, 0.5, 10, backend="kernel")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_sequential_is_cpu_only():
    """The CUDA kernel runs reservations; asking for the sequential algorithm there is an error,
    not a silent host round trip."""
    require_op("cuda")
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match="algorithm='sequential' runs on the CPU only"):
        ops.felzenszwalb(x, algorithm="sequential")
    assert ops.felzenszwalb(x, algorithm="sequential", backend="reference").device.type == "cuda"


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
        ("scale negative", (x, -64.0), {}, ValueError, "scale"),
        ("scale tiny negative", (x, -1e-12), {}, ValueError, "scale"),
        ("scale nan", (x, float("nan")), {}, ValueError, "scale"),
        ("scale inf", (x, float("inf")), {}, ValueError, "scale"),
        ("scale str", (x, "64"), {}, TypeError, "scale"),
        ("sigma negative", (x, 64.0, -0.5), {}, ValueError, "sigma"),
        ("sigma nan", (x, 64.0, float("nan")), {}, ValueError, "sigma"),
        ("min_size negative", (x, 64.0, 0.5, -1), {}, ValueError, "min_size"),
        ("min_size float", (x, 64.0, 0.5, 10.0), {}, TypeError, "min_size"),
        ("min_size bool", (x, 64.0, 0.5, True), {}, TypeError, "min_size"),
        ("bad backend", (x,), {"backend": "triton"}, ValueError, "backend"),
        ("old backend word", (x,), {"backend": "exact"}, ValueError, "backend"),
        ("bad algorithm", (x,), {"algorithm": "parallel"}, ValueError, "algorithm"),
        ("bad algorithm case", (x,), {"algorithm": "Sequential"}, ValueError, "algorithm"),
    ]


@pytest.mark.parametrize("kwargs", [{}, {"algorithm": "sequential"}, {"algorithm": "reservations"},
                                    {"algorithm": "block"}, {"backend": "reference"}, {"backend": "kernel"}],
                         ids=variant_name)
@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input(case, kwargs):
    _, args, case_kwargs, exc, name = case
    with pytest.raises(exc, match=name):
        ops.felzenszwalb(*args, **{**kwargs, **case_kwargs})


def test_bad_input_keyword_arguments():
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="scale"):
        ops.felzenszwalb(x, scale=-1)
    with pytest.raises(ValueError, match="sigma"):
        ops.felzenszwalb(x, sigma=-1e-9)
    with pytest.raises(ValueError, match="min_size"):
        ops.felzenszwalb(x, min_size=-5)
    with pytest.raises(TypeError):
        ops.felzenszwalb(x, 64.0, 0.5, 10, "sequential")  # algorithm and backend are keyword-only


def test_public_api():
    for name in ("felzenszwalb", "segment_counts", "RoundRules"):
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
    require_op(device)
    u = shipped("coffee")[100:111:1, 200:213]
    images = u8_to_walnet(np.stack([u, u[::-1].copy()])).to(device)
    assert images.dtype == torch.float64 and images.is_contiguous()
    op = torch.ops.walnet.felzenszwalb.default
    for algorithm in ["sequential"] * (device == "cpu") + gpu_algorithms(device):
        rules = (algorithm, 64, True, True, True)
        torch.library.opcheck(op, (images, _scipy_weights(0.5), 64 / 255, 10, *rules))
        torch.library.opcheck(op, (images[:, :1].contiguous(), _scipy_weights(2.0), 1 / 255, 0, *rules))
        torch.library.opcheck(op, (images, _scipy_weights(0.8), 0.0, 20, algorithm, 32, False, False, False))


def test_direct_op_equals_wrapper():
    """The registered op with scipy's kernel (centre first) and k = scale / 255 is the wrapper."""
    require_op("cpu")
    g = corpus()["ship-rgb56-u8"]
    for scale, sigma, min_size in (PARAMS[0], PARAMS[2], PARAMS[3], (0, 0.8, 20)):
        for algorithm in ("sequential", "reservations", "block"):
            labels, rounds = torch.ops.walnet.felzenszwalb(g.images, _scipy_weights(sigma), scale / 255, min_size,
                                                           algorithm, 64, True, True, True)
            assert_labels_equal(labels, oracle("ship-rgb56-u8", (scale, sigma, min_size)), g.names, "direct op")
            assert rounds.shape == (len(g), 2) and rounds.dtype == torch.int32
            assert bool((rounds > 0).any()) == (algorithm != "sequential")


def test_direct_op_checks_arguments():
    """torch.ops.walnet.felzenszwalb called without the wrapper still refuses bad arguments."""
    require_op("cpu")
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    rules = ("reservations", 64, True, True, True)
    with pytest.raises(RuntimeError, match="images must be float64"):
        torch.ops.walnet.felzenszwalb(x.float(), [1.0], 0.1, 10, *rules)
    with pytest.raises(RuntimeError, match=r"images must be \[N,C,H,W\]"):
        torch.ops.walnet.felzenszwalb(x[0], [1.0], 0.1, 10, *rules)
    for k in (-0.1, float("nan"), float("inf")):
        with pytest.raises(RuntimeError, match="k must be finite and >= 0"):
            torch.ops.walnet.felzenszwalb(x, [1.0], k, 10, *rules)
    with pytest.raises(RuntimeError, match="min_size >= 0"):
        torch.ops.walnet.felzenszwalb(x, [1.0], 0.1, -1, *rules)
    with pytest.raises(RuntimeError, match="algorithm must be 'sequential', 'reservations' or 'block'"):
        torch.ops.walnet.felzenszwalb(x, [1.0], 0.1, 10, "parallel", 64, True, True, True)
    for window in (0, 16, 65, 1024):
        with pytest.raises(RuntimeError, match="window must be 32 or 64"):
            torch.ops.walnet.felzenszwalb(x, [1.0], 0.1, 10, "reservations", window, True, True, True)


def test_torch_compile_fullgraph():
    require_op("cpu")
    g = corpus()["ship-rgb56-f32"]
    x = g.images[:8]
    assert x.dtype == torch.float32

    def seg(x):
        labels = ops.felzenszwalb(x, 64.0, 0.5, 10)
        plabels, rounds = ops.felzenszwalb(x * 1.0, 300.0, 0.9, 50, algorithm="reservations", return_rounds=True)
        return labels, ops.segment_counts(labels), plabels, rounds

    compiled = torch.compile(seg, fullgraph=True)
    got, want = compiled(x), seg(x)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert_labels_equal(got[0], oracle("ship-rgb56-f32", (64, 0.5, 10))[:8], g.names, "compiled")
    assert_labels_equal(got[2], oracle("ship-rgb56-f32", (300, 0.9, 50))[:8], g.names, "compiled reservations")
