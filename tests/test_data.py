"""Datasets (ImageFolder, CSV), class maps and patient-grouped stratified splits."""
from __future__ import annotations

import csv
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from walnet.data import (
    PAPER_CLASSES,
    DuplicateRowWarning,
    PlaqueDataset,
    Record,
    class_map,
    load_split,
    read_csv,
    save_split,
    scan_image_folder,
    split_indices,
    phantom,
)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _gray(h=40, w=30, value=None, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (h, w)) if value is None else np.full((h, w), value)).astype(np.uint8)


# --- splits ------------------------------------------------------------------------------


def _cohort(n_patients=120, seed=0):
    rng = np.random.default_rng(seed)
    labels, patients = [], []
    for p in range(n_patients):
        cls = int(rng.choice(3, p=[0.24, 0.48, 0.28]))
        for _ in range(int(rng.integers(1, 4))):
            labels.append(cls)
            patients.append(f"P{p}")
    return labels, patients


def test_split_groups_patients_and_stratifies():
    labels, patients = _cohort()
    splits = split_indices(labels, patients, seed=3)
    where = defaultdict(set)
    for pid, s in zip(patients, splits):
        where[pid].add(s)
    assert all(len(s) == 1 for s in where.values()), "a patient is in two splits"
    for cls in range(3):
        idx = [i for i, y in enumerate(labels) if y == cls]
        counts = Counter(splits[i] for i in idx)
        for name, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(counts[name] / len(idx) - share) < 0.08, (cls, counts)


def test_split_without_patients_is_exactly_stratified_and_deterministic():
    labels = [0] * 50 + [1] * 100 + [2] * 60
    a = split_indices(labels, None, seed=1)
    assert a == split_indices(labels, None, seed=1)
    assert a != split_indices(labels, None, seed=2)
    for cls, n in ((0, 50), (1, 100), (2, 60)):
        counts = Counter(s for s, y in zip(a, labels) if y == cls)
        assert counts == {"train": round(0.6 * n), "val": round(0.2 * n), "test": round(0.2 * n)}


def test_split_file_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    labels, patients = _cohort(30)
    keys = [f"img{i}.png" for i in range(len(labels))]
    splits = split_indices(labels, patients)
    save_split(tmp_path / "split.csv", keys, splits)
    # keys come back as the images' resolved absolute paths
    assert load_split(tmp_path / "split.csv") == {str(tmp_path.resolve() / k): s for k, s in zip(keys, splits)}
    (tmp_path / "bad.csv").write_text("key,split\na.png,holdout\n")
    with pytest.raises(ValueError, match="holdout"):
        load_split(tmp_path / "bad.csv")


# --- class maps, ImageFolder, CSV ----------------------------------------------------------


def test_class_map_pins_order():
    assert class_map(["mixed-echoic", "hyperechoic", "hypoechoic"]) == PAPER_CLASSES
    assert class_map(["hypoechoic"]) == PAPER_CLASSES  # the known classes, not the names found
    assert class_map(["b"], classes=("b", "a")) == ("b", "a")
    with pytest.raises(ValueError, match="'b'"):
        class_map(["b", "a"])  # other class sets need an explicit list
    with pytest.raises(ValueError, match="'c'"):
        class_map(["c"], classes=("a", "b"))


def test_image_folder(tmp_path):
    for cls in PAPER_CLASSES:
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", _gray(seed=i))
    records, classes = scan_image_folder(tmp_path)
    assert classes == PAPER_CLASSES and len(records) == 6
    assert [r.label for r in records] == [0, 0, 1, 1, 2, 2]
    (tmp_path / "extra").mkdir()
    with pytest.raises(ValueError, match="extra"):
        scan_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_image_folder(tmp_path / "nowhere")


def _write_csv(path, rows, header=("path", "label", "patient_id", "mask_path")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _csv_fails(path, rows, match, header=("path", "label", "patient_id", "mask_path"), error=ValueError, **kw):
    """Reading the CSV of `rows` at `path` raises `error` whose message matches `match`."""
    with pytest.raises(error, match=match):
        read_csv(_write_csv(path, rows, header), **kw)


def test_csv_and_dataset_items(tmp_path):
    _png(tmp_path / "a.png", _gray(40, 30, seed=1))
    rgb = np.random.default_rng(2).integers(0, 256, (20, 50, 3)).astype(np.uint8)
    _png(tmp_path / "b.png", rgb)
    mask = np.zeros((40, 30), np.uint8)
    mask[10:20, 5:15] = 255
    _png(tmp_path / "a_mask.png", mask)
    csv_path = _write_csv(tmp_path / "d.csv", [("a.png", "hypoechoic", "P1", "a_mask.png"), ("b.png", "hyperechoic", "P2", "")])
    records, classes = read_csv(csv_path, classes=PAPER_CLASSES)
    assert [r.label for r in records] == [1, 0] and records[0].patient == "P1" and records[1].mask_path is None
    ds = PlaqueDataset(records, size=32)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert torch.equal(item["image"][0], item["image"][1])  # grayscale -> 3 equal channels
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].shape == (32, 32) and set(item["mask"].unique().tolist()) == {0, 1}
    assert (ds[1]["mask"] == 255).all()  # no mask: unknown everywhere


def test_csv_roi_box_crops(tmp_path):
    img = np.zeros((40, 40), np.uint8)
    img[10:20, 10:20] = 200
    _png(tmp_path / "a.png", img)
    csv_path = _write_csv(tmp_path / "d.csv", [("a.png", "hypoechoic", 10, 10, 19, 19)], ("path", "label", "y1", "x1", "y2", "x2"))
    records, _ = read_csv(csv_path)
    assert records[0].box == (10, 10, 19, 19)
    item = PlaqueDataset(records, size=16)[0]
    torch.testing.assert_close(item["image"], torch.full((3, 16, 16), 200 / 255))  # only the bright square


def test_csv_errors(tmp_path):
    _png(tmp_path / "a.png", _gray())
    _csv_fails(tmp_path / "u.csv", [("a.png", "unknown", "", "")], "'unknown'", classes=PAPER_CLASSES)
    _csv_fails(tmp_path / "m.csv", [("a.png", "hypoechoic", "", "missing_mask.png")], "missing_mask.png",
               error=FileNotFoundError)
    _csv_fails(tmp_path / "c.csv", [("a.png",)], "label", header=("path",))


def test_corrupt_and_missing_images(tmp_path):
    _png(tmp_path / "good.png", _gray())
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    csv_path = _write_csv(
        tmp_path / "d.csv",
        [("good.png", "a", "", ""), ("corrupt.png", "a", "", ""), ("gone.png", "b", "", "")],
    )
    records, _ = read_csv(csv_path, classes=("a", "b"))
    ds = PlaqueDataset(records, size=8)
    assert ds[0]["image"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="corrupt.png"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="gone.png"):
        ds[2]
    skipping = PlaqueDataset(records, size=8, skip_bad=True)
    assert len(skipping) == 1 and skipping.skipped == 2


# --- one key per image file, splits per file --------------------------------------------------


def test_duplicate_rows_that_agree_are_merged_with_a_warning(tmp_path):
    _png(tmp_path / "a.png", _gray(seed=1))
    _png(tmp_path / "sub" / "b.png", _gray(seed=2))
    rows = [("a.png", "hypoechoic", "P1", ""), ("sub/b.png", "hyperechoic", "P2", ""),
            ("./a.png", "Hypoechoic ", "P1", ""), ("sub/../a.png", "hypoechoic", "P1", ""),
            (str(tmp_path / "sub" / "b.png"), "hyperechoic", "P2", "")]
    with pytest.warns(DuplicateRowWarning, match=r"d\.csv: 3 entries .* line 2 and line 4"):
        records, _ = read_csv(_write_csv(tmp_path / "d.csv", rows))
    assert [r.path for r in records] == [(tmp_path / "a.png").resolve(), (tmp_path / "sub" / "b.png").resolve()]
    assert [r.label for r in records] == [1, 0]


def test_duplicate_rows_that_disagree_are_an_error(tmp_path):
    _png(tmp_path / "a.png", _gray())
    rows = [("a.png", "hypoechoic", "P1", ""), ("b.png", "hyperechoic", "", ""), ("./a.png", "hyperechoic", "P1", "")]
    _csv_fails(tmp_path / "d.csv", rows, r"d\.csv: line 2 and line 4 both list the image .*a\.png.*"
                                         r"label hypoechoic vs hyperechoic")
    rows = [("a.png", "hypoechoic", "P1", "", "train"), ("a.png", "hypoechoic", "P1", "", "test")]
    _csv_fails(tmp_path / "s.csv", rows, "split train vs test", ("path", "label", "patient_id", "mask_path", "split"))


def test_a_file_listed_twice_lands_in_one_split(tmp_path):
    """The audit's case: 50 images, 17 of them listed twice; each image is one sample, so it is
    in exactly one split, and the split file holds each image once."""
    rows = []
    for i in range(50):
        _png(tmp_path / f"{i}.png", _gray(8, 8, seed=i))
        rows.append((f"{i}.png", PAPER_CLASSES[i % 3], "", ""))
    rows += [(f"./{i}.png", PAPER_CLASSES[i % 3], "", "") for i in range(0, 34, 2)]
    with pytest.warns(DuplicateRowWarning, match="17 entries"):
        records, _ = read_csv(_write_csv(tmp_path / "d.csv", rows))
    assert len(records) == len({r.path for r in records}) == 50
    splits = split_indices([r.label for r in records], [r.patient for r in records])
    save_split(tmp_path / "split.csv", [str(r.path) for r in records], splits)
    saved = load_split(tmp_path / "split.csv")
    assert len(saved) == 50 and saved == {str(r.path): s for r, s in zip(records, splits)}


def test_split_files_never_hold_an_image_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"a\.png is listed twice \('a.png' and 'sub/../a.png'\)"):
        save_split(tmp_path / "split.csv", ["a.png", "b.png", "sub/../a.png"], ["train", "val", "test"])
    assert not (tmp_path / "split.csv").exists()
    rows = f"{tmp_path}/a.png,train\n{tmp_path}/b.png,val\n{tmp_path}/./a.png,test\n"
    (tmp_path / "dup.csv").write_text("key,split\n" + rows)
    with pytest.raises(ValueError, match=r"dup\.csv: lines 2 and 4 list the same image .*a\.png.*delete"):
        load_split(tmp_path / "dup.csv")


def test_split_keys_do_not_depend_on_how_the_csv_path_is_spelled(tmp_path, monkeypatch):
    """The audit's case: a run made with `--csv ph/labels.csv` evaluated with `$PWD/ph/labels.csv`,
    `ph/../ph/labels.csv` or from another working directory finds its split (through the
    engine's assign_splits, which keys records by `str(record.path)`)."""
    from walnet.data import assign_splits

    phantom.generate(tmp_path / "ph", n=30, size=16)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    splits = assign_splits(read_csv("ph/labels.csv")[0], tmp_path / "run", seed=0)
    assert sorted(set(splits)) == ["test", "train", "val"]
    spellings = [(tmp_path, f"{tmp_path}/ph/labels.csv"), (tmp_path, "ph/../ph/labels.csv"),
                 (tmp_path / "elsewhere", "../ph/labels.csv"), (tmp_path / "ph", "labels.csv")]
    for cwd, csv_arg in spellings:
        monkeypatch.chdir(cwd)
        # another seed: the saved split is reused, not made again
        assert assign_splits(read_csv(csv_arg)[0], tmp_path / "run", seed=1) == splits, (cwd, csv_arg)


def test_split_files_with_working_directory_relative_keys_still_read(tmp_path, monkeypatch):
    """A split file whose keys are paths relative to the working directory it was made in (the
    CSV path as given, joined with each row's path) reads from that directory; from another it is
    an error saying so and how to redo the split."""
    phantom.generate(tmp_path / "ph", n=6, size=16)
    monkeypatch.chdir(tmp_path)
    records = read_csv("ph/labels.csv")[0]
    with open(tmp_path / "ph" / "labels.csv", newline="") as f:
        rel = [f"ph/{row['path']}" for row in csv.DictReader(f)]
    lines = "".join(f"{k},{s}\n" for k, s in zip(rel, ["train", "train", "val", "test", "train", "val"]))
    (tmp_path / "old_split.csv").write_text("key,split\n" + lines)
    saved = load_split(tmp_path / "old_split.csv")
    assert [saved[str(r.path)] for r in records] == ["train", "train", "val", "test", "train", "val"]
    monkeypatch.chdir(tmp_path / "ph")
    with pytest.raises(ValueError, match=r"old_split\.csv:2: the image paths are relative to the working "
                                         r"directory .*none of them exists .*delete"):
        load_split(tmp_path / "old_split.csv")


# --- 16-bit images -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_images_keep_their_values(tmp_path, mode):
    """A 16-bit ramp reads like the 8-bit version of the same ramp (within one 8-bit step)
    instead of saturating to white above 255."""
    ramp16 = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    ramp8 = np.round(ramp16 / 257).astype(np.uint8)
    _png(tmp_path / "r8.png", ramp8)
    if mode == "I;16":
        _png(tmp_path / "r.png", ramp16)  # PIL writes a 16-bit grayscale PNG
        assert Image.open(tmp_path / "r.png").mode == "I;16"
        name = "r.png"
    elif mode == "I;16B":
        Image.frombytes("I;16B", (32, 32), ramp16.astype(">u2").tobytes()).save(tmp_path / "r.tif")
        assert Image.open(tmp_path / "r.tif").mode == "I;16B"
        name = "r.tif"
    else:
        Image.fromarray(ramp16.astype(np.int32)).save(tmp_path / "r.tif")
        assert Image.open(tmp_path / "r.tif").mode == "I"
        name = "r.tif"
    ds = PlaqueDataset([Record(tmp_path / name, 0), Record(tmp_path / "r8.png", 0)], size=32)
    deep, eight = ds[0]["image"], ds[1]["image"]
    assert deep.shape == (3, 32, 32) and deep.dtype == torch.float32
    assert torch.equal(deep[0], deep[1]) and torch.equal(deep[0], deep[2])
    assert deep.max() > 0.99 and (deep < 0.999).float().mean() > 0.95  # not saturated
    torch.testing.assert_close(deep, eight, atol=1 / 255 + 1e-6, rtol=0)
    # the resize to a size of its own also keeps the ramp
    small = PlaqueDataset([Record(tmp_path / name, 0), Record(tmp_path / "r8.png", 0)], size=16)
    torch.testing.assert_close(small[0]["image"], small[1]["image"], atol=1 / 255 + 1e-6, rtol=0)


def test_16_bit_masks_and_out_of_range_32_bit_images(tmp_path):
    img = np.zeros((20, 20), np.uint16)
    img[5:15, 5:15] = 60000
    _png(tmp_path / "a.png", _gray(20, 20))
    _png(tmp_path / "m.png", img)
    mask = PlaqueDataset([Record(tmp_path / "a.png", 0, mask_path=tmp_path / "m.png")], size=20)[0]["mask"]
    assert mask.sum() == 100 and mask[5:15, 5:15].all()
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(ValueError, match=r"big\.tif.*outside the 16-bit range"):
        PlaqueDataset([Record(tmp_path / "big.tif", 0)], size=8)[0]


# --- labels matched to the known classes --------------------------------------------------------


def test_labels_match_known_classes_ignoring_case_and_spaces(tmp_path):
    _png(tmp_path / "a.png", _gray())
    rows = [("a.png", "Hyperechoic ", "", ""), ("b.png", " MIXED-echoic", "", ""), ("c.png", "hypo  echoic", "", "")]
    _csv_fails(tmp_path / "d.csv", rows, r"d\.csv:4: column 'label': unknown label 'hypo  echoic' \(did you mean "
                                         r"'hypoechoic'\?\); known classes: hyperechoic, hypoechoic, mixed-echoic")
    records, classes = read_csv(_write_csv(tmp_path / "d.csv", rows[:2]))
    assert classes == PAPER_CLASSES and [r.label for r in records] == [0, 2]
    # explicit class lists are matched the same way, and keep their own spelling and order
    rows = [("a.png", "calcified ", "", ""), ("b.png", "SOFT", "", "")]
    records, classes = read_csv(_write_csv(tmp_path / "e.csv", rows), classes=["Soft", "calcified"])
    assert classes == ("Soft", "calcified") and [r.label for r in records] == [1, 0]
    with pytest.raises(ValueError, match="twice"):
        read_csv(tmp_path / "e.csv", classes=["soft", "Soft "])


def test_an_empty_or_misspelt_label_is_an_error_not_a_class(tmp_path):
    _png(tmp_path / "a.png", _gray())
    _csv_fails(tmp_path / "d.csv", [("a.png", "hypoechoic", "", ""), ("a.png", "", "", "")],
               r"d\.csv:3: column 'label' is empty")
    _csv_fails(tmp_path / "d.csv", [("a.png", "hyperechoc", "", "")],
               r"d\.csv:2: .*'hyperechoc' \(did you mean 'hyperechoic'\?\)")
    _csv_fails(tmp_path / "d.csv", [("a.png", "plaque", "", "")],
               r"'plaque'; known classes: hyperechoic, hypoechoic, mixed-echoic; give the class list")


def test_class_folders_match_known_classes(tmp_path):
    _png(tmp_path / "Hyperechoic" / "0.png", _gray())
    _png(tmp_path / "hypoechoic" / "0.png", _gray())
    records, classes = scan_image_folder(tmp_path)
    assert classes == PAPER_CLASSES and [r.label for r in records] == [0, 1]
    _png(tmp_path / "mixed_echoic" / "0.png", _gray())
    with pytest.raises(ValueError, match=r"mixed_echoic: unknown label 'mixed_echoic' "
                                         r"\(did you mean 'mixed-echoic'\?\)"):
        scan_image_folder(tmp_path)
    records, classes = scan_image_folder(tmp_path, classes=["HYPERECHOIC", "hypoechoic", "mixed_echoic"])
    assert classes == ("HYPERECHOIC", "hypoechoic", "mixed_echoic") and [r.label for r in records] == [0, 1, 2]


def test_one_image_in_two_class_folders_is_an_error(tmp_path):
    _png(tmp_path / "hyperechoic" / "a.png", _gray())
    _png(tmp_path / "hypoechoic" / "b.png", _gray())
    (tmp_path / "hypoechoic" / "a.png").symlink_to(tmp_path / "hyperechoic" / "a.png")
    with pytest.raises(ValueError, match=r"hyperechoic/a\.png and .*hypoechoic/a\.png both list the image .*"
                                         "label hyperechoic vs hypoechoic"):
        scan_image_folder(tmp_path)
    (tmp_path / "hypoechoic" / "a.png").unlink()
    (tmp_path / "hyperechoic" / "c.png").symlink_to(tmp_path / "hyperechoic" / "a.png")
    with pytest.warns(DuplicateRowWarning, match="1 entry"):
        records, _ = scan_image_folder(tmp_path)
    assert len(records) == 2


def test_the_phantom_reads_back(tmp_path):
    csv_path = phantom.generate(tmp_path / "ph", n=9, size=16)
    records, classes = read_csv(csv_path)
    assert classes == PAPER_CLASSES and len(records) == 9
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [PAPER_CLASSES[r.label] for r in records] == [row["label"] for row in rows]
    assert all(r.mask_path is not None and r.patient for r in records)
    item = PlaqueDataset(records, size=16)[0]
    assert item["image"].shape == (3, 16, 16) and set(item["mask"].unique().tolist()) <= {0, 1}
