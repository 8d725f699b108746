"""How separable is the synthetic cohort without looking at shapes? And how long does it take to make?

For each difficulty: generate the default cohort (149/74/32 patients, 698 images), time it, then
fit a scikit-learn LogisticRegression on a global intensity histogram (64 bins) with 5-fold
patient-grouped stratified CV and report the balanced accuracy (chance = 0.333). A CNN must do
clearly better; the aim at the default difficulty (0.5) is about 0.75 or less. Also measures the
class signatures the tests check (usedge.synth.signatures) on every image.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/synth_separability.py
    .venv/bin/python benchmarks/synth_separability.py --difficulties 0.5 --keep /tmp/cohort

Writes benchmarks/results/synth_separability.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def histogram_features(paths: list[Path], bins: int) -> np.ndarray:
    feats = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        hist = np.bincount(((img.astype(np.int32) * bins) // 256).ravel(), minlength=bins).astype(np.float64)
        feats.append(hist / hist.sum())
    return np.asarray(feats)


def histogram_lr(ds, bins: int = 64, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = histogram_features([s.path for s in ds.samples], bins)
    y, groups = np.asarray(ds.labels), np.asarray(ds.groups)
    out = {}
    for c in (0.1, 1.0, 10.0):  # report the best regularisation: the baseline's most favourable case
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight="balanced"))
        cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
        pred = cross_val_predict(model, x, y, groups=groups, cv=cv)
        out[c] = (balanced_accuracy_score(y, pred), confusion_matrix(y, pred).tolist())
    best = max(out, key=lambda c: out[c][0])
    return {"bins": bins, "C": best, "balanced_accuracy": round(float(out[best][0]), 4),
            "by_C": {str(c): round(float(v[0]), 4) for c, v in out.items()}, "confusion": out[best][1]}


def signatures(ds) -> dict:
    from usedge.synth.signatures import measure_signatures

    rows = {n: [] for n in ds.class_names}
    for s in ds.samples:
        img = cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
        rows[ds.class_names[s.label]].append(measure_signatures(img, mask))
    out = {}
    for name, ms in rows.items():
        arr = {k: np.array([m[k] for m in ms], dtype=float) for k in ms[0]}
        out[name] = {k: round(float(np.nanmedian(v)), 2) for k, v in arr.items()}
        out[name]["share_interior_darker"] = round(float(np.nanmean(arr["interior_contrast"] < 0)), 3)
        out[name]["share_posterior_brighter"] = round(float(np.nanmean(arr["posterior_contrast"] > 0)), 3)
        out[name]["share_wider_than_tall_1_5"] = round(float(np.nanmean(arr["aspect"] > 1.5)), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--difficulties", default="0,0.5,1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bins", type=int, default=64)
    ap.add_argument("--keep", type=Path, default=None, help="keep the default-difficulty cohort here")
    ap.add_argument("--data", type=Path, default=None, help="measure this existing cohort instead (no timing)")
    args = ap.parse_args()

    from usedge.dataset import load_dataset
    from usedge.synth.cohort import make_cohort

    results = []
    for d in [float(v) for v in args.difficulties.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            out = args.keep if (args.keep and d == 0.5) else Path(tmp) / "cohort"
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            if args.data:
                out = args.data
            else:
                make_cohort(out, seed=args.seed, difficulty=d, progress=False, overwrite=True)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            ds = load_dataset(out)
            r = {"difficulty": d, "images": len(ds), "patients": len(set(ds.groups)),
                 "generate_wall_s": round(wall, 1), "generate_cpu_s": round(cpu, 1),
                 "histogram_lr": histogram_lr(ds, args.bins, args.seed), "signatures": signatures(ds)}
        results.append(r)
        print(f"difficulty {d}: {r['images']} images in {r['generate_wall_s']} s wall ({r['generate_cpu_s']} s CPU); "
              f"histogram-LR balanced accuracy {r['histogram_lr']['balanced_accuracy']}")
    meta = {"seed": args.seed, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "note": "other engineers' jobs shared the 2 CPU cores during the run; times are indicative",
            "command": "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/synth_separability.py"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth_separability.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    lines = ["# Synthetic cohort: generation time and histogram-LR separability", "",
             f"`{meta['command']}` (seed {args.seed}; {meta['machine']}; {meta['note']}).", "",
             "| difficulty | images | generate wall s | generate CPU s | histogram-LR balanced acc. (64 bins, 5-fold by patient) |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['difficulty']} | {r['images']} | {r['generate_wall_s']} | {r['generate_cpu_s']} | "
                     f"{r['histogram_lr']['balanced_accuracy']} |")
    lines += ["", "Class signatures (median over images; gray levels 0-255; see usedge/synth/signatures.py):", "",
              "| difficulty | class | interior - ring | below - beside | width/height | share interior darker | share posterior brighter | share w/h > 1.5 |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, s in r["signatures"].items():
            lines.append(f"| {r['difficulty']} | {name} | {s['interior_contrast']} | {s['posterior_contrast']} | "
                         f"{s['aspect']} | {s['share_interior_darker']} | {s['share_posterior_brighter']} | "
                         f"{s['share_wider_than_tall_1_5']} |")
    (RESULTS / "synth_separability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
