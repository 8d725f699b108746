"""Time per 1080p frame: field-of-view detection vs the cached stream path (FrameCropper).

    nice -n 10 .venv/bin/python benchmarks/crop_timing.py --frames 200

Frames: synthetic 1920x1080 scanner screens (usedge.synth.scanner, linear probe, half with a colour
Doppler box), one screen layout per run of frames with the B-mode content changing per frame.
Measured, per frame, with OpenCV and numpy on one thread:
  baseline      prepare(crop=none): gray + INTER_AREA resize of the whole frame to 224 (no detection)
  detection     prepare(crop=auto) from scratch: field of view + skin line + Doppler + resize
  cached        FrameCropper(crop=auto) after its first frame: layout re-check + skin line + Doppler + resize,
                then normalise into the model's reused input buffer (issue 18 item 2: crop + normalise)
Both wall time (perf_counter) and this thread's CPU time (thread_time) are reported: the machine
is shared, and CPU time excludes the waits for other processes. Ratios are against the baseline.
Writes benchmarks/results/crop_timing.json and .md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from usedge.bench.machine import cpu_model  # noqa: E402
from usedge.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from usedge.runtime.crop import FrameCropper, prepare  # noqa: E402
from usedge.runtime.preprocess import PreprocessSpec, normalise  # noqa: E402
from usedge.synth.phantom import render_view, sample_patient, sample_view  # noqa: E402
from usedge.synth.scanner import ScannerScreen  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def screens(n_layouts: int, per_layout: int, seed: int):
    """Yield lists of 1080p frames, one list per screen layout (same UI, changing B-mode)."""
    rng = np.random.default_rng(seed)
    for k in range(n_layouts):
        p = sample_patient(f"T{k}", ("epidermal_cyst", "lipoma", "pilomatricoma")[k % 3], rng)
        views = [render_view(p, sample_view(p, rng), rng)[0] for _ in range(3)]
        shape = views[0].shape
        screen = ScannerScreen(rng, shape, size=(1920, 1080), doppler=bool(k % 2))
        frames = []
        for i in range(per_layout):
            f = screen.background.copy()
            screen.place(f, cv2.resize(views[i % 3], shape[::-1]))
            screen.paint_doppler(f, phase=0.3 * i)
            frames.append(f)
        yield frames


def timed(fn, frame):
    w0, c0 = time.perf_counter(), time.thread_time()
    fn(frame)
    return (time.perf_counter() - w0) * 1e3, (time.thread_time() - c0) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200, help="cached-path frames (detection runs on a tenth)")
    ap.add_argument("--layouts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    per = max(2, args.frames // args.layouts)
    none_spec, auto_spec = PreprocessSpec(crop="none"), PreprocessSpec(crop="auto")
    t = {"baseline": [], "detection": [], "cached": []}
    detections = 0
    buf = np.empty((1, 1, auto_spec.size, auto_spec.size), np.float32)
    for frames in screens(args.layouts, per, args.seed):
        cropper = FrameCropper(auto_spec)
        cropper(frames[0])                                  # first frame: the one detection
        for i, f in enumerate(frames):
            t["baseline"].append(timed(lambda x: prepare(x, none_spec), f))
            t["cached"].append(timed(lambda x: normalise(cropper(x)[0], auto_spec, out=buf), f))
            if i % 10 == 0:
                t["detection"].append(timed(lambda x: prepare(x, auto_spec), f))
        detections += cropper.detections
    base_wall = float(np.median([w for w, _ in t["baseline"]]))
    base_cpu = float(np.median([c for _, c in t["baseline"]]))
    summary = {}
    for k, v in t.items():
        wall, cpu = np.array([w for w, _ in v]), np.array([c for _, c in v])
        summary[k] = {"n": len(v), "wall_ms_median": float(np.median(wall)), "wall_ms_p90": float(np.percentile(wall, 90)),
                      "cpu_ms_median": float(np.median(cpu)),
                      "wall_ratio_to_baseline": float(np.median(wall)) / base_wall,
                      "cpu_ratio_to_baseline": float(np.median(cpu)) / base_cpu}
    load = os.getloadavg()
    cpu, flags = cpu_model()
    result = {"cpu": cpu, "cpu_flags": flags, "frame_size": [1920, 1080], "layouts": args.layouts, "frames_per_layout": per,
              "cropper_detections": detections, "summary": summary,
              "machine": f"{cpu} ({', '.join(flags) or 'no AVX2'}), {os.cpu_count()} cores, one OpenCV thread; "
                         f"load average {load[0]:.1f} (other work ran concurrently)"}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "crop_timing.json", result)
    md = ["# Crop time per 1920x1080 frame", "",
          f"`nice -n 10 .venv/bin/python benchmarks/crop_timing.py --frames {args.frames} --layouts {args.layouts}`", "",
          f"{result['machine']}. The stream cropper ran {detections} detection(s) over {args.layouts} layouts "
          f"x {per} frames.", "",
          "| path | frames | wall median ms | wall p90 ms | CPU median ms | wall / baseline | CPU / baseline |",
          "|---|---|---|---|---|---|---|"]
    for k, s in summary.items():
        md.append(f"| {k} | {s['n']} | {s['wall_ms_median']:.2f} | {s['wall_ms_p90']:.2f} | {s['cpu_ms_median']:.2f} | "
                  f"{s['wall_ratio_to_baseline']:.2f} | {s['cpu_ratio_to_baseline']:.2f} |")
    write_text_atomic(args.out / "crop_timing.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
