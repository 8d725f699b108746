"""Patient-grouped, class-stratified cross-validation splits (scikit-learn StratifiedGroupKFold).

Outer: K folds by patient; each image is in the test part of exactly one fold. Inner: the outer
training part is split again by patient into train and inner validation; the checkpoint is chosen
on the inner validation part, never on the test fold.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from usedge.dataset import MANIFEST_NAME, Dataset
from usedge.errors import DataError
from usedge.fileio import write_text_atomic
from usedge.runtime.dicom import PATIENT_PREFIX

ROLES = ("train", "val", "test")


@dataclass
class FoldSplit:
    """Sample indices (into the data set) of one outer fold. fold = -1 for the final all-data model."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def role_of(self, n: int) -> list[str]:
        roles = [""] * n
        for role, idx in (("train", self.train), ("val", self.val), ("test", self.test)):
            for i in idx:
                roles[int(i)] = role
        return roles


def group_kfold(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int, what: str, where,
                fewer: str = "lower cv.folds / raise cv.inner_val_fraction"):
    """Stratified group K-fold; `fewer`: the option that asks for fewer splits (for the hint)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise DataError(f"{what} needs at least {n_splits} patients, found {n_groups}", path=where,
                        hint=f"add images from more patients, or {fewer}")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    dummy = np.zeros((len(labels), 1))
    import warnings

    with warnings.catch_warnings():  # "least populated class has fewer members": expected on small sets
        warnings.simplefilter("ignore", UserWarning)
        try:
            return [(np.sort(a), np.sort(b)) for a, b in splitter.split(dummy, labels, groups)]
        except ValueError as exc:   # every class smaller than n_splits (scikit-learn's check)
            largest = int(np.bincount(labels).max()) if len(labels) else 0
            patients = max((len(np.unique(groups[labels == c])) for c in np.unique(labels)), default=0)
            raise DataError(f"{what} splits in {n_splits} parts, but no class has {n_splits} images there "
                            f"(largest: {largest} images of {patients} patients)", path=where,
                            hint=f"add patients, or {fewer}") from exc


def few_patient_notes(dataset: Dataset, folds: int) -> list[str]:
    """One line per class with fewer patients than folds: some test folds hold none of it."""
    return [f"{name} has {p} patients, fewer than the {folds} folds: some test folds hold none of it, and its "
            f"per-fold figures are undefined there" for name, _, p in dataset.class_counts() if p < folds]


def inner_validation_notes(dataset: Dataset, splits: list[FoldSplit]) -> list[str]:
    """One line per fold whose inner validation part (which picks the checkpoint) holds no image of some
    class: its epoch is chosen without that class (too few patients for the split to hold every class)."""
    labels = np.asarray(dataset.labels)
    out = []
    for s in splits:
        missing = sorted(set(labels[s.train].tolist()) - set(labels[s.val].tolist()))
        if missing:
            names = ", ".join(dataset.class_names[m] for m in missing)
            out.append(f"fold {s.fold}'s inner validation holds no image of {names}: its checkpoint is chosen without "
                       f"{'that class' if len(missing) == 1 else 'those classes'} (more patients, or a larger "
                       "cv.inner_val_fraction)")
    return out


def inner_split(train_idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
                where=None) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, val) by patient, stratified; val is about `fraction` of the images.

    The training part keeps every class the pool holds: the first of the group folds that does, else the
    first with the validation patients of the classes it lacks moved back into training (a class of two
    patients, one in the outer test fold, would otherwise train its fold without that class)."""
    n_splits = max(2, int(round(1.0 / fraction)))
    parts = group_kfold(labels[train_idx], groups[train_idx], n_splits, seed, "the inner validation split", where,
                        fewer="raise cv.inner_val_fraction (fewer inner parts), or lower cv.folds")
    present = set(labels[train_idx].tolist())
    for tr, va in parts:
        if set(labels[train_idx[tr]].tolist()) == present:
            return train_idx[tr], train_idx[va]
    tr, va = parts[0]
    missing = present - set(labels[train_idx[tr]].tolist())
    val_groups = groups[train_idx[va]]
    back = np.isin(val_groups, val_groups[np.isin(labels[train_idx[va]], list(missing))])
    return np.sort(train_idx[np.concatenate([tr, va[back]])]), train_idx[va[~back]]


def make_splits(dataset: Dataset, folds: int = 5, inner_val_fraction: float = 0.2, seed: int = 0) -> list[FoldSplit]:
    """Outer folds by patient, stratified by class, each with its inner train/val split."""
    labels = np.asarray(dataset.labels)
    groups = np.asarray(dataset.groups)
    for i, (name, images, patients) in enumerate(dataset.class_counts()):
        if patients < 2:
            only = {s.patient_id for s in dataset.samples if s.label == i}
            dicom = (f" (its {images} images share one DICOM PatientID, {next(iter(only))}: an anonymiser's placeholder? "
                     f"give the patients their patient_id in a {MANIFEST_NAME})"
                     if images > 1 and all(p.startswith(PATIENT_PREFIX) for p in only) else "")
            raise DataError(f"class {name} has {patients} patient{dicom}: a fold that tests on it would train without it",
                            path=dataset.root, hint="cross-validation needs at least 2 patients per class; add patients")
    outer = group_kfold(labels, groups, folds, seed, f"{folds}-fold cross-validation", dataset.root,
                        fewer="lower cv.folds (--folds)")
    splits = []
    for k, (train_all, test) in enumerate(outer):
        absent = sorted(set(labels.tolist()) - set(labels[train_all].tolist()))
        if absent:        # every patient of a class in one test fold: that fold would train without it
            raise DataError(f"fold {k} holds every patient of {', '.join(dataset.class_names[a] for a in absent)} in its "
                            "test part: it would train without that class", path=dataset.root,
                            hint="add patients of that class, or lower cv.folds")
        tr, va = inner_split(train_all, labels, groups, inner_val_fraction, seed + 1 + k, dataset.root)
        splits.append(FoldSplit(fold=k, train=tr, val=va, test=test))
    check_splits(splits, groups)
    return splits


def final_split(dataset: Dataset, inner_val_fraction: float = 0.2, seed: int = 0) -> FoldSplit:
    """All data: train + inner validation by patient, no test part (for the deployed model)."""
    labels = np.asarray(dataset.labels)
    groups = np.asarray(dataset.groups)
    tr, va = inner_split(np.arange(len(labels)), labels, groups, inner_val_fraction, seed + 1000, dataset.root)
    return FoldSplit(fold=-1, train=tr, val=va, test=np.array([], dtype=int))


def check_splits(splits: list[FoldSplit], groups: np.ndarray) -> None:
    """Raise DataError if an image is tested twice or a patient crosses train/val/test within a fold
    (an explicit check, not `assert`: it also runs under `python -O`)."""
    tested = np.concatenate([s.test for s in splits])
    if len(tested) != len(np.unique(tested)):
        raise DataError("an image is in two test folds", hint="a bug in the split: report it with folds.csv")
    for s in splits:
        train, val, test = set(groups[s.train]), set(groups[s.val]), set(groups[s.test])
        if train & val or train & test or val & test:
            raise DataError(f"fold {s.fold}: a patient is in two of train/val/test",
                            hint="a bug in the split: report it with folds.csv")


def folds_csv_text(dataset: Dataset, splits: list[FoldSplit], final: FoldSplit | None = None) -> str:
    """One row per image: path, label, patient, its outer test fold, and its role in every fold."""
    n = len(dataset)
    test_fold = [-1] * n
    for s in splits:
        for i in s.test:
            test_fold[int(i)] = s.fold
    roles = [s.role_of(n) for s in splits]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["path", "label", "patient_id", "test_fold"] + [f"fold{s.fold}" for s in splits]
    if final is not None:
        header.append("final")
        final_roles = final.role_of(n)
    w.writerow(header)
    for i, sample in enumerate(dataset.samples):
        try:
            rel = sample.path.relative_to(dataset.root)
        except ValueError:
            rel = sample.path
        row = [str(rel), dataset.class_names[sample.label], sample.patient_id, test_fold[i]]
        row += [r[i] or "unused" for r in roles]
        if final is not None:
            row.append(final_roles[i] or "unused")
        w.writerow(row)
    return buf.getvalue()


def write_folds_csv(path: str | Path, dataset: Dataset, splits: list[FoldSplit], final: FoldSplit | None = None) -> Path:
    return write_text_atomic(path, folds_csv_text(dataset, splits, final))
