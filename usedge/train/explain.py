"""The `explain` job: maps for every image of a data set, overlays, contact sheets, measured localisation.

    summary = run_explain(checkpoint, data, out, ExplainConfig())

writes under `out`:
    overlays/<class>/<image>.png   image | CAM | Grad-CAM | attention 1 | attention 2 (lesion outline green)
    sheets/<class>.png             contact sheet: the first `sheet_rows` images of the class, one strip each
    per_image.csv                  prediction, scores of every map and baseline, timings (ms)
    explain.json                   everything below, machine-readable
    explain.md                     the same as tables

Maps are computed at the model input (spec.size x spec.size, after the ONE preprocessing). Masks go
through the same crop (CropInfo.crop_box) and resize, so map and mask share one pixel grid.

When the checkpoint comes from a `usedge train` run (folds.csv beside it), only the images of patients
the checkpoint never trained or validated on are explained (a fold model: its test fold; patients matched
by ID, so a copied or moved data set counts too), unless ExplainConfig.images = "all". Localisation
statistics take the patient as the unit and every reported p-value is Holm-adjusted (usedge.train.localisation).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from usedge.dataset import Sample, load_dataset
from usedge.errors import ConfigError, DataError, InputError
from usedge.fileio import atomic_write, sha256_file, write_bytes_atomic, write_json_atomic, write_text_atomic
from usedge.runtime.crop import crop_mask, prepare_file
from usedge.runtime.preprocess import PreprocessSpec, normalise
from usedge.train import localisation as loc

MAP_LABELS = {"cam": "CAM", "gradcam": "Grad-CAM", "att1": "attention 1", "att2": "attention 2"}
SCORE_LABELS = {"energy_inside": "energy inside", "topk_iou": "top-k IoU", "pointing_game": "pointing game",
                "energy_below": "energy below"}
IMAGES = ("test", "all")


@dataclass
class ExplainConfig:
    maps: tuple[str, ...] = ("cam", "gradcam", "att1", "att2")
    target: str = "pred"            # pred: the predicted class (what the bedside shows) | label: the true class
    weighting: str = "paper"        # paper | exact (see usedge.train.cam)
    topk: str = "mask"              # "mask" (lesion's own area) or a fraction like "0.1"
    sigma_fraction: float = 0.25    # centre prior's sigma, fraction of the input side
    overlays: str = "all"           # all | sheets | none
    sheet_rows: int = 12            # images per class on a contact sheet
    limit: int = 0                  # at most N images, from the classes in turn (0 = all)
    images: str = "test"            # test: only patients the checkpoint never saw (needs its run's folds.csv) | all
    n_boot: int = 2000              # patient bootstrap resamples for the confidence intervals
    seed: int = 0                   # the bootstrap's seed
    threads: int = 0                # torch threads (0 = torch's default)
    progress: bool = True

    def validate(self) -> None:
        bad = [m for m in self.maps if m not in MAP_LABELS]
        if bad or not self.maps:
            raise ConfigError(f"unknown map type(s) {', '.join(bad) or '(none)'}",
                              hint=f"use some of {', '.join(MAP_LABELS)}")
        if self.target not in ("pred", "label"):
            raise ConfigError(f"unknown target '{self.target}'", hint="use pred or label")
        if self.images not in IMAGES:
            raise ConfigError(f"unknown images mode '{self.images}'", hint="use test or all")
        if self.overlays not in ("all", "sheets", "none"):
            raise ConfigError(f"unknown overlays mode '{self.overlays}'", hint="use all, sheets or none")
        if self.topk != "mask":
            try:
                k = float(self.topk)
            except ValueError:
                k = -1.0
            if not 0.0 < k <= 1.0:
                raise ConfigError(f"bad top-k '{self.topk}'", hint="use 'mask' or a fraction in (0, 1], e.g. 0.1")


# ---------------------------------------------------------------------------------------------- I/O
EMPTY_MASK = "lesion mask is empty (no nonzero pixel)"     # read_lesion_mask's line: the image has no lesion


def read_lesion_mask(sample: Sample, frame_shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """The lesion as a frame-sized bool mask: from mask_path, else from bbox, else None."""
    h, w = frame_shape
    if sample.mask_path is not None:
        # unchanged: a 16-bit mask of 0/1 read as 8-bit gray would be scaled to all zeros
        mask = cv2.imread(str(sample.mask_path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise DataError("cannot read lesion mask", path=sample.mask_path,
                            hint="masks are PNGs, nonzero = lesion; fix or remove mask_path in manifest.csv")
        if mask.shape[:2] != (h, w):
            raise DataError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {w}x{h}",
                            path=sample.mask_path, hint="a mask must have its image's size")
        lesion = (mask > 0).any(axis=2) if mask.ndim == 3 else mask > 0
        if not lesion.any():
            raise DataError(EMPTY_MASK, path=sample.mask_path,
                            hint="fix the mask, or remove its mask_path from manifest.csv")
        return lesion, "mask"
    if sample.bbox is not None:
        x, y, bw, bh = sample.bbox
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)      # the part inside the image
        inside = max(x1 - x0, 0) * max(y1 - y0, 0)
        why = ("is empty" if bw <= 0 or bh <= 0 else
               f"lies mostly outside the {w}x{h} image" if inside < 0.5 * bw * bh else
               f"covers {inside / (w * h):.0%} of the image (a lesion's box would score perfectly by covering all)"
               if inside > 0.9 * w * h else "")
        if why:         # an empty box made the image lesion-free, a huge one inflated every score: both silent
            raise DataError(f"lesion bbox {x},{y},{bw},{bh} {why}", path=sample.path,
                            hint="fix the bbox (x,y,w,h in the image's pixels) in manifest.csv, or leave it empty")
        mask = np.zeros((h, w), dtype=bool)
        mask[y0:y1, x0:x1] = True           # a box a few pixels over the edge: its part inside
        return mask, "bbox"
    return None, ""


def unseen_samples(checkpoint: str | Path, meta: dict, ds, images: str = "test") -> tuple[list[Sample], str]:
    """(the samples to explain, a sentence saying which). With images="test", a checkpoint whose run
    (run.json + folds.csv beside it) was trained on `ds` keeps only the patients it never trained or
    validated on: a fold model's test fold; refused for the all-data model.pt (it saw everyone)."""
    if images == "all":
        return list(ds.samples), "every image (--images all)"
    ckpt = Path(checkpoint)
    fold = meta.get("extra", {}).get("fold")
    run_dir = ckpt.parent.parent if fold is not None else ckpt.parent
    folds_csv, run_json = run_dir / "folds.csv", run_dir / "run.json"
    if not (folds_csv.is_file() and run_json.is_file()):
        return list(ds.samples), "every image (no usedge train run with folds.csv beside the checkpoint)"
    # by patient ID, whatever the folder is called: a copied or moved data set is still the run's patients
    run_data = json.loads(run_json.read_text()).get("data")
    elsewhere = not run_data or Path(run_data).resolve() != Path(ds.root).resolve()
    column = "final" if fold is None else f"fold{fold}"
    with open(folds_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or column not in rows[0]:
        raise DataError(f"folds.csv has no column {column} for this checkpoint", path=folds_csv,
                        hint="pass --images all to explain every image anyway")
    seen_rows = [r for r in rows if r[column] in ("train", "val")]
    seen = {r["patient_id"] for r in seen_rows}
    # and by image: a copy of the run's images without its manifest makes each image its own patient
    # (p0000_0.png, not p0000), so IDs never match; their paths under the folder, or their bytes, do
    seen_paths = {r["path"] for r in seen_rows}
    keep = [s for s in ds.samples if s.patient_id not in seen and _relative(s.path, ds.root) not in seen_paths]
    if elsewhere and run_data and Path(run_data).is_dir():
        seen_bytes = {sha256_file(Path(run_data) / r["path"]) for r in seen_rows
                      if (Path(run_data) / r["path"]).is_file()}
        keep = [s for s in keep if sha256_file(s.path) not in seen_bytes]
    if not keep:
        raise DataError("the checkpoint trained or validated on every patient of this data set", path=ckpt,
                        hint="explain a fold checkpoint (RUN/fold0/best.pt) on its test fold, or pass --images all")
    which = f"fold {fold}'s test part" if fold is not None else "patients outside the run"
    moved = f"; this folder is not the run's ({run_data}), matched by patient ID and by image" if elsewhere else ""
    return keep, f"the {len(keep)} images of patients the checkpoint never saw ({which}, from {folds_csv}{moved})"


# ------------------------------------------------------------------------------------------ drawing
def colourise(sal: np.ndarray) -> np.ndarray:
    """Map (any scale) -> BGR uint8 heat map (min-max normalised, JET; a flat map, no signal, as the coldest
    colour: not as the hottest, which min-max would make it)."""
    m = (np.zeros(np.shape(sal)) if loc.is_flat(sal) else loc.display_normalise(sal) * 255).round().astype(np.uint8)
    return cv2.applyColorMap(m, cv2.COLORMAP_JET)


def overlay(image: np.ndarray, sal: np.ndarray | None, mask: np.ndarray | None, alpha: float = 0.45,
            title: str = "") -> np.ndarray:
    """Gray uint8 image with the heat map blended over it, lesion outline in green, title on top."""
    base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    out = base if sal is None else cv2.addWeighted(colourise(sal), alpha, base, 1 - alpha, 0)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 255, 0), 1)
    if title:
        cv2.putText(out, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def strip(image: np.ndarray, maps: dict[str, np.ndarray], mask: np.ndarray | None, caption: str,
          min_side: int = 192) -> np.ndarray:
    """One row: the image with its caption, then each map over it. Small inputs are enlarged for display."""
    if image.shape[0] < min_side:
        side = (min_side, min_side)
        image = cv2.resize(image, side, interpolation=cv2.INTER_LINEAR)
        maps = {k: cv2.resize(v, side, interpolation=cv2.INTER_LINEAR) for k, v in maps.items()}
        mask = cv2.resize(mask.astype(np.uint8), side, interpolation=cv2.INTER_NEAREST) > 0 if mask is not None else None
    tiles = [overlay(image, None, mask, title=caption)]
    tiles += [overlay(image, m, mask, title=MAP_LABELS[name]) for name, m in maps.items()]
    return np.concatenate(tiles, axis=1)


def write_png(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise InputError("cannot encode PNG", path=path, hint="report this as a bug")
    return write_bytes_atomic(path, buf.tobytes())


# -------------------------------------------------------------------------------------------- maps
def compute_maps(model, x, maps: tuple[str, ...], target: int | None, weighting: str = "paper"):
    """All requested maps of one image (x: 1 x 1 x S x S tensor) at the input size.

    Returns (maps {name: S x S float32}, probs C, the class explained, timings ms {name: ...}).
    Timing keys: forward (features + head), cam / att (their extra work after the forward),
    gradcam (its own forward + backward).
    """
    import torch

    from usedge.train import cam as camlib

    size = tuple(x.shape[-2:])
    out, ms = {}, {}
    t0 = time.perf_counter()
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    ms["forward"] = (time.perf_counter() - t0) * 1e3
    probs = torch.softmax(logits, dim=1)[0]
    cls = int(probs.argmax()) if target is None else int(target)
    if "cam" in maps:
        t0 = time.perf_counter()
        with torch.no_grad():
            c = camlib.full_resolution_cam(model, x, features, weighting)[0, cls]
        out["cam"] = c.float().numpy()
        ms["cam"] = (time.perf_counter() - t0) * 1e3
    if "gradcam" in maps:
        t0 = time.perf_counter()
        g, _ = camlib.grad_cam(model, x, [cls])
        out["gradcam"] = g[0, 0].float().numpy()
        ms["gradcam"] = (time.perf_counter() - t0) * 1e3
    wanted = [m for m in ("att1", "att2") if m in maps]
    if wanted:
        t0 = time.perf_counter()
        with torch.no_grad():
            att = camlib.attention_maps(features, size)
        for m in wanted:
            if m in att:
                out[m] = att[m][0, 0].float().numpy()
        ms["att"] = (time.perf_counter() - t0) * 1e3
    return out, probs.numpy(), cls, ms


def map_grids(model, x, maps: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """The grid each map is computed on before it is resized to the input (rows, columns): CAM on the
    H/8 grid (usedge.train.cam.cam_grid_size), Grad-CAM on layer4 (H/32), the attention maps on their
    gates' grids. A 1 x 1 grid is a flat map once resized: it cannot localise anything."""
    import torch

    from usedge.train import cam as camlib

    with torch.no_grad():
        f = model.forward_features(x)
    source = {"cam": camlib.cam_grid_size(f), "gradcam": tuple(f["g"].shape[-2:])}
    source |= {m: tuple(f[k].shape[-2:]) for m, k in (("att1", "a1"), ("att2", "a2")) if k in f}
    return {m: (int(source[m][0]), int(source[m][1])) for m in maps if m in source}


COARSE_GRID = 4     # a map grid with fewer cells per side tells only halves or thirds of the image apart


def grid_notes(grids: dict[str, tuple[int, int]], size: int) -> tuple[list[str], set[str]]:
    """Notes on maps too coarse to localise, and the maps whose localisation is not measured (1 x 1 grid)."""
    notes, flat = [], set()
    for m, (h, w) in grids.items():
        if min(h, w) <= 1:
            flat.add(m)
            notes.append(f"{MAP_LABELS[m]} is a {h}x{w} map at a {size} px input: flat once resized, so its "
                         "localisation is not measured (train at a larger --image-size, e.g. 96 or 224)")
        elif min(h, w) < COARSE_GRID:
            notes.append(f"{MAP_LABELS[m]} is a {h}x{w} map at a {size} px input: each cell spans "
                         f"1/{min(h, w)} of the image side, so its localisation scores are coarse")
    return notes, flat


# --------------------------------------------------------------------------------------------- job
def _summary_stats(values: list[float]) -> dict:
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {"n": len(v), "median": statistics.median(v), "mean": statistics.fmean(v),
            "p90": float(np.percentile(v, 90))}      # interpolated, as the stream's and bench's percentiles


def spread_over_classes(samples: list, n: int) -> list:
    """At most n samples taken from the classes in turn (each class's first images, in data order), so a
    limit is not one class when the data set lists its classes one after the other; kept in data order."""
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)
    queues = [iter(v) for _, v in sorted(by_class.items())]
    chosen: list[int] = []
    while queues and len(chosen) < n:
        for q in list(queues):
            if len(chosen) == n:
                break
            i = next(q, None)
            if i is None:
                queues.remove(q)
            else:
                chosen.append(i)
    return [samples[i] for i in sorted(chosen)]


def run_explain(checkpoint: str | Path, data: str | Path, out: str | Path,
                config: ExplainConfig = ExplainConfig()) -> dict:
    """Explain every image of `data` with the model in `checkpoint`; write the artifacts to `out`.

    Returns the explain.json dict.
    """
    import torch
    from rich.progress import Progress

    from usedge.train.checkpoint import load_checkpoint

    config.validate()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    out = Path(out)
    model, meta = load_checkpoint(checkpoint)
    class_names = list(meta["class_names"])
    spec = PreprocessSpec.from_dict(meta.get("preprocess", {}))
    ds = load_dataset(data, class_names=class_names)
    if ds.class_names != class_names:
        raise DataError(f"data set classes {ds.class_names} differ from the model's {class_names}",
                        path=data, hint="explain a data set with the classes the model was trained on")
    samples, images_note = unseen_samples(checkpoint, meta, ds, config.images)
    samples = spread_over_classes(samples, config.limit) if config.limit > 0 else samples
    maps_wanted = tuple(m for m in config.maps if not (m.startswith("att") and not hasattr(model, "gate1")))
    if not maps_wanted:
        raise ConfigError(f"a {meta.get('arch')} model has no attention gates", path=checkpoint,
                          hint="ask for --maps cam,gradcam")
    topk = "mask" if config.topk == "mask" else float(config.topk)

    rows, kept_maps, kept_masks, mask_rows, kept_patients = [], {m: [] for m in maps_wanted}, [], [], []
    sheet_strips: dict[str, list[np.ndarray]] = {n: [] for n in class_names}
    timings: dict[str, list[float]] = {}
    grids: dict[str, tuple[int, int]] = {}
    if samples:  # warm-up (first-call allocations), not timed
        warm = torch.from_numpy(normalise(prepare_file(Path(samples[0].path), spec)[0], spec))
        compute_maps(model, warm, maps_wanted, None, config.weighting)
        grids = map_grids(model, warm, maps_wanted)
    notes, flat_maps = grid_notes(grids, spec.size)
    mask_errors: list[str] = []
    empty_masks: list[str] = []
    with Progress(transient=True, disable=not config.progress) as bar:
        task = bar.add_task(f"explaining {len(samples)} images", total=len(samples))
        for sample in samples:
            image, info = prepare_file(Path(sample.path), spec)
            x = torch.from_numpy(normalise(image, spec))
            target = sample.label if config.target == "label" else None
            maps, probs, cls, ms = compute_maps(model, x, maps_wanted, target, config.weighting)
            for k, v in ms.items():
                timings.setdefault(k, []).append(v)
            try:
                lesion, lesion_source = read_lesion_mask(sample, info.frame_shape)
            except DataError as exc:    # one bad mask (or an empty one: BUSI's normal images) ends nothing
                lesion, lesion_source = None, ""
                if exc.message == EMPTY_MASK:      # no lesion: not an error to fix
                    empty_masks.append(_relative(sample.mask_path, ds.root))
                else:
                    mask_errors.append(str(exc))
            mask = crop_mask(lesion, info, spec.size, spec.resize) > 0 if lesion is not None else None
            rel = _relative(sample.path, ds.root)
            row = {"image": rel, "label": class_names[sample.label], "pred": class_names[int(probs.argmax())],
                   "p_pred": float(probs.max()), "explained_class": class_names[cls],
                   "lesion": lesion_source if mask is not None and mask.any() else "",
                   "lesion_fraction": float(mask.mean()) if mask is not None else float("nan")}
            row.update({f"ms_{k}": v for k, v in ms.items()})
            if mask is not None and mask.any():
                kept_masks.append(mask)
                mask_rows.append(len(rows))
                kept_patients.append(sample.patient_id)
                for m in maps_wanted:
                    kept_maps[m].append(maps[m])
            rows.append(row)
            if config.overlays != "none":
                caption = f"{row['label']} -> {row['pred']} {row['p_pred']:.2f}"
                s = strip(image, maps, mask, caption)
                if config.overlays == "all":
                    write_png(out / "overlays" / row["label"] / _overlay_name(rel, row["label"]), s)
                if len(sheet_strips[row["label"]]) < config.sheet_rows:
                    sheet_strips[row["label"]].append(s)
            bar.advance(task)

    if config.overlays != "none":
        for name, strips in sheet_strips.items():
            if strips:
                write_png(out / "sheets" / f"{name}.png", np.concatenate(strips, axis=0))

    if empty_masks:
        notes.append(f"{len(empty_masks)} image(s) have an empty lesion mask (no lesion, as BUSI's normal images have; "
                     f"e.g. {empty_masks[0]}): explained, not scored")
    if mask_errors:
        notes.append(f"{len(mask_errors)} image(s) explained without a lesion, as their mask or box could not be used "
                     f"(first: {mask_errors[0]})")
    localisation = {}
    if len(kept_masks) >= 2:
        for m in (m for m in maps_wanted if m not in flat_maps):
            # an image whose map is flat (one value: no signal) has no score: min-max would make it "all hot",
            # and its energy inside would be the lesion's area fraction, scored as if the map pointed somewhere
            keep = [j for j, sal in enumerate(kept_maps[m]) if not loc.is_flat(sal)]
            if len(keep) < len(kept_maps[m]):
                notes.append(f"{MAP_LABELS[m]}: {len(kept_maps[m]) - len(keep)} of {len(kept_maps[m])} maps are flat "
                             "(one value everywhere: no signal to localise); they are left out of its scores and drawn "
                             "as the coldest colour")
            if len(keep) < 2:
                notes.append(f"{MAP_LABELS[m]}: {len(keep)} map(s) left to score, so its localisation is not measured "
                             "(it needs at least 2)")
                continue
            res = loc.compare_to_baselines([kept_maps[m][j] for j in keep], [kept_masks[j] for j in keep],
                                           [kept_patients[j] for j in keep], k=topk,
                                           sigma_fraction=config.sigma_fraction, n_boot=config.n_boot,
                                           seed=config.seed)
            localisation[m] = {"scores": {s: _summary_stats(v) for s, v in res["scores"].items()},
                               "tests": res["tests"], "images": len(keep), "flat_images": len(kept_maps[m]) - len(keep)}
            rows_kept = [mask_rows[j] for j in keep]
            for s, values in res["scores"].items():
                for j, r in enumerate(rows_kept):
                    rows[r][f"{m}_{s}"] = values[j]
            for b, scores in res["baselines"].items():
                for s, values in scores.items():
                    for j, r in enumerate(rows_kept):
                        rows[r][f"{b}:{m}_{s}"] = values[j]
        loc.holm_adjust([t for res in localisation.values() for per_b in res["tests"].values() for t in per_b.values()])

    correct = [r["label"] == r["pred"] for r in rows]
    summary = {
        "model": {"checkpoint": str(checkpoint), "sha256": meta.get("sha256", ""), "arch": meta.get("arch"),
                  "gate_norm": meta.get("arch_kwargs", {}).get("gate_norm"), "class_names": class_names,
                  "preprocess": spec.to_dict()},
        "data": {"source": str(data), "n_images": len(rows), "n_with_lesion": len(kept_masks),
                 "n_patients_with_lesion": len(set(kept_patients)), "images": images_note,
                 "accuracy": float(np.mean(correct)) if correct else float("nan")},
        "config": asdict(config),
        "method": {
            "maps": {m: MAP_LABELS[m] for m in maps_wanted},
            "explained_class": config.target,
            "cam_weighting": config.weighting,
            "grid": f"{spec.size}x{spec.size} model input; masks cropped with the image's crop_box and resized",
            "map_grids": {m: f"{h}x{w}" for m, (h, w) in grids.items()},
            "scores": {"energy_inside": "share of the min-max normalised map's sum inside the lesion",
                       "topk_iou": f"IoU of the top-{'lesion-area' if topk == 'mask' else topk} pixels with the lesion",
                       "pointing_game": "1 if the map's maximum is in the lesion (ties: fraction of maxima inside)",
                       "energy_below": "share of the min-max normalised map's sum in the band below the lesion "
                                       "(under each lesion column, as deep as the lesion is tall)"},
            "baselines": {"centre": f"Gaussian at the centre, sigma = {config.sigma_fraction} x side",
                          "others": "the mean score of every other image's map on this image's mask"},
            "test": "patient as the unit (per-patient mean scores); two-sided Wilcoxon signed-rank on the "
                    "per-patient differences (map - baseline), zero differences dropped; p Holm-adjusted over "
                    f"every test in this report; effect: mean difference with a 95% patient-bootstrap interval "
                    f"({config.n_boot} resamples, seed {config.seed}) and the matched-pairs rank-biserial r",
        },
        "timing_ms": {k: _summary_stats(v) for k, v in timings.items()},
        "timing_note": f"CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch 1; "
                       "cam/att: extra after the forward pass; gradcam: its own forward + backward",
        "localisation": localisation,
        "notes": notes,
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_rows(out / "per_image.csv", rows)
    write_json_atomic(out / "explain.json", summary)
    write_text_atomic(out / "explain.md", render_markdown(summary))
    return summary


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def _overlay_name(rel: str, label: str) -> str:
    """'lipoma/a/b.png' -> 'a__b.png' (unique within the class folder)."""
    parts = list(Path(rel).with_suffix(".png").parts)
    if len(parts) > 1 and parts[0] == label:
        parts = parts[1:]
    return "__".join(parts)


def _write_rows(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())


def _p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def render_markdown(summary: dict) -> str:
    """explain.json -> explain.md (tables of localisation and timing)."""
    d, m = summary["data"], summary["method"]
    lines = [
        "# usedge explain",
        "",
        f"Model `{summary['model']['checkpoint']}` ({summary['model']['arch']}, gates "
        f"{summary['model']['gate_norm']}), sha256 `{summary['model']['sha256'][:16]}`.",
        f"Data `{d['source']}`: {d['images']}; {d['n_images']} images, {d['n_with_lesion']} with a lesion mask "
        f"from {d['n_patients_with_lesion']} patients; accuracy on them {d['accuracy']:.3f}.",
        f"Maps of the {'predicted' if m['explained_class'] == 'pred' else 'true'} class; "
        f"CAM weighting `{m['cam_weighting']}`; {m['grid']}.",
        "",
    ]
    lines += [f"**Note:** {n}." for n in summary.get("notes", [])] + ([""] if summary.get("notes") else [])
    if summary["localisation"]:
        lines += [
            "## Localisation",
            "",
            "Per map and score, patient as the unit: the map's mean over patients; per baseline its mean, "
            "the mean difference map - baseline [95% patient-bootstrap interval], the Holm-adjusted "
            "two-sided Wilcoxon p over every test in this table, and the rank-biserial r (> 0 favours the map).",
            "",
            "| map | score | map | centre | difference [95% CI] | p (Holm) | r | other images | difference [95% CI] "
            "| p (Holm) | r |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, res in summary["localisation"].items():
            for s in res["scores"]:
                first = next(iter(res["tests"].values()))[s]
                cells = [MAP_LABELS[name], SCORE_LABELS[s], f"{first['mean_map']:.3f}"]
                for b in loc.BASELINES:
                    t = res["tests"].get(b, {}).get(s)
                    cells += ([f"{t['mean_baseline']:.3f}",
                               f"{t['mean_difference']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]",
                               _p(t["p_holm"]), f"{t['rank_biserial']:+.2f}"] if t else ["-"] * 4)
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Scores: " + "; ".join(f"{SCORE_LABELS[k]}: {v}" for k, v in m["scores"].items()) + ".",
                  "Baselines: " + "; ".join(f"{k}: {v}" for k, v in m["baselines"].items()) + ".",
                  f"Test: {m['test']}.", ""]
    elif summary["data"]["n_with_lesion"] == 0:
        lines += ["No lesion masks (manifest `mask_path` or `bbox`): localisation not measured.", ""]
    elif summary["data"]["n_with_lesion"] == 1:
        lines += ["One image with a lesion mask: localisation not measured (it needs at least 2).", ""]
    lines += ["## Cost per image", "", "| step | median ms | mean ms | p90 ms |", "|---|---|---|---|"]
    for k, st in summary["timing_ms"].items():
        if st.get("n"):
            lines.append(f"| {k} | {st['median']:.2f} | {st['mean']:.2f} | {st['p90']:.2f} |")
    lines += ["", summary["timing_note"] + ".", ""]
    return "\n".join(lines)
