"""K-fold cross-validation (``--folds K --fold i``): the folds partition the patients, are
stratified by class, follow the seed; run i tests on fold i, validates on fold i+1 (mod K) and
trains on the rest; the options are checked before any work and define the run."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from walnet import cli
from walnet.data import read_csv
from walnet.data.splits import fold_indices, fold_splits
from walnet.engine.config import TrainConfig
from walnet.engine.trainer import train

from train_runs import metrics_rows, phantom_data, rewritten_csv, run_config, split_column, train_args


def _cohort(n_patients=90, seed=0):
    """Patients of one class each, with 1 to 4 images."""
    rng = np.random.default_rng(seed)
    labels, patients = [], []
    for p in range(n_patients):
        cls = int(rng.choice(3, p=[0.24, 0.48, 0.28]))
        for _ in range(int(rng.integers(1, 5))):
            labels.append(cls)
            patients.append(f"P{p}")
    return labels, patients


@pytest.mark.parametrize("folds", [3, 5, 7])
def test_folds_partition_the_patients_exactly(folds):
    labels, patients = _cohort()
    parts = fold_indices(labels, patients, folds, seed=4)
    assert len(parts) == len(labels) and set(parts) == set(range(folds))  # every image in exactly one fold
    where = defaultdict(set)
    for pid, k in zip(patients, parts):
        where[pid].add(k)
    assert all(len(ks) == 1 for ks in where.values()), "a patient spans two folds"
    members = [{p for p, k in zip(patients, parts) if k == f} for f in range(folds)]
    assert set().union(*members) == set(patients) and sum(map(len, members)) == len(set(patients))


def test_images_without_patients_are_stratified_within_one_image_per_class():
    labels = [0] * 53 + [1] * 101 + [2] * 64
    for folds in (3, 5, 10):
        parts = fold_indices(labels, None, folds, seed=1)
        for cls in range(3):
            counts = Counter(k for k, y in zip(parts, labels) if y == cls)
            per_fold = [counts[k] for k in range(folds)]
            assert max(per_fold) - min(per_fold) <= 1, (folds, cls, per_fold)
            assert sum(per_fold) == labels.count(cls)


def test_folds_follow_the_seed():
    labels, patients = _cohort()
    assert fold_indices(labels, patients, 5, seed=2) == fold_indices(labels, patients, 5, seed=2)
    assert fold_indices(labels, patients, 5, seed=2) != fold_indices(labels, patients, 5, seed=3)


@pytest.mark.parametrize("folds", [3, 5])
def test_fold_i_tests_on_fold_i_and_validates_on_the_next(folds):
    labels, patients = _cohort(60)
    parts = fold_indices(labels, patients, folds, seed=7)
    tested = []
    for i in range(folds):
        splits = fold_splits(labels, patients, folds, i, seed=7)
        for k, s in zip(parts, splits):
            assert s == ("test" if k == i else "val" if k == (i + 1) % folds else "train")
        tested += [j for j, s in enumerate(splits) if s == "test"]
    assert sorted(tested) == list(range(len(labels)))  # the test folds cover every image once
    # five folds: 3:1:1 (the paper's 6:2:2) up to the rounding of patient groups
    shares = Counter(fold_splits(labels, None, 5, 0, seed=0))
    assert abs(shares["train"] / len(labels) - 0.6) < 0.02 and abs(shares["test"] / len(labels) - 0.2) < 0.02


def test_too_few_patients_for_the_folds_is_an_error():
    with pytest.raises(ValueError, match=r"--folds 5: the data's 3 patient group\(s\) leave fold \d empty"):
        fold_splits([0, 0, 1, 1, 2, 2], ["a", "a", "b", "b", "c", "c"], 5, 0)


@pytest.mark.parametrize("values, message", [
    (dict(folds=5), "--folds and --fold go together"),
    (dict(fold=0), "--folds and --fold go together"),
    (dict(folds=2, fold=0), "--folds must be at least 3"),
    (dict(folds=5, fold=5), "--fold must be from 0 to 4 (--folds 5), got 5"),
    (dict(folds=5, fold=-1), "--fold must be from 0 to 4"),
])
def test_fold_options_are_checked(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(csv="x.csv", output="o", **values)


# --- runs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


def test_a_fold_run_records_its_fold_and_keeps_it(data, tmp_path, quick, capsys):
    records = read_csv(data)[0]
    labels, patients = [r.label for r in records], [r.patient for r in records]
    runs = [tmp_path / f"fold{i}" for i in range(3)]
    for i, run in enumerate(runs):
        train(run_config(data, run, epochs=1, seed=5, folds=3, fold=i))
        expected = fold_splits(labels, patients, 3, i, seed=5)
        assert split_column(run) == {r.key: s for r, s in zip(records, expected)}
    tests = [{k for k, s in split_column(run).items() if s == "test"} for run in runs]
    assert set().union(*tests) == {r.key for r in records} and sum(map(len, tests)) == len(records)
    # the fold defines the run: resuming with another one is refused
    with pytest.raises(ValueError, match="--fold 1 differs from the run's 0"):
        train(run_config(data, runs[0], epochs=2, seed=5, folds=3, fold=1, resume=str(runs[0] / "last.pt")))
    # the command line: --folds alone is one line
    assert cli.main(train_args(data, tmp_path / "alone", "--folds", "3")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--folds and --fold go together" in err


def test_a_split_column_with_folds_is_an_error_naming_both(data, tmp_path, quick):
    column = rewritten_csv(data, tmp_path / "column.csv", lambda i, r: r.update(split="train"))
    with pytest.raises(ValueError, match=r"column\.csv:2: the CSV's split column and --folds 3 --fold 0 both set "
                                         "the split"):
        train(run_config(column, tmp_path / "run", epochs=1, folds=3, fold=0))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_fold_run_resumed_after_epoch_1_ends_as_an_uninterrupted_one(data, tmp_path, one_thread):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(run_config(data, whole, epochs=2, folds=3, fold=2))
    train(run_config(data, cut, epochs=1, folds=3, fold=2))
    train(run_config(data, cut, epochs=2, folds=3, fold=2, resume=str(cut / "last.pt")))
    assert split_column(cut) == split_column(whole)
    assert metrics_rows(cut, timings=False) == metrics_rows(whole, timings=False)
    a, b = (torch.load(run / "last.pt", weights_only=True) for run in (whole, cut))
    assert a["epoch"] == b["epoch"] == 1 and a["args"]["folds"] == 3 and a["args"]["fold"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
