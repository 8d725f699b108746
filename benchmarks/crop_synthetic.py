"""Field-of-view detection and Doppler removal on synthetic scanner screens, against ground truth.

    nice -n 10 .venv/bin/python benchmarks/crop_synthetic.py --frames 500

For each frame: a synthetic B-mode image (usedge.synth.phantom) placed in a random scanner screen
(usedge.synth.scanner.render_scanner_frame: random size 1280x720..1920x1080, linear or curved
probe, single or dual view, with or without a colour Doppler box). Measured:
  fov IoU           detected box vs truth fov_box (dual: the detected view that best matches each truth view)
  doppler left      truth Doppler pixels inside the crop that the Doppler mask missed, / crop pixels:
                    for resize=area and halve-linear (Doppler found on the crop's pixels) and for
                    colour-halve-linear (found on the halved colour crop at the model grid; the default for new models)
  dual found        dual screens where both views were found
  degraded          IoU again on the same screen saved as JPEG quality 70 and with Gaussian noise (sigma 3)
Writes benchmarks/results/crop_synthetic.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from usedge.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from usedge.runtime.crop import model_image, prepare_all  # noqa: E402
from usedge.runtime.doppler import doppler_cells  # noqa: E402
from usedge.runtime.fov import crop_field_of_view  # noqa: E402
from usedge.runtime.preprocess import RESIZE_FOR_NEW_MODELS, PreprocessSpec  # noqa: E402
from usedge.synth.phantom import render_view, sample_patient, sample_view  # noqa: E402
from usedge.synth.scanner import render_scanner_frame  # noqa: E402

LABELS = ("epidermal_cyst", "lipoma", "pilomatricoma")
RESULTS = Path(__file__).resolve().parent / "results"


def iou(a, b) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    return inter / float(aw * ah + bw * bh - inter)


def make_frame(i: int, rng: np.random.Generator):
    patient = sample_patient(f"P{i:04d}", LABELS[i % 3], rng)
    bmode, _ = render_view(patient, sample_view(patient, rng), rng)
    probe = "curved" if rng.random() < 0.25 else "linear"
    dual = bool(rng.random() < 0.15)
    doppler = bool(i % 2 == 1)   # half with a colour Doppler box
    frame, truth = render_scanner_frame(bmode, rng, doppler=doppler, probe=probe, dual=dual)
    return frame, truth, probe, dual, doppler


def doppler_left(frame, truth, spec) -> float | None:
    """Fraction of the crop's pixels that are truth Doppler and survived removal (not in our mask)."""
    if truth["doppler_mask"] is None:
        return None
    results = prepare_all(frame, spec)
    worst = 0.0
    for _, info in results:
        x, y, w, h = info.crop_box
        truth_crop = truth["doppler_mask"][y:y + h, x:x + w]
        if not truth_crop.any():
            continue
        # the runtime fills Doppler on the model grid: a crop pixel is removed when its cell is
        ours = doppler_cells(model_image(frame[y:y + h, x:x + w], spec)[1], spec.size)
        if ours is None:
            worst = max(worst, float(truth_crop.sum()) / (w * h))
            continue
        cols = np.minimum((np.arange(w) * spec.size) // w, spec.size - 1)
        rows = np.minimum((np.arange(h) * spec.size) // h, spec.size - 1)
        ours_full = ours[rows][:, cols]
        worst = max(worst, float((truth_crop & ~ours_full).sum()) / (w * h))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    spec = PreprocessSpec()
    spec_new = PreprocessSpec(resize=RESIZE_FOR_NEW_MODELS)
    rows = []
    t_start = time.time()
    for i in range(args.frames):
        frame, truth, probe, dual, doppler = make_frame(i, rng)
        fov = crop_field_of_view(frame)
        ious = [max(iou(t, d) for d in fov.boxes) for t in truth["fov_boxes"]]
        # the same screen as a JPEG (quality 70) and as a noisy analog capture (Gaussian, sigma 3 levels)
        jpeg = cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_COLOR)
        noisy = np.clip(frame.astype(np.int16) + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)
        degraded = {name: min(max(iou(t, d) for d in crop_field_of_view(img).boxes) for t in truth["fov_boxes"])
                    for name, img in (("iou_jpeg70", jpeg), ("iou_noise3", noisy))}
        rows.append({"i": i, "probe": probe, "dual": dual, "doppler": doppler, "size": truth["frame_size"],
                     "iou": min(ious), **degraded, "views_found": len(fov.boxes), "method": fov.method,
                     "doppler_left": doppler_left(frame, truth, spec),
                     "doppler_left_new": doppler_left(frame, truth, spec_new)})
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{args.frames} frames, {time.time() - t_start:.0f} s", file=sys.stderr)

    def stats(sel, key="iou"):
        v = np.array([r[key] for r in sel]) if sel else np.array([np.nan])
        return {"n": len(sel), "iou_median": float(np.median(v)), "iou_p5": float(np.percentile(v, 5)),
                "iou_min": float(v.min())}

    def left(key):
        dl = np.array([r[key] for r in rows if r[key] is not None])
        return {"n": int(dl.size), "median": float(np.median(dl)) if dl.size else None,
                "p95": float(np.percentile(dl, 95)) if dl.size else None, "max": float(dl.max()) if dl.size else None}

    groups = {
        "all": rows,
        "linear": [r for r in rows if r["probe"] == "linear"],
        "curved": [r for r in rows if r["probe"] == "curved"],
        "dual": [r for r in rows if r["dual"]],
        "with doppler": [r for r in rows if r["doppler"]],
        "without doppler": [r for r in rows if not r["doppler"]],
    }
    summary = {name: stats(sel) for name, sel in groups.items()}
    summary["all, saved as JPEG q70"] = stats(rows, "iou_jpeg70")
    summary["all, noise sigma 3"] = stats(rows, "iou_noise3")
    duals = groups["dual"]
    result = {
        "frames": args.frames, "seed": args.seed,
        "fov": summary,
        "dual_both_views_found": sum(r["views_found"] >= 2 for r in duals), "dual_frames": len(duals),
        "doppler_left_fraction": left("doppler_left"),
        f"doppler_left_fraction_{RESIZE_FOR_NEW_MODELS}": left("doppler_left_new"),
        "fallbacks": sum(r["method"] == "fallback" for r in rows),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other work)",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "crop_synthetic.json", result)
    md = ["# Field of view on synthetic scanner screens", "",
          f"`nice -n 10 .venv/bin/python benchmarks/crop_synthetic.py --frames {args.frames} --seed {args.seed}`", "",
          "| frames | n | IoU median | IoU p5 | IoU min |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        md.append(f"| {name} | {s['n']} | {s['iou_median']:.3f} | {s['iou_p5']:.3f} | {s['iou_min']:.3f} |")
    md += ["", f"Dual screens with both views found: {result['dual_both_views_found']} / {result['dual_frames']}.",
           f"Fallbacks (no image found): {result['fallbacks']}.", ""]
    for key, how in (("doppler_left_fraction", "resize=area or halve-linear: found on the crop's pixels"),
                     (f"doppler_left_fraction_{RESIZE_FOR_NEW_MODELS}",
                      f"resize={RESIZE_FOR_NEW_MODELS}: found on the halved colour crop at the model grid")):
        d = result[key]
        md.append(f"Doppler pixels left inside the crop ({how}; fraction of crop pixels, {d['n']} frames with "
                  f"Doppler): median {d['median']:.2e}, p95 {d['p95']:.2e}, max {d['max']:.2e}." if d["n"]
                  else "No Doppler frames.")
    write_text_atomic(args.out / "crop_synthetic.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
