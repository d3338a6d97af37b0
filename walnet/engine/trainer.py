"""The run behind ``walnet train``: data, split, model, epochs, logs, checkpoints.

Outputs in ``output/``: ``args.json`` (the :class:`TrainConfig`, ``to_dict()``), ``split.csv``
and ``data.json`` (the run's split and its data's fingerprint, written with its first
checkpoint), ``metrics.csv`` (one row per epoch: losses, validation loss and scores, seconds and
learning rate), ``curves.png`` (its curves, :mod:`walnet.engine.curves`), ``last.pt`` and
``best.pt`` (written atomically; :mod:`walnet.engine.run_files`), and with ``--tensorboard``
the rows as TensorBoard scalars (:mod:`walnet.engine.tensorboard_log`). ``best.pt`` holds what
evaluation and inference need: the model's weights (its input normalisation included), the
config under ``"args"``, the class map, its epoch and the validation metric that chose it with
its value (``best_metric``, ``best_value``): 235 MB for the default WAL-Net (resnest50d, 3
classes). ``last.pt`` holds the same and the training state of a resume (optimizer, scaler,
learning-rate schedule, ``best_epoch``, ``stopped_early``): 703 MB. The optimizer and its
schedule (``--weight-decay``, ``--sched``, ...): :mod:`walnet.engine.schedule`; ``--patience``
stops a run after that many epochs in which best.pt did not change. A folder holds a run once it
holds ``last.pt``: such a run is only continued, in its own folder, with ``resume`` from its
``last.pt`` (never overwritten), with its settings, data and split
(:func:`~walnet.engine.checks.check_resume`); a folder without ``last.pt`` holds none, and a
run there splits its data anew (:func:`~walnet.data.splits.run_split`). The folder is locked
while a run writes it (:mod:`walnet.engine.lock`). ``walnet evaluate`` scores a run's
checkpoint: :mod:`walnet.engine.evaluation`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from walnet import ops
from walnet.data import PlaqueDataset, load_records
from walnet.data.splits import data_difference, data_record, load_data_record, run_split
from walnet.engine import distributed, lock
from walnet.engine.balance import loss_weights, train_sampler
from walnet.engine.checkpoint import load_training_state
from walnet.engine.checks import check_resume, check_stages, check_train_config
from walnet.engine.config import TrainConfig
from walnet.engine.curves import redraw
from walnet.engine.loops import evaluate, train_one_epoch
from walnet.engine.progress import bar
from walnet.engine.run_files import EVAL_METRIC_KEYS, RunCheckpoints, RunLog
from walnet.engine.runtime import Runtime, backend_flags, runtime_of
from walnet.engine.schedule import Schedule
from walnet.engine.step import TrainStep
from walnet.engine.tensorboard_log import TensorBoardLog
from walnet.files import write_text
from walnet.models import ModelSpec, PseudoMaskGenerator

_log = logging.getLogger(__name__)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: its data order and random draws are then the same whether or not
    the run was resumed just before it."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _create_model(config: TrainConfig, spec: ModelSpec) -> torch.nn.Module:
    """The model a run starts from: `spec`, with pretrained backbone weights where `config` asks
    for them (downloaded, or read from ``--pretrained-file``). Only a run's start builds it so;
    :func:`~walnet.engine.loading.load_model` rebuilds a trained model without them (its
    checkpoint holds every weight, and the file may be gone)."""
    try:
        model = spec.build(pretrained=config.pretrained, pretrained_file=config.pretrained_file)
    except ValueError as exc:
        if config.pretrained_file is None or "pretrained_file" not in str(exc):
            raise
        raise ValueError(str(exc).replace("pretrained_file", "--pretrained-file", 1)) from None
    except RuntimeError as exc:  # timm: e.g. a model without features_only support
        raise ValueError(f"cannot build --model {config.model} with --backbone {config.backbone}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    check_stages(model, config.backbone)
    return model


def train(config: TrainConfig) -> dict:
    """Runs the epochs of ``config`` (``walnet train``); returns the last epoch's metrics row
    (empty on ranks other than 0).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this is one process of a DDP run: each process
    trains on its share of every epoch (DistributedSampler), rank 0 validates, logs and writes
    the files (and holds the folder's lock). Every epoch is seeded from (seed, epoch), so a run
    resumed from ``last.pt`` ends exactly as an uninterrupted one (same machine, same thread
    count).
    """
    device = check_train_config(config)
    with distributed.session(device) as ctx:
        with lock.run_lock(config.output, "walnet train") if ctx.is_main else contextlib.nullcontext():
            return _train(config, ctx)


def _finished(config: TrainConfig, resumed: dict) -> bool:
    """Whether the run that `config` resumes (its checkpoint `resumed`) has nothing left to train:
    it has trained ``--epochs`` epochs, or it stopped early (``--patience``); logged."""
    trained, output = int(resumed["epoch"]) + 1, Path(config.output)
    if resumed.get("stopped_early"):
        _log.info(f"{config.resume} stopped early after epoch {trained - 1} (--patience {config.patience}; best.pt "
                  f"holds epoch {resumed.get('best_epoch')}): nothing to train; {output} is left as it is")
        return True
    if trained >= config.epochs:
        _log.info(f"{config.resume} has trained {trained} epoch(s), --epochs {config.epochs}: "
                  f"nothing to train; {output} is left as it is (a larger --epochs continues it)")
        return True
    return False


def _split_problem(records, output: Path, started: bool, folds: int | None = None) -> str:
    """Where a split that left a training or validation set empty came from, and what to do."""
    if started:
        return f"they come from {output / 'split.csv'}, the split of the run resumed"
    if all(r.split for r in records):
        return "the split column of the CSV sets them; give every split images"
    groups = len({r.patient or f"#{i}" for i, r in enumerate(records)})
    how = f"into {folds} folds" if folds else "6:2:2"
    return (f"{len(records)} image(s) in {groups} patient group(s) split {how} by patient; "
            "more images or patients are needed")


def _loader(dataset, config: TrainConfig, runtime: Runtime, pin: bool, **kw):
    return torch.utils.data.DataLoader(dataset, config.batch_size, num_workers=runtime.workers, pin_memory=pin,
                                       persistent_workers=runtime.workers > 0, **kw)


def _train_loader(train_set, sampler, config: TrainConfig, runtime: Runtime, pin: bool):
    # A last training batch of one sample gives BatchNorm one value per channel wherever a
    # feature map is 1x1 (every stage at --size <= 32), which is an error in training mode.
    # Dropping it skips one (reshuffled) sample per epoch; other batch counts are unchanged.
    # A CUDA graph replays one batch shape, and a compiled step would compile again for another,
    # so graphed and compiled runs drop every partial last batch (the sampler reshuffles, so
    # each epoch leaves out other samples).
    drop_last = len(sampler) > config.batch_size and (
        runtime.cuda_graphs or runtime.compile or len(sampler) % config.batch_size == 1)
    return _loader(train_set, config, runtime, pin, sampler=sampler, drop_last=drop_last)


def _train(config: TrainConfig, ctx: distributed.DistContext) -> dict:
    output, device = Path(config.output), ctx.device
    # a resume names a checkpoint of this folder (check_train_config): its run has started
    started = config.resume is not None or (output / "last.pt").exists()
    if started and not config.resume:
        raise FileExistsError(f"{output} already holds a training run; pass --resume {output / 'last.pt'} "
                              "to continue it, or choose another --output")
    resumed = check_resume(config) if config.resume else None
    if resumed is not None and _finished(config, resumed):
        return {}
    sync_bn = config.sync_bn
    if sync_bn and device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only)")
    _seed_everything(config.seed)
    records, classes = load_records(config.data_dir, config.csv, config.classes)
    data = f"--csv {config.csv}" if config.csv is not None else f"--data-dir {config.data_dir}"
    if not records:
        raise ValueError(f"{data} lists no images")
    if len(classes) < 2:
        raise ValueError(f"{data} holds the class(es) {list(classes)} only; a classifier needs two or more "
                         "(--classes names them)")
    saved = load_data_record(output) if started else None
    differs = data_difference(saved, data_record(records, classes)) if saved is not None else None
    if differs:
        raise ValueError(f"{data}: {differs}; resume with the run's data, or train a new run into another --output")
    splits = run_split(records, output, config.seed, started=started, folds=config.folds, fold=config.fold,
                       hint="resume with the run's data, or train a new run into another --output")
    train_set, val_set = _datasets(config, records, splits)
    if (train_set.skipped or val_set.skipped) and ctx.is_main:
        _log.warning(f"skipped {train_set.skipped + val_set.skipped} unreadable image(s) (--skip-bad)")
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"the split left {len(train_set)} training and {len(val_set)} validation images: "
                         f"{_split_problem(records, output, started, config.folds)}")
    class_weights = loss_weights(config.class_weights, train_set, classes, device, log=ctx.is_main)
    sampler = train_sampler(train_set, config.balanced_sampler, config.seed, ctx.world_size, ctx.rank)
    if config.augment:
        from walnet.data.augment import EpochSampler

        # The augmentation is seeded per (seed, epoch, index); the epoch travels with each index
        # as an (index, epoch) key from this process, so loader workers (persistent ones, whose
        # dataset copy never sees a later set_epoch, included) augment every epoch anew.
        sampler = EpochSampler(sampler)
    pin = device.type == "cuda"
    runtime = runtime_of(config, device, ctx.world_size)
    train_loader = _train_loader(train_set, sampler, config, runtime, pin)
    val_loader = _loader(val_set, config, runtime, pin)
    spec = config.model_spec(classes)
    model = _create_model(config, spec)
    record = None if started else (records, splits, classes)
    with backend_flags(runtime):
        return _run_epochs(config, ctx, runtime, model, spec, (train_loader, sampler, val_loader), resumed, record,
                           class_weights)


def _datasets(config: TrainConfig, records, splits) -> tuple[PlaqueDataset, PlaqueDataset]:
    """The training set (augmented with ``--augment``) and the validation set (read as it is,
    as evaluate and predict read images) of `records` split by `splits`."""
    augment = None
    if config.augment:
        from walnet.data.augment import Augmentation  # torchvision only for runs that augment

        augment = Augmentation(config.seed)
    region = config.dicom_region
    train_set = PlaqueDataset([r for r, s in zip(records, splits) if s == "train"], config.size, config.skip_bad,
                              dicom_region=region, augment=augment)
    val_set = PlaqueDataset([r for r, s in zip(records, splits) if s == "val"], config.size, config.skip_bad,
                            dicom_region=region)
    return train_set, val_set


def _kept(output: Path, epoch: int) -> str:
    """What a run that failed in `epoch` keeps."""
    if epoch > 0 and (output / "last.pt").exists():
        return f"{output / 'last.pt'} keeps epoch {epoch - 1}"
    return "no checkpoint was written"


def _epoch_error(exc: Exception, config: TrainConfig, epoch: int) -> Exception:
    """The error of a failed epoch as the user can act on it: two failures whose cause is a
    setting get a message naming it; any other is returned as it is."""
    text = str(exc)
    if "Expected more than 1 value per channel" in text:  # torch's BatchNorm (a ValueError)
        return ValueError(f"a training batch of one image at --size {config.size} leaves BatchNorm one value per "
                          "channel; use -b 2 or more, or a larger --size")
    if "contains NaN or infinite values" in text:  # the ops' value checks (CPU) caught diverged weights
        return FloatingPointError(f"training diverged in epoch {epoch} ({text}); {_kept(Path(config.output), epoch)} "
                                  "(try a lower --lr)")
    return exc


def _resumed_best(state: dict, config: TrainConfig) -> float:
    """The best validation score so far of the run `state` (a checkpoint) continues, by
    ``config.eval_metric``. A run resumed with another metric than the one that chose its
    best.pt so far is an error: its best.pt would mix the two."""
    if "best_metric" not in state:
        return -math.inf
    metric, value = str(state["best_metric"]), state.get("best_value")
    if metric != config.eval_metric:
        raise ValueError(f"--eval-metric {config.eval_metric} differs from the metric that chose best.pt of the run "
                         f"{config.resume} continues ({metric}); resume with --eval-metric {metric}, or train into "
                         "another --output")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else -math.inf


@dataclasses.dataclass
class _Training:
    """What the epochs of a run share: the model (and `net`, its DDP wrapper where there is one),
    optimizer and its learning-rate schedule, gradient scaler, training step and PGM, the epoch to
    start from, and the best validation score so far with its epoch (-1: none yet)."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    step: TrainStep
    pgm: PseudoMaskGenerator | None
    start: int
    best: float
    schedule: Schedule
    best_epoch: int = -1


def _prepare(config: TrainConfig, ctx: distributed.DistContext, runtime: Runtime, model, spec: ModelSpec,
             resumed: dict | None, class_weights: torch.Tensor | None = None) -> _Training:
    device = ctx.device
    if config.sync_bn and ctx.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # capturable on CUDA: Adam reads its rate and step counts on the device, so its update can join
    # a CUDA graph, and an eager step reads the rate tensor without a host sync
    schedule = Schedule(config, model.parameters(), device, capturable=device.type == "cuda")
    optimizer = schedule.optimizer
    scaler = torch.amp.GradScaler("cuda") if runtime.amp_dtype == torch.float16 and device.type == "cuda" else None
    pgm = PseudoMaskGenerator() if spec.has_pgm else None
    start, best, best_epoch = 0, -math.inf, -1
    if resumed is not None:  # the checkpoint check_resume read
        state = load_training_state(config.resume, model, optimizer, scaler, describe=spec.describe(), state=resumed)
        start, best, best_epoch = int(state["epoch"]) + 1, _resumed_best(state, config), state.get("best_epoch", -1)
        schedule.load_state_dict(state.get("scheduler"))
    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    step = TrainStep(net, pgm, optimizer, amp_dtype=runtime.amp_dtype, scaler=scaler, compile=runtime.compile,
                     cuda_graph=runtime.cuda_graphs, class_weights=class_weights)
    return _Training(model, net, optimizer, scaler, step, pgm, start, best, schedule, best_epoch)


def _fit(config: TrainConfig, ctx: distributed.DistContext, run: _Training, loader, epoch: int) -> tuple[dict, float]:
    """One training epoch: its stats and seconds; a failure that a setting causes (or a loss that
    diverged) as an error naming it."""
    device = ctx.device
    # On CUDA the ops' NaN checks would cost host syncs every step; the kernels already turn
    # non-finite attention into ignored pseudo masks, and a diverged loss is caught below.
    with ops.value_checks(False) if device.type == "cuda" else contextlib.nullcontext():
        started = time.perf_counter()
        try:
            stats = train_one_epoch(run.net, run.pgm, loader, run.optimizer, epoch, device,
                                    progress=ctx.is_main and not config.quiet, step=run.step)
        except (RuntimeError, ValueError) as exc:
            clearer = _epoch_error(exc, config, epoch)
            if clearer is exc:
                raise
            raise clearer from exc
        seconds = time.perf_counter() - started  # train_one_epoch ends by reading its sums: the GPU is done
    if not math.isfinite(stats["loss"]):
        raise FloatingPointError(f"training diverged: the loss of epoch {epoch} is {stats['loss']}; "
                                 f"{_kept(Path(config.output), epoch)} (try a lower --lr)")
    return stats, seconds


def _report(config: TrainConfig, row: dict, seconds: float) -> None:
    value = row[f"val_{config.eval_metric}"]
    chosen = "" if config.eval_metric == "accuracy" else f", val {config.eval_metric} {value:.3f}"
    _log.info(f"epoch {row['epoch']}: loss {row['loss']:.4f} (cls {row['cls_loss']:.4f}, "
              f"seg {row['seg_loss']:.4f}), train acc {row['train_accuracy']:.3f}, "
              f"val acc {row['val_accuracy']:.3f}{chosen} (training {seconds:.1f} s)")


def _run_epochs(config: TrainConfig, ctx: distributed.DistContext, runtime: Runtime, model, spec: ModelSpec,
                loaders, resumed: dict | None, record, class_weights: torch.Tensor | None = None) -> dict:
    """The epochs of a run: fit, then (rank 0) validate, log and checkpoint, step the learning
    rate's schedule and stop early where ``--patience`` says so; returns the last epoch's metrics
    row. `record`: a new run's (records, splits, classes), saved with its first checkpoint;
    `class_weights`: those of the classification loss (:func:`loss_weights`)."""
    output, (train_loader, sampler, val_loader) = Path(config.output), loaders
    run = _prepare(config, ctx, runtime, model, spec, resumed, class_weights)
    log = RunLog(output / "metrics.csv")
    checkpoints = RunCheckpoints(config, spec.classes, run.best, run.best_epoch, record)
    if ctx.is_main:
        write_text(output / "args.json", json.dumps(config.to_dict(), indent=2))
        log.resume_at(run.start)
        _log.info(f"training on {ctx.device}: {runtime.describe()}")
    board = TensorBoardLog(output) if config.tensorboard and ctx.is_main else None
    row = {}
    for epoch in bar(range(run.start, config.epochs), "epochs", config.epochs, ctx.is_main and not config.quiet,
                     unit="epoch", initial=run.start, leave=True):
        _seed_everything(_epoch_seed(config.seed, epoch))
        sampler.set_epoch(epoch)
        lr, started = run.schedule.lr, time.perf_counter()
        stats, seconds = _fit(config, ctx, run, train_loader, epoch)
        value = math.nan
        if ctx.is_main:
            # DDP's forward talks to the other ranks, so rank 0 validates the bare model.
            val = evaluate(run.model if ctx.enabled else run.net, val_loader, ctx.device, class_names=spec.classes,
                           amp_dtype=runtime.amp_dtype)
            row = {"epoch": epoch, "loss": stats["loss"], "cls_loss": stats["cls_loss"],
                   "seg_loss": stats["seg_loss"], "train_accuracy": stats["accuracy"], "val_loss": val["loss"],
                   **{f"val_{metric}": val[key] for metric, key in EVAL_METRIC_KEYS.items()},
                   "epoch_s": time.perf_counter() - started, "lr": lr}
            log.append(row)
            _report(config, row, seconds)
            value = row[f"val_{config.eval_metric}"]
        # every process steps the schedule and counts the epochs since best.pt by rank 0's score
        value = distributed.broadcast_float(value, ctx)
        improved = checkpoints.update(epoch, value)
        run.schedule.step(epoch, value)
        stop = config.patience is not None and checkpoints.stale(epoch) >= config.patience and epoch + 1 < config.epochs
        if ctx.is_main:
            training = {"optimizer": run.optimizer.state_dict(), "scheduler": run.schedule.state_dict(),
                        "scaler": run.scaler.state_dict() if run.scaler is not None else {}, "stopped_early": stop}
            checkpoints.save(epoch, improved, run.model, training)
            redraw(output, log.rows())  # curves.png, once the epoch is saved; a failure is a warning
            if board is not None:
                board.add(row)
        ctx.barrier()
        if stop:
            if ctx.is_main:
                held = (f"best.pt holds epoch {checkpoints.best_epoch}" if checkpoints.best_epoch >= 0
                        else f"no epoch had a defined val {config.eval_metric}, so there is no best.pt")
                _log.info(f"stopping early after epoch {epoch}: best.pt has not changed for {checkpoints.stale(epoch)} "
                          f"epoch(s) (--patience {config.patience}, --eval-metric {config.eval_metric}); {held}")
            break
    if board is not None:
        board.close()
    return row
