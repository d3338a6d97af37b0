"""The sizes of a run's ``best.pt`` and ``last.pt`` for a model of ``walnet train`` (default: the
paper's WAL-Net, resnest50d, 3 classes, 2048 attention channels, 224²), after one Adam step so that
the optimizer's state exists as in a real run. No data, no download; prints bytes and MB.

    python benchmarks/checkpoint_sizes.py [--model walnet] [--backbone resnest50d] [--size 224]

``best.pt`` holds what evaluation and inference need (weights, train config, classes, epoch);
``last.pt`` adds the training state of a resume (optimizer, schedule, scaler): what
:class:`walnet.engine.run_files.RunCheckpoints` writes.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import torch

from walnet.constants import PLAQUE_CLASSES
from walnet.engine.config import TrainConfig
from walnet.engine.schedule import Schedule
from walnet.engine.step import forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="walnet")
    parser.add_argument("--backbone", default="resnest50d")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    config = TrainConfig(csv="unused.csv", output="unused", model=args.model, backbone=args.backbone, size=args.size)
    spec = config.model_spec(PLAQUE_CLASSES)
    model = spec.build()
    schedule = Schedule(config, model.parameters(), torch.device("cpu"))
    out = forward(model, torch.rand(2, 3, args.size, args.size), None)  # a baseline's logits too
    loss = out.logits.sum() if out.seg_logits is None else out.logits.sum() + out.seg_logits.float().mean()
    loss.backward()
    schedule.optimizer.step()  # Adam's moments exist from here on, as in last.pt of a real run
    best = {"model": model.state_dict(), "args": config.to_dict(), "classes": list(spec.classes), "epoch": 0}
    last = dict(best, optimizer=schedule.optimizer.state_dict(), scheduler=schedule.state_dict(), scaler={})
    with tempfile.TemporaryDirectory() as folder:
        for name, state in (("best.pt", best), ("last.pt", last)):
            path = os.path.join(folder, name)
            torch.save(state, path)
            size = os.path.getsize(path)
            print(f"{name}: {size} bytes ({size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
