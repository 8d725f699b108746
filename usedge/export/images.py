"""Real images for parity checks and INT8 calibration, preprocessed exactly as the runtime does.

Images come from a usedge data set (folder or manifest.csv, usedge.dataset.load_dataset) and go
through usedge.runtime.crop.prepare_file + preprocess.normalise, as training does, with the
checkpoint's PreprocessSpec, so every check sees the pixels the bedside sees. Patients are split deterministically (by a hash of the patient id)
into a calibration part and a held-out part: INT8 is calibrated on one and judged on the other.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from usedge.dataset import Dataset, Sample, load_dataset
from usedge.errors import DataError
from usedge.runtime.crop import prepare_file
from usedge.runtime.preprocess import PreprocessSpec, normalise


@dataclass
class ImageSet:
    """Preprocessed images: x float32 N x 1 x H x W, labels N (class index), their files."""

    x: np.ndarray
    labels: np.ndarray
    paths: list[Path]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _prepare(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """One file -> float32 1 x 1 x S x S, by the same function training uses (prepare_file: DICOM
    regions, crop, Doppler removal, resize)."""
    image, _ = prepare_file(path, spec)
    return normalise(image, spec)


def patient_bucket(patient_id: str) -> float:
    """A stable number in [0, 1) per patient (no RNG state, same on every machine)."""
    digest = hashlib.sha1(patient_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_by_patient(samples: list[Sample], calib_fraction: float = 0.5) -> tuple[list[Sample], list[Sample]]:
    """(calibration samples, held-out samples); one patient never lands in both."""
    calib = [s for s in samples if patient_bucket(s.patient_id) < calib_fraction]
    held = [s for s in samples if patient_bucket(s.patient_id) >= calib_fraction]
    if not calib or not held:  # tiny sets: fall back to alternating patients
        pids = sorted({s.patient_id for s in samples})
        first = set(pids[::2])
        calib = [s for s in samples if s.patient_id in first]
        held = [s for s in samples if s.patient_id not in first] or calib
    return calib, held


def spread(samples: list[Sample], count: int) -> list[Sample]:
    """Up to `count` samples taken evenly across the (class-sorted) list, so every class appears."""
    if count <= 0 or count >= len(samples):
        return list(samples)
    ordered = sorted(samples, key=lambda s: (s.label, str(s.path)))
    idx = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [ordered[i] for i in sorted(set(idx.tolist()))]


def load_images(samples: list[Sample], spec: PreprocessSpec) -> ImageSet:
    """Read and preprocess samples -> ImageSet (files that fail to read raise InputError naming them)."""
    if not samples:
        raise DataError("no images to load", hint="pass --data with a folder of <class>/<image> files")
    xs = [_prepare(Path(s.path), spec) for s in samples]
    return ImageSet(x=np.concatenate(xs).astype(np.float32, copy=False),
                    labels=np.array([s.label for s in samples], dtype=np.int64),
                    paths=[s.path for s in samples])


def open_dataset(data: str | Path, class_names: list[str]) -> Dataset:
    """load_dataset, refusing a data set whose classes are not the checkpoint's."""
    ds = load_dataset(data)
    if list(ds.class_names) != list(class_names):
        raise DataError(f"data set classes {ds.class_names} differ from the checkpoint's {class_names}",
                        path=data, hint="pass the data set the model was trained on (same class folders)")
    return ds


def recorded_data_path(meta: dict, checkpoint: Path) -> str | None:
    """The training data root the run recorded (as recorded; it may no longer exist): the checkpoint's
    `extra.data` (what `usedge train` writes into model.pt), or for a fold's best.pt the run
    folder's run.json `data` (the fold checkpoints do not carry it)."""
    import json

    data = (meta.get("extra") or {}).get("data")
    if data is None:
        try:
            data = json.loads((Path(checkpoint).parent.parent / "run.json").read_text()).get("data")
        except (OSError, ValueError, AttributeError):
            data = None
    return data if isinstance(data, str) and data else None


def is_training_data(ds: Dataset, meta: dict, checkpoint: Path) -> bool:
    """Whether a data set given at export is the one the checkpoint was trained on: the folder the run
    recorded (the same folder, by its inode), or the same images, classes and patients (the run stamp's
    data_hash: a copy or a moved folder). False when neither says so (another data set, or a checkpoint
    whose run recorded nothing)."""
    import json

    from usedge.train.trainer import data_hash

    raw = recorded_data_path(meta, checkpoint)
    if raw and Path(raw).exists():
        try:
            if os.path.samefile(raw, ds.root):
                return True
        except OSError:
            pass
    for stamp in (Path(checkpoint).parent / "run.json", Path(checkpoint).parent.parent / "run.json"):
        try:
            recorded_hash = json.loads(stamp.read_text()).get("data_hash")
        except (OSError, ValueError, AttributeError):
            continue
        if recorded_hash:
            return recorded_hash == data_hash(ds)
    return False


def recorded_data(meta: dict, checkpoint: Path) -> Path | None:
    """`recorded_data_path` if that folder exists from here."""
    data = recorded_data_path(meta, checkpoint)
    return Path(data) if data and Path(data).exists() else None


def split_from_run(samples: list[Sample], root: Path, checkpoint: Path) -> tuple[list[Sample], list[Sample]] | None:
    """(training samples, test samples) of the fold a checkpoint belongs to, from `usedge train`'s
    folds.csv (`<run>/fold<k>/best.pt` beside `<run>/folds.csv` with a `fold<k>` train/test column).

    None when the checkpoint is not a fold's (e.g. the all-data model) or the file does not fit.
    """
    import csv

    fold = checkpoint.parent.name
    folds_csv = checkpoint.parent.parent / "folds.csv"
    if not fold.startswith("fold") or not folds_csv.is_file():
        return None
    try:        # paths as folds.csv writes them: relative to the data root, or absolute (a manifest's own)
        with open(folds_csv, newline="") as fh:
            roles = {os.path.abspath(root / row["path"]): row.get(fold, "") for row in csv.DictReader(fh)}
    except (OSError, KeyError, TypeError, csv.Error):
        return None
    train, test = [], []
    for s in samples:
        role = roles.get(os.path.abspath(s.path), "")
        (train if role in ("train", "val") else test if role == "test" else []).append(s)
    return (train, test) if train and test else None
