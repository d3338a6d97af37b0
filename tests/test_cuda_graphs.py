"""walnet's CUDA ops inside a CUDA graph: captured on one input, replayed on another, each op (and
the PGM as a whole) gives exactly what it gives eagerly on that other input. A kernel that keeps
anything of the captured input (a size read on the host, a buffer filled once) fails here."""
from __future__ import annotations

import pytest
import torch

import walnet
from walnet import ops

from felzenszwalb_variants import gpu_algorithms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _graphed(fn, *inputs):
    """fn captured on copies of `inputs`; returns a replay(new_inputs) -> outputs function."""
    static = [x.clone() for x in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), ops.value_checks(False):
        fn(*static)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), ops.value_checks(False):
        out = fn(*static)

    def replay(*new):
        for s, x in zip(static, new):
            s.copy_(x)
        graph.replay()
        return out if isinstance(out, (tuple, list)) else (out,)

    return replay


def _images(seed, n=4, size=56):
    g = torch.Generator().manual_seed(seed)
    # smooth images: superpixels of very different counts and sizes from one seed to the next
    x = torch.rand(n, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x + 0.1 * seed * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1).cuda()


def _attention(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    maps = []
    for s in (56, 28, 14):
        a = torch.rand(n, 1, s, s, generator=g) ** (1 + seed)
        maps.append((a / a.flatten(1).sum(1)[:, None, None, None]).cuda())
    return maps


@pytest.mark.parametrize("size", [56, 224])
@pytest.mark.parametrize("algorithm", ["auto"] + gpu_algorithms("cuda"))
def test_cuda_graph_felzenszwalb_replays_on_new_images(algorithm, size):
    def fn(x):
        return ops.felzenszwalb(x, 64, 0.5, 10, algorithm=algorithm, return_rounds=True)

    replay = _graphed(fn, _images(0, size=size))
    for seed in (1, 2, 3):
        x = _images(seed, size=size)
        got = replay(x)
        want = fn(x)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), seed


def test_cuda_graph_pseudo_mask_replays_on_new_inputs():
    labels0 = ops.felzenszwalb(_images(0), 64, 0.5, 10)

    def fn(a1, a2, a3, labels):
        return ops.pseudo_mask(a1[:, 0], a2[:, 0], a3[:, 0], labels, 0.18)

    replay = _graphed(fn, *_attention(0), labels0)
    for seed in (1, 2, 3):
        inputs = (*_attention(seed), ops.felzenszwalb(_images(seed), 64, 0.5, 10))
        (got,) = replay(*inputs)
        assert torch.equal(got, fn(*inputs)), seed


def test_cuda_graph_pgm_replays_on_new_inputs():
    pgm = walnet.PseudoMaskGenerator()
    replay = _graphed(lambda x, a1, a2, a3: pgm(x, (a1, a2, a3)), _images(0, size=224), *_attention(0))
    for seed in (1, 2, 3):
        inputs = (_images(seed, size=224), *_attention(seed))
        (got,) = replay(*inputs)
        assert torch.equal(got, pgm(inputs[0], inputs[1:])), seed


def _levels(seed):
    g = torch.Generator().manual_seed(seed)
    levels = [torch.rand(4, c, s, s, generator=g).cuda() for c, s in ((8, 56), (8, 28), (8, 14), (16, 7))]
    levels[1] = levels[1].contiguous(memory_format=torch.channels_last)
    return levels


def _seg(seed):
    g = torch.Generator().manual_seed(100 + seed)
    return (torch.randn(4, 2, 56, 56, generator=g) * 3).cuda()


@pytest.mark.parametrize("preview", [False, True], ids=["per-level", "one-pass"])
@pytest.mark.parametrize("method", ops.ROI_METHODS)
def test_cuda_graph_roi_crop_replays_on_new_inputs(method, preview):
    def fn(f1, f2, f3, f4, s):
        with ops.preview_kernels(preview):
            return tuple(ops.roi_crop([f1, f2, f3, f4], s, method))

    replay = _graphed(fn, *_levels(0), _seg(0))
    for seed in (1, 2, 3):
        inputs = (*_levels(seed), _seg(seed))
        got = replay(*inputs)
        for a, b in zip(got, fn(*inputs)):
            assert torch.equal(a, b), seed


def test_cuda_graph_one_pass_rcm_ops_replay_on_new_inputs():
    """roi_boxes, crop_levels and crop_levels_backward (the preview kernels of the one-pass RCM)
    captured once: boxes, crops and gradients of new inputs, bit for bit as run eagerly."""
    sizes = [56, 28, 14, 7]

    def fn(f1, f2, f3, f4, s, g1, g2, g3, g4):
        boxes = torch.ops.walnet.roi_boxes(torch.softmax(s, dim=1)[:, 1], sizes, sizes, 0.5, 1 / 7)
        crops = torch.ops.walnet.crop_levels([f1, f2, f3, f4], boxes)
        grads = torch.ops.walnet.crop_levels_backward([g1, g2, g3, g4], boxes)
        return (boxes, *crops, *grads)

    replay = _graphed(fn, *_levels(0), _seg(0), *_levels(50))
    for seed in (1, 2, 3):
        inputs = (*_levels(seed), _seg(seed), *_levels(50 + seed))
        got = replay(*inputs)
        want = fn(*inputs)
        assert len(got) == 9
        for a, b in zip(got, want):
            assert torch.equal(a, b), seed
