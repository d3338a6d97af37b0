"""``walnet demo`` (``make demo``): the whole pipeline on the embedded phantom, sized for a CPU.

Writes a small phantom, trains WAL-Net on it, evaluates the best checkpoint on the held-out
test split (metrics.json and figures) and writes ``report.md``. Folder layout::

    output/
      phantom/      images, masks, labels.csv
      run/          args.json, split.csv, data.json, metrics.csv, last.pt, best.pt, metrics.json, *.png
      report.md

Running it again continues the run in ``output/run`` (``--resume``; nothing is retrained once
all epochs are done) and re-evaluates, so no earlier result is thrown away. A run of other
settings (another seed, phantom or model: all but the epochs and the device) is not continued:
the demo refuses, naming the folder and what differs, before it writes anything.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from walnet.engine.config import DemoConfig, EvalConfig, TrainConfig
from walnet.files import write_text

_log = logging.getLogger(__name__)

#: The demo's settings that are also train settings, passed on as they are.
_TRAIN_SETTINGS = ("size", "epochs", "backbone", "attention_channels", "batch_size", "lr", "rcm_warmup", "seed",
                   "device")


def run_demo(output: str | Path, config: DemoConfig = DemoConfig()) -> dict:
    """Runs the demo into ``output``; returns the test metrics (``evaluate_run``'s dict) plus
    ``chance`` (share of the test split's most frequent class) and ``seconds``."""
    from walnet.data import phantom
    from walnet.engine.evaluation import evaluate_run
    from walnet.engine.trainer import train

    start = time.monotonic()
    output = Path(output)
    c = config
    _check_continues(output, c)
    csv_path = phantom.generate(output / "phantom", n=c.n, seed=c.seed, size=c.size)
    run = output / "run"
    train_config = TrainConfig(csv=csv_path, output=run, **{k: getattr(c, k) for k in _TRAIN_SETTINGS})
    if (run / "last.pt").exists():
        _log.info(f"continuing the demo run in {run}")
        train_config = replace(train_config, resume=run / "last.pt")
    train(train_config)
    result = evaluate_run(EvalConfig(checkpoint=run / "best.pt", csv=csv_path, split="test", device=c.device))
    counts = [sum(row) for row in result["confusion"]]
    result["chance"] = max(counts) / sum(counts)
    result["seconds"] = time.monotonic() - start
    write_text(output / "report.md", report(result, c, run))
    return result


#: The settings a continued demo run may change: more epochs train on, the device is where.
_MAY_DIFFER = {"epochs", "device"}


def _saved(path: Path) -> dict | None:
    """The JSON object in `path`, None where there is no file; a one-line error where it is no
    JSON object."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is no JSON object; it was not written by walnet")
    return saved


def _check_continues(output: Path, config: DemoConfig) -> None:
    """A ValueError naming `output` and each setting that differs where it holds a demo run
    (run/args.json, its phantom's marker) that `config` would not continue but mix with."""
    from walnet.data import phantom

    run = output / "run"
    if not (run / "last.pt").exists() and not (run / "args.json").exists():
        return  # no run to continue: the phantom (walnet's own files) may be written anew
    wanted = {k: getattr(config, k) for k in _TRAIN_SETTINGS if k not in _MAY_DIFFER}
    found = {k: v for k, v in (_saved(run / "args.json") or {}).items() if k in wanted}
    marker = _saved(output / "phantom" / phantom.MARKER) or {}
    for k in ("n", "seed", "size"):
        wanted[f"phantom {k}"] = getattr(config, k)
        if k in marker:
            found[f"phantom {k}"] = marker[k]
    differ = [f"{k} {found[k]} (now {wanted[k]})" for k in found if found[k] != wanted[k]]
    if differ:
        raise ValueError(f"{output} holds a demo run of other settings: {', '.join(differ)}; it is not continued "
                         "with these: choose another --output, or delete the folder to start afresh")


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def report(result: dict, config: DemoConfig, run: Path) -> str:
    """The Markdown report of a demo run."""
    lines = [
        "# walnet demo: WAL-Net on the synthetic phantom",
        "",
        f"Trained for {config.epochs} epochs on {config.device} in {result['seconds']:.0f} s (data, training and "
        "evaluation). Configuration: " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()) + ".",
        "",
        f"Test split: {result['images']} images, best checkpoint (epoch {result['epoch']}).",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    rows = [("accuracy", result["accuracy"]), ("chance (most frequent class)", result["chance"]),
            ("macro F1", result["macro_f1"]), ("Cohen's kappa", result["kappa"]),
            ("macro precision", result["macro_precision"]), ("macro recall", result["macro_recall"]),
            ("micro ROC-AUC", result["auc_micro"]),
            ("pseudo-mask IoU / Dice", None), ("predicted mask IoU / Dice", None)]
    for name, value in rows:
        if name.startswith("pseudo"):
            text = f"{_fmt(result.get('pseudo_iou'))} / {_fmt(result.get('pseudo_dice'))}"
        elif name.startswith("predicted"):
            text = f"{_fmt(result.get('seg_iou'))} / {_fmt(result.get('seg_dice'))}"
        else:
            text = _fmt(value)
        lines.append(f"| {name} | {text} |")
    names = result["class_names"]
    lines += ["", "Confusion matrix (rows: truth, columns: prediction):", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(names, result["confusion"])]
    figures = result.get("figures") or []
    if figures:
        lines += [""] + [f"![{Path(name).stem}]({run.name}/{name})" for name in figures]
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    """The lines ``walnet demo`` prints."""
    return (f"WAL-Net phantom test accuracy {result['accuracy']:.3f} (chance {result['chance']:.3f}), "
            f"macro F1 {result['macro_f1']:.3f}, kappa {result['kappa']:.3f}; "
            f"pseudo-mask IoU {_fmt(result.get('pseudo_iou'))}, predicted-mask IoU {_fmt(result.get('seg_iou'))} "
            f"({result['seconds']:.0f} s)")
