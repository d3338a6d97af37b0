"""One training epoch and one evaluation pass of WAL-Net (or a baseline classifier).

Batches are dicts from :class:`walnet.data.PlaqueDataset` (``image`` in [0, 1], ``label``,
``mask`` with 255 = unknown). Running sums stay on the device and are read once per epoch.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from walnet.engine.metrics import classification_metrics, mask_iou_dice
from walnet.models.walnet import WALNetOutput, walnet_loss


def _as_output(out) -> WALNetOutput:
    """Baselines (timm classifiers) return plain logits."""
    return out if isinstance(out, WALNetOutput) else WALNetOutput(out, None, ())


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_one_epoch(model, pgm, loader, optimizer, epoch: int, device, scaler=None, amp_dtype=None) -> dict:
    """Trains for one epoch; returns mean total / classification / segmentation loss and accuracy.

    The PGM builds pseudo masks from the model's own attention maps at every step (no gradient).
    """
    device = torch.device(device)
    model.train()
    sums = torch.zeros(4, device=device)  # total, cls, seg, correct
    seen = 0
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        target = torch.as_tensor(batch["label"]).to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            out = _as_output(model(images, epoch=epoch) if hasattr(model, "rcm_active") else model(images))
        pseudo = pgm(images, out.attention) if (pgm is not None and out.seg_logits is not None) else None
        parts = walnet_loss(out, target, pseudo)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(parts.total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            parts.total.backward()
            optimizer.step()
        n = images.shape[0]
        correct = (out.logits.argmax(dim=1) == target).sum()
        sums += torch.stack([parts.total.detach() * n, parts.cls.detach() * n, parts.seg.detach() * n, correct.float()])
        seen += n
    total, cls, seg, correct = (sums / max(seen, 1)).tolist()
    return {"loss": total, "cls_loss": cls, "seg_loss": seg, "accuracy": correct}


@torch.no_grad()
def evaluate(model, loader, device, pgm=None, class_names=None, amp_dtype=None) -> dict:
    """Class metrics (:func:`classification_metrics`) of the whole loader, plus, where the data
    has true masks, mean IoU / Dice of the predicted segmentation and of the PGM's pseudo masks
    (``seg_iou``, ``seg_dice``, ``pseudo_iou``, ``pseudo_dice``; absent without masks)."""
    device = torch.device(device)
    model.eval()
    targets, probs, seg_scores, pseudo_scores = [], [], [], []
    for batch in loader:
        images = batch["image"].to(device)
        with _autocast(device, amp_dtype):
            out = _as_output(model(images))
        targets.append(torch.as_tensor(batch["label"]).cpu())
        probs.append(torch.softmax(out.logits.float(), dim=1).cpu())
        truth = batch["mask"]
        known = (truth != 255).flatten(1).all(dim=1)
        if out.seg_logits is None or not bool(known.any()):
            continue
        small = torch.nn.functional.interpolate(truth[:, None].float(), size=out.seg_logits.shape[-2:], mode="nearest")
        small = small[:, 0].bool().numpy()
        pred = out.seg_logits.argmax(dim=1).cpu().numpy().astype(bool)
        pseudo = pgm(images, out.attention).cpu().numpy() if pgm is not None else None
        for i in np.flatnonzero(known.numpy()):
            seg_scores.append(mask_iou_dice(pred[i], small[i]))
            if pseudo is not None and (pseudo[i] != 255).all():
                pseudo_scores.append(mask_iou_dice(pseudo[i] == 1, small[i]))
    result = classification_metrics(torch.cat(targets).numpy(), torch.cat(probs).numpy(), class_names)
    for name, scores in (("seg", seg_scores), ("pseudo", pseudo_scores)):
        if scores:
            result[f"{name}_iou"] = float(np.mean([s[0] for s in scores]))
            result[f"{name}_dice"] = float(np.mean([s[1] for s in scores]))
    return result
