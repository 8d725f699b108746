"""The ONE latest-frame inference loop beside a live scanner.

    source -> CaptureThread -> LatestFrameSlot (capacity 1) -> StreamRunner loop:
        frozen? -> repeat last result | crop (FrameCropper: layout re-detected only on change)
        -> normalise -> backend -> softmax/CAM -> smoothing -> overlay (if wanted) -> sinks, subscribers

Other consumers (a web server, a metrics exporter) do not copy this loop: they `subscribe()` a
callback, or read `latest()` / `stats()` from another thread while `start()` runs it in the
background. Times are `time.perf_counter()` seconds; latencies are milliseconds.

Latency stages in each streamed Prediction: wait (captured -> loop took it), crop, normalise,
model, post, smooth, total (crop..post) and capture_to_result (captured -> result ready, before sinks).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import cv2
import numpy as np

from usedge.errors import OutputError, StreamError, UsedgeError
from usedge.runtime.classifier import Classifier, Prediction
from usedge.runtime.overlay import draw_prediction
from usedge.runtime.crop import FrameCropper
from usedge.runtime.sinks import CallbackSink, Sink
from usedge.runtime.sources import CaptureThread, Frame, FrameReader, LatestFrameSlot

STAGES = ("wait", "crop", "normalise", "model", "post", "total", "capture_to_result")
FREEZE_SAMPLES = 240         # frames are compared on about this many columns (every n-th pixel, no averaging)
FREEZE_MAD = 0.05            # mean absolute difference (8-bit levels) below which two frames are "the same"
MAX_SAMPLES = 200_000        # latency samples kept per stage (about 2 h at 30 fps)


class FreezeDetector:
    """The scanner's freeze button: the same image again, byte for byte up to codec rounding.

    Compares every n-th pixel (about FREEZE_SAMPLES columns; one channel of a colour frame) with the
    previous frame, without averaging: a live image changes there by its fresh electronic noise and
    speckle even with the probe held still (>= 0.2 levels on the synthetic scanner video), a frozen
    one through a digital path (HDMI/SDI grabber, file, DICOM) by ~0.001. A frozen image through a
    noisy analog grabber is not detected, which costs only an inference: the safe side.
    """

    def __init__(self, threshold: float = FREEZE_MAD) -> None:
        self.threshold = threshold
        self._prev: np.ndarray | None = None
        self.last_mad = float("inf")

    def _sample(self, image: np.ndarray) -> np.ndarray:
        step = max(1, image.shape[1] // FREEZE_SAMPLES)
        sub = image[::step, ::step]
        if sub.ndim == 3:
            sub = sub[:, :, min(1, sub.shape[2] - 1)]   # green: closest to gray for B-mode, no conversion
        return np.ascontiguousarray(sub)

    def is_frozen(self, image: np.ndarray) -> bool:
        sample = self._sample(image)
        if self._prev is None or self._prev.shape != sample.shape or self._prev.dtype != sample.dtype:
            self._prev = sample
            self.last_mad = float("inf")
            return False
        self.last_mad = float(cv2.norm(sample, self._prev, cv2.NORM_L1)) / sample.size
        self._prev = sample
        return self.last_mad < self.threshold


class Smoother:
    """Moving average of the last `window` class-probability vectors (frozen frames excluded)."""

    def __init__(self, window: int = 5) -> None:
        self.window = max(1, int(window))
        self._hist: collections.deque = collections.deque(maxlen=self.window)

    def __call__(self, probs: dict[str, float]) -> dict[str, float]:
        self._hist.append(np.array(list(probs.values()), np.float64))
        mean = np.mean(self._hist, axis=0)
        return {k: float(v) for k, v in zip(probs, mean)}

    def reset(self) -> None:
        self._hist.clear()


def percentiles(values, qs=(50, 90, 99)) -> dict[str, float]:
    if len(values) == 0:
        return {f"p{q}": float("nan") for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs}


@dataclass
class StreamSummary:
    """What a run did. Latency percentiles in ms; fps = frames processed per second of wall time."""

    source: str
    backend: str
    frames_read: int = 0             # frames decoded by the capture thread
    processed: int = 0               # frames that went through the model
    dropped: int = 0                 # stale frames replaced in the slot before the loop took them
    late_skipped: int = 0            # --realtime: frames the source moved past while decoding lagged
    frozen_skipped: int = 0          # frames detected frozen: last result repeated, no inference
    errors: int = 0
    reconnects: int = 0
    layout_detections: int = 0
    duration_s: float = 0.0
    fps: float = 0.0                 # results (processed + frozen) per second
    source_fps: float = 0.0
    latency_ms: dict = field(default_factory=dict)   # stage -> {p50, p90, p99}
    model_share: float = float("nan")               # median model time / median capture-to-result
    # end of source | max frames | interrupted | stopped | source failed | output failed
    ended_by: str = "end of source"
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        late = f" (+{self.late_skipped} skipped by a lagging decoder)" if self.late_skipped else ""
        out = [f"{self.source} on {self.backend}: {self.frames_read} read{late}, {self.processed} processed, "
               f"{self.dropped} dropped, {self.frozen_skipped} frozen-skipped, {self.errors} errors; "
               f"{self.fps:.1f} fps over {self.duration_s:.1f} s ({self.ended_by})"]
        for stage, p in self.latency_ms.items():
            out.append(f"  {stage:<18} p50 {p['p50']:8.2f}  p90 {p['p90']:8.2f}  p99 {p['p99']:8.2f} ms")
        if self.reconnects:
            out.append(f"  reconnects: {self.reconnects}")
        if self.error:
            out.append(f"  error: {self.error}")
        return out


class StreamRunner:
    """Runs one source through one classifier; results go to sinks and subscribers.

    realtime: pace a file source at its frame rate (frames the model cannot keep up with are dropped).
    smooth: average probabilities over the last `smooth_window` results.
    freeze: detect a frozen screen and repeat the last result without inference.
    overlay: always draw the annotated frame (for `latest()`); sinks that need it get it anyway.
    cam: draw the CAM heatmap in overlays when the model has the output.
    """

    def __init__(self, classifier: Classifier, reader: FrameReader, sinks: list[Sink] | None = None, *,
                 realtime: bool = False, fps: float | None = None, smooth: bool = False, smooth_window: int = 5,
                 freeze: bool = True, freeze_threshold: float = FREEZE_MAD, max_frames: int | None = None,
                 max_reconnects: int | None = None, overlay: bool = False, cam: bool = True) -> None:
        self.classifier = classifier
        self.reader = reader
        self.sinks: list[Sink] = list(sinks or [])
        self.realtime, self.fps = realtime, fps
        self.smoother = Smoother(smooth_window) if smooth else None
        self.freeze = FreezeDetector(freeze_threshold) if freeze else None
        self.max_frames = max_frames
        self.max_reconnects = max_reconnects
        self.always_overlay, self.cam = overlay, cam
        self.stop_event = threading.Event()
        self.slot = LatestFrameSlot()
        self.capture: CaptureThread | None = None
        self.cropper = self._make_cropper()
        self._lock = threading.Lock()
        self._latest: tuple[Prediction | None, np.ndarray | None, np.ndarray | None] = (None, None, None)
        self._new_result = threading.Condition(self._lock)
        self._samples = {s: collections.deque(maxlen=MAX_SAMPLES) for s in STAGES}
        self._counts = {"processed": 0, "frozen": 0, "errors": 0}
        self._t0: float | None = None
        self._fps_window: collections.deque = collections.deque(maxlen=60)
        self._thread: threading.Thread | None = None
        self.summary: StreamSummary | None = None
        self.last_error = ""

    def _make_cropper(self) -> Callable:
        return FrameCropper(self.classifier.spec, regions=self.reader.regions)

    # -- consumers ----------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[Prediction, np.ndarray, np.ndarray | None], None],
                  needs_overlay: bool = False) -> Callable[[], None]:
        """Call fn(pred, frame, overlay_or_None) for every result, in the loop thread. Returns unsubscribe."""
        sink = CallbackSink(fn, needs_overlay)
        self.sinks.append(sink)
        return lambda: self.sinks.remove(sink) if sink in self.sinks else None

    def latest(self) -> tuple[Prediction | None, np.ndarray | None, np.ndarray | None]:
        """(newest prediction, its frame, its overlay or None); safe from any thread."""
        with self._lock:
            return self._latest

    def wait_result(self, timeout: float | None = None) -> Prediction | None:
        """Block until the next result (or timeout, or the end); returns it."""
        with self._new_result:
            before = self._latest[0]
            self._new_result.wait_for(lambda: self._latest[0] is not before or self.stop_event.is_set(), timeout)
            return self._latest[0]

    def stats(self) -> dict:
        """Live counters for dashboards/metrics: frames, dropped, frozen, errors, fps, read."""
        window = list(self._fps_window)
        fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 and window[-1] > window[0] else 0.0
        cap = self.capture.stats if self.capture else None
        return {"frames": self._counts["processed"], "dropped": self.slot.dropped, "frozen": self._counts["frozen"],
                "errors": self._counts["errors"], "fps": fps, "read": cap.read if cap else 0,
                "late_skipped": cap.late if cap else 0,
                "reconnects": cap.reconnects if cap else 0, "running": self.running}

    @property
    def running(self) -> bool:
        return self._t0 is not None and self.summary is None

    # -- the loop -----------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        """Run in a background thread (for servers); `stop()` ends it, `summary` holds the result."""
        self._thread = threading.Thread(target=self.run, name="usedge-stream", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, join: bool = True, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self.slot.close()
        if join and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _overlay_wanted(self) -> bool:
        return self.always_overlay or any(s.needs_overlay for s in self.sinks)

    def _process(self, frame: Frame, last: Prediction | None) -> Prediction:
        t_take = time.perf_counter()
        if self.freeze is not None and last is not None and self.freeze.is_frozen(frame.image):
            pred = Prediction(**{**last.__dict__, "frozen": True, "frame_index": frame.index,
                                 "latency_ms": {}, "extra": dict(last.extra)})
            self._counts["frozen"] += 1
            t_done = time.perf_counter()
            pred.latency_ms = {"wait": (t_take - frame.t_capture) * 1e3, "total": (t_done - t_take) * 1e3,
                               "capture_to_result": (t_done - frame.t_capture) * 1e3}
            return pred
        if self.freeze is not None and last is None:
            self.freeze.is_frozen(frame.image)  # prime the reference
        pred = self.classifier.predict(frame.image, frame_index=frame.index, source=frame.source,
                                       cropper=self.cropper)
        if self.smoother is not None:
            pred.probs = self.smoother(pred.probs)
            pred.smoothed = True
            names = list(pred.probs)
            pred.class_index = int(np.argmax(list(pred.probs.values())))
            pred.label = names[pred.class_index]
        t_done = time.perf_counter()
        pred.latency_ms["wait"] = (t_take - frame.t_capture) * 1e3
        pred.latency_ms["capture_to_result"] = (t_done - frame.t_capture) * 1e3
        self._counts["processed"] += 1
        return pred

    def _record(self, pred: Prediction) -> None:
        # frozen repeats are not model results: only their wait enters the latency figures
        stages = ("wait",) if pred.frozen else STAGES
        for stage in stages:
            if stage in pred.latency_ms:
                self._samples[stage].append(pred.latency_ms[stage])

    def run(self) -> StreamSummary:
        """Blocking: run until the source ends, max_frames, stop(), a sink asks to quit, or Ctrl-C."""
        self.capture = CaptureThread(self.reader, self.slot, realtime=self.realtime, fps=self.fps,
                                     stop=self.stop_event, max_frames=self.max_frames,
                                     max_reconnects=self.max_reconnects)
        self.capture.start()
        self.capture.opened.wait()
        if self.capture.open_error is not None:
            err = self.capture.open_error
            if isinstance(err, UsedgeError):
                raise err
            raise StreamError(f"cannot open source ({err})", path=self.reader.name, hint="check the source")
        self._t0 = time.perf_counter()
        ended_by = "end of source"
        last: Prediction | None = None
        want_overlay = self._overlay_wanted()
        output_error: OutputError | None = None
        try:
            while not self.stop_event.is_set():
                frame = self.slot.get(timeout=0.5)
                if frame is None:
                    if self.slot.closed:
                        break
                    continue
                try:
                    pred = self._process(frame, last)
                except UsedgeError as exc:
                    self._counts["errors"] += 1
                    self.last_error = exc.one_line()
                    continue
                last = pred
                self._record(pred)
                self._fps_window.append(time.perf_counter())
                stats = self.stats()
                overlay = None
                if want_overlay or self._overlay_wanted():
                    overlay = draw_prediction(frame.image, pred, fps=stats["fps"], cam=self.cam)
                with self._lock:
                    self._latest = (pred, frame.image, overlay)
                    self._new_result.notify_all()
                for sink in list(self.sinks):
                    sink.write(pred, frame.image, overlay)
                    if getattr(sink, "quit", False):
                        ended_by = "window closed"
                        self.stop_event.set()
            else:
                if ended_by == "end of source":
                    ended_by = "stopped"
        except KeyboardInterrupt:
            ended_by = "interrupted"
        except OutputError as exc:   # a sink cannot write (disk full): stop, summarise, then report it
            ended_by, output_error = "output failed", exc
        finally:
            self.stop_event.set()
            self.slot.close()
            self.capture.join(timeout=5.0)
            with self._lock:
                self._new_result.notify_all()
        cap = self.capture.stats
        if ended_by == "end of source":
            if cap.error:
                ended_by = "source failed"
            elif self.max_frames is not None and cap.source_frames >= self.max_frames:
                ended_by = "max frames"
        self.summary = self._summarise(ended_by)
        if output_error is not None:
            self.summary.error = output_error.one_line()
            raise output_error
        return self.summary

    def _summarise(self, ended_by: str) -> StreamSummary:
        cap = self.capture.stats
        duration = time.perf_counter() - (self._t0 or time.perf_counter())
        lat = {s: percentiles(self._samples[s]) for s in STAGES if len(self._samples[s])}
        model = np.median(self._samples["model"]) if len(self._samples["model"]) else float("nan")
        c2r = np.median(self._samples["capture_to_result"]) if len(self._samples["capture_to_result"]) else float("nan")
        results = self._counts["processed"] + self._counts["frozen"]
        return StreamSummary(
            source=self.reader.name, backend=self.classifier.backend.describe(), frames_read=cap.read,
            processed=self._counts["processed"], dropped=self.slot.dropped, late_skipped=cap.late, frozen_skipped=self._counts["frozen"],
            errors=self._counts["errors"], reconnects=cap.reconnects,
            layout_detections=int(getattr(self.cropper, "detections", 0) or 0),
            duration_s=round(duration, 3), fps=round(results / duration, 2) if duration > 0 else 0.0,
            source_fps=round(self.capture.fps, 2), latency_ms=lat,
            model_share=round(float(model / c2r), 4) if c2r == c2r and c2r > 0 else float("nan"),
            ended_by=ended_by, error=cap.error or self.last_error,
        )
