"""The images ``walnet predict`` reads from files and folders (:func:`collect_images`), and the
names of their masks and overlays, which mirror each input folder's tree (:func:`output_names`)."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from walnet.data.datasets import IMAGE_EXTENSIONS, Record
from walnet.files import refuse_special


def collect_images(inputs, exclude=None) -> list[Path]:
    """The image files of `inputs` (files and/or folders), in order: a file as given, a folder
    scanned recursively for :data:`IMAGE_EXTENSIONS` (sorted; hidden files and folders, whose
    names start with ".", skipped: temporaries and macOS "._" companions are no images). Files
    under `exclude` (a folder or several: the masks and overlays folders) are skipped when it lies
    inside a scanned folder, so written PNGs are not read back as input; a folder at or under
    `exclude` is scanned whole. The same file named twice is kept once. A missing input or a
    folder without images is an error naming it."""
    return [path for path, _ in input_images(inputs, exclude)]


def input_images(inputs, exclude=None) -> list[tuple[Path, str | None]]:
    """:func:`collect_images` with each image's path relative to the input folder it was found
    in (posix separators; None for a file given itself)."""
    found: dict[Path, tuple[Path, str | None]] = {}
    if exclude is None or isinstance(exclude, (str, os.PathLike)):
        exclude = () if exclude is None else (exclude,)
    skips = [Path(e).resolve() for e in exclude if e is not None]
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            here = item.resolve()
            skip_here = [skip for skip in skips if not here.is_relative_to(skip)]
            images = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(item).parts)
                            and not any(p.resolve().is_relative_to(skip) for skip in skip_here))
            if not images:
                raise ValueError(f"folder {item} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            named = [(p, p.relative_to(item).as_posix()) for p in images]
        elif item.is_file():
            named = [(item, None)]
        else:
            refuse_special(item, f"input {item}", "a regular file; give image files or folders")
            raise FileNotFoundError(f"input {item} does not exist")
        for p, name in named:
            found.setdefault(p.resolve(), (p, name))
    if not found:
        raise ValueError("no input images given")
    return list(found.values())


def output_names(records: list[Record], relative: list[str | None]) -> list[str]:
    """The file name of each record's mask and overlay in the --masks / --overlays folder: its
    path in `relative` (the image's place under its input folder) with ``.png`` for its suffix,
    so the folder mirrors the input tree; ``<stem>.png`` for an image without one (a file given
    itself, a --csv row). A DICOM frame adds ``_frame<k>``. A name taken before, as a file or as
    a subfolder of another (ignoring case), gets ``_1``, ``_2``, ... (the first free one): two
    outputs never share a path."""
    used, folders, names = set(), set(), []
    for r, rel in zip(records, relative):
        stem = r.path.stem if rel is None else str(PurePosixPath(rel).with_suffix(""))
        stem = stem if r.frame is None else f"{stem}_frame{r.frame}"
        name, k = f"{stem}.png", 0
        while name.casefold() in used or name.casefold() in folders:
            k += 1
            name = f"{stem}_{k}.png"
        parents = {str(p).casefold() for p in PurePosixPath(name).parents if p.parts}
        if parents & used:  # a folder "x.png" of images next to an image x.png: rare, and no suffix helps
            raise ValueError(f"the masks and overlays of {r.path} would go into {name}, but a mask of another "
                             "image has that folder's name; rename that folder")
        used.add(name.casefold())
        folders |= parents
        names.append(name)
    return names
