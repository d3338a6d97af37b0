"""``walnet predict``: class probabilities of images (files and/or folders) from a checkpoint,
as a CSV file, and optionally the predicted plaque masks as PNGs.

The model is rebuilt from the checkpoint as ``walnet evaluate`` does (its train config and class
map), and the images are read as in training (:class:`walnet.data.PlaqueDataset`: RGB, resized
to the train size, scaled to [0, 1]).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from walnet.data.datasets import IMAGE_EXTENSIONS, PlaqueDataset, Record
from walnet.engine.checkpoint import atomic_open
from walnet.engine.config import PredictConfig
from walnet.engine.loops import _as_output
from walnet.engine.trainer import load_trained, pick_device


def collect_images(inputs, exclude: Path | None = None) -> list[Path]:
    """The image files of `inputs` (files and/or folders), in order: a file as given, a folder
    scanned recursively for :data:`IMAGE_EXTENSIONS` (sorted; files under `exclude` skipped).
    The same file named twice is kept once. A missing input or a folder without images is an
    error naming it."""
    found: dict[Path, Path] = {}
    skip = exclude.resolve() if exclude is not None else None
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not (skip is not None and p.resolve().is_relative_to(skip)))
            if not images:
                raise ValueError(f"folder {item} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        elif item.is_file():
            images = [item]
        else:
            raise FileNotFoundError(f"input {item} does not exist")
        for p in images:
            found.setdefault(p.resolve(), p)
    if not found:
        raise ValueError("no input images given")
    return list(found.values())


def _mask_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` per image; a stem seen before gets ``_1``, ``_2``, ... (first free name)."""
    used, names = set(), []
    for p in paths:
        name, k = f"{p.stem}.png", 0
        while name in used:
            k += 1
            name = f"{p.stem}_{k}.png"
        used.add(name)
        names.append(name)
    return names


def predict(config: PredictConfig | str | Path, inputs=None, output_csv=None, **options) -> dict:
    """Classifies the images of ``inputs`` (files and/or folders, see :func:`collect_images`)
    with the model of ``checkpoint`` and writes ``output``: ``path, predicted, prob_<class>...``
    (one row per image, class columns in the checkpoint's class-map order), plus a ``mask``
    column when ``masks_dir`` is given.

    ``config``: a :class:`PredictConfig`, or the checkpoint, with the inputs and the output CSV
    next to it and :class:`PredictConfig`'s other fields as keywords
    (``predict(ckpt, [folder], "p.csv", device="cpu")``).

    With `masks_dir`, each image's predicted segmentation (argmax of the segmentation head,
    resized nearest to the original image size, 0 / 255 8-bit) is written there as
    ``<image stem>.png`` (``<stem>_1.png``, ... for repeated stems); a model without a
    segmentation head (baselines, ``walnet_no_pgm``) is then an error.

    An existing CSV (or mask file) is only replaced with ``overwrite=True``; the CSV is written
    atomically once every image is done. A missing or unreadable image is an error naming it.
    Returns a summary: ``images``, ``output``, ``masks`` (folder or None), ``counts`` per class.
    """
    if not isinstance(config, PredictConfig):
        config = PredictConfig(checkpoint=config, inputs=inputs, output=output_csv, **options)
    elif inputs is not None or output_csv is not None or options:
        raise ValueError("pass either a PredictConfig or the checkpoint, inputs, output and options, not both")
    return _predict(config)


@torch.no_grad()
def _predict(config: PredictConfig) -> dict:
    overwrite = config.overwrite
    output_csv = Path(config.output)
    if output_csv.exists() and not overwrite:
        raise FileExistsError(f"{output_csv} already exists; pass --overwrite to replace it")
    masks_dir = Path(config.masks_dir) if config.masks_dir is not None else None
    paths = collect_images(config.inputs, exclude=masks_dir)
    device = pick_device(config.device)
    model, classes, trained, _ = load_trained(config.checkpoint, device)
    mask_names = None
    if masks_dir is not None:
        if getattr(model, "decoder", None) is None:
            raise ValueError(f"model {trained.model!r} of {config.checkpoint} has no segmentation head; "
                             "--masks needs a WAL-Net with its PGM (not a baseline or walnet_no_pgm)")
        mask_names = _mask_names(paths)
        taken = [n for n in mask_names if (masks_dir / n).exists()]
        if taken and not overwrite:
            raise FileExistsError(f"{masks_dir / taken[0]} already exists ({len(taken)} mask file(s) would be "
                                  "replaced); pass --overwrite to replace them")
        masks_dir.mkdir(parents=True, exist_ok=True)
    dataset = PlaqueDataset([Record(p, 0) for p in paths], size=trained.size)
    loader = torch.utils.data.DataLoader(dataset, config.batch_size, num_workers=config.workers,
                                         pin_memory=device.type == "cuda")
    probs = np.zeros((len(paths), len(classes)), dtype=np.float32)
    for batch in loader:
        index = batch["index"].numpy()
        out = _as_output(model(batch["image"].to(device)))
        probs[index] = torch.softmax(out.logits.float(), dim=1).cpu().numpy()
        if mask_names is not None:
            seg = (out.seg_logits.argmax(dim=1) * 255).to(torch.uint8).cpu().numpy()
            for i, mask in zip(index, seg):
                with Image.open(paths[i]) as original:  # the dataset has read it: only its size here
                    size = original.size
                Image.fromarray(mask).resize(size, Image.NEAREST).save(masks_dir / mask_names[i])
    predicted = probs.argmax(axis=1)

    with atomic_open(output_csv, text=True) as f:
        writer = csv.writer(f)
        writer.writerow(["path", "predicted", *(f"prob_{c}" for c in classes), *(["mask"] if mask_names else [])])
        for i, p in enumerate(paths):
            row = [str(p), classes[predicted[i]], *(f"{float(x):.9g}" for x in probs[i])]
            writer.writerow(row + ([str(masks_dir / mask_names[i])] if mask_names else []))
    counts = {c: int((predicted == k).sum()) for k, c in enumerate(classes)}
    return {"images": len(paths), "output": str(output_csv), "masks": str(masks_dir) if masks_dir else None,
            "counts": counts}
