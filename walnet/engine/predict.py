"""``walnet predict``: class probabilities of images (files and/or folders) from a checkpoint
or an exported model folder, as a CSV file, and optionally the predicted plaque masks as PNGs.

The model is rebuilt from the checkpoint as ``walnet evaluate`` does (its train config and class
map), or read from a ``walnet export`` folder (:func:`walnet.models.load_pretrained`; classes and
input size from its config.json); the images are read as in training
(:class:`walnet.data.PlaqueDataset`: RGB, resized to the train size, scaled to [0, 1]).
DICOM inputs (``.dcm``, ``.dicom``; ``pip install 'walnet[dicom]'``) are cropped to their
ultrasound region unless ``--no-dicom-region`` is given or the checkpoint was trained with it;
each frame of a multi-frame file is classified on its own row, and the CSV then has a ``frame``
column (empty for single images).
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from walnet.data.datasets import IMAGE_EXTENSIONS, PlaqueDataset, Record, expand_dicom
from walnet.data.dicom import DICOM_EXTENSIONS
from walnet.engine.checkpoint import WriteError, atomic_open, check_writable, remove_stale_temps, temp_prefix
from walnet.engine.config import PredictConfig
from walnet.engine.speed import loader_workers
from walnet.engine.step import as_output
from walnet.engine.trainer import load_trained, pick_device
from walnet.models.pretrained import load_pretrained, read_config


def collect_images(inputs, exclude: Path | None = None) -> list[Path]:
    """The image files of `inputs` (files and/or folders), in order: a file as given, a folder
    scanned recursively for :data:`IMAGE_EXTENSIONS` (sorted; hidden files and folders, whose
    names start with ".", skipped: temporaries and macOS "._" companions are no images). Files
    under `exclude` (the masks folder) are skipped when it lies inside a scanned folder, so
    written masks are not read back as input; a folder at or under `exclude` is scanned whole.
    The same file named twice is kept once. A missing input or a folder without images is an
    error naming it."""
    found: dict[Path, Path] = {}
    skip = exclude.resolve() if exclude is not None else None
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            skip_here = skip if skip is not None and not item.resolve().is_relative_to(skip) else None
            images = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(item).parts)
                            and not (skip_here is not None and p.resolve().is_relative_to(skip_here)))
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


def _mask_names(records: list[Record]) -> list[str]:
    """``<stem>.png`` per image (``<stem>_frame<k>.png`` per DICOM frame); a stem seen before
    gets ``_1``, ``_2``, ... (first free name)."""
    used, names = set(), []
    for r in records:
        stem = r.path.stem if r.frame is None else f"{r.path.stem}_frame{r.frame}"
        name, k = f"{stem}.png", 0
        while name in used:
            k += 1
            name = f"{stem}_{k}.png"
        used.add(name)
        names.append(name)
    return names


def predict(config: PredictConfig | str | Path, inputs=None, output_csv=None, **options) -> dict:
    """Classifies the images of ``inputs`` (files and/or folders, see :func:`collect_images`)
    with the model of ``checkpoint`` (or of the exported folder ``model``) and writes
    ``output``: ``path, predicted, prob_<class>...`` (one row per image, class columns in the
    model's class order), plus a ``mask`` column when ``masks_dir`` is given.

    ``config``: a :class:`PredictConfig`, or the checkpoint, with the inputs and the output CSV
    next to it and :class:`PredictConfig`'s other fields as keywords
    (``predict(ckpt, [folder], "p.csv", device="cpu")``; ``predict(None, [folder], "p.csv",
    model="exported/")`` for a model folder).

    With `masks_dir`, each image's predicted segmentation (argmax of the segmentation head,
    resized nearest to the image size as read: a DICOM frame's after its region crop; 0 / 255
    8-bit) is written there as
    ``<image stem>.png`` (``<stem>_1.png``, ... for repeated stems); a model without a
    segmentation head (baselines, ``walnet_no_pgm``) is then an error.

    Nothing is written before every check passed: the CSV and the masks never go over an input
    image (not even with ``overwrite=True``), an existing CSV or mask file is only replaced with
    ``overwrite=True``, both places must be writable, and every image must be readable (else an
    error naming it). The masks are written to a temporary folder and moved into place together
    with the CSV, which is written atomically once every image is done: a failed run leaves
    neither behind.
    Returns a summary: ``images``, ``output``, ``masks`` (folder or None), ``counts`` per class.
    """
    if not isinstance(config, PredictConfig):
        config = PredictConfig(checkpoint=config, inputs=inputs, output=output_csv, **options)
    elif inputs is not None or output_csv is not None or options:
        raise ValueError("pass either a PredictConfig or the checkpoint, inputs, output and options, not both")
    return _predict(config)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()  # follows links: a link to an input is that input
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_targets(output_csv: Path, masks_dir: Path | None, paths: list[Path], mask_names: list[str] | None,
                   overwrite: bool) -> None:
    """Everything predict will refuse to write, decided before any model work: the user's input
    images are never a target (not even with ``overwrite``: compared as files, so links and
    other spellings of an input count as the input), the CSV and a mask never share a path, an
    existing CSV or mask is only replaced with ``overwrite``, and both places are writable."""
    inputs = {}
    for p in paths:
        inputs.setdefault(_file_id(p), p)
    inputs.pop(None, None)  # an input gone since it was found: the dataset reports it later
    if output_csv.is_dir():
        raise ValueError(f"--output {output_csv} is a folder; give the CSV file to write, "
                         f"e.g. {output_csv / 'predictions.csv'}")
    if _file_id(output_csv) in inputs:
        raise ValueError(f"--output {output_csv} is one of your input images ({inputs[_file_id(output_csv)]}); "
                         "give another file for the CSV: input images are never written")
    if output_csv.exists() and not overwrite:
        raise FileExistsError(f"{output_csv} already exists; pass --overwrite to replace it")
    check_writable(output_csv, "--output")
    if masks_dir is None:
        return
    check_writable(masks_dir, "--masks", folder=True)
    targets = [masks_dir / n for n in mask_names]
    clashes = [(t, p) for t, p in zip(targets, paths) if _file_id(t) in inputs]
    if clashes:
        target, source = clashes[0]
        raise ValueError(f"--masks {masks_dir} would write the mask of {source} over your input image "
                         f"{inputs[_file_id(target)]} ({len(clashes)} input image(s) in all); choose a --masks "
                         "folder apart from the input images: they are never replaced, not even with --overwrite")
    csv_id = output_csv.resolve()
    same = [t for t in targets if t.resolve() == csv_id]
    if same:
        raise ValueError(f"--output {output_csv} is also where --masks writes the mask {same[0].name}; "
                         "give the CSV another name or place")
    folders = [t for t in targets if t.is_dir()]
    if folders:
        raise ValueError(f"--masks {masks_dir}: {folders[0]} is a folder where a mask file would go")
    taken = [t for t in targets if t.exists() or t.is_symlink()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken[0]} already exists ({len(taken)} earlier mask(s) would be replaced); "
                              "pass --overwrite to replace them")


def _check_readable(records: list[Record], size: int, region: bool) -> None:
    """Every input opens as the dataset opens it, checked before anything is written (an
    error half way would leave masks without their CSV)."""
    checked = PlaqueDataset(records, size=size, skip_bad=True, dicom_region=region)
    if not checked.skipped:
        return
    readable = set(checked.records)
    bad = [r for r in records if r not in readable]
    try:
        PlaqueDataset(bad[:1], size=size, dicom_region=region)[0]  # the dataset's own words for what is wrong
        reason = f"cannot read image {bad[0].path}"
    except (FileNotFoundError, ValueError) as exc:
        reason = str(exc)
    more = f" (and {len(bad) - 1} more unreadable input image(s))" if len(bad) > 1 else ""
    raise ValueError(f"{reason}{more}; nothing was written")


@torch.no_grad()
def _predict(config: PredictConfig) -> dict:
    overwrite = config.overwrite
    output_csv = Path(config.output)
    masks_dir = Path(config.masks_dir) if config.masks_dir is not None else None
    found = collect_images(config.inputs, exclude=masks_dir)
    # one record per image, one per frame of a multi-frame DICOM file (labels are not used)
    records = [r for p in found for r in expand_dicom(Record(p, 0))]
    shown = {p.resolve(): p for p in found}  # the CSV names each image as the user gave it
    paths = [shown.get(r.path, r.path) for r in records]
    mask_names = _mask_names(records) if masks_dir is not None else None
    _check_targets(output_csv, masks_dir, paths, mask_names, overwrite)
    device = pick_device(config.device)
    region = not config.no_dicom_region
    if config.model is not None:
        exported = read_config(config.model)
        model = load_pretrained(config.model, device)
        classes, name, source = tuple(exported["classes"]), exported["model"], config.model
        size = exported["input"]["size"]
    else:
        model, classes, trained, _ = load_trained(config.checkpoint, device)
        name, size, source = trained.model, trained.size, config.checkpoint
        region = region and not trained.no_dicom_region  # read DICOM inputs as the model was trained
    if masks_dir is not None and getattr(model, "decoder", None) is None:
        raise ValueError(f"model {name!r} of {source} has no segmentation head; "
                         "--masks needs a WAL-Net with its PGM (not a baseline or walnet_no_pgm)")
    _check_readable(records, size, region)

    made = []  # folders this run creates: removed again (when still empty) if it fails
    if masks_dir is not None:
        for folder in (masks_dir, *masks_dir.parents):
            if folder.exists():
                break
            made.append(folder)
    staging, done = None, False
    try:
        if masks_dir is not None:
            # masks go to a temporary folder first and move into place with the CSV, so a
            # failure part way leaves neither (and a rerun is not refused)
            masks_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(masks_dir, _STAGING)
            staging = Path(tempfile.mkdtemp(prefix=temp_prefix(_STAGING), suffix=".tmp", dir=masks_dir))
        probs = _run(model, records, size, region, config, device, classes, staging, mask_names)
        predicted = probs.argmax(axis=1)
        with atomic_open(output_csv, text=True) as f:
            writer = csv.writer(f)
            frames = any(r.frame is not None for r in records)
            writer.writerow(["path", *(["frame"] if frames else []), "predicted", *(f"prob_{c}" for c in classes),
                             *(["mask"] if mask_names else [])])
            for i, (p, r) in enumerate(zip(paths, records)):
                frame = ["" if r.frame is None else str(r.frame)] if frames else []
                row = [str(p), *frame, classes[predicted[i]], *(f"{float(x):.9g}" for x in probs[i])]
                writer.writerow(row + ([str(masks_dir / mask_names[i])] if mask_names else []))
            f.flush()
            os.fsync(f.fileno())
            for name in mask_names or ():  # the CSV is on disk; it is renamed into place right after
                os.replace(staging / name, masks_dir / name)
        done = True
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not done:
            for folder in made:  # deepest first; only while empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
    counts = {c: int((predicted == k).sum()) for k, c in enumerate(classes)}
    return {"images": len(records), "output": str(output_csv), "masks": str(masks_dir) if masks_dir else None,
            "counts": counts}


def _read_size(dataset: PlaqueDataset, index: int) -> tuple[int, int]:
    """(width, height) of item `index`'s image as the dataset reads it."""
    r = dataset.records[index]
    if r.frame is None and r.path.suffix.lower() not in DICOM_EXTENSIONS:
        with Image.open(r.path) as original:  # the dataset has read it: only its size here (no decoding)
            return original.size
    return dataset.image_size(index)  # a DICOM frame: its size after the region crop


_STAGING = "walnet-masks"  # the temporary masks folder's name in the masks folder (see temp_prefix)


def _run(model, records, size, region, config, device, classes, staging, mask_names) -> np.ndarray:
    """The model's class probabilities of every record [N, classes]; with `staging`, each
    image's mask is written there under its name in `mask_names`."""
    dataset = PlaqueDataset(records, size=size, dicom_region=region)
    loader = torch.utils.data.DataLoader(dataset, config.batch_size, num_workers=loader_workers(config.workers, device),
                                         pin_memory=device.type == "cuda")
    probs = np.zeros((len(records), len(classes)), dtype=np.float32)
    for batch in loader:
        index = batch["index"].numpy()
        out = as_output(model(batch["image"].to(device)))
        probs[index] = torch.softmax(out.logits.float(), dim=1).cpu().numpy()
        if staging is not None:
            seg = (out.seg_logits.argmax(dim=1) * 255).to(torch.uint8).cpu().numpy()
            for i, mask in zip(index, seg):
                size_i = _read_size(dataset, i)
                target = staging / mask_names[i]
                try:
                    Image.fromarray(mask).resize(size_i, Image.NEAREST).save(target)
                except OSError as exc:
                    raise WriteError(f"cannot write the mask {target.name} to {staging.parent}: "
                                     f"{exc.strerror or exc}; no mask and no CSV were written") from None
    return probs
