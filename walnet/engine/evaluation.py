"""The run behind ``walnet evaluate``: a trained model scored on one split of its run's data.

It writes ``metrics.json`` (the checkpoint's folder, or ``output``): the scores of
:func:`~walnet.engine.metrics.classification_metrics`, their bootstrap intervals, the Wilson
intervals and calibration scores of :func:`~walnet.engine.metrics.clinical_metrics` and, where
the data has patient ids, the same per patient (``"patient"``); and unless asked not to, the
figures of the paper (ROC, confusion matrix, segmentations), a reliability diagram and an
attention panel.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from walnet.data import PlaqueDataset, load_records
from walnet.data.splits import recorded_split
from walnet.engine.checks import EVAL_FIGURES, EVAL_FILES, check_output, data_reads, pick_device
from walnet.engine.config import EvalConfig
from walnet.engine.inputs import Inputs
from walnet.engine.loading import TrainedModel, load_model
from walnet.engine.loops import EvalOutputs, evaluate
from walnet.engine.metrics import CI_LEVEL, bootstrap_ci, clinical_metrics, patient_metrics
from walnet.engine.predictions import check_predictions_file, write_predictions
from walnet.engine.runtime import loader_workers
from walnet.files import atomic_open
from walnet.models import PseudoMaskGenerator

PANEL_SAMPLES = 6  # rows of the segmentation panel of `walnet evaluate`


def evaluate_run(config: EvalConfig) -> dict:
    """``walnet evaluate``: rebuilds the model of a checkpoint (its train config and class map),
    scores it on one split of the data, writes ``metrics.json``; returns it.

    The split is the run's own, its ``split.csv`` beside the checkpoint
    (:func:`~walnet.data.splits.recorded_split`): data it does not cover, or a CSV split column
    that puts any image in another split than the run did, is an error, so the run's training
    images are never scored as test images.

    ``metrics.json`` holds :func:`~walnet.engine.loops.evaluate`'s scores (per-class sensitivity
    and specificity among them), 95% percentile-bootstrap intervals of accuracy, macro F1 and
    micro AUC over the images (``accuracy_ci``, ..., and their settings under ``"bootstrap"``;
    :func:`~walnet.engine.metrics.bootstrap_ci`), 95% Wilson intervals of each class's
    sensitivity and specificity (``sensitivity_ci``, ``specificity_ci``), the Brier score, ECE
    and reliability bins (``brier``, ``ece``, ``calibration``;
    :func:`~walnet.engine.metrics.clinical_metrics`) and, where images have patient ids, the same
    scores per patient under ``"patient"`` (:func:`~walnet.engine.metrics.patient_metrics`). Its
    probabilities are ``softmax(logits / temperature)``, the checkpoint's temperature
    (``walnet calibrate``; 1.0 uncalibrated), recorded as ``"temperature"``.

    With ``figures`` (the default), also writes ``roc.png`` (paper Fig. 4), ``confusion.png``
    (Fig. 5), ``reliability.png`` (the reliability diagram) and, where the split has true masks
    and the model a segmentation head, ``segmentation.png`` (Fig. 6) and ``attention.png`` (the
    same samples' fused attention over the image, the predicted mask's contour and the RCM
    box), each at 300 dpi as PNG, PDF or both (``figure_format``); their file names are listed
    under ``"figures"`` in the result. With ``save_predictions``,
    the per-image predictions go to that CSV file (:mod:`walnet.engine.predictions`), before
    ``metrics.json``."""
    ckpt = Path(config.checkpoint)
    device = pick_device(config.device)
    reads = _reads(config)
    check_output(config.output or ckpt.parent, reads=reads, writes=EVAL_FILES, command="evaluate")
    if config.save_predictions is not None:
        check_predictions_file(config.save_predictions, reads, config.output or ckpt.parent, EVAL_FILES)
    trained, classes, dataset, loader = split_loader(config, device, "evaluate")
    model = trained.model
    pgm = PseudoMaskGenerator() if trained.spec.has_pgm else None
    state = trained.checkpoint
    figures = config.figures
    outputs = EvalOutputs(panel=PANEL_SAMPLES if figures else 0)
    result = evaluate(model, loader, device, pgm=pgm, class_names=classes, outputs=outputs,
                      source=f"checkpoint {ckpt}", temperature=trained.temperature, progress=not config.quiet)
    result.update(bootstrap_ci(outputs.targets, outputs.probs))
    result.update(clinical_metrics(outputs.targets, outputs.probs, classes))
    # each score's image by its dataset index, not by position: right for any loader order
    patients = [dataset.records[i].patient for i in outputs.order]
    per_patient = patient_metrics(outputs.targets, outputs.probs, patients, classes)
    if per_patient is not None:
        result["patient"] = per_patient
    result.update(split=config.split, images=len(dataset), checkpoint=str(ckpt), epoch=int(state["epoch"]),
                  temperature=trained.temperature)
    if figures:
        from walnet.engine.figures import figure_names  # matplotlib only when figures are asked for

        drawn = [n for n in EVAL_FIGURES if (n != "segmentation" or outputs.images is not None)
                 and (n != "attention" or outputs.attention is not None)]
        result["figures"] = figure_names(drawn, config.figure_format)
    if config.save_predictions is not None:
        write_predictions(config.save_predictions, dataset.records, outputs.order, outputs.probs, classes)
    out = Path(config.output) if config.output else ckpt.parent
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "metrics.json", text=True) as f:
        json.dump(result, f, indent=2)
    if figures:
        _write_figures(out, result, outputs, dataset, classes, config.figure_format)
    return result


def split_loader(config, device, command: str) -> tuple[TrainedModel, list[str], PlaqueDataset,
                                                        torch.utils.data.DataLoader]:
    """The model of ``config.checkpoint`` (a training checkpoint) on `device`, the class names,
    the dataset of ``config.split`` of its run's own split (:func:`~walnet.data.splits.recorded_split`)
    and a loader over it: what ``walnet evaluate`` scores and ``walnet calibrate`` fits on
    (`command`, as errors name it). `config`: an EvalConfig or CalibrateConfig."""
    ckpt = Path(config.checkpoint)
    trained = load_model(ckpt, device)
    if trained.train_config is None:
        raise ValueError(f"--checkpoint {ckpt} is a model folder written by walnet export; {command} takes a "
                         "training checkpoint (best.pt or last.pt), whose run folder holds the split")
    records, classes = load_records(config.data_dir, config.csv, trained.classes)
    splits = recorded_split(records, ckpt.parent, hint="score the data the run was trained on")
    # a run trained on whole DICOM frames is scored on whole frames too
    region = config.dicom_region and trained.dicom_region
    dataset = PlaqueDataset([r for r, s in zip(records, splits) if s == config.split], trained.size, config.skip_bad,
                            dicom_region=region)
    if len(dataset) == 0:
        raise ValueError(f"no images in the {config.split!r} split")
    loader = torch.utils.data.DataLoader(dataset, config.batch_size, num_workers=loader_workers(config.workers, device))
    return trained, classes, dataset, loader


def _reads(config: EvalConfig) -> Inputs:
    """What evaluate reads: the checkpoint, the run's split.csv beside it and the data."""
    ckpt = Path(config.checkpoint)
    reads = Inputs()
    reads.add_file(ckpt, f"the checkpoint {ckpt}")
    reads.add_file(ckpt.parent / "split.csv", f"the run's split {ckpt.parent / 'split.csv'}")
    return data_reads(reads, config.data_dir, config.csv)


def _write_figures(out: Path, result: dict, outputs: EvalOutputs, dataset, classes, formats: str) -> None:
    from walnet.engine import figures, panels  # matplotlib only when figures are asked for

    tag = f"{result['split']} split, {result['images']} images"
    figures.roc_figure(out / "roc", outputs.targets, outputs.probs, classes, title=f"ROC ({tag})", formats=formats)
    figures.confusion_figure(out / "confusion", result["confusion"], classes, title=f"Confusion ({tag})",
                             formats=formats)
    figures.reliability_figure(out / "reliability", result["calibration"], result["ece"],
                               title=f"Reliability ({tag})", formats=formats)
    if outputs.images is None:
        return
    records = [dataset.records[i] for i in outputs.indices]
    names = [f"{r.path.name}{'' if r.frame is None else f' #{r.frame}'}" for r in records]
    probs = _panel_probs(outputs)
    titles = [f"{n}: {figures.class_title(classes[p.argmax()], p.max(), classes[r.label])}"
              for n, p, r in zip(names, probs, records)]
    panels.segmentation_panel(out / "segmentation", outputs.images, outputs.pseudo, outputs.pred, outputs.truth,
                              titles, formats=formats)
    if outputs.attention is not None:
        titles = [f"{n}\n{figures.class_title(classes[p.argmax()], p.max(), classes[r.label], wrap=True)}"
                  for n, p, r in zip(names, probs, records)]
        panels.attention_panel(out / "attention", outputs.images, outputs.attention, outputs.pred, outputs.boxes,
                               titles, formats=formats)


def summary(result: dict) -> list[str]:
    """The lines ``walnet evaluate`` prints of :func:`evaluate_run`'s `result`: the split's
    scores (with their bootstrap intervals) and mask IoUs, macro AUC, Brier score and ECE, each
    class's sensitivity and specificity (with their Wilson intervals), the per-patient scores,
    and how the bootstrap intervals were drawn."""
    extra = "".join(f", {k} {result[k]:.3f}" for k in ("seg_iou", "pseudo_iou", "box_recall", "box_precision")
                    if k in result)
    lines = [f"{result['split']} ({result['images']} images): {_scores(result)}{extra}"]
    if "brier" in result:
        lines.append(f"macro AUC {_number(result.get('auc_macro'))}, Brier {_number(result['brier'])}, "
                     f"ECE {_number(result['ece'])} ({result['calibration']['bins']} confidence bins)")
    if result.get("sensitivity"):
        wilson = f" [{100 * CI_LEVEL:g}% Wilson intervals]" if "sensitivity_ci" in result else ""
        lines.append(f"sensitivity / specificity{wilson}:")
        lines += [f"  {name} {_interval(result, 'sensitivity', name)} / {_interval(result, 'specificity', name)}"
                  for name in result["sensitivity"]]
    patient = result.get("patient")
    if patient:
        lines.append(f"per patient ({patient['patients']} patients, {patient['images']} images): {_scores(patient)}")
    if "bootstrap" in result:
        b = result["bootstrap"]
        lines.append(f"accuracy, macro F1, micro AUC [lo, hi]: {100 * b['level']:g}% percentile-bootstrap intervals "
                     f"({b['resamples']} resamples, seed {b['seed']})")
    return lines


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(result: dict, key: str, name: str) -> str:
    """A class's `key` (sensitivity, specificity) with its Wilson interval where it has one."""
    ci = (result.get(f"{key}_ci") or {}).get(name)
    return _number(result[key][name]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _scores(r: dict) -> str:
    """Accuracy, macro F1, kappa and micro AUC of an evaluation, each with its interval where
    it has one."""
    def cell(key, name):
        ci = r.get(f"{key}_ci")
        return f"{name} {r[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    return ", ".join((cell("accuracy", "accuracy"), cell("macro_f1", "macro F1"), f"kappa {r['kappa']:.3f}",
                      cell("auc_micro", "micro AUC")))


def _panel_probs(outputs: EvalOutputs):
    """The class probabilities of the panel's samples (``probs`` is in loader order)."""
    if outputs.order is None:  # no indices: the panel kept its samples' positions instead
        return [outputs.probs[i] for i in outputs.indices]
    where = {int(index): k for k, index in enumerate(outputs.order)}
    return [outputs.probs[where[i]] for i in outputs.indices]
