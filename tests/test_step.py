"""The training step (walnet.engine.step): eager, compiled (fullgraph) and CUDA-graphed steps give
the eager step's numbers, and the step's settings per device (walnet.engine.runtime)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch._dynamo.testing

import walnet
from walnet.engine.config import TrainConfig
from walnet.engine.runtime import CUDA_WORKERS, backend_flags, loader_workers, runtime_of
from walnet.engine.step import GRAPH_WARMUP_STEPS, TrainStep
from walnet.models.walnet import walnet_loss

SMALL = dict(backbone="resnet18", attention_channels=8, rcm_warmup_epochs=1)  # epoch 0: RCM off; 1 on


def _setup(device="cpu", capturable=False, sgd=False):
    torch.manual_seed(0)
    model = walnet.WALNet(**SMALL).to(device).train()
    if sgd:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=capturable)
    return model, walnet.PseudoMaskGenerator(), optimizer


def _batches(n, device="cpu", batch=2, size=64):
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(batch, 3, size, size, generator=gen).to(device),
             torch.randint(0, 3, (batch,), generator=gen).to(device)) for _ in range(n)]


def _run(step, batches, epochs):
    return torch.stack([step(x, t, e).clone() for (x, t), e in zip(batches, epochs)])


def test_eager_step_is_forward_pgm_loss_backward_adam():
    """The step's numbers are those of the loop it replaces, written out by hand: bitwise."""
    batches, epochs = _batches(3), [0, 1, 1]
    model, pgm, opt = _setup()
    got = _run(TrainStep(model, pgm, opt), batches, epochs)
    ref_model, ref_pgm, ref_opt = _setup()
    want = []
    for (x, t), e in zip(batches, epochs):
        out = ref_model(x, epoch=e)
        parts = walnet_loss(out, t, ref_pgm(x, out.attention))
        ref_opt.zero_grad(set_to_none=True)
        parts.total.backward()
        ref_opt.step()
        correct = (out.logits.argmax(dim=1) == t).sum().float()
        want.append(torch.stack([parts.total, parts.cls, parts.seg, correct]).detach())
    assert torch.equal(got, torch.stack(want))
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)


def test_compiled_step_is_one_graph_per_rcm_state_and_matches_eager():
    """forward + PGM (Felzenszwalb included) + loss compile with fullgraph=True (a graph break
    would raise), AOTAutograd compiles their backward, and the epoch only selects the RCM state:
    four epochs compile twice. The losses and weights after the steps equal the eager step's to
    float rounding (aot_eager runs the same ATen ops, decomposed: 1e-5). SGD, not Adam: Adam
    divides by the gradient's running size, which turns rounding in a near-zero gradient into
    a full step of either sign."""
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    batches, epochs = _batches(4), [0, 1, 2, 3]
    model, pgm, opt = _setup(sgd=True)
    got = _run(TrainStep(model, pgm, opt, compile=True, compile_backend=counter), batches, epochs)
    assert counter.frame_count == 2
    ref_model, ref_pgm, ref_opt = _setup(sgd=True)
    want = _run(TrainStep(ref_model, ref_pgm, ref_opt), batches, epochs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_compiled_baseline_classifier_step():
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = walnet.create_model("walnet_no_pgm", backbone="resnet18").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stats = _run(TrainStep(model, None, opt, compile=True, compile_backend=counter), _batches(2), [0, 1])
    assert counter.frame_count == 1
    assert torch.isfinite(stats).all() and (stats[:, 2] == 0).all()  # no segmentation loss


def test_graphed_step_refuses_what_a_graph_cannot_hold():
    model, pgm, opt = _setup()
    with pytest.raises(ValueError, match="capturable=True"):
        TrainStep(model, pgm, opt, cuda_graph=True)
    with pytest.raises(ValueError, match="gradient scaler"):
        TrainStep(model, pgm, opt, cuda_graph=True, scaler=torch.amp.GradScaler("cpu"))
    model, pgm, opt = _setup(capturable=True)
    step = TrainStep(model, pgm, opt, cuda_graph=True)
    x, t = _batches(1)[0]
    with pytest.raises(ValueError, match="needs CUDA tensors, got images on cpu"):
        step(x, t, 0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class HalfMask(torch.nn.Module):
    """A PGM stand-in whose mask does not depend on the attention: the top half is plaque. The
    real PGM thresholds the attention, so rounding can flip a superpixel or a whole sample's
    mask and the loss with it; without it, graphed and eager steps differ by rounding only."""

    def forward(self, images, attention):
        a1 = attention[0]
        mask = torch.zeros(a1.shape[0], *a1.shape[-2:], dtype=torch.uint8, device=a1.device)
        mask[:, : a1.shape[-2] // 2] = 1
        return mask


def _graphed_and_eager(amp, pgm_type, n):
    batches = _batches(2 * n, "cuda")
    epochs = [0] * n + [1] * n  # the RCM switches on half way: a second capture
    results = []
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        for graphed in (True, False):
            model, _, opt = _setup("cuda", capturable=True)
            step = TrainStep(model, pgm_type(), opt, amp_dtype=amp, cuda_graph=graphed)
            losses = _run(step, batches, epochs)
            steps = {float(state["step"]) for state in opt.state.values()}
            results.append((losses, model.state_dict(), steps))
    return results


@cuda
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_graphed_step_matches_eager(amp):
    """Warm-up steps, the capture's own step, replays and a recapture when the RCM switches on
    give the eager step's losses and weights. Both runs launch the same kernels with the same
    cuDNN algorithms (benchmark off, deterministic); what may differ is the order of atomic sums
    in some backward kernels: 1e-4 in float32, 2e-2 under bf16 autocast (8-bit mantissa). Adam
    turns such rounding in a near-zero gradient into a step of +-lr, so weights are compared to
    5e-3 (a few steps of lr 1e-3); Adam's step count proves every replay updated them."""
    n = GRAPH_WARMUP_STEPS + 4
    (got, got_state, got_steps), (want, want_state, _) = _graphed_and_eager(amp, HalfMask, n)
    tol = 1e-4 if amp is None else 2e-2
    assert got_steps == {2.0 * n}
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    for name, a in got_state.items():
        torch.testing.assert_close(a.float(), want_state[name].float(), rtol=0, atol=5e-3, msg=name)


@cuda
def test_cuda_graphed_step_with_the_pgm_matches_eager_in_bf16():
    """The same with the real PGM, in walnet's CUDA default (bf16 autocast): 2e-2."""
    n = GRAPH_WARMUP_STEPS + 4
    (got, _, got_steps), (want, _, _) = _graphed_and_eager(torch.bfloat16, walnet.PseudoMaskGenerator, n)
    assert got_steps == {2.0 * n}
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@cuda
def test_cuda_graphed_step_refuses_another_batch_shape():
    model, pgm, opt = _setup("cuda", capturable=True)
    step = TrainStep(model, pgm, opt, cuda_graph=True)
    for x, t in _batches(GRAPH_WARMUP_STEPS + 1, "cuda"):
        step(x, t, 1)
    x, t = _batches(1, "cuda", batch=3)[0]
    with pytest.raises(ValueError, match=r"captured for images \(2, 3, 64, 64\), got \(3, 3, 64, 64\)"):
        step(x, t, 1)


# --- the step's settings per device ----------------------------------------------------------------

def _config(**kw):
    return TrainConfig(csv="x.csv", output="o", **kw)


def test_cpu_runs_eagerly_in_float32_without_workers():
    runtime = runtime_of(_config(), torch.device("cpu"))
    assert (runtime.amp_dtype, runtime.cuda_graphs, runtime.channels_last, runtime.tf32, runtime.cudnn_benchmark,
            runtime.workers) == (None, False, False, False, False, 0)
    assert runtime.describe() == "eager, fp32, 0 loader worker(s)"


def test_cuda_defaults_and_each_switch_off():
    cuda_device = torch.device("cuda")  # runtime_of only reads the device's type
    runtime = runtime_of(_config(), cuda_device)
    assert (runtime.amp_dtype, runtime.cuda_graphs, runtime.channels_last, runtime.tf32, runtime.cudnn_benchmark) == (
        torch.bfloat16, True, True, True, True)
    assert runtime.workers == loader_workers(None, cuda_device) and 1 <= runtime.workers <= CUDA_WORKERS
    assert runtime.describe().startswith("CUDA graph, bf16 autocast, channels-last, TF32, cudnn.benchmark")
    for setting in ("cuda_graphs", "channels_last", "tf32", "cudnn_benchmark"):
        changed = runtime_of(_config(**{setting: False}), cuda_device)
        assert dataclasses.replace(changed, **{setting: True}) == runtime, setting
    fp32 = runtime_of(_config(precision="fp32"), cuda_device)
    assert fp32.amp_dtype is None and not fp32.cuda_graphs and "not yet verified" in fp32.describe()
    assert runtime_of(_config(workers=3), cuda_device).workers == 3


def test_cuda_graphs_step_aside_for_fp16_and_ddp_and_say_why():
    fp16 = runtime_of(_config(precision="fp16"), torch.device("cuda"))
    assert fp16.amp_dtype == torch.float16 and not fp16.cuda_graphs
    assert "gradient scaler cannot run inside a CUDA graph" in fp16.describe()
    ddp = runtime_of(_config(), torch.device("cuda"), processes=2)
    assert not ddp.cuda_graphs and "DDP steps run eagerly" in ddp.describe()


def test_backend_flags_are_restored():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    runtime = runtime_of(_config(), torch.device("cuda"))
    with backend_flags(runtime):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
    with backend_flags(dataclasses.replace(runtime, tf32=False, cudnn_benchmark=False)):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32) == before


def test_train_compile_runs_the_compiled_step(tmp_path, monkeypatch):
    """`walnet train --compile` trains through one fullgraph compile per RCM state (aot_eager
    here: inductor's C++ build would take minutes on a CI machine)."""
    from walnet.data import phantom
    from walnet.engine import step as step_module
    from walnet.engine.trainer import train

    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    real = torch.compile

    def compile_with_counter(fn, **kw):
        assert kw["fullgraph"] is True
        return real(fn, **{**kw, "backend": counter})

    monkeypatch.setattr(step_module.torch, "compile", compile_with_counter)
    torch._dynamo.reset()
    data = phantom.generate(tmp_path / "data", n=30, seed=1, size=48)
    row = train(TrainConfig(csv=data, output=tmp_path / "run", backbone="resnet18", attention_channels=8, size=48,
                            batch_size=6, epochs=2, rcm_warmup=1, compile=True, device="cpu"))
    assert counter.frame_count == 2  # epoch 0 without the RCM, epoch 1 with it
    assert row["epoch"] == 1 and all(torch.isfinite(torch.tensor(row[k])) for k in ("loss", "cls_loss", "seg_loss"))
