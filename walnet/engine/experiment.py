"""``walnet experiment``: train and score every config x seed, then tabulate mean (std) over seeds
in the shape of the paper's Tables 1-3.

Layout under ``output/``: ``runs/<config>/seed<k>/`` (a ``walnet train`` run folder plus the
``metrics.json`` of ``walnet evaluate`` on its test split), ``<table>.csv`` (one row per config),
``<table>_runs.csv`` (one row per run) and ``<table>.md`` (:mod:`walnet.engine.tables`).

Which runs an experiment has is apart from where they run: :func:`plan_experiment` lists them
(:class:`RunSpec`: its folder, its train and scoring configs), :func:`execute_run` runs one
wherever it is called, and :func:`write_tables` reads every run's ``metrics.json`` and writes the
tables. :func:`run_experiment` runs them one after another here, or hands them to a launcher of
:mod:`walnet.engine.launch` (a process per local GPU, a SLURM job array). Finished runs are
reused, interrupted ones resumed, so re-running the same command continues an experiment; a
finished run of other settings or other data (its ``args.json``, its ``data.json``) is an error,
never averaged with the others. Each run's folder is locked (:mod:`walnet.engine.lock`) from the
decision to reuse, resume or train it until its scores are written, so two processes never
train the same run. With ``train.folds`` K (``--folds K``) each config and seed trains and scores
K runs, ``runs/<config>/seed<k>/fold<i>/``: the tables' mean (std) is over folds and seeds, and
the pooled out-of-fold scores follow (:mod:`walnet.engine.crossval`).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from walnet.engine.config import EvalConfig, TrainConfig
from walnet.engine.crossval import PREDICTIONS_FILE, fold_dir, pooled_scores
from walnet.engine.tables import (CLINICAL_METRICS, PAPER_METRICS, PER_CLASS_METRICS, TABLE_KEYS,  # noqa: F401
                                  aggregate, metric_value, per_class_metrics, read_metrics, to_markdown, write_csv,
                                  write_runs_csv)
from walnet.files import first_line, write_text

_log = logging.getLogger(__name__)

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

#: Paper seeds: "the averages obtained after five random experiments".
DEFAULT_SEEDS = (0, 1, 2, 3, 4)

#: Train settings that may differ between a reused run and the request without changing its result
#: (the data is compared by its fingerprint, data.json, however its path is spelled).
_IGNORED_SETTINGS = frozenset({"output", "resume", "device", "workers", "csv", "data_dir"})


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


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment, wherever it runs: its row (``config``: the model name), ``seed``
    and ``fold`` (None without folds), ``train`` (its folder as ``output``, model, seed, fold)
    and ``scoring`` (the test split of its ``best.pt``; with folds, its ``predictions.csv``)."""

    config: str
    seed: int
    fold: int | None
    train: TrainConfig
    scoring: EvalConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.train.output)

    @property
    def tag(self) -> str:
        """``[<config> seed <k>]`` (``... fold <i>]`` with folds): how logs and errors name the run."""
        return f"[{self.config} seed {self.seed}{'' if self.fold is None else f' fold {self.fold}'}]"

    @property
    def keep(self) -> tuple[str, ...]:
        """The files a finished run holds besides ``metrics.json``."""
        return () if self.fold is None else (PREDICTIONS_FILE,)

    def on(self, device: str, workers: int | None = None) -> RunSpec:
        """This run trained and scored on `device` (with `workers` loader processes where its
        settings leave them to the default)."""
        train, scoring = self.train, self.scoring
        if workers is not None:
            train = train if train.workers is not None else replace(train, workers=workers)
            scoring = scoring if scoring.workers is not None else replace(scoring, workers=workers)
        return replace(self, train=replace(train, device=device), scoring=replace(scoring, device=device))


def fingerprint(train: TrainConfig) -> Callable[[], dict]:
    """The fingerprint of `train`'s data (``data.json``), computed on the first call."""
    from walnet.data import load_records
    from walnet.data.splits import data_record

    return functools.cache(lambda: data_record(*load_records(train.data_dir, train.csv, train.classes)))


def finished_scores(spec: RunSpec, data: Callable[[], dict]) -> dict | None:
    """The test scores (``metrics.json``) of `spec`'s run if it is finished (it holds them and
    the files :attr:`RunSpec.keep` names), else None. A finished run of other settings or other
    data (`data`: the experiment's fingerprint) is a ValueError naming the differences."""
    run_dir = spec.run_dir
    if not ((run_dir / "metrics.json").is_file() and all((run_dir / name).is_file() for name in spec.keep)):
        return None
    diff = _differences(spec.train, run_dir, data)
    if diff:
        raise ValueError(f"{spec.tag} the finished run {run_dir} is not a run of this experiment: {'; '.join(diff)}; "
                         "delete it to train it again, or use another --output")
    return read_metrics(run_dir / "metrics.json", TABLE_KEYS)


def execute_run(spec: RunSpec, data: Callable[[], dict] | None = None) -> dict:
    """Runs `spec` here, holding its folder's lock throughout: a finished run's scores are reused
    (:func:`finished_scores`), an interrupted one (a ``last.pt``) is resumed, any other trained;
    then its ``best.pt`` is scored (its ``metrics.json`` written). Returns the scores. `data`:
    the fingerprint of the experiment's data, shared by the runs of one process."""
    from walnet.engine.evaluation import evaluate_run
    from walnet.engine.lock import run_lock
    from walnet.engine.trainer import train as train_run

    run, run_dir, tag = spec.train, spec.run_dir, spec.tag
    with run_lock(run_dir, "walnet experiment"):
        scores = finished_scores(spec, data or fingerprint(run))
        if scores is not None:
            _log.info(f"{tag} reusing finished run {run_dir} (metrics.json exists)")
            return scores
        if (run_dir / "last.pt").is_file():
            _log.info(f"{tag} resuming interrupted run {run_dir} from last.pt")
            run = replace(run, resume=run_dir / "last.pt")
        else:
            _log.info(f"{tag} training into {run_dir}")
        train_run(run)
        # best.pt is written just after last.pt; fall back if interrupted in between
        ckpt = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "last.pt"
        scores = evaluate_run(replace(spec.scoring, checkpoint=ckpt))
    found = ((name, metric_value(scores, key)) for key, name in PAPER_METRICS)
    _log.info(f"{tag} test: " + ", ".join(f"{name} {value:.3f}" for name, value in found if value is not None))
    return scores


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



@dataclass(frozen=True)
class Experiment:
    """An experiment's plan: its folder, its runs (config-major, then seed, then fold), the row
    labels, the tables' file name and title, the number of seeds and folds, and the fingerprint
    of its data."""

    output: Path
    runs: tuple[RunSpec, ...]
    labels: dict[str, str]
    name: str
    title: str | None
    seeds: int
    folds: int | None
    data: Callable[[], dict] = field(repr=False, compare=False)


def plan_experiment(configs: Sequence[str] | Sequence[tuple[str, str]], output, *, train: TrainConfig,
                    evaluate: EvalConfig | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
                    name: str = "experiment", title: str | None = None) -> Experiment:
    """Checks the experiment's shared settings (before any run) and lists its runs; the
    arguments are :func:`run_experiment`'s."""
    pairs = [(c, c) if isinstance(c, str) else (c[0], c[1]) for c in configs]
    _check_experiment(pairs, seeds, output, train, evaluate)
    data = dict(csv=train.csv, data_dir=train.data_dir)
    if evaluate is None:  # the defaults, with train's device, workers and skip_bad
        evaluate = EvalConfig(checkpoint="best.pt", **data, device=train.device, workers=train.workers,
                              skip_bad=train.skip_bad)
    output = Path(output)
    folds = range(train.folds) if train.folds is not None else (None,)
    runs = []
    for model, _ in pairs:
        for seed, fold in ((seed, fold) for seed in seeds for fold in folds):
            run_dir = fold_dir(output / "runs" / model / f"seed{seed}", fold)
            # a fold run saves its test predictions beside its checkpoint, for the pooled scores
            saved = None if fold is None else run_dir / PREDICTIONS_FILE
            scoring = replace(evaluate, checkpoint=run_dir / "best.pt", **data, split="test", output=None,
                              save_predictions=saved)
            run = replace(train, output=run_dir, model=model, seed=seed, resume=None, fold=fold)
            runs.append(RunSpec(model, seed, fold, run, scoring))
    return Experiment(output, tuple(runs), dict(pairs), name, title, len(seeds), train.folds, fingerprint(train))


def write_tables(experiment: Experiment, partial: bool = False) -> list[dict]:
    """Reads every run's scores (``metrics.json``; with folds, ``predictions.csv`` too) and writes
    ``<name>.csv``, ``<name>_runs.csv`` and ``<name>.md`` (with folds, ``<name>_pooled.csv``);
    returns the aggregated rows (see :func:`aggregate`) and logs the Markdown. A run not finished
    is a ValueError naming it. `partial`: the runs were not run (checked) by this call: each
    finished one is checked to be a run of this experiment (:func:`finished_scores`), and those
    not finished are named in a warning: the tables hold the finished runs (the pooled scores
    those seeds whose folds all finished)."""
    results, missing = [], []
    for spec in experiment.runs:
        if partial:
            scores = finished_scores(spec, experiment.data)
        else:  # each was checked by execute_run, which wrote or reused its scores
            scores = read_metrics(spec.run_dir / "metrics.json", TABLE_KEYS)
        if scores is None:
            missing.append(spec)
            continue
        where = {} if spec.fold is None else {"fold": spec.fold, "predictions": spec.run_dir / PREDICTIONS_FILE}
        results.append({**scores, "config": spec.config, "seed": spec.seed, **where})
    if missing:
        named = ", ".join(f"{s.tag} ({s.run_dir})" for s in missing[:10]) + (", ..." if len(missing) > 10 else "")
        text = f"{len(missing)} of {len(experiment.runs)} runs are not finished: {named}"
        if not partial or not results:
            raise ValueError(f"{text}; run the experiment to train them")
        _log.warning(f"{text}; the tables hold the {len(results)} finished runs")
    output, name, folds = experiment.output, experiment.name, experiment.folds
    main, per_class = PAPER_METRICS + CLINICAL_METRICS, per_class_metrics(results)
    metric_keys = [k for k, _ in main + tuple(per_class)]
    rows = aggregate(results, metric_keys, labels=experiment.labels)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(rows, output / f"{name}.csv", metric_keys)
    write_runs_csv(results, output / f"{name}_runs.csv", metric_keys)
    over = "seed(s)" if folds is None else f"runs ({folds} folds x {experiment.seeds} seed(s))"
    markdown = to_markdown(rows, main, title=experiment.title or name, over=over)
    if per_class:
        markdown += "\n" + to_markdown(rows, per_class, title="Per-class sensitivity and specificity (one class "
                                                               "against the rest)", over=over)
    if folds is not None:
        counts = {}
        for r in results:
            counts[r["config"], r["seed"]] = counts.get((r["config"], r["seed"]), 0) + 1
        complete = [r for r in results if counts[r["config"], r["seed"]] == folds]
        pooled = aggregate(pooled_scores(complete), metric_keys, labels=experiment.labels)
        write_csv(pooled, output / f"{name}_pooled.csv", metric_keys)
        markdown += "\n" + to_markdown(pooled, main, title=f"Pooled out-of-fold scores (the {folds} folds' "
                                                            "test predictions of each seed scored together)")
    write_text(output / f"{name}.md", markdown)
    _log.info(markdown)
    return rows


def run_sequential(runs: Sequence[RunSpec], data: Callable[[], dict] | None = None) -> bool:
    """Runs `runs` one after another in this process (:func:`execute_run`); True (all done)."""
    for spec in runs:
        execute_run(spec, data)
    return True


def run_experiment(configs: Sequence[str] | Sequence[tuple[str, str]], output, *, train: TrainConfig,
                   evaluate: EvalConfig | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
                   name: str = "experiment", title: str | None = None,
                   launch: Callable[[Sequence[RunSpec]], bool] | None = None, aggregate_only: bool = False,
                   ) -> list[dict] | None:
    """Trains every config for every seed, scores its ``best.pt`` on the test split, and writes
    the tables (:func:`write_tables`); returns the aggregated rows (see :func:`aggregate`).

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

    ``launch``: what runs the runs (:mod:`walnet.engine.launch`; default: one after another
    here); it returns False when it only submitted them (then no tables are written and None is
    returned). ``aggregate_only``: run nothing; the tables of the finished runs, naming the others.
    """
    experiment = plan_experiment(configs, output, train=train, evaluate=evaluate, seeds=seeds, name=name,
                                 title=title)
    if not aggregate_only:
        done = launch(experiment.runs) if launch is not None else run_sequential(experiment.runs, experiment.data)
        if not done:
            return None
    return write_tables(experiment, partial=aggregate_only)
