"""Live-scanner benchmark: a synthetic 1080p scanner video played at its pace (`--realtime`) through the
ONE latest-frame loop, fp32 and int8 ONNX models at the paper's 224 px, onnxruntime CPU.

The stream targets (issue 18 item 5): int8 paced at 30 fps and fp32 at 15 fps over 60 s, freeze
detection off (every frame needs a result): 0 frames dropped or skipped, capture-to-result p99
<= 40 ms. The runs use the runtime's thread budget (usedge/runtime/threads.py); one more int8 run
with the libraries' default thread counts (OpenCV's pool, FFmpeg frame threading) shows what the
budget changes (model in the loop / model alone, same run).

Reports per model: frames read / processed / dropped / frozen-skipped, results per second,
capture-to-result latency p50/p90/p99, the model's own time inside the loop, and the share of the
latency that is not the model. Baseline measured in the same run: the same backend's `infer` alone
on a fixed input (model-only latency), so every figure is a ratio against this machine at this moment.

    nice -n 10 .venv/bin/python benchmarks/stream_realtime.py --seconds 60 --threads 2

Writes benchmarks/results/stream_realtime.json and .md (stream_realtime_<tag>.* with --tag). Needs the train/export extras only to
build the random-init models once (weights do not change latency); `--models DIR` skips that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_models(work: Path, size: int) -> Path:
    """model.onnx + model.int8.onnx at `size` px from a random-init AGResNet18 (export pipeline, calibrated
    on a small synthetic cohort), with the resize method a newly trained model gets (training default)."""
    from usedge.train.config import load_config

    resize = load_config().data.resize
    out = work / f"models{size}-{resize}"
    if (out / "model.onnx").is_file() and (out / "model.int8.onnx").is_file():
        return out
    import torch

    from usedge import CLASS_NAMES
    from usedge.export.pipeline import ExportOptions, run_export
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.synth.cohort import make_cohort
    from usedge.train.checkpoint import save_checkpoint
    from usedge.train.model import build_model

    torch.set_num_threads(2)
    cohort = work / "cohort"
    if not (cohort / "manifest.csv").is_file():
        make_cohort(cohort, seed=0, patients=(4, 4, 4), images=24, progress=False)
    torch.manual_seed(0)
    model = build_model("ag_resnet18", num_classes=len(CLASS_NAMES)).eval()
    ckpt = save_checkpoint(work / f"ckpt{size}.pt", model, class_names=list(CLASS_NAMES),
                           preprocess=PreprocessSpec(size=size, resize=resize), config={"data": {"root": str(cohort)}},
                           metrics={"note": "random init, benchmark only"})
    run_export(ckpt, out, ExportOptions(fp16=False, cam=False, data=cohort, calib_count=16, parity_count=8,
                                        reference_count=1))
    return out


def _resize_of(model: Path) -> str:
    """The model's preprocessing resize method (from its metadata)."""
    from usedge.runtime.classifier import Classifier

    clf = Classifier.load(model, backend="ort-cpu", threads=1)
    try:
        return clf.spec.resize
    finally:
        clf.close()


PACED_REPEATS = 300   # the model alone, paced: enough calls for its p99 (the 3rd slowest) to mean something


def model_only(clf, repeats: int = 40, fps: float | None = None) -> dict:
    """The backend alone on a fixed normalised input: p50/p99 ms (the baseline). Back to back, or with
    `fps` once per frame period with the CPU idle in between, as in a paced stream: idle gaps let
    threads park and caches cool, so the paced figure is the one a model in a paced loop can be held to."""
    x = np.random.default_rng(0).standard_normal((1, 1, clf.spec.size, clf.spec.size)).astype(np.float32)
    for _ in range(5):
        clf.backend.infer(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        clf.backend.infer(x)
        dt = time.perf_counter() - t
        times.append(dt * 1e3)
        if fps:
            time.sleep(max(0.0, 1.0 / fps - dt))
    return {"p50": round(float(np.percentile(times, 50)), 3), "p99": round(float(np.percentile(times, 99)), 3)}


def cpu_breakdown(model: Path, video: Path, frames: int = 40) -> dict:
    """CPU time (time.process_time: every thread of this process, OpenCV's and ffmpeg's workers
    included, ms) per stage for `frames` frames processed one after another with nothing else
    running in the process (onnxruntime intra-op threads = 1, no spinning). Waiting for a busy CPU
    is not CPU time, so these figures hold even while other work runs on the machine."""
    import cv2

    from usedge.runtime.classifier import Classifier
    from usedge.runtime.pipeline import FramePipeline, FreezeDetector

    stages = {k: [] for k in ("decode", "freeze_check", "crop", "normalise", "model", "post")}
    with Classifier.load(model, backend="ort-cpu", threads=1) as clf:
        cropper, freeze = FramePipeline(clf, stream=True).cropper, FreezeDetector()
        cap = cv2.VideoCapture(str(video))
        for i in range(frames + 3):
            t = [time.process_time()]
            ok, frame = cap.read()
            t.append(time.process_time())
            if not freeze.is_frozen(frame):
                freeze.keep(frame)          # the reference is the last classified frame, as in the pipeline
            t.append(time.process_time())
            image, info = clf.prepare(frame, cropper=cropper)
            t.append(time.process_time())
            batch = clf.normalise(image)
            t.append(time.process_time())
            out = clf.run_model(batch)
            t.append(time.process_time())
            clf.post(out, [info])
            t.append(time.process_time())
            if i >= 3:  # warm-up frames left out
                for k, a, b in zip(stages, t[:-1], t[1:]):
                    stages[k].append((b - a) * 1e3)
        cap.release()
    med = {k: round(float(np.median(v)), 3) for k, v in stages.items()}
    loop = sum(v for k, v in med.items() if k != "decode")      # what the inference loop spends
    med["loop_total"] = round(loop, 3)
    med["non_model_share_of_loop"] = round(1 - med["model"] / loop, 4)
    return med


def freeze_accuracy(video: Path, truth: dict) -> dict:
    """The freeze detector on every frame against the video's truth: false/missed freezes."""
    import cv2

    from usedge.runtime.pipeline import FreezeDetector

    det, cap = FreezeDetector(), cv2.VideoCapture(str(video))
    live_mad, frozen_mad, fp, fn = [], [], 0, 0
    for f in truth["frames_truth"]:
        ok, frame = cap.read()
        if not ok:
            break
        said = det.is_frozen(frame)
        if not said:
            det.keep(frame)                 # as FramePipeline does: only classified frames are the reference
        if f["frame"] > 0:
            (frozen_mad if f["frozen"] else live_mad).append(det.last_mad)
        fp += int(said and not f["frozen"])
        fn += int(f["frozen"] and not said)
    cap.release()
    return {"frames": len(truth["frames_truth"]), "frozen_by_truth": sum(f["frozen"] for f in truth["frames_truth"]),
            "false_freezes": fp, "missed_freezes": fn,
            "live_mad_min": round(min(live_mad), 4), "frozen_mad_max": round(max(frozen_mad), 4) if frozen_mad else None}


def run_one(model: Path, video: Path, threads: int, freeze: bool, spinning: bool | None, fps: float,
            budget: bool = True) -> dict:
    """One paced run. budget=False: the libraries' own thread counts (OpenCV's default pool, FFmpeg's
    default decoder threads) beside the same model threads, for the comparison."""
    import cv2

    from usedge.runtime.classifier import Classifier
    from usedge.runtime.sources import open_source
    from usedge.runtime.pipeline import FramePipeline
    from usedge.runtime.stream import StreamRunner
    from usedge.runtime.threads import ThreadBudget, thread_budget
    from usedge.bench.stats import cpu_counters, steal_since

    plan = thread_budget(capture_threads=1, model_threads=threads, spinning=spinning)
    if not budget:   # OpenCV's default (-1: one worker per core), FFmpeg's default decoder threads (0)
        plan = ThreadBudget(plan.cores, 1, plan.model_threads, opencv_threads=-1, decode_threads=0, spinning=plan.spinning)
    with Classifier.load(model, backend="ort-cpu", threads=plan.model_threads, spinning=plan.spinning) as clf:
        counters = cpu_counters()
        baseline, paced = model_only(clf), model_only(clf, repeats=PACED_REPEATS, fps=fps)
        reader = open_source(str(video))
        runner = StreamRunner(FramePipeline(clf, stream=True, regions=reader.regions, freeze=freeze), reader,
                              realtime=True, fps=fps, budget=plan)
        os_threads = []     # threads of this process while results arrive (decoder, OpenCV and model pools)
        from_due = []       # ms from the frame's due time (when a scanner delivers it) to its result: decode included

        def on_result(pred, frame, overlay):
            os_threads.append(len(os.listdir("/proc/self/task")))
            if pred.state == "live" and runner.capture.t_start is not None:
                from_due.append((time.perf_counter() - runner.capture.t_start - pred.frame_index / fps) * 1e3)

        runner.subscribe(on_result)
        s = runner.run()
        opencv_threads_seen = cv2.getNumThreads()
        steal = steal_since(counters)
    lat = s.latency_ms
    c2r, mdl = lat["capture_to_result"], lat["model"]
    return {
        "model": model.name, "precision": "int8" if "int8" in model.name else "fp32", "freeze_detect": freeze,
        "threads": threads, "spinning": plan.spinning, "paced_fps": fps, "thread_budget": budget,
        "budget": s.threads, "opencv_threads_seen": opencv_threads_seen, "seconds": s.duration_s,
        "missed": s.dropped + s.late_skipped, "os_threads_max": max(os_threads, default=None),
        "model_in_loop_vs_alone_p50": round(mdl["p50"] / baseline["p50"], 3),
        "model_alone_paced_ms": paced, "model_in_loop_vs_paced_alone_p50": round(mdl["p50"] / paced["p50"], 3),
        "target_met": bool(s.dropped + s.late_skipped == 0 and c2r["p99"] <= 40.0),
        "frames_read": s.frames_read, "late_skipped": s.late_skipped, "processed": s.processed, "dropped": s.dropped,
        "frozen_skipped": s.frozen_skipped, "results_fps": s.fps, "source_fps": s.source_fps,
        "capture_to_result_ms": c2r, "model_in_loop_ms": mdl, "model_only_ms": baseline,
        "due_to_result_ms": {k: round(float(np.percentile(from_due, q)), 3) for k, q in (("p50", 50), ("p99", 99))}
        if from_due else None,
        "crop_ms": lat["crop"], "wait_ms": lat["wait"],
        "non_model_share_p50": round(1.0 - mdl["p50"] / c2r["p50"], 4),
        "layout_detections": s.layout_detections,
        "cpu_steal": steal,
        "latency_ms": lat,
    }


def _steal(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def markdown(rows: list[dict], meta: dict, cpu: dict, freeze: dict) -> str:
    lines = [
        "# Live stream benchmark (usedge infer --stream --realtime)", "",
        f"{meta['video']}; {meta['machine']}; onnxruntime CPU, {meta['threads']} threads. "
        f"Machine load: {meta['concurrent_note']}", "",
        "| model | paced fps | thread budget | freeze detect | decoded | skipped by lagging decoder | processed "
        "| dropped in slot | frozen-skipped "
        "| results/s | capture→result p50 / p99 ms | due→result p50 / p99 ms | model in loop p50 / p99 ms | model alone p50 ms "
        "| in loop / alone | model alone paced p50 / p99 ms | in loop / paced alone "
        "| crop p50 ms | not-model share (p50) | OS threads (max) | CPU steal | target (0 missed, p99 ≤ 40 ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, m, d = r["capture_to_result_ms"], r["model_in_loop_ms"], r.get("due_to_result_ms")
        due = f"{d['p50']:.1f} / {d['p99']:.1f}" if d else "—"
        budget = "runtime budget" if r["thread_budget"] else "library defaults"
        lines.append(f"| {r['model']} | {r['paced_fps']:g} | {budget} | {'on' if r['freeze_detect'] else 'off'} | "
                     f"{r['frames_read']} | {r['late_skipped']} | "
                     f"{r['processed']} | "
                     f"{r['dropped']} | {r['frozen_skipped']} | {r['results_fps']:.1f} | {c['p50']:.1f} / {c['p99']:.1f} | {due} | "
                     f"{m['p50']:.1f} / {m['p99']:.1f} | {r['model_only_ms']['p50']:.1f} | "
                     f"{r['model_in_loop_vs_alone_p50']:.2f} | {r['model_alone_paced_ms']['p50']:.1f} / {r['model_alone_paced_ms']['p99']:.1f} | "
                     f"{r['model_in_loop_vs_paced_alone_p50']:.2f} | {r['crop_ms']['p50']:.1f} | "
                     f"{r['non_model_share_p50']:.0%} | {r['os_threads_max']} | {_steal(r.get('cpu_steal'))} | "
                     f"{'met' if r['target_met'] else 'not met'} |")
    for r in rows:
        if not r["target_met"] and r["missed"] == 0:
            c, a = r["capture_to_result_ms"]["p99"], r["model_alone_paced_ms"]["p99"]
            lines += ["", f"{r['model']} at {r['paced_fps']:g} fps (freeze detection {'on' if r['freeze_detect'] else 'off'}), "
                          f"not met: capture→result p99 {c:.1f} ms; the model alone, paced at the same rate with nothing "
                          f"else in the process, has p99 {a:.1f} ms over {PACED_REPEATS} calls (this machine's own tail for "
                          f"this model): the stream's p99 is {c - a:+.1f} ms from it (crop, hand-over and post, and sampling)."]
    lines += ["", "model alone = the backend on a fixed input, back to back; model alone paced = the same, called "
              "once per frame period with the CPU idle in between (as in the paced stream). in loop / paced alone "
              "is the pipeline's own cost on the model; in loop / alone adds what idle gaps cost on this machine.",
              "", "capture→result starts when the decoded frame is handed to the loop (the issue's measure: a capture "
              "card delivers pixels); due→result starts when the frame is due at the paced rate, so it adds the "
              "1080p video file's decode in the capture thread (and any wait for a core), which a scanner's "
              "capture card would mostly not have.",
              "", "not-model share = 1 − (model p50 in the loop) / (capture→result p50): crop, normalise, "
              "softmax, smoothing and hand-over. Frozen frames repeat the last result without inference and are "
              "left out of the latency percentiles.", "",
              "CPU steal = the share of all CPU time, over the row's run (its model-alone baselines included), that "
              "the virtual machine's host gave to other guests (/proc/stat): on a shared host, a slow row is told "
              "apart from slow code by it.", "",
              "## CPU time per frame (robust to other work on the machine)", "",
              "| model | decode (capture thread) | freeze check | crop | normalise | model | post | loop total | not-model share of loop |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, c in cpu.items():
        lines.append(f"| {name} | {c['decode']:.2f} | {c['freeze_check']:.2f} | {c['crop']:.2f} | {c['normalise']:.2f} | "
                     f"{c['model']:.2f} | {c['post']:.2f} | {c['loop_total']:.2f} | {c['non_model_share_of_loop']:.0%} |")
    lines += ["", f"Freeze detector against the video's truth, every frame: {freeze['false_freezes']} false and "
              f"{freeze['missed_freezes']} missed freezes of {freeze['frozen_by_truth']} frozen / {freeze['frames']} frames "
              f"(smallest live difference {freeze['live_mad_min']} grey levels, largest frozen {freeze['frozen_mad_max']}; "
              "threshold 0.05)."]
    lines += ["", "Milliseconds of CPU (time.process_time, all threads), median over 40 frames processed one after "
              "another; in a stream, decode runs in the capture thread and the rest in the inference loop.", "", f"Reproduce: `{meta['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224, help="model input, pixels")
    ap.add_argument("--models", type=Path, default=None, help="folder with model.onnx and model.int8.onnx")
    ap.add_argument("--work", type=Path, default=Path("/tmp/usedge-bench-stream"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-freeze-runs", action="store_true", help="skip the runs with freeze detection off")
    ap.add_argument("--tag", default="", help="write stream_realtime_<tag>.json/.md (another CPU)")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing .json, measure nothing")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.work.mkdir(parents=True, exist_ok=True)

    from usedge.fileio import write_json_atomic, write_text_atomic

    stem = f"stream_realtime_{args.tag}" if args.tag else "stream_realtime"
    if args.markdown_only:
        saved = json.loads((args.out / f"{stem}.json").read_text())
        write_text_atomic(args.out / f"{stem}.md", markdown(saved["runs"], saved["meta"],
                                                                    saved["cpu_ms_per_frame"], saved["freeze_detector"]))
        return
    from usedge.synth.video import write_scanner_video

    models = args.models or build_models(args.work, args.size)
    video = args.work / f"scan1080_{int(args.seconds)}s.mp4"
    if not video.is_file():
        write_scanner_video(video, seconds=args.seconds, fps=30.0, size=(1920, 1080), seed=0, progress=False)
    truth = json.loads(video.with_suffix(".json").read_text())
    frozen_truth = sum(1 for f in truth["frames_truth"] if f["frozen"])

    freeze_acc = freeze_accuracy(video, truth)
    print(json.dumps({"freeze_detector": freeze_acc}), flush=True)
    cpu = {name: cpu_breakdown(Path(models) / name, video) for name in ("model.onnx", "model.int8.onnx")}
    print(json.dumps({"cpu_ms_per_frame": cpu}), flush=True)
    rows = []
    # the targets (freeze detection off: every frame needs a result), then int8 without the thread budget
    plan = [("model.int8.onnx", False, 30.0, True), ("model.onnx", False, 15.0, True),
            ("model.int8.onnx", False, 30.0, False)]
    if not args.no_freeze_runs:
        plan += [("model.int8.onnx", True, 30.0, True), ("model.onnx", True, 15.0, True)]
    load_start = [round(v, 2) for v in os.getloadavg()]
    for name, freeze, fps, budget in plan:
        row = run_one(Path(models) / name, video, args.threads, freeze, spinning=None, fps=fps, budget=budget)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("model", "freeze_detect", "paced_fps", "thread_budget", "frames_read",
                                              "late_skipped", "processed", "dropped", "frozen_skipped",
                                              "capture_to_result_ms", "model_in_loop_ms", "model_only_ms",
                                              "model_in_loop_vs_alone_p50", "model_in_loop_vs_paced_alone_p50",
                                              "target_met")}), flush=True)
    load = os.getloadavg()
    from usedge.bench.machine import cpu_model
    cpu_name, flags = cpu_model()
    meta = {
        "video": f"synthetic scanner video 1920x1080, 30 fps, {truth['frames']} frames ({frozen_truth} frozen by truth); "
                 f"models at {args.size} px, resize {_resize_of(Path(models) / 'model.onnx')}",
        "machine": f"{cpu_name}, flags {' '.join(flags)}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "cpu": cpu_name, "cpu_flags": flags,
        "threads": args.threads, "load_average_start": load_start, "load_average_after": [round(v, 2) for v in load],
        "concurrent_note": f"load average {load_start[0]:.1f} at the start and {load[0]:.1f} after the run on "
                           f"{os.cpu_count()} cores: "
                           + ("quiet (nothing else ran)" if load_start[0] < 0.5 * (os.cpu_count() or 1)
                              else "these figures are from a loaded machine"),
        "command": "nice -n 10 .venv/bin/python benchmarks/stream_realtime.py "
                   f"--seconds {args.seconds:g} --threads {args.threads}" + (f" --tag {args.tag}" if args.tag else ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{stem}.json", {"meta": meta, "runs": rows, "cpu_ms_per_frame": cpu,
                                                          "freeze_detector": freeze_acc})
    md = markdown(rows, meta, cpu, freeze_acc)
    write_text_atomic(args.out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
