"""Cross-validation in ``walnet experiment --folds K``: the pooled out-of-fold scores.

Every config and seed trains K runs, ``runs/<model>/seed<k>/fold<i>/``, each testing on fold i
(:func:`walnet.data.splits.fold_splits`) and saving its test predictions (``predictions.csv``,
:mod:`walnet.engine.predictions`). The K test folds of one seed partition the data, so their
predictions concatenated score every image once, by a model that never saw it in training: the
pooled out-of-fold metrics (:func:`~walnet.engine.metrics.classification_metrics` with
:func:`~walnet.engine.metrics.bootstrap_ci` intervals), one set per (config, seed), then mean
(std) over seeds in ``<name>_pooled.csv`` and a second table of ``<name>.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from walnet.engine.metrics import bootstrap_ci, classification_metrics
from walnet.engine.predictions import read_predictions

#: The file each fold run's test predictions are saved to (``walnet evaluate --save-predictions``).
PREDICTIONS_FILE = "predictions.csv"


def fold_dir(run_dir: Path, fold: int | None) -> Path:
    """The folder of fold `fold` of the run folder `run_dir` (`run_dir` itself without folds)."""
    return Path(run_dir) if fold is None else Path(run_dir) / f"fold{fold}"


def pooled_scores(runs: Sequence[Mapping]) -> list[dict]:
    """The pooled out-of-fold scores of each (config, seed) of `runs` (an experiment's per-run
    results: ``config``, ``seed``, ``fold``, ``class_names`` and ``predictions``, the file of the
    fold's test predictions), in order of first appearance: the scores of
    :func:`classification_metrics` and :func:`bootstrap_ci` over the folds' predictions
    concatenated, with ``config``, ``seed``, ``folds`` and ``images``. An image in two folds'
    files (folds that overlap: runs of other splits) is a ValueError naming both files."""
    groups: dict[tuple, list[Mapping]] = {}
    for run in runs:
        groups.setdefault((run["config"], run["seed"]), []).append(run)
    out = []
    for (config, seed), group in groups.items():
        classes = list(group[0]["class_names"])
        seen: dict[str, Path] = {}
        targets, probs = [], []
        for run in group:
            path = Path(run["predictions"])
            keys, labels, scores = read_predictions(path, classes)
            for key in keys:
                if key in seen:
                    raise ValueError(f"{seen[key]} and {path} both hold the test prediction of {key}: the folds of "
                                     f"[{config} seed {seed}] overlap; delete their runs to train them again")
                seen[key] = path
            targets.append(labels)
            probs.append(scores)
        target, prob = np.concatenate(targets), np.concatenate(probs)
        result = {**classification_metrics(target, prob, classes), **bootstrap_ci(target, prob)}
        out.append({**result, "config": config, "seed": seed, "folds": len(group), "images": len(target)})
    return out
