"""A user's data set: an ImageFolder tree, optionally with `manifest.csv` (no torch).

manifest.csv columns (header required; paths relative to the manifest's folder):
    path        image file (PNG/JPEG/BMP/TIFF/WebP or DICOM: usedge.runtime.formats.IMAGE_SUFFIXES)
    label       class name, e.g. epidermal_cyst
    patient_id  any string; every image of one patient stays in one fold
    mask_path   optional: lesion mask (PNG, nonzero = lesion), same size as the image
    bbox        optional: lesion box "x,y,w,h" in image pixels
Without a manifest, `<root>/<class>/**/<image>` is read and each image is its own patient.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from usedge.errors import DataError
from usedge.runtime.formats import IMAGE_SUFFIXES, expand_inputs
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ["path", "label", "patient_id", "mask_path", "bbox"]


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    patient_id: str
    mask_path: Path | None = None
    bbox: tuple[int, int, int, int] | None = None


@dataclass
class Dataset:
    root: Path
    class_names: list[str]
    samples: list[Sample]

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def groups(self) -> list[str]:
        return [s.patient_id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)


def _parse_bbox(text: str, where: str) -> tuple[int, int, int, int] | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        x, y, w, h = (int(round(float(v))) for v in text.replace(" ", ",").split(",") if v)
    except ValueError as exc:
        raise DataError(f"bad bbox '{text}'", path=where, hint="write bbox as x,y,w,h in pixels") from exc
    return (x, y, w, h)


def read_manifest(manifest: Path, class_names: list[str] | None = None) -> Dataset:
    root = manifest.parent
    try:
        with open(manifest, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read manifest ({exc})", path=manifest, hint="write a UTF-8 CSV with a header") from exc
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError("manifest needs at least the columns path,label (and patient_id)", path=manifest,
                        hint=f"columns: {','.join(MANIFEST_COLUMNS)}")
    names = class_names or sorted({r["label"] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    patient_class: dict[str, str] = {}
    samples = []
    for line, r in enumerate(rows, start=2):
        where = f"{manifest}:{line}"
        if r["label"] not in index:
            raise DataError(f"unknown label '{r['label']}'", path=where, hint=f"use one of {', '.join(names)}")
        path = root / r["path"]
        if not path.is_file():
            raise DataError("image file not found", path=where, hint=f"check the path {r['path']!r}")
        pid = (r.get("patient_id") or "").strip() or r["path"]
        if patient_class.setdefault(pid, r["label"]) != r["label"]:
            raise DataError(f"patient '{pid}' has images in two classes", path=where,
                            hint="one patient has one lesion type; fix patient_id or label")
        mask = (r.get("mask_path") or "").strip()
        samples.append(Sample(path=path, label=index[r["label"]], patient_id=pid,
                              mask_path=root / mask if mask else None,
                              bbox=_parse_bbox(r.get("bbox", ""), where)))
    return Dataset(root=root, class_names=list(names), samples=samples)


def scan_image_folder(root: Path) -> Dataset:
    # "masks" holds lesion masks beside the class folders (usedge synth cohort), never a class
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "masks")
    samples = []
    for i, name in enumerate(classes):
        files, notes = expand_inputs([root / name], IMAGE_SUFFIXES)
        if notes:
            raise DataError(notes[0], hint="make every image of the data set a readable file in a real folder")
        samples += [Sample(path=f, label=i, patient_id=str(f.relative_to(root))) for f in files]
    return Dataset(root=root, class_names=classes, samples=samples)


def load_dataset(source: str | Path, class_names: list[str] | None = None) -> Dataset:
    """Load a folder (with or without manifest.csv) or a manifest CSV path."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        ds = read_manifest(source, class_names)
    elif source.is_dir():
        manifest = source / MANIFEST_NAME
        ds = read_manifest(manifest, class_names) if manifest.is_file() else scan_image_folder(source)
    else:
        raise DataError("data set not found", path=source,
                        hint="pass a folder of <class>/<image> (optionally with manifest.csv) or a manifest .csv")
    if not ds.samples:
        raise DataError("no images found", path=source,
                        hint="expected <class>/<image>.png folders or a manifest.csv")
    empty = [n for i, n in enumerate(ds.class_names) if i not in set(ds.labels)]
    if empty:
        raise DataError(f"no images for class(es) {', '.join(empty)}", path=source,
                        hint="every class needs images")
    return ds


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """Write manifest rows (dicts with MANIFEST_COLUMNS keys) atomically."""
    from usedge.fileio import atomic_write

    with atomic_write(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in MANIFEST_COLUMNS})
    return path
