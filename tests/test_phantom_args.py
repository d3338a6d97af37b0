"""``walnet phantom`` and ``walnet demo`` check before they replace: a bad argument leaves an
earlier phantom as it was, and the demo does not continue a run of other settings."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace

import pytest

from walnet import cli
from walnet.data import phantom
from walnet.engine.config import TrainConfig
from walnet.engine.demo import _TRAIN_SETTINGS, DemoConfig, run_demo

TINY = DemoConfig(n=30, size=48, epochs=2, attention_channels=8, batch_size=8, rcm_warmup=1)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags, message", [(["--size", "8"], "size must be >= 16, got 8"),
                                            (["--seed", "-5"], "seed must be >= 0, got -5"),
                                            (["--n", "0"], "n must be >= 1, got 0")])
def test_a_bad_argument_keeps_the_earlier_phantom(tmp_path, capsys, flags, message):
    """The audit's case: ``phantom --out EXISTING --size 8`` deleted the phantom, then failed."""
    out = tmp_path / "ph"
    phantom.generate(out, n=6, seed=0, size=32)
    before = _digest(out)
    assert cli.main(["phantom", "--out", str(out), "--n", "6", *flags]) == 2
    assert capsys.readouterr().err == f"walnet phantom: error: {message}\n"
    assert _digest(out) == before


@pytest.fixture
def demo_run(tmp_path, monkeypatch):
    """A demo folder as a finished seed-0 run of TINY leaves it (phantom, args.json, last.pt),
    and a train that fails the test if called."""
    phantom.generate(tmp_path / "phantom", n=TINY.n, seed=TINY.seed, size=TINY.size)
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(csv=tmp_path / "phantom" / "labels.csv", output=run,
                         **{k: getattr(TINY, k) for k in _TRAIN_SETTINGS})
    (run / "args.json").write_text(json.dumps(config.to_dict()))
    (run / "last.pt").write_bytes(b"a checkpoint")

    def train(*args, **kwargs):
        raise AssertionError("the demo trained")

    monkeypatch.setattr("walnet.engine.trainer.train", train)
    return tmp_path


@pytest.mark.parametrize("changes, differs", [({"seed": 3}, "seed 0 (now 3)"), ({"n": 36}, "phantom n 30 (now 36)"),
                                              ({"size": 64}, "size 48 (now 64)")])
def test_the_demo_does_not_continue_a_run_of_other_settings(demo_run, changes, differs):
    """The audit's case: ``demo --seed 3`` continued the seed-0 run on regenerated images."""
    before = _digest(demo_run)
    pattern = rf"^{re.escape(str(demo_run))} holds a demo run of other settings: .*{re.escape(differs)}.*; it is not"
    with pytest.raises(ValueError, match=pattern):
        run_demo(demo_run, replace(TINY, **changes))
    assert _digest(demo_run) == before


def test_the_demo_continues_with_more_epochs(demo_run):
    with pytest.raises(AssertionError, match="the demo trained"):  # it gets as far as training
        run_demo(demo_run, replace(TINY, epochs=5, device="cpu"))
