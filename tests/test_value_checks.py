"""ops.value_checks: the context manager that turns the NaN/inf checks of the op wrappers off (for
sync-free CUDA steps) and restores the previous setting on the way out, exceptions included."""
from __future__ import annotations

import pytest

from walnet import ops

from pgm_inputs import small_inputs


def test_value_checks_context_restores_the_setting():
    a1, a2, a3, lab = small_inputs()
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
