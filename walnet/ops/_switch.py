"""A process-wide on/off setting of the ops with a scoped override: the value checks
(walnet.ops.set_value_checks) and the preview kernels (walnet.ops.set_preview_kernels)."""
from __future__ import annotations

import contextlib


class Switch:
    """``enabled`` until :meth:`set` changes it; :meth:`scoped` changes it for a block and
    restores the previous setting afterwards."""

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)

    def set(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    @contextlib.contextmanager
    def scoped(self, enabled: bool):
        previous, self.enabled = self.enabled, bool(enabled)
        try:
            yield
        finally:
            self.enabled = previous
