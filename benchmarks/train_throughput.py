"""Training throughput (images / s): the bare step and a phantom epoch, eager vs compiled vs
CUDA-graphed. One process, one machine; prints markdown tables for docs/benchmarks.md.

Step table: one training step (forward, PGM, loss, backward, Adam) of
- ``walnet``: WAL-Net with its PGM (Felzenszwalb + pseudo mask) and RCM,
- ``backbone+decoder``: the same network without PGM and RCM (a fixed all-background mask),
- ``classifier``: the plain resnest50d classifier (the paper's baseline),
- ``authors``: the authors' step (skimage per image, Python loops; eager fp32 only),
in the modes
- ``eager-fp32``: eager, float32, NCHW, torch's default flags (a plain PyTorch loop),
- ``eager``: walnet's CUDA defaults without the graph (bf16 autocast, channels-last, TF32,
  cudnn.benchmark), ``compiled``: plus torch.compile(fullgraph=True) of forward + PGM + loss,
- ``graphed``: walnet's CUDA default (the defaults and the whole step in one CUDA graph),
  ``compiled+graphed``: both.
Each entry is the median of ``--steps`` steps (each synchronised) after ``--warmup`` steps.

Epoch (``--epoch``): ``walnet train``'s loader and step on the 1,270-image phantom at 224²
(generated into ``--phantom`` unless it is there), one epoch of the training split; the
share of the epoch lost to data loading is 1 - (the same steps on batches already on the GPU) /
(the epoch with its loader).

Run: python benchmarks/train_throughput.py --device cuda [--batches 8,32] [--variants ...]
[--modes ...] [--epoch --phantom DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import walnet  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from benchmarks.step_table import make_step  # noqa: E402
from walnet.engine.config import TrainConfig  # noqa: E402
from walnet.engine.runtime import Runtime, backend_flags, runtime_of  # noqa: E402
from walnet.engine.step import TrainStep  # noqa: E402

VARIANTS = ("walnet", "backbone+decoder", "classifier", "authors")
MODES = ("eager-fp32", "eager", "compiled", "graphed", "compiled+graphed")


class FixedMask(torch.nn.Module):
    """Stands in for the PGM of the backbone+decoder variant: an all-background mask."""

    def forward(self, images, attention):
        a1 = attention[0]
        return torch.zeros(a1.shape[0], *a1.shape[-2:], dtype=torch.uint8, device=a1.device)


def mode_speed(mode: str, device: torch.device) -> Runtime:
    """The step settings of `mode` (see the module doc)."""
    fast = runtime_of(TrainConfig(csv="-", output="-"), torch.device("cuda"))  # walnet's CUDA defaults
    if mode == "eager-fp32":
        return Runtime(amp_dtype=None, channels_last=False, cuda_graphs=False, compile=False, tf32=False,
                     cudnn_benchmark=False, workers=0)
    return dataclasses.replace(fast, cuda_graphs="graphed" in mode and device.type == "cuda",
                               compile="compiled" in mode, workers=0)


def flags(speed: Runtime, mode: str):
    """The backend flags of `mode`: eager-fp32 keeps torch's own (TF32 convolutions, no
    cudnn.benchmark, float32 matmuls)."""
    return contextlib.nullcontext() if mode == "eager-fp32" else backend_flags(speed)


def build(variant: str, speed: Runtime, device: torch.device, backbone: str):
    """Model, PGM (or stand-in) and a TrainStep of `variant` under `speed`."""
    torch.manual_seed(0)
    if variant == "classifier":
        model, pgm = timm.create_model(backbone, num_classes=3), None
    else:
        model = walnet.WALNet(backbone=backbone, use_rcm=variant == "walnet")
        pgm = walnet.PseudoMaskGenerator() if variant == "walnet" else FixedMask()
    model = model.to(device).train()
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, capturable=speed.cuda_graphs)
    return model, TrainStep(model, pgm, opt, amp_dtype=speed.amp_dtype, compile=speed.compile,
                            cuda_graph=speed.cuda_graphs)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, warmup: int, steps: int, device) -> float:
    """Median seconds of one synchronised call of step() after `warmup` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_seconds(variant: str, mode: str, batch: int, size: int, device, warmup: int, steps: int,
                 backbone: str) -> float:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=gen).to(device)
    target = torch.randint(0, 3, (batch,), generator=gen).to(device)
    if variant == "authors":  # the authors' code: eager float32 only
        torch.manual_seed(0)
        model = walnet.WALNet(backbone=backbone).to(device).train()
        run = make_step(model, "authors", images, target)
        with flags(mode_speed("eager-fp32", device), "eager-fp32"):
            return time_steps(run, warmup, steps, device)
    speed = mode_speed(mode, device)
    model, step = build(variant, speed, device, backbone)
    if speed.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with flags(speed, mode), walnet.ops.value_checks(False):
        return time_steps(lambda: step(images, target, 100), warmup, steps, device)


def step_table(args, device) -> None:
    print(f"\n### Training step, {args.backbone}, {args.size}², median of {args.steps} steps after {args.warmup}\n")
    print("| variant | batch | mode | step (ms) | images/s | × eager-fp32 |")
    print("|---|---:|---|---:|---:|---:|")
    for batch in args.batches:
        for variant in args.variants:
            base = None
            for mode in (("eager-fp32",) if variant == "authors" else args.modes):
                try:
                    t = step_seconds(variant, mode, batch, args.size, device, args.warmup, args.steps, args.backbone)
                except Exception as exc:  # one failing entry must not cost the table
                    print(f"| {variant} | {batch} | {mode} | failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else ''} | | |", flush=True)
                    traceback.print_exc(file=sys.stderr)
                    continue
                base = t if mode == "eager-fp32" else base
                ratio = f"{base / t:.2f}×" if base else ""
                print(f"| {variant} | {batch} | {mode} | {t * 1e3:.1f} | {batch / t:.0f} | {ratio} |", flush=True)
                torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def epoch_table(args, device) -> None:
    from walnet.data import PlaqueDataset, assign_splits, load_records, phantom
    from walnet.engine import trainer
    from walnet.engine.loops import train_one_epoch

    labels = os.path.join(args.phantom, "labels.csv")
    if not os.path.isfile(labels):
        t0 = time.perf_counter()
        phantom.generate(args.phantom, n=1270, seed=0, size=224)
        print(f"\n(phantom generated in {time.perf_counter() - t0:.0f} s)")
    config = TrainConfig(csv=labels, output=tempfile.mkdtemp(), batch_size=args.batches[0], size=args.size,
                         rcm_warmup=0, workers=args.workers, device=str(device))
    records, _ = load_records(csv_path=labels)
    splits = assign_splits(records, Path(config.output), config.seed, save=False)
    train_set = PlaqueDataset([r for r, s in zip(records, splits) if s == "train"], config.size)
    print(f"\n### Phantom epoch: {len(train_set)} training images at {args.size}², batch {config.batch_size}\n")
    print("| mode | loader workers | epoch (s) | images/s | steps on preloaded batches (s) | loader share |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in args.epoch_modes:
        speed = dataclasses.replace(mode_speed(mode, device), workers=runtime_of(config, device).workers)
        sampler = torch.utils.data.DistributedSampler(train_set, 1, 0, shuffle=True, seed=0)
        loader = trainer._train_loader(train_set, sampler, config, speed, pin=device.type == "cuda")
        model, step = build("walnet", speed, device, args.backbone)
        with flags(speed, mode), walnet.ops.value_checks(False):
            train_one_epoch(model, step.pgm, loader, step.optimizer, 1, device, step=step)  # warm-up epoch
            t0 = time.perf_counter()
            train_one_epoch(model, step.pgm, loader, step.optimizer, 1, device, step=step)
            epoch = time.perf_counter() - t0
            batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in loader]
            _sync(device)
            t0 = time.perf_counter()
            train_one_epoch(model, step.pgm, batches, step.optimizer, 1, device, step=step)
            preloaded = time.perf_counter() - t0
        images = sum(len(b["label"]) for b in batches)
        print(f"| {mode} | {speed.workers} | {epoch:.2f} | {images / epoch:.0f} | {preloaded:.2f} | "
              f"{max(0.0, 1 - preloaded / epoch):.1%} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbone", default="resnest50d", help="WAL-Net's backbone and the plain classifier")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps first (a graph captures after 3)")
    parser.add_argument("--no-steps", action="store_true", help="skip the step table")
    parser.add_argument("--epoch", action="store_true", help="also time a phantom epoch")
    parser.add_argument("--epoch-modes", default="graphed", help="comma-separated modes of the epoch table")
    parser.add_argument("--phantom", default=os.path.join(tempfile.gettempdir(), "walnet-phantom-224"))
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: walnet train's)")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    args.modes = [m for m in args.modes.split(",") if m]
    args.epoch_modes = [m for m in args.epoch_modes.split(",") if m]
    for name, given, known in (("variant", args.variants, VARIANTS), ("mode", args.modes + args.epoch_modes, MODES)):
        if set(given) - set(known):
            parser.error(f"unknown {name}(s) {sorted(set(given) - set(known))}; choose from {known}")
    device = torch.device(args.device)
    print(f"{machine(args.device)}; torch {torch.__version__}, walnet {walnet.__version__}")
    if not args.no_steps:
        step_table(args, device)
    if args.epoch:
        epoch_table(args, device)


if __name__ == "__main__":
    main()
