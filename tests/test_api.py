"""The op wrappers' contract: input errors, backend choice, torch.library integration, build."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

import walnet
from walnet import ops
from walnet.ops import _library, reference

from conftest import DEVICES, attention_maps, require_kernel, segment_labels


def _inputs(n=2, h=16, w=12):
    a1, a2, a3 = attention_maps(n, (h, w), (h // 2, w // 2), (h // 4, w // 4), seed=1)
    return a1, a2, a3, segment_labels("random", n, h, w)


# --- bad input -> clear errors naming the argument ---------------------------------------


def _bad_cases():
    a1, a2, a3, lab = _inputs()
    nan = a2.clone()
    nan[0, 1, 1] = float("nan")
    inf = a3.clone()
    inf[1, 0, 0] = float("inf")
    return [
        ("rank a1", (a1[0], a2, a3, lab), ValueError, "a1"),
        ("channels a2", (a1, torch.stack([a2, a2], 1), a3, lab), ValueError, "a2"),
        ("batch a3", (a1, a2, a3[:1], lab), ValueError, "a3"),
        ("empty batch", (a1[:0], a2[:0], a3[:0], lab[:0]), ValueError, "a1"),
        ("integer map", (a1, (a2 * 100).long(), a3, lab), TypeError, "a2"),
        ("not a tensor", (a1.numpy(), a2, a3, lab), TypeError, "a1"),
        ("a2 larger", (a1, torch.rand(2, 32, 24), a3, lab), ValueError, "a2"),
        ("a3 wider", (a1, a2, torch.rand(2, 4, 13), lab), ValueError, "a3"),
        ("nan", (a1, nan, a3, lab), ValueError, "a2"),
        ("inf", (a1, a2, inf, lab), ValueError, "a3"),
        ("device mix", (a1, a2.to("meta"), a3, lab), ValueError, "a2"),
        ("float labels", (a1, a2, a3, lab.float()), TypeError, "labels"),
        ("bool labels", (a1, a2, a3, lab > 3), TypeError, "labels"),
        ("negative labels", (a1, a2, a3, lab - 1), ValueError, "labels"),
        ("labels >= H*W", (a1, a2, a3, lab + 16 * 12), ValueError, "labels"),
        ("labels shape", (a1, a2, a3, lab[:, :8]), ValueError, "labels"),
        ("labels device", (a1, a2, a3, lab.to("meta")), ValueError, "labels"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_pseudo_mask(case):
    _, args, exc, name = case
    with pytest.raises(exc, match=name):
        ops.pseudo_mask(*args)


@pytest.mark.parametrize("case", [c for c in _bad_cases() if "labels" not in c[3]], ids=lambda c: c[0])
def test_bad_input_fuse_attention(case):
    _, args, exc, name = case
    with pytest.raises(exc, match=name):
        ops.fuse_attention(*args[:3])


def test_bad_input_superpixel_mean():
    a1, _, _, lab = _inputs()
    with pytest.raises(TypeError, match="values"):
        ops.superpixel_mean(lab, lab)
    with pytest.raises(ValueError, match="values"):
        ops.superpixel_mean(a1.flatten(1), lab)
    with pytest.raises(TypeError, match="labels"):
        ops.superpixel_mean(a1, lab.double())
    with pytest.raises(ValueError, match="labels"):
        ops.superpixel_mean(a1, -lab - 1)
    with pytest.raises(ValueError, match="labels"):
        ops.superpixel_mean(a1, lab[1:])
    bad = a1.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="values"):
        ops.superpixel_mean(bad, lab)


def test_bad_threshold_and_backend():
    a1, a2, a3, lab = _inputs()
    with pytest.raises(ValueError, match="threshold"):
        ops.pseudo_mask(a1, a2, a3, lab, float("nan"))
    with pytest.raises(TypeError, match="threshold"):
        ops.pseudo_mask(a1, a2, a3, lab, "0.18")
    with pytest.raises(ValueError, match="backend"):
        ops.pseudo_mask(a1, a2, a3, lab, backend="triton")


def test_value_checks_can_be_disabled_without_nan():
    """With value checks off (sync-free CUDA steps) a NaN map still never yields a NaN loss:
    the kernels treat a non-finite map as uninformative."""
    a1, a2, a3, lab = _inputs()
    a1 = a1.clone()
    a1[0, 3, 3] = float("nan")
    ops.set_value_checks(False)
    try:
        mask = ops.pseudo_mask(a1, a2, a3, lab, backend="kernel")
        fused = ops.fuse_attention(a1, a2, a3, backend="kernel")
    finally:
        ops.set_value_checks(True)
    assert (mask[0] == 255).all() and not (mask[1] == 255).any()
    assert (fused[0] == 0).all() and not torch.isnan(fused).any()


def test_value_checks_context_restores_the_setting():
    a1, a2, a3, lab = _inputs()
    a1 = a1.clone()
    a1[0, 3, 3] = float("nan")
    with ops.value_checks(False):
        assert (ops.pseudo_mask(a1, a2, a3, lab)[0] == 255).all()
        with pytest.raises(RuntimeError, match="inner"), ops.value_checks(True):
            with pytest.raises(ValueError, match="a1"):
                ops.pseudo_mask(a1, a2, a3, lab)
            raise RuntimeError("inner")  # leaving by an exception restores the setting too
        assert (ops.pseudo_mask(a1, a2, a3, lab)[0] == 255).all()
    with pytest.raises(ValueError, match="a1 contains NaN"):
        ops.pseudo_mask(a1, a2, a3, lab)


def test_direct_op_call_checks_shapes():
    """torch.ops.walnet.* called without the wrapper must still refuse mismatched shapes."""
    require_kernel("cpu")
    a1, a2, a3, lab = _inputs()
    with pytest.raises(RuntimeError, match="labels"):
        torch.ops.walnet.pseudo_mask(a1, a2, a3, lab[:, :4], 0.18)
    with pytest.raises(RuntimeError, match="larger"):
        torch.ops.walnet.fuse_attention(a2, a1, a3)


# --- backend selection -------------------------------------------------------------------


def test_reference_backend_and_force_env(monkeypatch):
    a1, a2, a3, lab = _inputs()
    calls = []
    real = reference.pseudo_mask

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(reference, "pseudo_mask", spy)
    ops.pseudo_mask(a1, a2, a3, lab, backend="reference")
    assert len(calls) == 1
    ops.pseudo_mask(a1, a2, a3, lab)  # auto: the kernel
    assert len(calls) == 1
    monkeypatch.setenv("WALNET_FORCE_REFERENCE", "1")
    ops.pseudo_mask(a1, a2, a3, lab)
    assert len(calls) == 2
    ops.pseudo_mask(a1, a2, a3, lab, backend="kernel")  # explicit kernel wins
    assert len(calls) == 2


def test_fallback_without_kernel(monkeypatch):
    a1, a2, a3, lab = _inputs()
    monkeypatch.setattr(_library, "has_kernel", lambda op, dev: False)
    assert torch.equal(ops.pseudo_mask(a1, a2, a3, lab), reference.pseudo_mask(a1, a2, a3, lab))
    with pytest.raises(RuntimeError, match="no cpu kernel"):
        ops.pseudo_mask(a1, a2, a3, lab, backend="kernel")


# --- torch.library integration -----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    require_kernel(device)
    a1, a2, a3 = attention_maps(3, (10, 14), (5, 7), (3, 4), device=device, seed=2)
    lab = segment_labels("random", 3, 10, 14, device=device)
    torch.library.opcheck(torch.ops.walnet.fuse_attention.default, (a1, a2, a3))
    torch.library.opcheck(torch.ops.walnet.superpixel_mean.default, (a1.double(), lab.long()))
    torch.library.opcheck(torch.ops.walnet.pseudo_mask.default, (a1.half(), a2.half(), a3.half(), lab, 0.18))


def test_torch_compile_fullgraph():
    require_kernel("cpu")
    a1, a2, a3, lab = _inputs(n=4, h=24, w=20)

    def pgm(a1, a2, a3, lab):
        fused = ops.fuse_attention(a1, a2, a3)
        return fused, ops.superpixel_mean(fused, lab), ops.pseudo_mask(a1, a2, a3, lab, 0.18)

    compiled = torch.compile(pgm, fullgraph=True)
    for got, want in zip(compiled(a1, a2, a3, lab), pgm(a1, a2, a3, lab)):
        assert torch.equal(got, want)


def test_public_api():
    assert walnet.built_backends is ops.built_backends
    for name in ("fuse_attention", "superpixel_mean", "pseudo_mask", "built_backends", "reference"):
        assert name in ops.__all__
        assert getattr(ops, name).__doc__


# --- build -------------------------------------------------------------------------------


def test_cpu_kernels_built():
    assert _library.LOAD_ERROR is None, _library.LOAD_ERROR
    assert "cpu" in ops.built_backends()


def _nvcc_present():
    return shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


@pytest.mark.skipif(os.environ.get("WALNET_CUDA") == "0", reason="CUDA build disabled by WALNET_CUDA=0")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch is not a CUDA build")
@pytest.mark.skipif(not _nvcc_present(), reason="no CUDA toolkit here")
def test_cuda_kernels_built_when_nvcc_present():
    """nvcc is here and torch is a CUDA build, so the CUDA objects must have been compiled in."""
    assert "cuda" in ops.built_backends()
