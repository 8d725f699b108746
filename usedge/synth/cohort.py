"""A synthetic cohort on disk: ImageFolder tree + lesion masks + manifest.csv + cohort.json.

    <out>/<class>/<patient>_<k>.png          B-mode field of view only (uint8 gray, ~ 320 x 256 px)
    <out>/masks/<class>/<patient>_<k>.png    lesion mask, uint8 0/255, same size
    <out>/manifest.csv                       usedge.dataset format (path,label,patient_id,mask_path,bbox)
    <out>/cohort.json                        the parameters, counts and per-patient lesion summaries

Every patient has 1-5 views of one lesion; the default mirrors the paper (149/74/32 patients,
698 images). Deterministic for a seed: each patient and image draws from its own seeded stream.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

import usedge
from usedge.dataset import MANIFEST_NAME, write_manifest
from usedge.errors import ConfigError, OutputError
from usedge.fileio import write_bytes_atomic, write_json_atomic
from usedge.synth.lesions import CLASSES, mask_bbox
from usedge.synth.phantom import PhantomOptions, render_view, sample_patient, sample_view

PAPER_PATIENTS = (149, 74, 32)
PAPER_IMAGES = 698
MAX_VIEWS = 5
COHORT_JSON = "cohort.json"


def allocate_views(patients: tuple[int, ...], images: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Views per patient (1..5 each) summing to `images`, spread at random over all patients."""
    total = int(sum(patients))
    counts = np.ones(total, dtype=int)
    for _ in range(images - total):
        free = np.flatnonzero(counts < MAX_VIEWS)
        counts[rng.choice(free)] += 1
    return np.split(counts, np.cumsum(patients)[:-1])


def _check(patients: tuple[int, ...], images: int, difficulty: float) -> None:
    if len(patients) != len(CLASSES) or any(int(p) < 1 for p in patients):
        raise ConfigError(f"patients must be {len(CLASSES)} positive counts, got {patients}",
                          hint="e.g. --patients 149,74,32 (epidermal_cyst,lipoma,pilomatricoma)")
    total = sum(patients)
    if not total <= images <= MAX_VIEWS * total:
        raise ConfigError(f"images={images} does not fit {total} patients with 1-{MAX_VIEWS} images each",
                          hint=f"choose images between {total} and {MAX_VIEWS * total}")
    if not 0.0 <= difficulty <= 1.0:
        raise ConfigError(f"difficulty={difficulty} is outside 0..1", hint="0 = textbook, 1 = much overlap")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is not a folder", path=out, hint="choose a new output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite or not (out / COHORT_JSON).is_file():
            raise OutputError("output folder is not empty", path=out,
                              hint="choose a new folder, or pass --overwrite (overwrite=True in Python) to replace a cohort")
        for name in [*CLASSES, "masks"]:  # only what a previous cohort wrote
            for f in sorted((out / name).rglob("*.png")) if (out / name).is_dir() else []:
                f.unlink()


def _png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OutputError("PNG encoding failed", path=path, hint="check the image array")
    write_bytes_atomic(path, buf.tobytes())


def make_cohort(out_dir: str | Path, *, seed: int = 0, patients: tuple[int, int, int] = PAPER_PATIENTS,
                images: int = PAPER_IMAGES, difficulty: float = 0.5, progress: bool = True,
                overwrite: bool = False, **phantom_options) -> Path:
    """Generate a cohort into `out_dir`; return the manifest.csv path.

    phantom_options: fields of PhantomOptions (width_px, height_px, depth_mm, freq_mhz, ...).
    """
    out = Path(out_dir)
    patients = tuple(int(p) for p in patients)
    _check(patients, int(images), float(difficulty))
    options = PhantomOptions.from_kwargs(**phantom_options)
    _prepare_out(out, overwrite)
    t0 = time.perf_counter()

    views = allocate_views(patients, int(images), np.random.default_rng([seed, 7919]))
    ids = np.random.default_rng([seed, 104729]).permutation(sum(patients))  # ids do not reveal the class
    rows, summaries = [], []
    jobs = [(ci, j) for ci, n in enumerate(patients) for j in range(n)]

    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("synth cohort", total=int(images))
        for ci, j in jobs:
            label = CLASSES[ci]
            pid = f"p{ids[sum(patients[:ci]) + j]:04d}"
            patient = sample_patient(pid, label, np.random.default_rng([seed, ci, j]), difficulty, options)
            summaries.append({"patient_id": pid, "label": label, "views": int(views[ci][j]),
                              "atypical": patient.lesion.atypical, "signs": patient.lesion.signs,
                              "size_mm": [round(2 * patient.lesion.half_width_mm, 2),
                                          round(2 * patient.lesion.half_height_mm, 2)],
                              "freq_mhz": round(patient.freq_mhz, 2)})
            for k in range(int(views[ci][j])):
                rng = np.random.default_rng([seed, ci, j, k + 1])
                image, mask = render_view(patient, sample_view(patient, rng, options), rng)
                rel = f"{label}/{pid}_{k}.png"
                rel_mask = f"masks/{label}/{pid}_{k}.png"
                _png(out / rel, image)
                _png(out / rel_mask, mask)
                box = mask_bbox(mask)
                rows.append({"path": rel, "label": label, "patient_id": pid, "mask_path": rel_mask,
                             "bbox": ",".join(map(str, box)) if box else ""})
                bar.advance(task)

    manifest = write_manifest(out / MANIFEST_NAME, rows)
    write_json_atomic(out / COHORT_JSON, {
        "generator": f"usedge {usedge.__version__} synth cohort",
        "seed": seed, "patients": dict(zip(CLASSES, patients)), "images": int(images),
        "difficulty": float(difficulty), "options": options.to_dict(),
        "class_names": list(CLASSES), "seconds": round(time.perf_counter() - t0, 2),
        "patient_list": summaries,
    })
    return manifest
