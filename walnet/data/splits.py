"""Train / validation / test splits: 6:2:2, stratified by class, grouped by patient (docs/design.md §7).

No patient ever appears in two splits. The split is saved to a CSV file beside the outputs and
reused, so every run of an experiment sees the same partition. Its keys are image files, stored
as resolved absolute paths: the same data reached through another spelling of its path (relative,
absolute, ``a/../a``, another working directory) finds its split, and a split file never holds
one image twice (which would put it in two splits).
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from walnet.files import atomic_open

SPLITS = ("train", "val", "test")


def split_indices(
    labels: list[int], patients: list[str | None] | None = None, ratios=(0.6, 0.2, 0.2), seed: int = 0
) -> list[str]:
    """Assigns every record to "train", "val" or "test".

    Records are grouped by patient id (a record without one is its own group); each group goes
    whole to one split, so no patient is in two splits. Within each class (a group's class is the
    most common label of its records) the groups are shuffled with `seed` and dealt, largest
    first, to the split furthest below its target share, so class proportions follow `ratios`.
    """
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers, got {ratios}")
    if patients is not None and len(patients) != len(labels):
        raise ValueError(f"patients has {len(patients)} entries but labels has {len(labels)}")
    share = np.asarray(ratios, dtype=float) / float(sum(ratios))
    groups: dict[str, list[int]] = defaultdict(list)
    for i in range(len(labels)):
        pid = patients[i] if patients is not None else None
        groups[f"p:{pid}" if pid not in (None, "") else f"r:{i}"].append(i)
    by_class: dict[int, list[list[int]]] = defaultdict(list)
    for members in groups.values():
        values, counts = np.unique([labels[i] for i in members], return_counts=True)
        by_class[int(values[np.argmax(counts)])].append(members)
    rng = np.random.default_rng(seed)
    out = [""] * len(labels)
    for cls in sorted(by_class):
        class_groups = by_class[cls]
        order = rng.permutation(len(class_groups))
        # larger groups first (stable after the shuffle), so the small ones even out the shares
        order = sorted(order, key=lambda g: -len(class_groups[g]))
        total = sum(len(g) for g in class_groups)
        filled = np.zeros(3)
        for g in order:
            deficit = share * total - filled
            k = int(np.argmax(deficit))
            filled[k] += len(class_groups[g])
            for i in class_groups[g]:
                out[i] = SPLITS[k]
    return out


def _key(text: str) -> str:
    """A split key: the resolved absolute path of an image file. A relative key is resolved from
    the working directory, which is how keys were given when they were not stored resolved."""
    return str(Path(text).resolve())


def save_split(path: str | Path, keys: list[str], splits: list[str]) -> None:
    """Writes `key,split` rows, atomically; keys are image paths, stored resolved (see the module
    docstring). Raises ValueError for a key given twice (in any spelling) or an unknown split."""
    path = Path(path)
    keys, splits = [str(k) for k in keys], [str(s) for s in splits]
    if len(keys) != len(splits):
        raise ValueError(f"save_split got {len(keys)} keys but {len(splits)} splits")
    bad = sorted(set(splits) - set(SPLITS))
    if bad:
        raise ValueError(f"unknown split names {bad}; expected {SPLITS}")
    resolved = [_key(k) for k in keys]
    first: dict[str, str] = {}
    for given, key in zip(keys, resolved):
        if key in first:
            raise ValueError(f"cannot save the split to {path}: the image {key} is listed twice "
                             f"({first[key]!r} and {given!r}); one image must have one split")
        first[key] = given
    with atomic_open(path, text=True) as f:
        writer = csv.writer(f)
        writer.writerow(["key", "split"])
        writer.writerows(zip(resolved, splits))


def load_split(path: str | Path) -> dict[str, str]:
    """Reads a split file written by :func:`save_split`: {resolved image path: split}.

    A relative key is resolved from the working directory; if no such file exists there, the
    split was made in another working directory and ValueError says so. A file listed twice, a
    bad header or an unknown split name is a ValueError too; each message says how to redo the
    split (delete the file: a new one is made, with a new test set).
    """
    path = Path(path)
    redo = f"delete {path} to make a new split (the test set changes)"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a split file (not UTF-8 text); {redo}") from None
    except csv.Error as exc:
        raise ValueError(f"{path} is not a split file ({exc}); {redo}") from None
    if columns is None and not rows:
        raise ValueError(f"{path} is empty, not a split file (expected columns key,split); {redo}")
    if set(columns or ()) != {"key", "split"}:
        raise ValueError(f"{path} is not a split file (expected columns key,split); {redo}")
    bad = [r["split"] for r in rows if r["split"] not in SPLITS]
    if bad:
        raise ValueError(f"{path}: unknown split names {sorted(set(bad), key=str)}; expected {SPLITS}; {redo}")
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    relative = []  # (line, key as written) of keys relative to the working directory
    for line, r in enumerate(rows, start=2):
        given = r["key"] or ""
        if not given:
            raise ValueError(f"{path}:{line}: empty key; {redo}")
        try:
            key = _key(given)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}:{line}: key {given!r} is not a path ({exc}); {redo}") from None
        if key in out:
            raise ValueError(f"{path}: lines {lines[key]} and {line} list the same image {key} (one image must have "
                             f"one split); {redo}")
        if not Path(given).is_absolute():
            relative.append((line, given, key))
        out[key], lines[key] = r["split"], line
    if relative and not any(_exists(key) for _, _, key in relative):
        line, given, _ = relative[0]
        raise ValueError(f"{path}:{line}: the image paths are relative to the working directory the split was "
                         f"made in (e.g. {given!r}), and none of them exists from {Path.cwd()}; run from that "
                         f"folder, or {redo}")
    return out


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:
        return False


def assign_splits(records, output: Path, seed: int, *, save: bool = True,
                  hint: str = "score the data the run was trained on") -> list[str]:
    """The split of each record of a run whose folder is `output`: the records' own split column
    if every record has one; else ``output/split.csv`` if it exists (reused, so every run sees
    the same partition; `hint` ends the error when it does not cover the records); else a new
    6:2:2 split (:func:`split_indices`), written there unless ``save=False``."""
    if all(r.split for r in records):
        return [r.split for r in records]
    keys = [r.key for r in records]
    split_file = Path(output) / "split.csv"
    if split_file.is_file():
        saved = load_split(split_file)
        missing = [k for k in keys if k not in saved]
        if missing:
            raise ValueError(f"{split_file} does not cover {len(missing)} image(s), e.g. {missing[0]}: it holds "
                             f"the split of other data; {hint}")
        return [saved[k] for k in keys]
    splits = split_indices([r.label for r in records], [r.patient for r in records], seed=seed)
    if save:
        save_split(split_file, keys, splits)
    return splits
