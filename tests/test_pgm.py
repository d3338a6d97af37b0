"""The three PGM ops together: deterministic whatever the thread count, any layout of their
inputs, NaN-safe with value checks off, shape checks of direct op calls, torch.library checks,
torch.compile, and CUDA equal to the CPU."""
from __future__ import annotations

import pytest
import torch

from walnet import ops

from conftest import DEVICES, require_kernel
from pgm_inputs import attention_maps, segment_labels, small_inputs


# --- determinism and layouts ------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    require_kernel(device)
    a1, a2, a3 = attention_maps(32, (56, 56), (28, 28), (14, 14), device=device, seed=11)
    labels = segment_labels("felzenszwalb", 32, 56, 56, device=device, seed=1)
    values = torch.randn(32, 56, 56, dtype=torch.float64, device=device)
    runs = []
    threads = torch.get_num_threads()
    try:
        for nt in (threads, 1, threads):
            torch.set_num_threads(nt)
            runs.append(
                (
                    ops.fuse_attention(a1, a2, a3),
                    ops.superpixel_mean(values, labels),
                    ops.pseudo_mask(a1, a2, a3, labels),
                )
            )
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for x, y in zip(runs[0], other):
            assert torch.equal(x, y)


@pytest.mark.parametrize("device", DEVICES)
def test_layouts(device):
    """[N,1,H,W], channels_last and non-contiguous inputs give the contiguous result."""
    require_kernel(device)
    a1, a2, a3 = attention_maps(4, (20, 24), (10, 12), (5, 6), device=device, seed=2)
    labels = segment_labels("felzenszwalb", 4, 20, 24, device=device)
    expected = ops.pseudo_mask(a1, a2, a3, labels)
    expected_mean = ops.superpixel_mean(a1, labels)

    cl = [a[:, None].contiguous(memory_format=torch.channels_last) for a in (a1, a2, a3)]
    assert torch.equal(ops.pseudo_mask(*cl, labels[:, None]), expected)
    # transposed storage and strided slices
    t = [a.transpose(1, 2).contiguous().transpose(1, 2) for a in (a1, a2, a3)]
    assert not t[0].is_contiguous()
    assert torch.equal(ops.pseudo_mask(*t, labels.transpose(1, 2).contiguous().transpose(1, 2)), expected)
    wide = torch.zeros(4, 20, 48, device=device)
    wide[:, :, ::2] = a1
    assert torch.equal(ops.fuse_attention(wide[:, :, ::2], a2, a3), ops.fuse_attention(a1, a2, a3))
    assert torch.equal(ops.superpixel_mean(wide[:, :, ::2], labels.long()), expected_mean)
    # mixed map dtypes are promoted
    assert torch.equal(ops.pseudo_mask(a1, a2.double(), a3.half(), labels),
                       ops.pseudo_mask(a1.double(), a2.double(), a3.half().double(), labels))


# --- value checks and direct op calls ----------------------------------------------------


def test_value_checks_can_be_disabled_without_nan():
    """With value checks off (sync-free CUDA steps) a NaN map still never yields a NaN loss:
    the kernels treat a non-finite map as uninformative."""
    a1, a2, a3, lab = small_inputs()
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


def test_direct_op_call_checks_shapes():
    """torch.ops.walnet.* called without the wrapper must still refuse mismatched shapes."""
    require_kernel("cpu")
    a1, a2, a3, lab = small_inputs()
    with pytest.raises(RuntimeError, match="labels"):
        torch.ops.walnet.pseudo_mask(a1, a2, a3, lab[:, :4], 0.18)
    with pytest.raises(RuntimeError, match="larger"):
        torch.ops.walnet.fuse_attention(a2, a1, a3)


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
    a1, a2, a3, lab = small_inputs(n=4, h=24, w=20)

    def pgm(a1, a2, a3, lab):
        fused = ops.fuse_attention(a1, a2, a3)
        return fused, ops.superpixel_mean(fused, lab), ops.pseudo_mask(a1, a2, a3, lab, 0.18)

    compiled = torch.compile(pgm, fullgraph=True)
    for got, want in zip(compiled(a1, a2, a3, lab), pgm(a1, a2, a3, lab)):
        assert torch.equal(got, want)


# --- CUDA == CPU --------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    require_kernel("cuda")
    a1, a2, a3 = attention_maps(16, (56, 56), (28, 28), (14, 14), seed=4)
    labels = segment_labels("felzenszwalb", 16, 56, 56)
    values = torch.randn(16, 56, 56)
    cpu = (ops.fuse_attention(a1, a2, a3), ops.superpixel_mean(values, labels), ops.pseudo_mask(a1, a2, a3, labels))
    gpu = (
        ops.fuse_attention(a1.cuda(), a2.cuda(), a3.cuda()),
        ops.superpixel_mean(values.cuda(), labels.cuda()),
        ops.pseudo_mask(a1.cuda(), a2.cuda(), a3.cuda(), labels.cuda()),
    )
    for c, g in zip(cpu, gpu):
        assert torch.equal(c, g.cpu())
