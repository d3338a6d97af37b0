"""The runs behind ``walnet train`` and ``walnet evaluate``: data, split, model, epochs, logs,
checkpoints, scores.

Outputs in ``output/``: ``args.json``, ``split.csv`` (reused on later runs), ``metrics.csv``
(one row per epoch), ``last.pt`` and ``best.pt`` (written atomically; model, optimizer, scaler,
epoch, args, class map). An output folder that already holds a run is only continued with
``resume`` (never overwritten).
"""
from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

import numpy as np
import torch

from walnet.data import PlaqueDataset, load_split, read_csv, save_split, scan_image_folder, split_indices
from walnet.engine.checkpoint import load_checkpoint, save_checkpoint
from walnet.engine.loops import evaluate, train_one_epoch
from walnet.models import PseudoMaskGenerator, create_model

METRIC_FIELDS = ("epoch", "loss", "cls_loss", "seg_loss", "train_accuracy", "val_accuracy", "val_macro_f1")


def pick_device(name: str = "auto") -> torch.device:
    """"auto": CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_records(data_dir=None, csv_path=None, classes=None):
    """Records and class names from an ImageFolder tree or a CSV file (exactly one of them)."""
    if (data_dir is None) == (csv_path is None):
        raise ValueError("give exactly one of --data-dir and --csv")
    return scan_image_folder(data_dir, classes) if data_dir is not None else read_csv(csv_path, classes)


def assign_splits(records, output: Path, seed: int) -> list[str]:
    """The records' own split column if every record has one; else ``output/split.csv`` if it
    exists (reused, so every run sees the same partition); else a new 6:2:2 split, saved."""
    if all(r.split for r in records):
        return [r.split for r in records]
    keys = [str(r.path) for r in records]
    split_file = output / "split.csv"
    if split_file.is_file():
        saved = load_split(split_file)
        missing = [k for k in keys if k not in saved]
        if missing:
            raise ValueError(f"{split_file} does not cover {len(missing)} image(s), e.g. {missing[0]}; "
                             "use a new --output for different data")
        return [saved[k] for k in keys]
    splits = split_indices([r.label for r in records], [r.patient for r in records], seed=seed)
    save_split(split_file, keys, splits)
    return splits


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _model_kwargs(args) -> dict:
    if not args.model.startswith("walnet"):
        return {}
    kw = dict(backbone=args.backbone, rcm_warmup_epochs=args.rcm_warmup, attention_channels=args.attention_channels)
    if args.roi_method:
        kw["roi_method"] = args.roi_method
    if args.no_rcm:
        kw["use_rcm"] = False
    if args.no_pgm:
        kw["use_pgm"] = False
    return kw


def train(args) -> dict:
    """Runs the epochs of ``args`` (an argparse namespace of ``walnet train``); returns the last
    epoch's metrics row."""
    output = Path(args.output)
    if (output / "last.pt").exists() and not args.resume:
        raise FileExistsError(f"{output} already holds a training run; pass --resume {output / 'last.pt'} "
                              "to continue it, or choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    _seed_everything(args.seed)
    device = pick_device(args.device)
    records, classes = load_records(args.data_dir, args.csv)
    splits = assign_splits(records, output, args.seed)
    train_set = PlaqueDataset([r for r, s in zip(records, splits) if s == "train"], args.size, args.skip_bad)
    val_set = PlaqueDataset([r for r, s in zip(records, splits) if s == "val"], args.size, args.skip_bad)
    if train_set.skipped or val_set.skipped:
        print(f"skipped {train_set.skipped + val_set.skipped} unreadable image(s) (--skip-bad)", flush=True)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"the split left {len(train_set)} training and {len(val_set)} validation images")
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_set, args.batch_size, shuffle=True, num_workers=args.workers,
                                               generator=generator)
    val_loader = torch.utils.data.DataLoader(val_set, args.batch_size, num_workers=args.workers)
    model = create_model(args.model, num_classes=len(classes), pretrained=args.pretrained, **_model_kwargs(args))
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    pgm = PseudoMaskGenerator() if args.model.startswith("walnet") and not args.no_pgm else None
    start, best = 0, -1.0
    if args.resume:
        state = load_checkpoint(args.resume, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = int(state["epoch"]) + 1, float(state.get("best_accuracy", -1.0))
    with open(output / "args.json", "w") as f:
        json.dump({k: v for k, v in vars(args).items() if k != "run"}, f, indent=2, default=str)
    net = torch.compile(model) if args.compile else model
    metrics_path = output / "metrics.csv"
    new_log = not metrics_path.exists()
    row = {}
    for epoch in range(start, args.epochs):
        stats = train_one_epoch(net, pgm, train_loader, optimizer, epoch, device)
        val = evaluate(net, val_loader, device, class_names=classes)
        row = {"epoch": epoch, "loss": stats["loss"], "cls_loss": stats["cls_loss"], "seg_loss": stats["seg_loss"],
               "train_accuracy": stats["accuracy"], "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]}
        with open(metrics_path, "a", newline="") as f:
            writer = csv.DictWriter(f, METRIC_FIELDS)
            if new_log:
                writer.writeheader()
                new_log = False
            writer.writerow(row)
        print(f"epoch {epoch}: loss {row['loss']:.4f} (cls {row['cls_loss']:.4f}, seg {row['seg_loss']:.4f}), "
              f"train acc {row['train_accuracy']:.3f}, val acc {row['val_accuracy']:.3f}", flush=True)
        best = max(best, val["accuracy"])
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "best_accuracy": best, "args": json.loads(json.dumps(vars(args), default=str)),
                 "classes": list(classes)}
        state["args"].pop("run", None)
        save_checkpoint(output / "last.pt", state)
        if val["accuracy"] >= best:
            save_checkpoint(output / "best.pt", state)
    return row


def evaluate_run(args) -> dict:
    """``walnet evaluate``: rebuilds the model of a checkpoint (its args and class map), scores
    it on one split of the data (the run's saved split), writes ``metrics.json``; returns it."""
    ckpt = Path(args.checkpoint)
    state = load_checkpoint(ckpt, map_location="cpu")
    train_args = argparse.Namespace(**state["args"])
    device = pick_device(args.device)
    records, classes = load_records(args.data_dir, args.csv, tuple(state["classes"]))
    splits = assign_splits(records, ckpt.parent, train_args.seed)
    dataset = PlaqueDataset([r for r, s in zip(records, splits) if s == args.split], train_args.size, args.skip_bad)
    if len(dataset) == 0:
        raise ValueError(f"no images in the {args.split!r} split")
    model = create_model(train_args.model, num_classes=len(classes), **_model_kwargs(train_args))
    model.load_state_dict(state["model"])
    model = model.to(device)
    pgm = PseudoMaskGenerator() if train_args.model.startswith("walnet") and not train_args.no_pgm else None
    loader = torch.utils.data.DataLoader(dataset, args.batch_size, num_workers=args.workers)
    result = evaluate(model, loader, device, pgm=pgm, class_names=classes)
    result.update(split=args.split, images=len(dataset), checkpoint=str(ckpt), epoch=int(state["epoch"]))
    out = Path(args.output) if args.output else ckpt.parent
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.json", "w") as f:
        json.dump(result, f, indent=2)
    return result
