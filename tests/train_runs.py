"""Small CPU training runs for the train tests: the phantom they train on, the run's settings as
config fields and as command-line flags, its metrics.csv rows and its split."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from walnet.data import load_split, phantom, split_indices
from walnet.engine.config import TrainConfig
from walnet.engine.run_files import TIMING_FIELDS

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


def metrics_rows(run, timings: bool = True):
    """The rows of the run's metrics.csv; without `timings`, without the columns that time the
    epochs (the only ones in which a resumed run may differ from an uninterrupted one)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not timings:
        rows = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]
    return rows


def split_column(run):
    """The run's split.csv as {image key: split}."""
    return load_split(Path(run) / "split.csv")


def split_of(records, seed):
    """The 6:2:2 split a new run with `seed` draws for `records`, as {image key: split}."""
    splits = split_indices([r.label for r in records], [r.patient for r in records], seed=seed)
    return {r.key: s for r, s in zip(records, splits)}


def rewritten_csv(data, path, change):
    """The phantom's labels.csv at `path`, with absolute paths and ``change(i, row)`` applied to
    each row."""
    with open(data, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["path"] = str(Path(data).parent / r["path"])
        r["mask_path"] = str(Path(data).parent / r["mask_path"])
        change(i, r)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def older_metrics_csv(path, fields):
    """A metrics.csv of an older walnet with only `fields`, epochs 0-2 (every score 0.5), reopened as the
    RunLog of a run resumed at epoch 2."""
    from walnet.engine import run_files

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows([{k: (e if k == "epoch" else 0.5) for k in fields} for e in range(3)])
    log = run_files.RunLog(path)
    log.resume_at(2)
    return log

