"""Patient-grouped folds: no patient in two folds, inner validation never touches the test fold."""

import csv
from pathlib import Path

import numpy as np
import pytest

from usedge.dataset import Dataset, Sample
from usedge.errors import DataError
from usedge.train.cv import final_split, folds_csv_text, make_splits


def _dataset(patients=(12, 8, 5), rng_seed=0) -> Dataset:
    rng = np.random.default_rng(rng_seed)
    samples = []
    for label, n in enumerate(patients):
        for p in range(n):
            for k in range(int(rng.integers(1, 5))):   # 1-4 images per patient
                samples.append(Sample(path=Path(f"/data/c{label}/p{label}_{p}_{k}.png"), label=label,
                                      patient_id=f"p{label}_{p}"))
    return Dataset(root=Path("/data"), class_names=["epidermal_cyst", "lipoma", "pilomatricoma"], samples=samples)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_patient_in_two_folds_and_inner_val_disjoint(seed):
    ds = _dataset(rng_seed=seed)
    groups = np.asarray(ds.groups)
    splits = make_splits(ds, folds=5, inner_val_fraction=0.2, seed=seed)
    assert len(splits) == 5
    tested = np.concatenate([s.test for s in splits])
    assert sorted(tested.tolist()) == list(range(len(ds)))             # each image tested exactly once
    patient_fold = {}
    for s in splits:
        for p in set(groups[s.test]):
            assert patient_fold.setdefault(p, s.fold) == s.fold          # a patient's images share one fold
        tr, va, te = set(groups[s.train]), set(groups[s.val]), set(groups[s.test])
        assert not tr & te and not va & te and not tr & va              # by patient, within a fold
        assert set(s.val.tolist()).isdisjoint(s.test.tolist())
        assert len(s.train) + len(s.val) + len(s.test) == len(ds)
        assert 0.08 < len(s.val) / (len(s.train) + len(s.val)) < 0.4
        labels = np.asarray(ds.labels)
        assert set(labels[s.test]) == {0, 1, 2}                          # stratified: every class tested


def test_splits_are_reproducible_for_a_seed():
    ds = _dataset()
    a, b = make_splits(ds, seed=3), make_splits(ds, seed=3)
    assert all(np.array_equal(x.test, y.test) and np.array_equal(x.val, y.val) for x, y in zip(a, b))


def test_folds_csv_lists_every_image_with_its_roles():
    ds = _dataset()
    splits = make_splits(ds, folds=5, seed=0)
    final = final_split(ds, 0.2, seed=0)
    rows = list(csv.DictReader(folds_csv_text(ds, splits, final).splitlines()))
    assert len(rows) == len(ds)
    for row, i in zip(rows, range(len(ds))):
        k = int(row["test_fold"])
        assert row[f"fold{k}"] == "test"
        assert [row[f"fold{j}"] for j in range(5)].count("test") == 1
        assert {row[f"fold{j}"] for j in range(5)} <= {"train", "val", "test"}
        assert row["final"] in {"train", "val"}


def test_too_few_patients_is_a_data_error():
    ds = _dataset(patients=(2, 1, 1))
    with pytest.raises(DataError, match="patients"):
        make_splits(ds, folds=5)


def test_check_splits_raises_without_assert():
    from usedge.errors import DataError
    from usedge.train.cv import FoldSplit, check_splits

    groups = np.array(["p1", "p1", "p2", "p3"])
    leaky = FoldSplit(fold=0, train=np.array([0]), val=np.array([2]), test=np.array([1, 3]))   # p1 in train and test
    with pytest.raises(DataError, match="patient is in two"):
        check_splits([leaky], groups)
    twice = [FoldSplit(0, np.array([0, 1]), np.array([2]), np.array([3])),
             FoldSplit(1, np.array([0, 1]), np.array([2]), np.array([3]))]
    with pytest.raises(DataError, match="two test folds"):
        check_splits(twice, groups)


@pytest.mark.parametrize("seed", range(6))
def test_every_fold_trains_on_every_class_its_pool_holds(seed):
    """20/3/2 patients: a pilomatricoma patient in the outer test fold and the other in the inner validation
    part left a fold training without pilomatricoma, silently (its sensitivity then 0 in the report). The
    training part keeps every class of the pool, with every patient still in one role."""
    ds = _dataset(patients=(20, 3, 2), rng_seed=seed)
    labels, groups = np.asarray(ds.labels), np.asarray(ds.groups)
    for s in make_splits(ds, folds=5, inner_val_fraction=0.2, seed=seed):
        pool = set(labels[np.concatenate([s.train, s.val])].tolist())
        assert set(labels[s.train].tolist()) == pool == {0, 1, 2}, (s.fold, np.bincount(labels[s.train], minlength=3))
        assert not set(groups[s.train]) & set(groups[s.val])
    final = final_split(ds, 0.2, seed)
    assert set(labels[final.train].tolist()) == {0, 1, 2}


def test_a_fold_whose_inner_validation_lacks_a_class_is_a_note(tiny_cohort):
    """The split that picks each fold's checkpoint held no image of some classes, without a word (outside
    audit): 4 patients a class and 3 folds leave 1-2 validation patients a fold."""
    from usedge.dataset import load_dataset
    from usedge.train.cv import inner_validation_notes

    ds = load_dataset(tiny_cohort)
    splits = make_splits(ds, 3)
    notes = inner_validation_notes(ds, splits)
    labels = np.asarray(ds.labels)
    lacking = [s.fold for s in splits if set(labels[s.val].tolist()) != set(labels[s.train].tolist())]
    assert lacking and [int(n.split()[1].split("'")[0]) for n in notes] == lacking
