"""Where a 1080p scanner frame's time goes: decode, crop, preprocess, inference, postprocess, and the
end-to-end figure of the stream loop (`usedge infer --stream`) on the same video.

The video is the synthetic scanner's (usedge.synth.video, 1920 x 1080, H.264/MPEG-4 through OpenCV):
decode is OpenCV's VideoCapture.read, as in the runtime's VideoFileReader. Each stage is timed per
frame in wall and CPU milliseconds; the stream figure is StreamRunner's capture-to-result latency
with the capture thread decoding beside the loop (not paced, freeze detection off, no sinks).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from usedge.bench.stats import latency_stats
from usedge.errors import InputError

STAGES = ("decode", "crop", "preprocess", "inference", "postprocess")


def scanner_video(work: Path, frames: int, seed: int = 0) -> Path:
    """A 1080p synthetic scanner video of `frames` frames in `work` (made once, reused)."""
    from usedge.synth.video import write_scanner_video

    path = work / f"scanner1080_{frames}_{seed}.mp4"
    if not path.is_file():
        write_scanner_video(path, frames=frames, fps=30.0, size=(1920, 1080), seed=seed, freeze=False,
                            progress=False)
    return path


def stage_breakdown(model_path: Path, video: Path, *, threads: int | None, warmup: int = 2) -> dict:
    """Per-stage wall/CPU ms per frame for every frame of `video` on onnxruntime CPU, one after another."""
    import cv2

    from usedge.runtime.classifier import Classifier
    from usedge.runtime.crop import FrameCropper

    wall = {s: [] for s in STAGES}
    cpu = {s: [] for s in STAGES}
    with Classifier.load(model_path, backend="ort-cpu", threads=threads) as clf:
        cropper = FrameCropper(clf.spec)
        cap = cv2.VideoCapture(str(video))
        if not cap.isOpened():
            raise InputError("OpenCV cannot open the benchmark video", path=video,
                             hint="this OpenCV build lacks a video decoder; run with --no-stages")
        i = 0
        while True:
            marks = [(time.perf_counter(), time.process_time())]
            ok, frame = cap.read()
            if not ok:
                break
            marks.append((time.perf_counter(), time.process_time()))
            image, info = cropper(frame)
            marks.append((time.perf_counter(), time.process_time()))
            clf.normalise(image)
            marks.append((time.perf_counter(), time.process_time()))
            outputs = clf.backend.infer(clf._input)
            marks.append((time.perf_counter(), time.process_time()))
            probs, cam = clf._postprocess(outputs)
            k = int(np.argmax(probs[0]))
            clf._make(probs[0], info, clf._cam_for(cam, 0, k), {}, i, str(video))
            marks.append((time.perf_counter(), time.process_time()))
            if i >= warmup:
                for s, a, b in zip(STAGES, marks[:-1], marks[1:]):
                    wall[s].append((b[0] - a[0]) * 1e3)
                    cpu[s].append((b[1] - a[1]) * 1e3)
            i += 1
        cap.release()
    result = {"frames": len(wall["decode"]), "wall_ms": {}, "cpu_ms": {}}
    for key, data in (("wall_ms", wall), ("cpu_ms", cpu)):
        med = {s: round(float(np.median(v)), 3) if v else float("nan") for s, v in data.items()}
        total = float(sum(med.values()))
        med["total"] = round(total, 3)
        med["outside_model_share"] = round(1 - med["inference"] / total, 4) if total else float("nan")
        # what the stream loop itself does: decode runs in the capture thread beside it
        loop = total - med["decode"]
        med["loop_outside_model_share"] = round(1 - med["inference"] / loop, 4) if loop else float("nan")
        result[key] = med
    result["frame_total_wall_stats"] = latency_stats(np.sum([wall[s] for s in STAGES], axis=0))
    return result


def stream_figure(model_path: Path, video: Path, *, threads: int | None) -> dict:
    """End to end through the runtime's stream loop: capture-to-result percentiles (ms) and fps."""
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.sources import VideoFileReader
    from usedge.runtime.stream import StreamRunner

    with Classifier.load(model_path, backend="ort-cpu", threads=threads) as clf:
        summary = StreamRunner(clf, VideoFileReader(video), [], realtime=False, freeze=False).run()
    lat = summary.latency_ms
    model_p50 = lat.get("model", {}).get("p50", float("nan"))
    c2r = lat.get("capture_to_result", {}).get("p50", float("nan"))
    return {"processed": summary.processed, "fps": round(summary.fps, 2), "latency_ms": lat,
            "model_p50_ms": model_p50, "capture_to_result_p50_ms": c2r,
            "outside_model_share": round(1 - model_p50 / c2r, 4) if c2r else float("nan")}
