"""Progress bars of ``walnet train``, ``evaluate`` and ``predict`` (tqdm, on stderr): one
helper, :func:`bar`, so that every command shows its bars alike and turns them off alike.

A bar shows its count, rate and time left. It is shown only where it is `enabled` (off with
``--quiet``, and on every process of a DDP run but rank 0) and stderr is a terminal (tqdm's
``disable=None``): a log file or a pipe never receives bars. Bars never replace the log lines:
``--quiet`` silences the bars alone.
"""
from __future__ import annotations

import sys

from tqdm import tqdm


def _disable(enabled: bool) -> bool | None:
    """tqdm's ``disable`` of a bar that is `enabled` or not: None (tqdm shows it only when its
    stream is a terminal) or True (never shown)."""
    return None if enabled else True


def bar(iterable, desc: str, total: int | None = None, enabled: bool = True, *, unit: str = "batch",
        initial: int = 0, leave: bool = False) -> tqdm:
    """`iterable` wrapped in a tqdm bar named `desc` on stderr, counting `unit` up to `total`
    (default: ``len(iterable)``) from `initial` (a resumed run's epochs already done; the rate
    and time left count from there). `leave`: the finished bar stays on the terminal. Closed
    when the loop over it ends, breaks or raises (tqdm closes it with its iterator)."""
    return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, leave=leave, file=sys.stderr,
                dynamic_ncols=True, disable=_disable(enabled))
