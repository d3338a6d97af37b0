"""The model card (``README.md``) of a folder written by ``walnet export``: what the model is, its
classes and input, its intended use, the data and settings it was trained with, its scores on
held-out data (the run's ``metrics.json`` from ``walnet evaluate``, with their intervals and its
calibration; per-class numbers and their Wilson intervals computed from its confusion matrix by
:mod:`walnet.engine.metrics`), its limits and how to load it."""
from __future__ import annotations

import json
import math
from pathlib import Path

from walnet.data import load_split, phantom
from walnet.engine.calibration_metrics import ECE_BINS
from walnet.engine.config import SPLITS, TrainConfig
from walnet.engine.metrics import CI_LEVEL, class_intervals, class_precision_recall, class_specificity
from walnet.files import first_line
from walnet.models import ModelSpec


def model_card(info: dict, spec: ModelSpec, trained: TrainConfig, checkpoint: Path) -> str:
    """The card of the folder whose config.json is `info` (with its ``files`` and ``formats``),
    exported from `checkpoint` of the run `trained` that trained `spec`."""
    sections = [_header(info, spec, trained, checkpoint), _data(info, spec, trained, checkpoint),
                ["## Evaluation", "", *_evaluation(info, trained, checkpoint)], _limits(trained),
                _loading(info, spec)]
    return "\n".join(line for section in sections for line in [*section, ""]).rstrip("\n") + "\n"


def _architecture(spec: ModelSpec, name: str) -> str:
    if not spec.is_walnet:
        return f"baseline `{name}`: the timm classifier `{spec.architecture}`"
    parts = [f"WAL-Net (`{name}`): timm `{spec.backbone}` encoder"]
    if spec.has_pgm:
        parts.append(f"attention gates ({spec.attention_channels} channels), DeepLabV3+ decoder trained from "
                     "PGM pseudo masks")
        parts.append(f"RCM `{spec.roi_method}`" if spec.has_rcm else "no RCM")
    else:
        parts.append("no PGM or RCM (pooled stage 4, one linear head)")
    return ", ".join(parts)


def _stats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _header(info: dict, spec: ModelSpec, trained: TrainConfig, checkpoint: Path) -> list[str]:
    size = spec.size
    classes = ", ".join(f"{k} `{c}`" for k, c in enumerate(info["classes"]))
    outputs = "; ".join(f"`{k}` {v}" for k, v in info["outputs"].items())
    return [
        f"# {trained.model}: carotid plaque classifier",
        "",
        f"Exported with `walnet export` (walnet {info['walnet_version']}, torch {info['torch_version']}) from "
        f"`{checkpoint}` (epoch {info['checkpoint']['epoch']}). Files: {', '.join(f'`{f}`' for f in info['files'])}.",
        "",
        "## Model",
        "",
        f"- Architecture: {_architecture(spec, trained.model)}.",
        f"- Classes, in label order: {classes}.",
        f"- Outputs: {outputs}.",
        f"- {_temperature(info)}",
        "",
        "## Input",
        "",
        f"An RGB image as float32 `[N, 3, {size}, {size}]` with values in [0, 1], resized to {size}x{size} "
        "(crop it to the plaque ROI first if the training data was cropped so). The model normalises the "
        f"input itself, `(image - mean) / std` with mean {_stats(info['input']['mean'])} and std "
        f"{_stats(info['input']['std'])} (its buffers `input_mean`, `input_std`), so pass the [0, 1] image "
        "as it is; do not normalise it first.",
        "",
        "## Intended use",
        "",
        "Research on the classification of carotid plaque echogenicity in B-mode ultrasound. It is **not a "
        "medical device** and must not be used for diagnosis, treatment or any clinical decision.",
    ]


def _temperature(info: dict) -> str:
    """The card's line on the temperature the logits are divided by before the softmax."""
    if "temperature" not in info:
        return ("Temperature: none (not calibrated): the probabilities are the softmax of the logits, as trained; "
                "`walnet calibrate` fits a temperature on the validation split.")
    t = info["temperature"]
    return (f"Temperature: {t:.4g} (fitted by `walnet calibrate`; config.json `temperature`): the probabilities "
            f"are `softmax(logits / {t:.4g})`. The pt2 and ONNX programs output the logits: divide them by the "
            "temperature before the softmax.")


def _is_phantom(trained: TrainConfig) -> bool:
    """Whether the run's data is walnet's phantom (where its folder can still be found)."""
    folder = Path(trained.csv).parent if trained.csv is not None else Path(trained.data_dir)
    return phantom.is_phantom(folder)


def _data_source(trained: TrainConfig) -> str:
    source = f"the CSV `{trained.csv}`" if trained.csv is not None else f"the ImageFolder tree `{trained.data_dir}`"
    if _is_phantom(trained):
        source += " (walnet's synthetic plaque phantom, not real ultrasound)"
    return source


def _split_sizes(path: Path) -> dict | str | None:
    """Images per split of the run's split.csv; why not where it cannot be read; None without one."""
    if not path.is_file():
        return None
    try:
        splits = list(load_split(path).values())
    except (OSError, ValueError) as exc:
        return f"{path} could not be read ({first_line(exc)})"
    return {s: splits.count(s) for s in SPLITS}


def _data(info: dict, spec: ModelSpec, trained: TrainConfig, checkpoint: Path) -> list[str]:
    start = (f", from the pretrained backbone weights of `{trained.pretrained_file}`" if trained.pretrained_file
             else ", from pretrained backbone weights" if trained.pretrained else ", from random initialisation")
    lines = [
        "## Training data",
        "",
        f"- Data: {_data_source(trained)}.",
        f"- Training: up to {trained.epochs} epoch(s); this checkpoint is from epoch {info['checkpoint']['epoch']} "
        f"(counted from 0). Seed {trained.seed}, input size {trained.size}, batch size "
        f"{trained.batch_size}, Adam lr {trained.lr:g}"
        + (f", RCM off for the first {spec.rcm_warmup} epochs" if spec.has_rcm else "") + start + ".",
    ]
    split_sizes = _split_sizes(checkpoint.parent / "split.csv")
    if isinstance(split_sizes, dict):
        lines.append("- Split (the run's `split.csv`, patient-grouped): "
                     + ", ".join(f"{s} {n} images" for s, n in split_sizes.items()) + ".")
    elif isinstance(split_sizes, str):
        lines.append(f"- Split: {split_sizes}.")
    else:
        lines.append("- Split: no `split.csv` next to the checkpoint (the data's own split column, or unknown).")
    return lines


def _read_metrics(path: Path) -> tuple[dict | None, str | None]:
    """``walnet evaluate``'s metrics.json, or None and why not (None: there is none)."""
    if not path.is_file():
        return None, None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path} could not be read ({first_line(exc)})"
    if not isinstance(metrics, dict) or "accuracy" not in metrics:
        return None, f"{path} is not a metrics file of `walnet evaluate`"
    return metrics, None


def _number(value) -> str:
    return "n/a" if not isinstance(value, (int, float)) or math.isnan(value) else f"{value:.3f}"


def _with_interval(value, interval) -> str:
    """A number and, where there is one, its ``[lo, hi]`` interval."""
    ok = isinstance(interval, list) and len(interval) == 2 and all(isinstance(v, (int, float)) for v in interval)
    return _number(value) + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if ok else "")


#: The scores of the evaluation table: (label, key of metrics.json).
_SCORES = [("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("macro precision", "macro_precision"),
           ("macro recall", "macro_recall"), ("Cohen's kappa", "kappa"), ("ROC-AUC (micro)", "auc_micro"),
           ("ROC-AUC (macro)", "auc_macro"), ("Brier score (multi-class)", "brier"),
           ("expected calibration error", "ece"), ("predicted-mask IoU", "seg_iou"),
           ("predicted-mask Dice", "seg_dice"), ("pseudo-mask IoU", "pseudo_iou"),
           ("pseudo-mask Dice", "pseudo_dice"), ("RCM box recall of the plaque", "box_recall"),
           ("RCM box precision (plaque share of the box)", "box_precision")]


def _evaluation(info: dict, trained: TrainConfig, checkpoint: Path) -> list[str]:
    metrics, note = _read_metrics(checkpoint.parent / "metrics.json")
    if metrics is None:
        why = note or f"there is no metrics.json next to the checkpoint ({checkpoint.parent})"
        data = f"--csv {trained.csv}" if trained.csv is not None else f"--data-dir {trained.data_dir}"
        return ["No evaluation was found: " + why + ". The model's accuracy on held-out data is unknown. "
                "Score it on the run's test split, then export again:", "",
                "```bash", f"walnet evaluate --checkpoint {checkpoint} {data}", "```"]
    lines = [f"`walnet evaluate` on the **{metrics.get('split', '?')}** split ({metrics.get('images', '?')} images) "
             f"of the run (`{checkpoint.parent / 'metrics.json'}`):", ""]
    if metrics.get("epoch") is not None and metrics.get("epoch") != info["checkpoint"]["epoch"]:
        lines += [f"**These scores are of the checkpoint of epoch {metrics['epoch']}, not of the exported one "
                  f"(epoch {info['checkpoint']['epoch']}).**", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {label} | {_with_interval(metrics[key], metrics.get(f'{key}_ci'))} |"
              for label, key in _SCORES if key in metrics]
    lines += _notes(metrics)
    confusion = metrics.get("confusion")
    names = metrics.get("class_names") or info["classes"]
    if isinstance(confusion, list) and len(confusion) == len(names):
        lines += ["", *_class_table(metrics, confusion, names)]
        lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
                  "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {c} | " + " | ".join(str(int(v)) for v in confusion[k]) + " |" for k, c in enumerate(names)]
    return lines


def _notes(metrics: dict) -> list[str]:
    """What the bracketed intervals and the calibration scores of the table are, where it has them."""
    def setting(group, key, default):
        value = metrics[group].get(key) if isinstance(metrics.get(group), dict) else None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    notes = []
    if any(f"{key}_ci" in metrics for _, key in _SCORES):
        notes.append(f"[lo, hi]: {100 * setting('bootstrap', 'level', CI_LEVEL):g}% percentile-bootstrap intervals "
                     "over the images.")
    if "brier" in metrics or "ece" in metrics:
        notes.append("Brier score: the mean over images of the squared distance between the class probabilities "
                     "and the one-hot true class (0 best, 2 worst). Expected calibration error: the gap between "
                     f"top-label confidence and accuracy over {setting('calibration', 'bins', ECE_BINS)} "
                     "equal-width confidence bins, weighted by their images (0: calibrated).")
    return [line for note in notes for line in ("", note)]


def _class_table(metrics: dict, confusion: list, names: list) -> list[str]:
    """Per class: images, precision, sensitivity and specificity (one class against the rest)
    with their Wilson intervals, ROC-AUC."""
    precision, recall = class_precision_recall(confusion)
    specificity = class_specificity(confusion)
    try:
        intervals = class_intervals(confusion, names)
    except ValueError:  # counts no walnet evaluate writes (negative): the card still shows the rest
        intervals = {"sensitivity_ci": {}, "specificity_ci": {}}
    auc = metrics.get("auc_per_class") or {}
    lines = ["| class | images | precision | sensitivity (recall) | specificity | ROC-AUC |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {c} | {int(sum(confusion[k]))} | {_number(precision[k])} | "
              f"{_with_interval(recall[k], intervals['sensitivity_ci'].get(c))} | "
              f"{_with_interval(specificity[k], intervals['specificity_ci'].get(c))} | {_number(auc.get(c))} |"
              for k, c in enumerate(names)]
    return lines + ["", f"Sensitivity and specificity [lo, hi]: {100 * CI_LEVEL:g}% Wilson score intervals."]


def _limits(trained: TrainConfig) -> list[str]:
    return [
        "## Limitations",
        "",
        ("- Trained on walnet's synthetic phantom only: it has never seen a real scan, and its scores say nothing "
         "about real ultrasound." if _is_phantom(trained) else
         "- Trained on a small dataset (plaque datasets hold hundreds to a few thousand scans): its scores have wide "
         "uncertainty and need not hold on other data."),
        "- Domain shift: other scanners, probes, presets, gain settings, operators and centres change the image "
        "statistics; validate it on data from the target setting before relying on any score.",
        "- The segmentation output is learned from weak pseudo masks (attention maps and superpixels), not from "
        "annotated plaque outlines: it is not a validated segmentation.",
        "- It knows the classes above only and gives one of them for any input, including images without a "
        "plaque; its probabilities are calibrated, if at all, by the one temperature above on the run's own data, "
        "not for data from another setting.",
    ]


def _loading(info: dict, spec: ModelSpec) -> list[str]:
    lines = [
        "## How to load",
        "",
        "`DIR` is this folder; `images` a float32 tensor `[N, 3, size, size]` in [0, 1] as above.",
        "",
        "```python",
        "import walnet",
        "from walnet.models import load_pretrained",
        "from walnet.models.pretrained import read_config",
        "",
        "model = load_pretrained(\"DIR\")             # any walnet model, eval mode, no pickle",
    ]
    if spec.is_walnet:
        lines.append("model = walnet.WALNet.from_pretrained(\"DIR\")   # the same, for WAL-Net models")
    lines += ["classes = read_config(\"DIR\")[\"classes\"]",
              "```", "",
              "```bash", "walnet predict --model DIR scans/ --output predictions.csv", "```"]
    if "pt2" in info["formats"]:
        pt2 = info["formats"]["pt2"]
        lines += ["", "```python", "import torch, walnet                       # walnet registers its ops",
                  "program = torch.export.load(\"DIR/model.pt2\").module()",
                  "outputs = program(images)                 # (" + ", ".join(pt2["outputs"]) + ")", "```",
                  f"(batch dimension {'dynamic' if pt2['dynamic_batch'] else 'fixed'}; exported on "
                  f"{pt2['device']})"]
    if "onnx" in info["formats"]:
        onnx = info["formats"]["onnx"]
        lines += ["", "```python", "import onnxruntime",
                  "session = onnxruntime.InferenceSession(\"DIR/model.onnx\")",
                  "outputs = session.run(None, {\"image\": images.numpy()})   # ["
                  + ", ".join(onnx["outputs"]) + "]", "```",
                  f"(opset {onnx['opset']}; walnet's ops as their pure-PyTorch references)"]
    return lines
