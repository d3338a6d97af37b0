"""How a training run uses its device (its :class:`Runtime`): the defaults that make a WAL-Net step fast on CUDA, each
of which a :class:`~walnet.engine.config.TrainConfig` option switches off.

On CUDA a run by default replays the whole step as a CUDA graph, under bfloat16 autocast, with
the model in channels-last, TF32 for what stays in float32, cuDNN's timed algorithm choice, and
loader workers with pinned memory; on the CPU it runs eagerly in float32. A float32 run on CUDA
(``--precision fp32``) runs eagerly: with the PGM, its graphed step has not matched the eager
one to rounding (docs/benchmarks.md, "Training throughput"). The measurements
behind these choices are in docs/benchmarks.md (``benchmarks/train_throughput.py``).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from walnet.engine.config import TrainConfig

#: Loader processes of a CUDA run without ``--workers``: enough to decode and resize 224² images
#: faster than a graphed step consumes them, without taking a shared machine's every core.
CUDA_WORKERS = 8


def loader_workers(workers: int | None, device: torch.device) -> int:
    """``--workers``, or its default: none on the CPU (the step needs the cores), else up to
    :data:`CUDA_WORKERS`."""
    if workers is not None:
        return workers
    if device.type != "cuda":
        return 0
    return min(CUDA_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass(frozen=True)
class Runtime:
    """The runtime settings of a run's steps: arithmetic, graphs, layout, loader workers (see
    :func:`runtime_of`)."""

    amp_dtype: torch.dtype | None
    channels_last: bool
    cuda_graphs: bool
    compile: bool
    tf32: bool
    cudnn_benchmark: bool
    workers: int
    #: why the step is not graphed on CUDA ("" when it is, or on the CPU)
    eager_because: str = ""

    def describe(self) -> str:
        """One line for the run's log, e.g. "CUDA graph, bf16 autocast, channels-last, TF32"."""
        mode = "CUDA graph" if self.cuda_graphs else "eager"
        if self.compile:
            mode = f"compiled, {mode}" if self.cuda_graphs else "compiled"
        parts = [mode + (f" ({self.eager_because})" if self.eager_because else "")]
        names = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + gradient scaler"}
        parts.append(names.get(self.amp_dtype, "fp32"))
        parts += [name for name, on in (("channels-last", self.channels_last), ("TF32", self.tf32),
                                         ("cudnn.benchmark", self.cudnn_benchmark)) if on]
        parts.append(f"{self.workers} loader worker(s)")
        return ", ".join(parts)


def runtime_of(config: TrainConfig, device: torch.device, processes: int = 1) -> Runtime:
    """The step settings of `config` on `device` with `processes` torchrun processes."""
    cuda = device.type == "cuda"
    precision = config.precision if config.precision != "auto" else ("bf16" if cuda else "fp32")
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    graphs, because = cuda and config.cuda_graphs, ""
    if graphs and amp_dtype == torch.float16:
        graphs, because = False, "fp16's gradient scaler cannot run inside a CUDA graph"
    elif graphs and processes > 1:
        graphs, because = False, "a CUDA graph runs one process; DDP steps run eagerly"
    elif graphs and amp_dtype is None:
        graphs, because = False, ("float32 steps run eagerly: their graphed losses are not yet verified against "
                                  "eager ones")
    return Runtime(amp_dtype=amp_dtype, channels_last=cuda and config.channels_last, cuda_graphs=graphs,
                 compile=config.compile, tf32=cuda and config.tf32, cudnn_benchmark=cuda and config.cudnn_benchmark,
                 workers=loader_workers(config.workers, device), eager_because=because)


@contextlib.contextmanager
def backend_flags(runtime: Runtime):
    """TF32 and cuDNN's benchmark mode as `runtime` says, for the duration of a run (the process's
    own settings are restored after)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = runtime.tf32
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=runtime.cudnn_benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=runtime.tf32):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
