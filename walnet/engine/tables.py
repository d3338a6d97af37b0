"""The tables of ``walnet experiment``: the metrics they hold (the paper's columns, the clinical
ones, per-class columns), mean (std) over runs (:func:`aggregate`), and the files they are written
to: ``<name>.csv`` (:func:`write_csv`), ``<name>_runs.csv`` (:func:`write_runs_csv`) and the
Markdown of ``<name>.md`` (:func:`to_markdown`). A run's scores are its ``metrics.json``
(:func:`read_metrics`); a key with a ``/`` names an entry of a nested dict (:func:`metric_value`).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from walnet.files import atomic_open, first_line

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
#: The metrics.json keys an experiment's main table reads (the per-class ones are dicts, read by class).
TABLE_KEYS = tuple(k for k, _ in PAPER_METRICS + CLINICAL_METRICS)


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


def write_runs_csv(runs: Sequence[Mapping], path: Path, metrics: Sequence[str]) -> None:
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
