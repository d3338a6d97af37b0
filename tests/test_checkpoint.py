"""Checkpoints: written atomically (no temporary left, the old file intact when saving fails) and
loaded weights-only (a pickle that would run code is refused)."""
from __future__ import annotations

import pickle

import pytest
import torch

from walnet.engine import load_checkpoint, save_checkpoint


def test_checkpoint_atomic_and_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 4, "args": {"lr": 1e-4}, "classes": ["a", "b"]}
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind

    class Boom:  # an object whose unpickling would run code
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"x": Boom()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(bad)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"x": Unsaveable()})
    assert torch.equal(load_checkpoint(path)["model"]["w"], state["model"]["w"])  # old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
