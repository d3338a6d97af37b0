"""Train / validation / test splits: 6:2:2, stratified by class, grouped by patient (docs/design.md §7).

No patient ever appears in two splits. The split is saved to a CSV file beside the outputs and
reused, so every run of an experiment sees the same partition.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

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


def save_split(path: str | Path, keys: list[str], splits: list[str]) -> None:
    """Writes `key,split` rows (keys identify records, e.g. their relative paths), atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "split"])
        writer.writerows(zip(keys, splits))
    tmp.replace(path)


def load_split(path: str | Path) -> dict[str, str]:
    """Reads a split file written by :func:`save_split`."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and set(rows[0]) != {"key", "split"}:
        raise ValueError(f"{path} is not a split file (expected columns key,split)")
    bad = [r["split"] for r in rows if r["split"] not in SPLITS]
    if bad:
        raise ValueError(f"{path}: unknown split names {sorted(set(bad))}; expected {SPLITS}")
    return {r["key"]: r["split"] for r in rows}
