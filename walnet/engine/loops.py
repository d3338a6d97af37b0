"""One training epoch and one evaluation pass of WAL-Net (or a baseline classifier).

Batches are dicts from :class:`walnet.data.PlaqueDataset` (``image`` in [0, 1], ``label``,
``mask`` with :data:`~walnet.constants.IGNORE_INDEX` = unknown). Running sums stay on the device
and are read once per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from walnet import ops
from walnet.constants import IGNORE_INDEX
from walnet.engine.distributed import all_reduce_sum
from walnet.engine.metrics import box_recall_precision, classification_metrics, mask_iou_dice
from walnet.engine.progress import bar
from walnet.engine.step import TrainStep, check_finite, forward, probabilities


def train_one_epoch(model, pgm, loader, optimizer, epoch: int, device, scaler=None, amp_dtype=None,
                    progress: bool = False, step: TrainStep | None = None) -> dict:
    """Trains for one epoch; returns mean total / classification / segmentation loss and accuracy
    (over all processes when a torch.distributed group is up).

    The PGM builds pseudo masks from the model's own attention maps at every step (no gradient).
    ``model`` may be wrapped (DistributedDataParallel). ``step``: the :class:`TrainStep` to run
    (compiled or CUDA-graphed); by default an eager one of ``model``, ``pgm``, ``optimizer``,
    ``scaler`` and ``amp_dtype``. ``progress``: a bar over the batches on stderr where it is a
    terminal (:func:`walnet.engine.progress.bar`).
    """
    device = torch.device(device)
    model.train()
    if step is None:
        step = TrainStep(model, pgm, optimizer, amp_dtype=amp_dtype, scaler=scaler)
    sums = torch.zeros(4, device=device)  # total, cls, seg (each x batch size), correct
    seen = 0
    for batch in bar(loader, f"epoch {epoch}", enabled=progress):
        images = batch["image"].to(device, non_blocking=True)
        target = torch.as_tensor(batch["label"]).to(device, non_blocking=True)
        n = images.shape[0]
        stats = step(images, target, epoch)  # mean losses and the correct count of the batch
        sums[:3].add_(stats[:3], alpha=n)
        sums[3:].add_(stats[3:])
        seen += n
    # the image count joins the sums only here, so the steps copy nothing from the host
    totals = all_reduce_sum(torch.cat([sums, sums.new_tensor([seen])]))
    total, cls, seg, correct = (totals[:4] / totals[4].clamp_min(1)).tolist()
    return {"loss": total, "cls_loss": cls, "seg_loss": seg, "accuracy": correct}


@dataclass
class EvalOutputs:
    """What :func:`evaluate` fills in when passed as ``outputs=`` (the raw arrays behind the
    figures of :mod:`walnet.engine.figures`).

    ``targets`` int64 [N], ``probs`` float [N,K] and ``logits`` float32 [N,K] (before the
    temperature) of every sample, in loader order, and
    ``order`` int64 [N], each of those samples' ``index`` in the dataset (None when the batches
    carry no ``index``): the key to per-sample data such as patient ids. Up to
    ``panel`` samples that have a true mask (and a model with a segmentation head), the first
    ceil(panel / K) of each class, are kept for a segmentation panel: ``images`` float [M,3,H,W]
    at input resolution, ``pred`` (argmax of the segmentation), ``pseudo`` (PGM mask,
    IGNORE_INDEX = ignored; None without a PGM) and ``truth`` (nearest-resized), uint8 [M,h,w]
    at the segmentation's resolution, and ``indices`` (the samples' ``index`` in the dataset).
    ``images`` is None when no sample qualified. For the attention panel the same samples keep
    ``attention``, the fused attention map (:func:`walnet.ops.fuse_attention`) float32 [M,h,w],
    and ``boxes``, the RCM's boxes on that grid (int32 [M,4]; None for a model whose RCM crops
    nothing, see :meth:`walnet.models.WALNet.rcm_boxes`).
    """

    panel: int = 0
    targets: np.ndarray | None = None
    probs: np.ndarray | None = None
    logits: np.ndarray | None = None
    order: np.ndarray | None = None
    images: np.ndarray | None = None
    pseudo: np.ndarray | None = None
    pred: np.ndarray | None = None
    truth: np.ndarray | None = None
    attention: np.ndarray | None = None
    boxes: np.ndarray | None = None
    indices: list[int] = field(default_factory=list)


@torch.no_grad()
def evaluate(model, loader, device, pgm=None, class_names=None, amp_dtype=None,
             outputs: EvalOutputs | None = None, source=None, temperature: float = 1.0, progress: bool = False) -> dict:
    """Class metrics (:func:`classification_metrics`) of the whole loader, plus, where the data
    has true masks, mean IoU / Dice of the predicted segmentation and of the PGM's pseudo masks
    (``seg_iou``, ``seg_dice``, ``pseudo_iou``, ``pseudo_dice``; absent without masks) and, for a
    model whose RCM crops a box, the box's mean recall and precision of the true plaque on the
    segmentation's grid (``box_recall``, ``box_precision``:
    :func:`~walnet.engine.metrics.box_recall_precision`; images without a plaque left out).

    Pass an :class:`EvalOutputs` as ``outputs`` to also receive the targets, probabilities and
    up to ``outputs.panel`` samples' images and masks (the return value stays the same).

    With `source` (the checkpoint being scored), outputs that are not finite are a ValueError
    naming it (:func:`walnet.engine.step.check_finite`). The probabilities are ``softmax(logits /
    temperature)`` (:func:`walnet.engine.step.probabilities`: argmax scores do not change, the
    ranking across samples and the calibration may); ``loss`` is their mean cross-entropy
    (unweighted). ``progress``: a bar on stderr where it is a terminal."""
    device = torch.device(device)
    model.eval()
    targets, probs, logits, seg_scores, pseudo_scores, box_scores = [], [], [], [], [], []
    order = []  # the samples' dataset indices, while every batch has them
    kept = []  # panel samples: (index, image, pseudo, pred, truth, fused attention, box)
    shown = {}  # panel samples per class: the panel shows every class, not the first one only

    def per_class(out):
        return -(-outputs.panel // out.logits.shape[1])

    for batch in bar(loader, "evaluate", enabled=progress):
        images = batch["image"].to(device)
        out = forward(model, images, amp_dtype)
        if source is not None:
            check_finite(out.logits, model, source)
        targets.append(torch.as_tensor(batch["label"]).cpu())
        if order is not None and "index" in batch:
            order.append(torch.as_tensor(batch["index"]).cpu())
        else:
            order = None  # a batch without indices: the samples cannot be matched to the dataset
        probs.append(probabilities(out.logits, temperature).cpu())
        logits.append(out.logits.float().cpu())
        truth = batch["mask"]
        known = (truth != IGNORE_INDEX).flatten(1).all(dim=1)
        if out.seg_logits is None or not bool(known.any()):
            continue
        small = torch.nn.functional.interpolate(truth[:, None].float(), size=out.seg_logits.shape[-2:], mode="nearest")
        small = small[:, 0].bool().numpy()
        pred = out.seg_logits.argmax(dim=1).cpu().numpy().astype(bool)
        pseudo = pgm(images, out.attention).cpu().numpy() if pgm is not None else None
        fused = None
        rcm_boxes = getattr(model, "rcm_boxes", None)  # WAL-Net's; a wrapped model shows no box
        boxes = rcm_boxes(out.seg_logits) if rcm_boxes is not None else None  # on the segmentation's grid
        boxes = boxes.cpu().numpy() if boxes is not None else None
        if outputs is not None and outputs.panel and out.attention:
            fused = ops.fuse_attention(*(a.float() for a in out.attention)).cpu().numpy()
        for i in np.flatnonzero(known.numpy()):
            seg_scores.append(mask_iou_dice(pred[i], small[i]))
            if pseudo is not None and (pseudo[i] != IGNORE_INDEX).all():
                pseudo_scores.append(mask_iou_dice(pseudo[i] == 1, small[i]))
            found = box_recall_precision(boxes[i], small[i]) if boxes is not None else None
            if found is not None:
                box_scores.append(found)
            label = int(batch["label"][i])
            if outputs is not None and len(kept) < outputs.panel and shown.get(label, 0) < per_class(out):
                shown[label] = shown.get(label, 0) + 1
                index = int(batch["index"][i]) if "index" in batch else len(kept)
                kept.append((index, images[i].float().cpu().numpy(), None if pseudo is None else pseudo[i],
                             pred[i].astype(np.uint8), small[i].astype(np.uint8), None if fused is None else fused[i],
                             None if boxes is None else boxes[i]))
    result = classification_metrics(torch.cat(targets).numpy(), torch.cat(probs).numpy(), class_names)
    all_logits = torch.cat(logits)
    result["loss"] = float(torch.nn.functional.cross_entropy(all_logits / temperature, torch.cat(targets).long()))
    if outputs is not None:
        _fill(outputs, torch.cat(targets).numpy(), torch.cat(probs).numpy(), all_logits.numpy(),
              torch.cat(order).numpy().astype(np.int64) if order else None, kept)
    for names, scores in ((("seg_iou", "seg_dice"), seg_scores), (("pseudo_iou", "pseudo_dice"), pseudo_scores),
                          (("box_recall", "box_precision"), box_scores)):
        if scores:  # each a mean over the images scored (absent where none was)
            result.update({name: float(np.mean([s[j] for s in scores])) for j, name in enumerate(names)})
    return result


def _fill(outputs: EvalOutputs, targets, probs, logits, order, kept: list) -> None:
    """Fills `outputs` with an evaluation's arrays and its panel samples `kept` (tuples of index,
    image, pseudo mask, predicted mask, true mask, fused attention and RCM box)."""
    outputs.targets, outputs.probs, outputs.logits, outputs.order = targets, probs, logits, order
    if kept:
        outputs.indices = [k[0] for k in kept]
        outputs.images, outputs.pred, outputs.truth = (np.stack([k[j] for k in kept]) for j in (1, 3, 4))
        outputs.pseudo = None if kept[0][2] is None else np.stack([k[2] for k in kept])
        outputs.attention = None if kept[0][5] is None else np.stack([k[5] for k in kept])
        outputs.boxes = None if kept[0][6] is None else np.stack([k[6] for k in kept])
