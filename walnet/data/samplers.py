"""A class-balanced training sampler (``walnet train --balanced-sampler``):
:class:`ClassBalancedSampler` draws each epoch's images with replacement, every class equally
often in expectation, as many draws as there are images.

Its draws are a function of (seed, epoch) only, never of the global random state, so a resumed run
draws what an uninterrupted one would. Under DDP every process draws the same global sequence and
takes every ``num_replicas``-th draw from ``rank`` on, as PyTorch's DistributedSampler shares out
its permutation: the shares are equally long and together are the global sequence.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _non_negative_int(name: str, value, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class ClassBalancedSampler(torch.utils.data.Sampler):
    """Indices of a dataset whose item ``i`` has class ``labels[i]``, drawn with replacement with
    probability ``1 / (C * n_c)`` for an item of a class with ``n_c`` items (``C``: the classes
    that have items), so each class is drawn ``1 / C`` of the time.

    An epoch holds ``ceil(len(labels) / num_replicas)`` indices per process (this process:
    `rank`), from the global sequence of ``num_replicas`` times as many draws seeded by
    (`seed`, the last :meth:`set_epoch`'s epoch, 0 before one).
    """

    def __init__(self, labels, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        labels = [_non_negative_int("a class label", label) for label in labels]
        if not labels:
            raise ValueError("a class-balanced sampler needs at least one labelled item")
        self.num_replicas = _non_negative_int("num_replicas", num_replicas, 1)
        self.rank = _non_negative_int("rank", rank)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be below num_replicas ({self.num_replicas}), got {self.rank}")
        self.seed = _non_negative_int("seed", seed)
        self.epoch = 0
        target = torch.tensor(labels)
        counts = torch.bincount(target).double()
        self.weights = 1.0 / counts[target]  # an item's chance is 1 / (its class's size), before normalising
        self.num_samples = math.ceil(len(labels) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose draws the next iteration yields."""
        self.epoch = _non_negative_int("epoch", epoch)

    def global_draws(self) -> torch.Tensor:
        """The epoch's draws of every process, int64 [num_replicas * len(self)]."""
        # SeedSequence: neighbouring (seed, epoch) pairs give unrelated streams
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state))
        return torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)

    def __iter__(self):
        return iter(self.global_draws()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
