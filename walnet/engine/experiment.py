"""``walnet experiment``: train and score every config x seed, then tabulate mean (std) over seeds
in the shape of the paper's Tables 1-3.

Layout under ``output/``: ``runs/<config>/seed<k>/`` (a ``walnet train`` run folder plus the
``metrics.json`` of ``walnet evaluate`` on its test split), ``<table>.csv`` (one row per config),
``<table>_runs.csv`` (one row per run) and ``<table>.md``. The tables hold the paper's columns
(:data:`PAPER_METRICS`), the macro specificity, and each class's sensitivity and specificity
(``sensitivity/<class>``, ``specificity/<class>``: a key with a ``/`` names an entry of a nested
dict of ``metrics.json``). Finished runs are reused, interrupted
ones resumed, so re-running the same command continues an experiment; a finished run of other
settings or other data (its ``args.json``, its ``data.json``) is an error, never averaged with
the others. Each run's folder is
locked (:mod:`walnet.engine.lock`) from the decision to reuse, resume or train it until its
scores are written, so a second experiment into the same folder stops at the first run the
other one holds instead of training it too. With ``train.folds`` K (``--folds K``) each config
and seed trains and scores K runs, ``runs/<config>/seed<k>/fold<i>/``: the tables' mean (std) is
over folds and seeds, and the pooled out-of-fold scores follow (:mod:`walnet.engine.crossval`).
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from walnet.engine.config import EvalConfig, TrainConfig
from walnet.engine.crossval import PREDICTIONS_FILE, fold_dir, pooled_scores
from walnet.files import atomic_open, first_line, write_text

_log = logging.getLogger(__name__)

#: The paper's table columns (Tables 1-3), as (metrics.json key, column header).
PAPER_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("macro_f1", "F1-score"),
    ("kappa", "Kappa"),
    ("macro_precision", "Precision"),
    ("macro_recall", "Recall"),
)
#: Columns added to the paper's in an experiment's main table ("Recall" is the macro sensitivity).
CLINICAL_METRICS: tuple[tuple[str, str], ...] = (("macro_specificity", "Specificity"), ("auc_macro", "Macro AUC"))
#: Per-class dicts of ``metrics.json`` tabulated one column per class (``<key>/<class>``).
PER_CLASS_METRICS: tuple[tuple[str, str], ...] = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"))


@dataclass(frozen=True)
class TablePreset:
    """One of the paper's tables: its caption and (model name, row label) pairs in paper order."""

    title: str
    rows: tuple[tuple[str, str], ...]


#: The paper's Tables 1-3. Table 3's "dilated crop" row is plain ``walnet`` (dilated_crop is its
#: default ROI method), so the three tables share the WAL-Net runs as the paper's rows do.
TABLES: dict[str, TablePreset] = {
    "table1": TablePreset(
        "Table 1: performance comparison of classification methods",
        (("convnextv2", "ConvNext-V2"), ("dpn", "DPN"), ("repvit", "RepVit"), ("sequencer", "Sequencer"),
         ("rexnet", "RexNet"), ("res2net", "Res2Net"), ("resnest", "ResNeSt"), ("walnet", "WAL-Net (Ours)")),
    ),
    "table2": TablePreset(
        "Table 2: ablation study for the RCM and PGM modules",
        (("walnet_no_pgm", "w/o RCM & PGM"), ("walnet_no_rcm", "w/o RCM"), ("walnet", "WAL-Net")),
    ),
    "table3": TablePreset(
        "Table 3: ROI augmentation methods of the RCM",
        (("walnet_rwm", "rwm"), ("walnet_bg_rm", "bg rm"), ("walnet_bg_rm_crop", "bg rm & crop"),
         ("walnet_crop", "crop"), ("walnet", "dilated crop")),
    ),
}

#: The metrics.json keys an experiment's main table reads (the per-class ones are dicts, read by class).
_TABLE_KEYS = tuple(k for k, _ in PAPER_METRICS + CLINICAL_METRICS)

#: Paper seeds: "the averages obtained after five random experiments".
DEFAULT_SEEDS = (0, 1, 2, 3, 4)

#: Train settings that may differ between a reused run and the request without changing its result
#: (the data is compared by its fingerprint, data.json, however its path is spelled).
_IGNORED_SETTINGS = frozenset({"output", "resume", "device", "workers", "csv", "data_dir"})


def metric_value(run: Mapping, key: str) -> float | None:
    """The number `key` names in `run` (a ``metrics.json`` dict): a top-level key, or
    ``<key>/<entry>`` for an entry of a nested dict (``sensitivity/hypoechoic``). None where it
    is missing or undefined (None); a value that is no number (a dict, a list) is a ValueError
    naming the key."""
    value = run.get(key)
    if value is None and "/" in key:
        outer, inner = key.split("/", 1)
        nested = run.get(outer)
        value = nested.get(inner) if isinstance(nested, Mapping) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        entry = next(iter(value), None) if isinstance(value, Mapping) else None
        hint = f"; name one of its entries, e.g. {key}/{entry}" if entry is not None else ""
        raise ValueError(f"metric {key!r} is {type(value).__name__}, not a number{hint}")
    return float(value)


def per_class_metrics(runs: Iterable[Mapping]) -> list[tuple[str, str]]:
    """The (key, column header) pairs of :data:`PER_CLASS_METRICS` for every class the runs'
    ``class_names`` list, in order of first appearance (none for runs without them)."""
    names = {}
    for run in runs:
        if any(isinstance(run.get(k), Mapping) for k, _ in PER_CLASS_METRICS):
            names.update(dict.fromkeys(run.get("class_names") or ()))
    return [(f"{key}/{name}", f"{header} {name}") for key, header in PER_CLASS_METRICS for name in names]


def aggregate(runs: Iterable[Mapping], metrics: Sequence[str] = tuple(k for k, _ in PAPER_METRICS),
              labels: Mapping[str, str] | None = None) -> list[dict]:
    """Mean and sample standard deviation (ddof=1) over seeds, one row per config.

    ``runs``: per-run dicts holding ``"config"`` and the metric keys (e.g. a ``metrics.json``
    plus ``config``/``seed``); a key may name an entry of a nested dict (:func:`metric_value`).
    Rows come in order of first appearance, as ``{"config", "label", "n_seeds", "<metric>_mean",
    "<metric>_std", ...}``. The std of a single
    seed is NaN (undefined; shown as "–"); a metric missing from every run of a config is NaN.
    """
    groups: dict[str, list[Mapping]] = {}
    for run in runs:
        groups.setdefault(run["config"], []).append(run)
    rows = []
    for config, group in groups.items():
        row = {"config": config, "label": (labels or {}).get(config, config), "n_seeds": len(group)}
        for key in metrics:
            found = (metric_value(r, key) for r in group)
            values = np.array([v for v in found if v is not None], dtype=np.float64)
            row[f"{key}_mean"] = float(values.mean()) if values.size else math.nan
            row[f"{key}_std"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
        rows.append(row)
    return rows


def _fmt(value: float, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def to_markdown(rows: Sequence[Mapping], metrics: Sequence[tuple[str, str]] = PAPER_METRICS, title: str | None = None,
                digits: int = 3, over: str = "seed(s)") -> str:
    """A Markdown table like the paper's: a "Method" column of row labels, then one
    "mean (std)" column per metric, as fractions. As in the paper's Table 1, the best mean of a
    column is **bold** and the second best <u>underlined</u> (higher is better for every metric
    of walnet's tables)."""
    seeds = sorted({r["n_seeds"] for r in rows})
    lines = []
    if title:
        caption = f"mean (sample std) over {seeds[0]} {over}" if len(seeds) == 1 else "mean (sample std) over seeds"
        lines += [f"{title}; {caption}.", ""]
    with_n = len(seeds) > 1
    header = ["Method"] + [f"{name} ↑" for _, name in metrics] + (["Seeds"] if with_n else [])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    ranks = {}
    for key, _ in metrics:
        means = sorted({round(r[f"{key}_mean"], digits) for r in rows if not math.isnan(r[f"{key}_mean"])},
                       reverse=True)
        ranks[key] = means[:2] if len(rows) >= 3 else means[:1] if len(rows) == 2 else []
    for r in rows:
        cells = [str(r["label"])]
        for key, _ in metrics:
            mean = r[f"{key}_mean"]
            text = _fmt(mean, digits)
            top = ranks[key]
            if not math.isnan(mean) and top and round(mean, digits) == top[0]:
                text = f"**{text}**"
            elif not math.isnan(mean) and len(top) > 1 and round(mean, digits) == top[1]:
                text = f"<u>{text}</u>"
            cells.append(f"{text} ({_fmt(r[f'{key}_std'], digits)})")
        if with_n:
            cells.append(str(r["n_seeds"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping], path, metrics: Sequence[str] = tuple(k for k, _ in PAPER_METRICS)) -> Path:
    """One line per config: config, label, n_seeds, then ``<metric>_mean``, ``<metric>_std``
    per metric (full precision; an undefined std is an empty cell)."""
    fields = ["config", "label", "n_seeds"] + [f"{k}_{s}" for k in metrics for s in ("mean", "std")]
    path = Path(path)
    with atomic_open(path, text=True) as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return path


def _write_runs_csv(runs: Sequence[Mapping], path: Path, metrics: Sequence[str]) -> None:
    """One line per run: config, seed, fold (with folds), the metrics (nested ones by their ``/``
    keys; a missing one is an empty cell), epoch and images."""
    with atomic_open(path, text=True) as f:
        folds = ["fold"] if any("fold" in run for run in runs) else []
        writer = csv.DictWriter(f, ["config", "seed", *folds, *metrics, "epoch", "images"])
        writer.writeheader()
        for run in runs:
            values = {**{key: metric_value(run, key) for key in metrics}, **{k: run.get(k) for k in folds}}
            writer.writerow({"config": run["config"], "seed": run["seed"], "epoch": run.get("epoch"),
                             "images": run.get("images"), **{k: "" if v is None else v for k, v in values.items()}})


def _differences(requested: TrainConfig, run_dir: Path, data: Callable[[], dict]) -> list[str]:
    """How the finished run in ``run_dir`` differs from the ``requested`` one: its settings
    (``args.json``) but :data:`_IGNORED_SETTINGS`, and its data (``data.json`` against `data`,
    the fingerprint of the experiment's data). A file that cannot tell is a ValueError naming it."""
    from walnet.data.splits import DATA_FILE, data_difference, load_data_record
    from walnet.engine.checks import DISPLAY_SETTINGS, setting_differences

    args = run_dir / "args.json"
    try:
        saved = json.loads(args.read_text(encoding="utf-8"))
        differences = setting_differences(saved, requested, _IGNORED_SETTINGS | DISPLAY_SETTINGS)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{args} cannot be read as the run's settings ({first_line(exc)}); delete {run_dir} to "
                         "train it again") from None
    record = load_data_record(run_dir)
    if record is None:
        return [*differences, f"it records no fingerprint of its data ({DATA_FILE})"]
    differs = data_difference(record, data())
    return differences + ([differs] if differs else [])


def read_metrics(path: Path, keys: Sequence[str] = ()) -> dict:
    """A ``metrics.json`` of ``walnet evaluate``: a JSON object whose `keys` (see
    :func:`metric_value`) and per-class entries hold numbers or null where present, with a list
    of ``class_names``. Anything else is a ValueError naming the file."""
    redo = "delete it to score the run again"
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON ({first_line(exc)}); {redo}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} holds a JSON {type(metrics).__name__}, not the object of walnet evaluate; {redo}")
    names = metrics.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: 'class_names' is not a list of class names; {redo}")
    nested = [f"{key}/{name}" for key, _ in PER_CLASS_METRICS if isinstance(metrics.get(key), Mapping)
              for name in metrics[key]]
    for key in (*keys, *nested):
        try:
            metric_value(metrics, key)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}; {redo}") from None
    return metrics


def _run_one(run: TrainConfig, tag: str, scoring, train_run, evaluate_run, data: Callable[[], dict],
             keep: Sequence[str] = ()) -> dict:
    """The test scores of one run: a finished run's metrics.json (if it is a run of `run`'s
    settings and data: an error naming the differences otherwise), else the scores of the run
    trained (or resumed) now. A run is finished once it holds metrics.json and the files `keep`
    names."""
    run_dir = Path(run.output)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file() and all((run_dir / name).is_file() for name in keep):
        diff = _differences(run, run_dir, data)
        if diff:
            raise ValueError(f"{tag} the finished run {run_dir} is not a run of this experiment: {'; '.join(diff)}; "
                             "delete it to train it again, or use another --output")
        _log.info(f"{tag} reusing finished run {run_dir} (metrics.json exists)")
        return read_metrics(metrics_file, _TABLE_KEYS)
    if (run_dir / "last.pt").is_file():
        _log.info(f"{tag} resuming interrupted run {run_dir} from last.pt")
        run = replace(run, resume=run_dir / "last.pt")
    else:
        _log.info(f"{tag} training into {run_dir}")
    train_run(run)
    # best.pt is written just after last.pt; fall back if interrupted in between
    ckpt = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
    return evaluate_run(scoring(ckpt))


def check_seeds(seeds: Sequence[int]) -> None:
    """Every seed is an integer a run takes (0 <= seed < 2**32), checked before the first run."""
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**32]
    if bad:
        raise ValueError(f"--seeds: {bad[0]!r} is not a seed; seeds are integers from 0 to {2**32 - 1}")


def _check_experiment(pairs, seeds: Sequence[int], output, train: TrainConfig, evaluate: EvalConfig | None) -> None:
    """The settings every run of an experiment shares, checked once before the first run starts:
    models, seeds, the output folder, the train template (as its first run), the pretrained file
    for every model and the scoring device."""
    from walnet.engine.checks import (check_output, check_pretrained_file, check_train_config, pick_device,
                                      train_reads)
    from walnet.models import model_names

    unknown = [m for m, _ in pairs if m not in model_names()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {model_names()}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # every rank would train, score and write the same runs at once
        raise ValueError("walnet experiment runs as one process, not under torchrun; "
                         "use torchrun for single `walnet train` runs")
    if not pairs or not seeds:
        raise ValueError("an experiment needs at least one config and one seed")
    check_seeds(seeds)
    if len(set(seeds)) != len(seeds) or len({m for m, _ in pairs}) != len(pairs):
        raise ValueError(f"configs and seeds must not repeat: {[m for m, _ in pairs]}, {list(seeds)}")
    check_output(output, reads=train_reads(train), command="experiment")
    check_train_config(replace(train, output=Path(output) / "runs" / pairs[0][0] / f"seed{seeds[0]}",
                               model=pairs[0][0], resume=None))
    if train.pretrained_file is not None:  # one file for every run: each run's backbone must fit it
        for model, _ in pairs[1:]:
            check_pretrained_file(train.pretrained_file, replace(train, model=model).model_spec().architecture)
    if evaluate is not None:
        pick_device(evaluate.device)


def run_experiment(configs: Sequence[str] | Sequence[tuple[str, str]], output, *, train: TrainConfig,
                   evaluate: EvalConfig | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
                   name: str = "experiment", title: str | None = None,
                   ) -> list[dict]:
    """Trains every config for every seed, scores its ``best.pt`` on the test split, and writes
    ``output/<name>.csv``, ``output/<name>_runs.csv`` and ``output/<name>.md``; returns the
    aggregated rows (see :func:`aggregate`) and logs the Markdown table.

    ``configs``: model names (see ``walnet.models.model_names()``) or (model name, row label)
    pairs. ``train``: the template of every run: its data is the experiment's, its other
    settings (epochs, batch size, ...) every run's; each run replaces its ``output``, ``model``,
    ``seed`` and ``resume``. ``evaluate``: the template of every scoring (batch size, figures,
    ...); each replaces its ``checkpoint``, data, ``split`` (test) and ``output`` (the run
    folder). Without it, the scorings take :class:`EvalConfig`'s defaults and ``train``'s device,
    workers and ``skip_bad``. Each run lives in ``output/runs/<model>/seed<k>/``: a run with a
    ``metrics.json`` is reused as it is, one with a ``last.pt`` only is resumed. With
    ``train.folds`` K (its ``fold`` is set per run), every seed runs folds 0 to K-1 in
    ``.../seed<k>/fold<i>/``, each saving its test predictions (``predictions.csv``; a fold run
    without them is scored again); the pooled out-of-fold scores go to ``output/<name>_pooled.csv``
    and a last table of ``<name>.md``.
    """
    from walnet.data import load_records
    from walnet.data.splits import data_record
    from walnet.engine.lock import run_lock
    from walnet.engine.evaluation import evaluate_run
    from walnet.engine.trainer import train as train_run

    pairs = [(c, c) if isinstance(c, str) else (c[0], c[1]) for c in configs]
    _check_experiment(pairs, seeds, output, train, evaluate)
    data = dict(csv=train.csv, data_dir=train.data_dir)
    fingerprint = functools.cache(lambda: data_record(*load_records(train.data_dir, train.csv, train.classes)))

    def scoring(checkpoint: Path) -> EvalConfig:
        # a fold run saves its test predictions beside its checkpoint, for the pooled scores
        saved = Path(checkpoint).parent / PREDICTIONS_FILE if train.folds is not None else None
        if evaluate is None:
            return EvalConfig(checkpoint=checkpoint, **data, device=train.device, workers=train.workers,
                              skip_bad=train.skip_bad, save_predictions=saved)
        return replace(evaluate, checkpoint=checkpoint, **data, split="test", output=None, save_predictions=saved)

    output = Path(output)
    folds = range(train.folds) if train.folds is not None else (None,)
    keep = (PREDICTIONS_FILE,) if train.folds is not None else ()
    results = []
    for model, _ in pairs:
        for seed, fold in ((seed, fold) for seed in seeds for fold in folds):
            run_dir = fold_dir(output / "runs" / model / f"seed{seed}", fold)
            tag = f"[{model} seed {seed}{'' if fold is None else f' fold {fold}'}]"
            run = replace(train, output=run_dir, model=model, seed=seed, resume=None, fold=fold)
            with run_lock(run_dir, "walnet experiment"):
                result = _run_one(run, tag, scoring, train_run, evaluate_run, fingerprint, keep)
            scores = ((name, metric_value(result, key)) for key, name in PAPER_METRICS)
            _log.info(f"{tag} test: " + ", ".join(f"{name} {value:.3f}" for name, value in scores if value is not None))
            where = {} if fold is None else {"fold": fold, "predictions": run_dir / PREDICTIONS_FILE}
            results.append({**result, "config": model, "seed": seed, **where})
    main, per_class = PAPER_METRICS + CLINICAL_METRICS, per_class_metrics(results)
    metric_keys = [k for k, _ in main + tuple(per_class)]
    rows = aggregate(results, metric_keys, labels=dict(pairs))
    output.mkdir(parents=True, exist_ok=True)
    write_csv(rows, output / f"{name}.csv", metric_keys)
    _write_runs_csv(results, output / f"{name}_runs.csv", metric_keys)
    over = "seed(s)" if train.folds is None else f"runs ({train.folds} folds x {len(seeds)} seed(s))"
    markdown = to_markdown(rows, main, title=title or name, over=over)
    if per_class:
        markdown += "\n" + to_markdown(rows, per_class, title="Per-class sensitivity and specificity (one class "
                                                               "against the rest)", over=over)
    if train.folds is not None:
        pooled = aggregate(pooled_scores(results), metric_keys, labels=dict(pairs))
        write_csv(pooled, output / f"{name}_pooled.csv", metric_keys)
        markdown += "\n" + to_markdown(pooled, main, title=f"Pooled out-of-fold scores (the {train.folds} folds' "
                                                            "test predictions of each seed scored together)")
    write_text(output / f"{name}.md", markdown)
    _log.info(markdown)
    return rows
