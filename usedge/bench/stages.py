"""Where a 1080p scanner frame's time goes: decode, the stream loop's freeze check, then the runtime's
stages crop (with the quality gate, as in Classifier.predict), normalise, model, post (the one
vocabulary of Prediction.latency_ms and the stream summary), and the end-to-end figure of the stream
loop (`usedge infer --stream`) on the same video.

The video is the synthetic scanner's (usedge.synth.video, 1920 x 1080, written through OpenCV):
decode is the runtime's VideoFileReader.read (PyAV; OpenCV's VideoCapture for a file PyAV cannot open). Each stage is timed per
frame in wall and CPU milliseconds; the stream figure is StreamRunner's capture-to-result latency
with the capture thread decoding beside the loop (not paced, freeze detection off, no sinks).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from usedge.bench.stats import latency_stats
from usedge.errors import InputError
from usedge.runtime.classifier import STAGES as MODEL_STAGES

STAGES = ("decode", "freeze", *MODEL_STAGES)


def scanner_video(work: Path, frames: int, seed: int = 0) -> Path:
    """A 1080p synthetic scanner video of `frames` frames in `work` (made once, reused)."""
    from usedge.synth.video import write_scanner_video

    path = work / f"scanner1080_{frames}_{seed}.mp4"
    if not path.is_file():
        write_scanner_video(path, frames=frames, fps=30.0, size=(1920, 1080), seed=seed, freeze=False,
                            progress=False)
    return path


def stage_breakdown(model_path: Path, video: Path, *, threads: int | None, warmup: int = 2) -> dict:
    """Per-stage wall/CPU ms per frame for every frame of `video` on onnxruntime CPU, one after another,
    under the runtime's thread budget (decoding in this thread: no capture thread).

    The stages are the stream loop's own (FramePipeline.process with freeze detection on, its default):
    freeze (compare with the last classified frame, keep this one), crop (the stream's FrameCropper and
    the quality gate), normalise, model, post. `loop_outside_model_share` is what the loop spends outside
    the model: 1 - model / (every stage but decode, which the capture thread does beside the loop).
    """
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.pipeline import FramePipeline
    from usedge.runtime.sources import VideoFileReader
    from usedge.runtime.threads import thread_budget

    wall = {s: [] for s in STAGES}
    cpu = {s: [] for s in STAGES}
    budget = thread_budget(model_threads=threads)
    budget.apply()
    with Classifier.load(model_path, backend="ort-cpu", threads=budget.model_threads) as clf:
        pipe = FramePipeline(clf, stream=True, freeze=True)   # the stream's crop (layout detected once), gate, freeze
        cap = VideoFileReader(video)
        cap.decode_threads = budget.decode_threads
        try:
            cap.open()
        except InputError as exc:
            raise InputError("cannot open the benchmark video", path=video,
                             hint="neither PyAV nor this OpenCV build decodes it; run with --no-stages") from exc
        i = 0
        while True:   # FramePipeline.process's stages, one by one, timed in wall and CPU time
            marks = [(time.perf_counter(), time.process_time())]
            frame = cap.read()
            if frame is None:
                break
            marks.append((time.perf_counter(), time.process_time()))
            frozen = pipe.freeze.is_frozen(frame)          # never true here: the video has no freezes
            pipe.freeze.keep(frame)
            marks.append((time.perf_counter(), time.process_time()))
            image, info = clf.prepare(frame, cropper=pipe.cropper)
            reason = pipe.quality(image)
            marks.append((time.perf_counter(), time.process_time()))
            batch = clf.normalise(image)
            marks.append((time.perf_counter(), time.process_time()))
            outputs = clf.run_model(batch)
            marks.append((time.perf_counter(), time.process_time()))
            clf.post(outputs, [info], first_index=i, source=str(video))
            marks.append((time.perf_counter(), time.process_time()))
            if i >= warmup and not frozen and reason is None:
                for s, a, b in zip(STAGES, marks[:-1], marks[1:]):
                    wall[s].append((b[0] - a[0]) * 1e3)
                    cpu[s].append((b[1] - a[1]) * 1e3)
            i += 1
        cap.close()
    result = {"frames": len(wall["decode"]), "wall_ms": {}, "cpu_ms": {}, "threads": budget.to_dict()}
    for key, data in (("wall_ms", wall), ("cpu_ms", cpu)):
        med = {s: round(float(np.median(v)), 3) if v else float("nan") for s, v in data.items()}
        total = float(sum(med.values()))
        med["total"] = round(total, 3)
        med["outside_model_share"] = round(1 - med["model"] / total, 4) if total else float("nan")
        # what the stream loop itself does: decode runs in the capture thread beside it
        loop = total - med["decode"]
        med["loop_outside_model_share"] = round(1 - med["model"] / loop, 4) if loop else float("nan")
        result[key] = med
    result["frame_total_wall_stats"] = latency_stats(np.sum([wall[s] for s in STAGES], axis=0))
    return result


def stream_figure(model_path: Path, video: Path, *, threads: int | None) -> dict:
    """End to end through the runtime's stream loop: capture-to-result percentiles (ms) and fps."""
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.pipeline import FramePipeline
    from usedge.runtime.sources import VideoFileReader
    from usedge.runtime.stream import StreamRunner
    from usedge.runtime.threads import thread_budget

    budget = thread_budget(capture_threads=1, model_threads=threads)
    with Classifier.load(model_path, backend="ort-cpu", threads=budget.model_threads) as clf:
        reader = VideoFileReader(video)
        summary = StreamRunner(FramePipeline(clf, stream=True, regions=reader.regions), reader, budget=budget).run()
    lat = summary.latency_ms
    model_p50 = lat.get("model", {}).get("p50", float("nan"))
    c2r = lat.get("capture_to_result", {}).get("p50", float("nan"))
    return {"processed": summary.processed, "fps": round(summary.fps, 2), "latency_ms": lat,
            "model_p50_ms": model_p50, "capture_to_result_p50_ms": c2r, "threads": summary.threads,
            "outside_model_share": round(1 - model_p50 / c2r, 4) if c2r else float("nan")}


#: the stream targets (issue 18 item 5): the source rate each model must keep up with, paced like a scanner
PACED_FPS = {"model.int8.onnx": 30.0, "model.onnx": 15.0}


def paced_stream(model_path: Path, video: Path, *, threads: int | None, fps: float) -> dict:
    """The stream target run: `video` paced at `fps` like a live scanner (frames the loop has not taken in time
    are dropped), freeze detection off (every frame needs a result), no sinks."""
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.pipeline import FramePipeline
    from usedge.runtime.sources import VideoFileReader
    from usedge.runtime.stream import StreamRunner
    from usedge.runtime.threads import thread_budget

    budget = thread_budget(capture_threads=1, model_threads=threads)
    with Classifier.load(model_path, backend="ort-cpu", threads=budget.model_threads) as clf:
        reader = VideoFileReader(video)
        summary = StreamRunner(FramePipeline(clf, stream=True, regions=reader.regions), reader, realtime=True,
                               fps=fps, budget=budget).run()
    c2r = summary.latency_ms.get("capture_to_result", {})
    return {"fps": fps, "seconds": round(summary.duration_s, 2), "frames_read": summary.frames_read,
            "late_skipped": summary.late_skipped, "processed": summary.processed, "dropped": summary.dropped,
            "missed": summary.dropped + summary.late_skipped, "capture_to_result_ms": c2r,
            "model_ms": summary.latency_ms.get("model", {}), "threads": summary.threads}
