"""``walnet predict``: class probabilities of images (files and/or folders, or the rows of a
CSV with ROI boxes) from a checkpoint or an exported model folder, as a CSV file, and optionally
the predicted plaque masks and attention overlays as PNGs.

The model comes from :func:`walnet.engine.loading.load_model`: rebuilt from a checkpoint (its
train config and class map) or read from a ``walnet export`` folder (classes and input size from
its config.json); the images are read as in training
(:class:`walnet.data.PlaqueDataset`: RGB, cropped to the ROI box a ``--csv`` row gives, resized to
the train size, scaled to [0, 1]): a CSV is read by training's reader
(:func:`walnet.data.read_csv`, labels optional), so a model sees at prediction what it saw in
training. The probabilities are ``softmax(logits / temperature)``, the model's temperature where
``walnet calibrate`` fitted one (:func:`walnet.engine.step.probabilities`).
DICOM inputs (``.dcm``, ``.dicom``; ``pip install 'walnet[dicom]'``) are cropped to their
ultrasound region unless ``--no-dicom-region`` is given or the checkpoint was trained with it;
each frame of a multi-frame file is classified on its own row, and the CSV then has a ``frame``
column (empty for single images). The model runs through :class:`walnet.Predictor`
(:mod:`walnet.engine.predictor`), the Python inference API.
"""
from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from walnet.constants import FORMULA_PREFIXES, formula_problem
from walnet.data.datasets import PlaqueDataset, Record, expand_frames
from walnet.data.dicom import DICOM_EXTENSIONS
from walnet.data.sources import csv_labels, read_csv
from walnet.engine.config import PredictConfig
from walnet.engine.checks import pick_device
from walnet.engine.inputs import Inputs, file_id
from walnet.engine.loading import load_model
from walnet.engine.image_tree import collect_images, input_images, output_names
from walnet.engine.predictor import Predictor, place
from walnet.files import WriteError, atomic_open, check_writable, staged


__all__ = ["collect_images", "predict"]


def predict(config: PredictConfig | str | Path, inputs=None, output_csv=None, **options) -> dict:
    """Classifies the images of ``inputs`` (files and/or folders, see :func:`collect_images`),
    or those listed in ``csv``, with the model of ``checkpoint`` (or of the exported folder
    ``model``) and writes ``output``: ``path, predicted, prob_<class>...`` (one row per image,
    class columns in the model's class order), plus a ``mask`` / ``overlay`` column when
    ``masks_dir`` / ``overlays_dir`` is given.

    ``csv`` is read as training reads its CSV (:func:`walnet.data.read_csv`, same columns and
    checks, with the label optional and not used): each image is cropped to its row's ROI box
    (``y1,x1,y2,x2`` or ``xmin,ymin,xmax,ymax``) before the resize, as in training; a box
    outside its image is an error naming the CSV line and the file. Rows of one image with
    different boxes (two plaques) are predicted one by one, a row each; rows that repeat a box
    are merged. The output's ``path`` is then the image's absolute path, in the CSV's row order.

    ``amp``: the model runs under bfloat16 autocast (on CUDA and on CPU alike; bfloat16 needs
    no loss scaling and has float32's range); the probabilities are computed in float32 from
    the bfloat16 logits.

    ``config``: a :class:`PredictConfig`, or the checkpoint, with the inputs and the output CSV
    next to it and :class:`PredictConfig`'s other fields as keywords
    (``predict(ckpt, [folder], "p.csv", device="cpu")``; ``predict(None, [folder], "p.csv",
    model="exported/")`` for a model folder).

    With `masks_dir`, each image's predicted segmentation (argmax of the segmentation head,
    resized nearest to the image size as read, a DICOM frame's after its region crop, 0 / 255
    8-bit; with an ROI box, resized to the box and 0 outside it) is written there under its
    :func:`~walnet.engine.image_tree.output_names` name: the folder mirrors each input folder's
    tree (``scans/a/b/x.jpg`` of the input ``scans`` -> ``<masks_dir>/a/b/x.png``), a file given
    itself or a --csv row is ``<stem>.png``, and a name taken before gets ``_1``, ``_2``, ....
    With `overlays_dir`, each image's attention overlay
    (:func:`walnet.engine.panels.attention_overlay`: the fused attention A1·A2·A3 as the PGM
    fuses it, as a heat map over the image, or over its ROI crop, at the file's resolution; the
    predicted mask's contour; the box the RCM crops; titled with the file, the predicted class
    and its probability and, where ``csv`` labels the images, the true class) is written there
    under the same names. A model without a segmentation
    head (baselines, ``walnet_no_pgm``) is then an error.

    Nothing is written before every check passed: the CSV, masks and overlays never go over an
    input image (not even with ``overwrite=True``), an existing CSV, mask or overlay file is only
    replaced with ``overwrite=True``, every place must be writable, and every image must be
    readable (else an error naming it). The masks and overlays are written to temporary folders
    and moved into place together with the CSV, which is written atomically once every image is
    done: a failed run leaves none of them behind.
    Returns a summary: ``images``, ``output``, ``masks`` and ``overlays`` (folders or None),
    ``counts`` per class.
    """
    if not isinstance(config, PredictConfig):
        config = PredictConfig(checkpoint=config, inputs=inputs, output=output_csv, **options)
    elif inputs is not None or output_csv is not None or options:
        raise ValueError("pass either a PredictConfig or the checkpoint, inputs, output and options, not both")
    return _predict(config)


def _reads(config: PredictConfig, paths: list[Path]) -> Inputs:
    """Everything predict reads: the images, the --csv file, the checkpoint or the model folder
    (and each file in it)."""
    reads = Inputs()
    for p in paths:
        reads.add_file(p, f"your input image {p}")
    if config.csv is not None:
        reads.add_file(config.csv, f"the --csv file {config.csv}")
    if config.checkpoint is not None:
        reads.add_file(config.checkpoint, f"the checkpoint {config.checkpoint}")
    if config.model is not None:
        reads.add_folder(config.model, f"the model folder {config.model}")
    return reads


def _check_targets(output_csv: Path, folders: list[tuple[str, str, Path, list[str]]], paths: list[Path],
                   overwrite: bool, reads: Inputs) -> None:
    """Everything predict will refuse to write, decided before any model work: nothing it reads
    (`reads`: the input images, the --csv file, the checkpoint, the model folder and its files)
    is a target (not even with ``overwrite``: compared as files, so links and other spellings of
    an input count as the input), the CSV and a PNG never share a path, two PNG folders are not
    one folder, an existing CSV or PNG is only replaced with ``overwrite``, and every place is
    writable. `folders`: (flag, what, folder, file names) of each PNG folder, e.g. ("--masks",
    "mask", masks_dir, names)."""
    inputs = {}
    for p in paths:
        inputs.setdefault(file_id(p), p)
    inputs.pop(None, None)  # an input gone since it was found: the dataset reports it later
    if output_csv.is_dir():
        raise ValueError(f"--output {output_csv} is a folder; give the CSV file to write, "
                         f"e.g. {output_csv / 'predictions.csv'}")
    if file_id(output_csv) in inputs:
        raise ValueError(f"--output {output_csv} is one of your input images ({inputs[file_id(output_csv)]}); "
                         "give another file for the CSV: input images are never written")
    reads.check(output_csv, "--output", "predict")
    if output_csv.exists() and not overwrite:
        raise FileExistsError(f"{output_csv} already exists; pass --overwrite to replace it")
    check_writable(output_csv, "--output")
    if len(folders) == 2 and folders[0][2].resolve() == folders[1][2].resolve():
        # one name per image in each: the overlay would replace the mask
        raise ValueError(f"{folders[0][0]} and {folders[1][0]} are both {folders[0][2]}; give them different folders")
    for flag, what, folder, names in folders:
        reads.check(folder, flag, "predict")
        check_writable(folder, flag, folder=True)
        targets = [folder / n for n in names]
        clashes = [(t, p) for t, p in zip(targets, paths) if file_id(t) in inputs]
        if clashes:
            target, source = clashes[0]
            raise ValueError(f"{flag} {folder} would write the {what} of {source} over your input image "
                             f"{inputs[file_id(target)]} ({len(clashes)} input image(s) in all); choose a {flag} "
                             "folder apart from the input images: they are never replaced, not even with --overwrite")
        _check_not_read(flag, what, folder, targets, reads)
        csv_id = output_csv.resolve()
        same = [t for t in targets if t.resolve() == csv_id]
        if same:
            raise ValueError(f"--output {output_csv} is also where {flag} writes the {what} {same[0].name}; "
                             "give the CSV another name or place")
        _check_subfolders(flag, what, folder, names)
        taken_by_folders = [t for t in targets if t.is_dir()]
        if taken_by_folders:
            raise ValueError(f"{flag} {folder}: {taken_by_folders[0]} is a folder where a {what} file would go")
        taken = [t for t in targets if t.exists() or t.is_symlink()]
        if taken and not overwrite:
            raise FileExistsError(f"{taken[0]} already exists ({len(taken)} earlier {what}(s) would be replaced); "
                                  "pass --overwrite to replace them")


def _check_subfolders(flag: str, what: str, folder: Path, names: list[str]) -> None:
    """A ValueError where a subfolder a mirrored name needs ("a/b" of "a/b/x.png") is a file."""
    for sub in sorted({parent for name in names for parent in PurePosixPath(name).parents if parent.parts}):
        if (folder / sub).exists() and not (folder / sub).is_dir():
            raise ValueError(f"{flag} {folder}: {folder / sub} is a file where a folder of {what}s would go")


def _check_not_read(flag: str, what: str, folder: Path, targets: list[Path], reads: Inputs) -> None:
    for target in targets:
        relation = reads.owner(target)
        if relation is not None:
            raise ValueError(f"{flag} {folder} would write the {what} {target.name} where {target} {relation}; "
                             f"choose another {flag} folder: predict never writes what it reads, not even with "
                             "--overwrite")


def _check_readable(records: list[Record], size: int, region: bool) -> None:
    """Every input opens as the dataset opens it (its ROI box inside it), checked before
    anything is written (an error half way would leave masks without their CSV)."""
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


def _records(config: PredictConfig, exclude) -> tuple[list[Record], list[Path], list[str | None]]:
    """The records to predict, each one's path as the output CSV shows it and its path relative
    to its input folder (None: a file given itself, or a --csv row): the CSV's rows (labels not
    read; masks not read either, predict draws its own), or the input images."""
    if config.csv is not None:
        listed, _ = read_csv(config.csv, labels=False, per_box=True)  # two boxes of one image: two plaques
        if not listed:
            raise ValueError(f"--csv {config.csv} lists no images")
        records = [Record(r.path, 0, box=r.box, frame=r.frame, origin=r.origin) for r in listed]
        return records, [r.path for r in records], [None] * len(records)  # a CSV lists files: flat names
    found = input_images(config.inputs, exclude)
    # one record per image, one per frame of a multi-frame DICOM file or a video (labels are not used)
    expanded = [(r, name) for p, name in found for r in expand_frames(Record(p, 0))]
    shown = {p.resolve(): p for p, _ in found}  # the CSV names each image as the user gave it
    records = [r for r, _ in expanded]
    return records, [shown.get(r.path, r.path) for r in records], [name for _, name in expanded]


@torch.no_grad()
def _predict(config: PredictConfig) -> dict:
    overwrite = config.overwrite
    output_csv = Path(config.output)
    masks_dir = Path(config.masks_dir) if config.masks_dir is not None else None
    overlays_dir = Path(config.overlays_dir) if config.overlays_dir is not None else None
    records, paths, relative = _records(config, (masks_dir, overlays_dir))
    names = output_names(records, relative)
    folders = [(flag, what, folder, names) for flag, what, folder in
               (("--masks", "mask", masks_dir), ("--overlays", "overlay", overlays_dir)) if folder is not None]
    _check_targets(output_csv, folders, paths, overwrite, _reads(config, paths))
    device = pick_device(config.device)
    if config.model is not None:
        trained = load_model(config.model, device, kind="folder")
    else:
        trained = load_model(config.checkpoint, device, kind="checkpoint")
    classes, source = trained.classes, trained.source
    _check_class_names(classes, source)
    for flag, *_ in folders:
        if not trained.spec.has_pgm:
            raise ValueError(f"model {trained.spec.describe()} of {source} has no segmentation head; {flag} needs "
                             "a WAL-Net with its PGM (not a baseline or walnet_no_pgm)")
    # DICOM inputs are read as the model was trained (Predictor: the option and the model's setting)
    predictor = Predictor(trained, device, amp=config.amp, batch_size=config.batch_size,
                          dicom_region=config.dicom_region)
    _check_readable(records, predictor.size, predictor.dicom_region)

    # The PNGs go to a temporary folder first and move into place with the CSV, so a failure
    # part way leaves none of them (and a rerun is not refused).
    with contextlib.ExitStack() as stack:
        stages = {what: stack.enter_context(staged(folder, _STAGING[what])) for _, what, folder, _ in folders}
        # the true class in overlay titles where --csv labels every row with one of the model's classes
        labels = csv_labels(config.csv, records, classes) if "overlay" in stages else [None] * len(records)
        truth = [None if c is None else classes[c] for c in labels]
        probs = _run(predictor, records, config.workers, {what: stage.path for what, stage in stages.items()}, names,
                     truth, config.quiet)
        predicted = probs.argmax(axis=1)
        with atomic_open(output_csv, text=True) as f:
            writer = csv.writer(f)
            frames = any(r.frame is not None for r in records)
            writer.writerow(["path", *(["frame"] if frames else []), "predicted", *(f"prob_{c}" for c in classes),
                             *stages])
            for i, (p, r) in enumerate(zip(paths, records)):
                frame = ["" if r.frame is None else str(r.frame)] if frames else []
                row = [_path_cell(p), *frame, classes[predicted[i]], *(f"{float(x):.9g}" for x in probs[i])]
                writer.writerow(row + [_path_cell(stage.target / names[i]) for stage in stages.values()])
            f.flush()
            os.fsync(f.fileno())
            for stage in stages.values():  # the CSV is on disk; it is renamed into place right after
                try:
                    stage.commit(names)
                except WriteError as exc:  # some PNGs may be in place: the message says which part
                    raise WriteError(f"{exc}; the CSV {output_csv} was not written") from exc
    counts = {c: int((predicted == k).sum()) for k, c in enumerate(classes)}
    return {"images": len(paths), "output": str(output_csv), "masks": str(masks_dir) if masks_dir else None,
            "overlays": str(overlays_dir) if overlays_dir else None, "counts": counts}


def _check_class_names(classes, source) -> None:
    """A ValueError naming the model's file unless each class name, a column and a cell of the
    CSV, starts like no spreadsheet formula (a checkpoint is not checked for this on loading;
    an exported folder's config.json is)."""
    for name in classes:
        problem = formula_problem(name)
        if problem:
            raise ValueError(f"checkpoint {source}: its class name {name!r} {problem}; predict refuses to write "
                             "it into a CSV")


def _path_cell(path) -> str:
    """`path` as the CSV shows it: as the user gave it, except that a relative path starting like a
    spreadsheet formula gets "./" in front (the same file). An absolute path starts with "/" or a
    drive or share, never so; only a relative one (``=x.png`` given in its folder) can."""
    text = str(path)
    return os.path.join(os.curdir, text) if text.startswith(FORMULA_PREFIXES) else text


#: The temporary folders' names in the masks and overlays folders (see walnet.files.staged).
_STAGING = {"mask": "walnet-masks", "overlay": "walnet-overlays"}


def _write(stage: Path, name: str, write, what: str) -> None:
    """`write(path)` of the file `name` in the staging folder `stage` (its subfolders made)."""
    target = stage / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # a mirrored subfolder
        write(target)
    except OSError as exc:
        raise WriteError(f"cannot write the {what} {name} to {stage.parent}: "
                         f"{exc.strerror or exc}; no mask, overlay or CSV was written") from None


def _read_size(dataset: PlaqueDataset, index: int) -> tuple[int, int]:
    """(width, height) of item `index`'s image as the dataset reads it."""
    r = dataset.records[index]
    if r.frame is None and r.path.suffix.lower() not in DICOM_EXTENSIONS:
        with Image.open(r.path) as original:  # the dataset has read it: only its size here (no decoding)
            return original.size
    return dataset.image_size(index)  # a DICOM frame: its size after the region crop


def _run(predictor: Predictor, records: list[Record], workers, staging: dict, names: list[str],
         truth: list[str | None], quiet: bool = False) -> np.ndarray:
    """The class probabilities of `predictor`'s model for every image [N, classes]; for each kind
    in `staging` ("mask", "overlay"), each image's PNG is written to that folder under its name in
    `names` (an overlay titled with its true class in `truth`, where known); a progress bar
    unless `quiet`."""
    classes = predictor.classes
    dataset = PlaqueDataset(records, size=predictor.size, dicom_region=predictor.dicom_region,
                            resize=predictor.resize)
    probs = np.zeros((len(records), len(classes)), dtype=np.float32)
    if "overlay" in staging:
        from walnet.engine import figures, panels  # matplotlib only when overlays are asked for
    from walnet.engine.progress import bar

    batches = -(-len(dataset) // predictor.batch_size)
    for out in bar(predictor.batches(dataset, workers=workers, maps=bool(staging)), "predict", total=batches,
                   enabled=not quiet):
        probs[out.index] = out.probabilities
        if "mask" in staging:
            for k, i in enumerate(out.index):  # 0 / 255 at the image's size as read, 0 outside its ROI box
                png = Image.fromarray(place(out.seg[k] * 255, records[i].box, *_read_size(dataset, i)))
                _write(staging["mask"], names[i], png.save, "mask")
        if "overlay" in staging:
            for k, i in enumerate(out.index):
                p = out.probabilities[k]
                frame = "" if records[i].frame is None else f" frame {records[i].frame}"
                label = figures.class_title(classes[p.argmax()], p.max(), truth[i])
                title = f"{Path(records[i].path).name}{frame}\n{label}"
                box = None if out.boxes is None else out.boxes[k]
                _write(staging["overlay"], names[i],
                       lambda target: panels.attention_overlay(target, dataset.region(i), out.attention[k],
                                                               out.seg[k], box, title),
                       "overlay")
    return probs
