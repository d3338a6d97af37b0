"""Train / validation / test splits: 6:2:2 or K cross-validation folds, stratified by class,
grouped by patient (docs/design.md §7).

No patient ever appears in two splits, whatever the split comes from: a new split
(:func:`split_indices`), a fold of a K-fold cross-validation (:func:`fold_splits`), a CSV's
``split`` column (a patient it puts in two splits is an error) or a run's ``split.csv``. A run
records its split in ``split.csv`` and a fingerprint of its data in ``data.json`` with its first
checkpoint (:func:`run_split`, :func:`data_record`); resuming and evaluating it read them back
(:func:`recorded_split`).

``split.csv`` has the columns ``path,split,resolved_path``: ``path`` is the image relative to
the data root (the CSV file's folder for ``--csv``, the ``--data-dir`` folder), with posix
separators and ``#frame=<k>`` after a frame of a DICOM file or video, or its absolute path where it lies outside
the root; ``resolved_path`` is its resolved absolute path when the split was made. A record is
found by its path relative to its own root first, so a data folder copied or moved elsewhere
(the CSV with its images, or the ImageFolder tree) finds its split; else by its resolved path,
so the same images listed by another CSV or reached through another spelling of their path
(relative, absolute, ``a/../a``, another working directory) find it too. Split files of older
walnets (columns ``key,split``: resolved absolute paths, or paths relative to the working
directory the split was made in) read as before, by resolved path. A split file never holds one
image twice (which would put it in two splits).
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from walnet.data.datasets import relative_path
from walnet.files import atomic_open

SPLITS = ("train", "val", "test")
#: The file of a run folder that holds the split of its data (:func:`save_split`).
SPLIT_FILE = "split.csv"
#: The file of a run folder that holds the fingerprint of its data (:func:`data_record`).
DATA_FILE = "data.json"
#: The columns of a split file (:func:`save_split`); older walnets wrote :data:`_OLD_HEADER`.
SPLIT_HEADER = ("path", "split", "resolved_path")
_OLD_HEADER = ("key", "split")


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
    share = np.asarray(ratios, dtype=float) / float(sum(ratios))
    return [SPLITS[k] for k in _deal(labels, patients, share, seed)]


def fold_indices(labels: list[int], patients: list[str | None] | None = None, folds: int = 5,
                 seed: int = 0) -> list[int]:
    """The cross-validation fold (0 to `folds` - 1) of every record, by the rules of
    :func:`split_indices` with `folds` equal shares: patient groups (a cine loop, DICOM or video, is one)
    never span folds, and each class's groups are dealt, shuffled with `seed` and largest first,
    to the fold furthest below its share."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an integer of at least 2, got {folds!r}")
    return _deal(labels, patients, np.full(int(folds), 1.0 / folds), seed)


def fold_splits(labels: list[int], patients: list[str | None] | None, folds: int, fold: int,
                seed: int = 0) -> list[str]:
    """The split of run `fold` of a `folds`-fold cross-validation (:func:`fold_indices`): fold
    `fold` is its test set, fold ``(fold + 1) % folds`` its validation set, the other folds its
    training set (5 folds: 3:1:1). A fold left empty (fewer patient groups than folds) is a
    ValueError naming ``--folds``."""
    if folds < 3 or not 0 <= fold < folds:
        raise ValueError(f"--folds {folds} --fold {fold}: needs --folds of at least 3 and --fold from 0 to {folds - 1}")
    parts = fold_indices(labels, patients, folds, seed)
    empty = sorted(set(range(folds)) - set(parts))
    if empty:
        groups = len(_groups(labels, patients))
        raise ValueError(f"--folds {folds}: the data's {groups} patient group(s) leave fold {empty[0]} empty; use "
                         "fewer folds, or more images or patients")
    return ["test" if p == fold else "val" if p == (fold + 1) % folds else "train" for p in parts]


def _groups(labels, patients) -> list[list[int]]:
    """The records' indices grouped by patient id (a record without one is its own group)."""
    if patients is not None and len(patients) != len(labels):
        raise ValueError(f"patients has {len(patients)} entries but labels has {len(labels)}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i in range(len(labels)):
        pid = patients[i] if patients is not None else None
        groups[f"p:{pid}" if pid not in (None, "") else f"r:{i}"].append(i)
    return list(groups.values())


def _deal(labels, patients, share: np.ndarray, seed: int) -> list[int]:
    """The part (an index into `share`) of every record: within each class, the patient groups
    are shuffled with `seed` and dealt, largest first, to the part furthest below its share."""
    by_class: dict[int, list[list[int]]] = defaultdict(list)
    for members in _groups(labels, patients):
        values, counts = np.unique([labels[i] for i in members], return_counts=True)
        by_class[int(values[np.argmax(counts)])].append(members)
    rng = np.random.default_rng(seed)
    out = [0] * len(labels)
    for cls in sorted(by_class):
        class_groups = by_class[cls]
        order = rng.permutation(len(class_groups))
        # larger groups first (stable after the shuffle), so the small ones even out the shares
        order = sorted(order, key=lambda g: -len(class_groups[g]))
        total = sum(len(g) for g in class_groups)
        filled = np.zeros(len(share))
        for g in order:
            deficit = share * total - filled
            k = int(np.argmax(deficit))
            filled[k] += len(class_groups[g])
            for i in class_groups[g]:
                out[i] = k
    return out


def _key(text: str) -> str:
    """A split key: the resolved absolute path of an image file. A relative key is resolved from
    the working directory, which is how keys were given when they were not stored resolved."""
    return str(Path(text).resolve())


def _relative(key: str, root: Path | None) -> str:
    """A resolved key (:func:`_key`) as a split file's ``path``: relative to `root` where its image
    lies under it (as :attr:`~walnet.data.datasets.Record.relative_key`)."""
    found = re.fullmatch(r"(.*)(#frame=[0-9]+)", key, re.S)
    path, frame = (found[1], found[2]) if found else (key, "")
    return relative_path(Path(path), root) + frame


def save_split(path: str | Path, keys: list[str], splits: list[str], root: str | Path | None = None) -> None:
    """Writes a split file (:data:`SPLIT_HEADER`, see the module docstring), atomically. Keys are
    image paths (relative ones from the working directory; ``#frame=<k>`` after a frame of a DICOM file or video),
    stored resolved, and relative to the folder `root` (the data root) where the image lies
    under it. Raises ValueError for a key given twice (in any spelling) or an unknown split."""
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
    root = None if root is None else Path(root).resolve()
    with atomic_open(path, text=True) as f:
        writer = csv.writer(f)
        writer.writerow(SPLIT_HEADER)
        writer.writerows((_relative(key, root), split, key) for key, split in zip(resolved, splits))


def load_split(path: str | Path) -> dict[str, str]:
    """Reads a split file written by :func:`save_split` (or an older walnet): {resolved image
    path: split}, the images' paths where the split was made.

    An older file's relative key is resolved from the working directory; if no such file exists
    there, the split was made in another working directory and ValueError says so. A file listed
    twice, a bad header or an unknown split name is a ValueError too; each message says how to
    redo the split (delete the file: a new one is made, with a new test set).
    """
    return {resolved: split for _, split, resolved in _read_split(path)}


def _read_split(path: str | Path) -> list[tuple[str | None, str, str]]:
    """The rows of a split file as (``path`` as written, or None in an older file; split;
    resolved path), checked as :func:`load_split` says."""
    path = Path(path)
    redo = f"delete {path} to make a new split (the test set changes)"
    expected = f"expected columns {','.join(SPLIT_HEADER)}"
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
        raise ValueError(f"{path} is empty, not a split file ({expected}); {redo}")
    old = set(columns or ()) == set(_OLD_HEADER)
    if not old and set(columns or ()) != set(SPLIT_HEADER):
        raise ValueError(f"{path} is not a split file ({expected}); {redo}")
    bad = [r["split"] for r in rows if r["split"] not in SPLITS]
    if bad:
        raise ValueError(f"{path}: unknown split names {sorted(set(bad), key=str)}; expected {SPLITS}; {redo}")
    out = []
    lines: dict[str, int] = {}
    relative = []  # (line, key as written) of an older file's keys relative to the working directory
    for line, r in enumerate(rows, start=2):
        given = (r["key"] if old else r["resolved_path"]) or ""
        if not given or not (old or r["path"]):
            raise ValueError(f"{path}:{line}: empty {'key' if old else 'path'}; {redo}")
        if not old and not Path(given).is_absolute():
            raise ValueError(f"{path}:{line}: resolved_path {given!r} is not an absolute path; {redo}")
        try:
            key = _key(given)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}:{line}: key {given!r} is not a path ({exc}); {redo}") from None
        for seen in (key,) if old else (key, f"path:{r['path']}"):
            if seen in lines:
                raise ValueError(f"{path}: lines {lines[seen]} and {line} list the same image "
                                 f"{key if seen == key else r['path']} (one image must have one split); {redo}")
            lines[seen] = line
        if old and not Path(given).is_absolute():
            relative.append((line, given, key))
        out.append((None if old else r["path"], r["split"], key))
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


def data_root(records) -> Path | None:
    """The data root the records were read from (:attr:`~walnet.data.datasets.Record.root`):
    None unless they all have the same one."""
    roots = {r.root for r in records}
    return roots.pop() if len(roots) == 1 else None


def check_split_column(records) -> None:
    """A CSV ``split`` column keeps every patient group (a cine loop, DICOM or video, is one) in one split:
    a ValueError naming both rows (file and line), the patient and the two splits otherwise."""
    first: dict[str, object] = {}
    for r in records:
        if r.patient is None or r.split is None:
            continue
        seen = first.setdefault(r.patient, r)
        if seen.split != r.split:
            raise ValueError(f"{r.where()}: the split column puts patient {r.patient!r} in {r.split}, but "
                             f"{seen.where()} puts it in {seen.split}; a patient must be in one split")


def assign_splits(records, output: Path, seed: int, *, save: bool = True,
                  hint: str = "score the data the run was trained on") -> list[str]:
    """The split of each record of a run whose folder is `output`: the records' own split column
    if every record has one (:func:`check_split_column`); else ``output/split.csv`` if it exists
    (reused; `hint` ends the error when it does not cover the records); else a new 6:2:2 split
    (:func:`split_indices`), written there unless ``save=False``. ``walnet train`` and
    ``walnet evaluate`` follow the stricter rules of :func:`run_split` and :func:`recorded_split`."""
    if all(r.split for r in records):
        check_split_column(records)
        return [r.split for r in records]
    split_file = Path(output) / SPLIT_FILE
    if split_file.is_file():
        return _saved_splits(records, split_file, hint)
    splits = split_indices([r.label for r in records], [r.patient for r in records], seed=seed)
    if save:
        save_split(split_file, [r.key for r in records], splits, data_root(records))
    return splits


def _saved_splits(records, split_file: Path, hint: str) -> list[str]:
    """Each record's split in `split_file`, which must cover them all: found by its path relative
    to its data root, else by its resolved path (see the module docstring)."""
    rows = _read_split(split_file)
    relative = {path: split for path, split, _ in rows if path is not None}
    resolved = {key: split for _, split, key in rows}
    splits = [relative.get(r.relative_key) or resolved.get(r.key) for r in records]
    missing = [r.key for r, s in zip(records, splits) if s is None]
    if missing:
        raise ValueError(f"{split_file} does not cover {len(missing)} image(s), e.g. {missing[0]}: it holds "
                         f"the split of other data; {hint}")
    return splits


def run_split(records, output: Path, seed: int, *, started: bool, hint: str, folds: int | None = None,
              fold: int | None = None) -> list[str]:
    """The split ``walnet train`` trains the records on, by one rule.

    A started run (its folder holds ``last.pt``) keeps the split it recorded
    (:func:`recorded_split`). A run not started yet splits anew: with `folds` and `fold`
    (``--folds``, ``--fold``), as fold `fold` of a cross-validation drawn with `seed`
    (:func:`fold_splits`; a CSV split column then is an error naming both); else the CSV's split
    column if every record has one (:func:`check_split_column`), else a 6:2:2 split drawn with
    `seed`. A ``split.csv`` already in the folder is ignored, since without ``last.pt`` it was
    left by a run that ended before its first checkpoint (killed, or failed), and the first
    checkpoint replaces it. Nothing is written here."""
    if started:
        return recorded_split(records, output, hint)
    labels, patients = [r.label for r in records], [r.patient for r in records]
    if folds is not None:
        column = next((r for r in records if r.split), None)
        if column is not None:
            raise ValueError(f"{column.where()}: the CSV's split column and --folds {folds} --fold {fold} both set "
                             "the split; drop the split column, or --folds and --fold")
        return fold_splits(labels, patients, folds, fold, seed)
    if all(r.split for r in records):
        check_split_column(records)
        return [r.split for r in records]
    return split_indices(labels, patients, seed=seed)


def recorded_split(records, run: Path, hint: str) -> list[str]:
    """Each record's split in the run folder `run` as the run recorded it (its ``split.csv``),
    for a resumed run and for ``walnet evaluate``. A record it does not cover is a ValueError
    ending with `hint`; so is a CSV split column that disagrees with it for any image (scoring a
    training image as a test image), and a patient whose images it puts in two splits. A run
    without ``split.csv`` (written by walnet before every run recorded its split) was trained on
    its CSV's split column, used if every record has one; otherwise its split is unknown, a
    ValueError too."""
    split_file = Path(run) / SPLIT_FILE
    if not split_file.is_file():
        if records and all(r.split for r in records):
            check_split_column(records)
            return [r.split for r in records]
        raise ValueError(f"{run} holds no {SPLIT_FILE}: the split its run was trained on is unknown, so its "
                         "training images cannot be told apart; train the run again")
    splits = _saved_splits(records, split_file, hint)
    clash = [(r, s) for r, s in zip(records, splits) if r.split and r.split != s]
    if clash:
        r, s = clash[0]
        raise ValueError(f"{r.where()}: the split column puts {r.key} in {r.split}, but the run's {split_file} "
                         f"has it in {s} ({len(clash)} image(s) disagree); the run's split decides: drop the "
                         "split column or make it agree")
    first: dict[str, tuple[object, str]] = {}
    for r, s in zip(records, splits):
        seen, t = first.setdefault(r.patient, (r, s)) if r.patient is not None else (r, s)
        if s != t:  # patient ids the run's split did not group by (the data changed since)
            raise ValueError(f"{split_file} puts patient {r.patient!r} in {t} ({seen.where()}) and in {s} "
                             f"({r.where()}); a patient must be in one split; {hint}")
    return splits


def data_record(records, classes) -> dict:
    """What a run records of its data in ``data.json``: the number of images, the class names
    and two sha256 digests over every record's key, class name, patient, mask file, ROI box and
    split column, in key order: ``sha256`` with resolved paths (images and masks),
    ``sha256_relative`` with paths relative to the data root
    (:attr:`~walnet.data.datasets.Record.relative_key`). The data of two runs is the same when
    either digest is (:func:`data_difference`): however the CSV or folder was spelled or
    formatted, and wherever the data folder was copied to."""
    def digest(key, mask) -> str:
        rows = [[key(r), classes[r.label], r.patient, None if r.mask_path is None else mask(r),
                 None if r.box is None else list(r.box), r.split] for r in sorted(records, key=key)]
        return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()

    return {"images": len(records), "classes": list(classes),
            "sha256": digest(lambda r: r.key, lambda r: str(r.mask_path)),
            "sha256_relative": digest(lambda r: r.relative_key, lambda r: relative_path(r.mask_path, r.root))}


def save_run_record(output: Path, records, splits, classes) -> None:
    """Writes the split (``split.csv``) and the data fingerprint (``data.json``) of the run in
    `output`, each atomically; the trainer calls it just before the run's first checkpoint."""
    save_split(Path(output) / SPLIT_FILE, [r.key for r in records], splits, data_root(records))
    with atomic_open(Path(output) / DATA_FILE, text=True) as f:
        json.dump(data_record(records, classes), f, indent=2)


def load_data_record(run: Path) -> dict | None:
    """The ``data.json`` of the run folder `run` (None where there is none: a run of a walnet
    that did not record it); a file that is no such record is a ValueError naming it."""
    path = Path(run) / DATA_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete the run folder {run} to train it again") from None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise ValueError(f"{path} is not a walnet data record (a JSON object with images, classes, sha256); "
                         f"delete the run folder {run} to train it again")
    return record


def data_difference(saved: dict, now: dict) -> str | None:
    """How the data `now` (:func:`data_record`) differs from the data a run recorded (`saved`),
    in words; None where they are the same: equal ``sha256`` (resolved paths: the data at its
    place; all an older walnet's data.json holds) or equal ``sha256_relative`` (the data
    copied or moved elsewhere)."""
    if saved.get("sha256") == now["sha256"] or saved.get("sha256_relative") == now["sha256_relative"]:
        return None
    return (f"its data differs from the run's ({now['images']} image(s), sha256 {now['sha256'][:12]} vs the run's "
            f"{saved.get('images')} image(s), sha256 {str(saved.get('sha256'))[:12]} in {DATA_FILE})")
