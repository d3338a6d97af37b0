"""Small CPU training runs for the train tests: the phantom they train on, the run's settings as
config fields and as command-line flags, and its metrics.csv rows."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from walnet.data import phantom
from walnet.engine.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# Same thread count in every process, so the runs compared below do the same arithmetic.
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def phantom_data(tmp_path_factory):
    """A 40-image phantom (48²) for a module's runs: its labels.csv."""
    return phantom.generate(tmp_path_factory.mktemp("ph") / "data", n=40, seed=2, size=48)


#: A run small enough for a CPU test, as config fields (and, below, as command-line flags).
SMALL = dict(backbone="resnet18", attention_channels=8, size=48, batch_size=8, rcm_warmup=1, device="cpu")


def train_args(data, run, *extra):
    flags = [item for k, v in SMALL.items() for item in ("--" + k.replace("_", "-"), str(v))]
    return ["train", "--csv", str(data), "--output", str(run), *flags, *extra]


def run_config(data, run, **values):
    return TrainConfig(csv=data, output=run, **{**SMALL, **values})


def metrics_rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))
