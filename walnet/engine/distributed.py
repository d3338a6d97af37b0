"""Data-parallel training under ``torchrun`` (DDP): process group, device, rank-0 helpers.

``torchrun --nproc_per_node K -m walnet train ...`` starts K processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment; :func:`session` joins them into one
process group (NCCL on GPUs, gloo on CPUs) for the length of a run. Without those variables
everything here is a no-op, so the same training code runs single-process.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (1 when not distributed), its
    ``device``; ``enabled`` when there are several processes, ``is_main`` for rank 0 (the
    process that logs and writes files)."""

    rank: int
    world_size: int
    device: torch.device
    enabled: bool = field(init=False)
    is_main: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "enabled", self.world_size > 1)
        object.__setattr__(self, "is_main", self.rank == 0)

    def barrier(self) -> None:
        """Waits for every process (nothing to wait for in one process)."""
        if self.enabled:
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[DistContext]:
    """This process's :class:`DistContext` for the block: under torchrun (``WORLD_SIZE`` > 1)
    in the process group, which is left again after the block; else a one-process context."""
    ctx = _setup(device)
    try:
        yield ctx
    finally:
        if ctx.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _setup(device: torch.device) -> DistContext:
    """Joins the torchrun process group when ``WORLD_SIZE`` > 1, else returns a one-process
    context. With a CUDA ``device`` each process takes ``cuda:LOCAL_RANK``."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext(0, 1, device)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sums ``t`` over the processes (in place) when a process group is up."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def broadcast_float(value: float, ctx: DistContext) -> float:
    """Rank 0's `value` on every process of `ctx` (one float64 tensor on its device, sent from
    rank 0); `value` itself in one process."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(t, src=0)
    return float(t.item())
