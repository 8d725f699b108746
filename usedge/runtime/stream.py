"""The ONE latest-frame inference loop beside a live scanner.

    source -> CaptureThread -> LatestFrameSlot (capacity 1) -> StreamRunner loop:
        FramePipeline.run_frame (usedge.runtime.pipeline: quality, freeze, prepare, model, post, sinks)

Other consumers (a web server, a metrics exporter) do not copy this loop: they `subscribe()` a
callback, or read `latest()` / `stats()` from another thread while `start()` runs it in the
background. Times are `time.perf_counter()` seconds; latencies are milliseconds.

Latency stages in each streamed Prediction: wait (captured -> loop took it), crop, normalise,
model, post, total (crop..post) and capture_to_result (captured -> result ready, before sinks).
"""

from __future__ import annotations

import collections
import numbers
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from usedge.errors import ConfigError, OutputError, StreamError, UsedgeError
from usedge.runtime.classifier import STAGES as MODEL_STAGES, Prediction
from usedge.runtime.pipeline import FramePipeline
from usedge.runtime.sinks import CallbackSink
from usedge.runtime.sources import CaptureThread, FrameReader, LatestFrameSlot
from usedge.runtime.threads import ThreadBudget, thread_budget

FPS_RANGE = (0.1, 1000.0)   # frames per second a stream may be paced at (StreamRunner, --fps): 1e-9 waited years a frame

STAGES = ("wait", *MODEL_STAGES, "total", "capture_to_result")
MAX_SAMPLES = 200_000        # latency samples kept per stage (about 2 h at 30 fps)


def _open_error(err: BaseException, name: str, detail: str) -> UsedgeError:
    return err if isinstance(err, UsedgeError) else StreamError(f"cannot open source ({detail})", path=name,
                                                                hint="check the source")


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
    no_image: int = 0                # frames without a usable image (blank, probe in air): no label
    errors: int = 0                  # frames that could not be classified (incl. model output not valid)
    reconnects: int = 0
    layout_detections: int = 0
    resolution_changes: int = 0      # frames whose size differed from the frame before (layout re-detected)
    notes: list = field(default_factory=list)       # "frame N: resolution changed WxH -> W2xH2; ..." (first 20)
    duration_s: float = 0.0
    fps: float = 0.0                 # results (processed + frozen) per second
    source_fps: float = 0.0
    latency_ms: dict = field(default_factory=dict)   # stage -> {p50, p90, p99}
    model_share: float = float("nan")               # median model time / median capture-to-result
    # end of source | ended early | max frames | interrupted | stopped | source failed | output failed
    ended_by: str = "end of source"
    error: str = ""
    failed_outputs: list = field(default_factory=list)  # outputs that stopped mid-stream (disk full), one line each
    threads: dict = field(default_factory=dict)     # the ThreadBudget the run used (threads.py)
    backend_reason: str = ""                        # why this backend (auto: the measured trial)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        late = f" (+{self.late_skipped} skipped by a lagging decoder)" if self.late_skipped else ""
        out = [f"{self.source} on {self.backend}: {self.frames_read} read{late}, {self.processed} processed, "
               f"{self.dropped} dropped, {self.frozen_skipped} frozen-skipped, {self.no_image} no image, "
               f"{self.errors} errors; "
               f"{self.fps:.1f} fps over {self.duration_s:.1f} s ({self.ended_by})"]
        for stage, p in self.latency_ms.items():
            out.append(f"  {stage:<18} p50 {p['p50']:8.2f}  p90 {p['p90']:8.2f}  p99 {p['p99']:8.2f} ms")
        if self.threads:
            out.append("  " + ThreadBudget(**self.threads).line())
        if self.backend_reason:
            out.append(f"  backend: {self.backend_reason}")
        if self.reconnects:
            out.append(f"  reconnects: {self.reconnects}")
        if self.resolution_changes:
            out.append(f"  resolution changes: {self.resolution_changes} (layout re-detected each time)")
            out.extend(f"    {note}" for note in self.notes)
        out.extend(f"  output stopped: {line}" for line in self.failed_outputs if line != self.error)
        if self.error:
            out.append(f"  error: {self.error}")
        return out


class StreamRunner:
    """Runs one live source through one FramePipeline (built by the caller), in the latest-frame loop.

    realtime: pace a file source at its frame rate (frames the model cannot keep up with are dropped);
        None: decide when the source is open (paced unless it is live; CaptureThread).
    budget: the thread budget (threads.py); default: one capture thread beside the model's threads as the
        classifier was loaded. `run` applies it (OpenCV's thread count, the reader's decoder threads).
    """

    def __init__(self, pipeline: FramePipeline, reader: FrameReader, *, realtime: bool | None = False,
                 fps: float | None = None, max_frames: int | None = None, max_reconnects: int | None = None,
                 budget: ThreadBudget | None = None) -> None:
        for name, value in (("max_frames", max_frames), ("max_reconnects", max_reconnects)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0):
                raise ConfigError(f"{name} must be None or a whole number >= 0, got {value!r}",
                                  hint="None: no limit")
        lo, hi = FPS_RANGE
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not lo <= fps <= hi):
            raise ConfigError(f"fps must be None or a frame rate from {lo:g} to {hi:g}, got {fps!r}",
                              hint="None: the source's own rate")
        self.pipeline = pipeline
        self.reader = reader
        budget = budget or thread_budget(capture_threads=1, model_threads=pipeline.classifier.threads)
        # spinning as the engine runs it: onnxruntime's option (OpenVINO and TensorRT have none; a classifier
        # loaded with spinning=False does not spin whatever the budget says)
        self.budget = replace(budget, spinning=bool(getattr(pipeline.classifier.backend, "spinning", False)))
        self.realtime, self.fps = realtime, fps
        self.max_frames = max_frames
        self.max_reconnects = max_reconnects
        self.stop_event = threading.Event()
        self.slot = LatestFrameSlot()
        self.capture: CaptureThread | None = None
        self._lock = threading.Lock()
        self._latest: list = [None, None, None]           # prediction, frame, overlay (drawn on demand)
        self._new_result = threading.Condition(self._lock)
        self._samples = {s: collections.deque(maxlen=MAX_SAMPLES) for s in STAGES}
        self._counts = {"processed": 0, "frozen": 0, "no_image": 0, "errors": 0}
        self._failures_reported = 0
        self._t0: float | None = None
        self._thread: threading.Thread | None = None
        self.summary: StreamSummary | None = None
        self.last_error = ""
        self._stop_requested = False
        self._claimed = False          # a runner runs once: start() or run()
        counters = CallbackSink(self._on_result)
        counters.bookkeeping = True
        self.pipeline.sinks.insert(0, counters)     # bookkeeping first, before any output

    # -- consumers ----------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[Prediction, np.ndarray, np.ndarray | None], None],
                  needs_overlay: bool = False) -> Callable[[], None]:
        """Call fn(pred, frame, overlay_or_None) for every result, in the loop thread. Returns unsubscribe."""
        sink = CallbackSink(fn, needs_overlay)
        sinks = self.pipeline.sinks
        sinks.append(sink)
        return lambda: sinks.remove(sink) if sink in sinks else None

    def latest(self, overlay: bool = True) -> tuple[Prediction | None, np.ndarray | None, np.ndarray | None]:
        """(newest prediction, its frame, its overlay: drawn on first request, or None with overlay=False);
        safe from any thread."""
        with self._lock:
            pred, frame, drawn = self._latest
        if not overlay or drawn is not None or pred is None:
            return pred, frame, drawn
        drawn = self.pipeline.draw(pred, frame)   # outside the lock: the loop does not wait for it
        with self._lock:
            if self._latest[0] is pred:
                self._latest[2] = drawn
        return pred, frame, drawn

    def wait_result(self, timeout: float | None = None) -> Prediction | None:
        """Block until the next result (or timeout, or the end); returns it."""
        with self._new_result:
            before = self._latest[0]
            self._new_result.wait_for(lambda: self._latest[0] is not before or self.stop_event.is_set(), timeout)
            return self._latest[0]

    def stats(self) -> dict:
        """Live counters for dashboards/metrics: frames, dropped, frozen, no_image, errors, fps, read."""
        cap = self.capture.stats if self.capture else None
        return {"frames": self._counts["processed"], "dropped": self.slot.dropped, "frozen": self._counts["frozen"],
                "no_image": self._counts["no_image"], "errors": self._counts["errors"],
                # an ended run: its own rate (the live rate decays toward 0 once results stop, as it should
                # for a stalled source, not for one that ended)
                "fps": self.summary.fps if self.summary is not None else self.pipeline.fps(), "read": cap.read if cap else 0,
                "late_skipped": cap.late if cap else 0,
                "reconnects": cap.reconnects if cap else 0, "running": self.running}

    @property
    def all_failed(self) -> bool:
        """Every frame taken gave an error: nothing was classified (the run is a failure)."""
        return False if self.summary is None else (self.summary.errors > 0 and self.summary.processed == 0)

    @property
    def running(self) -> bool:
        return self._t0 is not None and self.summary is None

    # -- the loop -----------------------------------------------------------------------------
    def start(self, open_timeout_s: float | None = None) -> threading.Thread:
        """Run in a background thread (for servers); `stop()` ends it, `summary` holds the result.

        open_timeout_s: wait this long for the source to open; StreamError (loop stopped) if it does not.
        An error that ends the loop later is kept in `last_error`, not raised in the thread.
        """
        self._claim()
        self._thread = threading.Thread(target=self._run_quietly, name="usedge-stream", daemon=True)
        self._thread.start()
        if open_timeout_s is not None:
            end = time.monotonic() + open_timeout_s
            while (self.capture is None or not self.capture.opened.is_set()) and self._thread.is_alive() \
                    and time.monotonic() < end:
                time.sleep(0.02)
            cap = self.capture
            if cap is None or not cap.opened.is_set():
                self.stop()
                raise StreamError(f"source did not open within {open_timeout_s:.0f} s", path=self.reader.name,
                                  hint="check the camera/URL, or try it with `usedge infer --stream`")
            if cap.open_error is not None:
                self.stop()
                raise _open_error(cap.open_error, self.reader.name, type(cap.open_error).__name__)
        return self._thread

    def _claim(self) -> None:
        """A runner runs once: a second start() or run() would start a second loop on the same reader
        (frames delivered twice, counters that contradict each other)."""
        with self._lock:
            if self._claimed:
                raise StreamError("this StreamRunner has already run (or is running)", path=self.reader.name,
                                  hint="make a new StreamRunner, with a newly opened source, for another run")
            self._claimed = True

    def _run_quietly(self) -> None:
        try:
            self._run()
        except UsedgeError as exc:
            self.last_error = exc.one_line()
        except Exception as exc:  # noqa: BLE001 - reported through last_error, not a thread traceback
            self.last_error = f"stream loop stopped ({type(exc).__name__})"
        ended = self.summary.ended_by if self.summary is not None else "failed"
        if self.pipeline.on_event is not None and ended != "stopped":     # a server says why its stream ended
            why = (self.summary.error if self.summary is not None else "") or self.last_error
            self.pipeline.on_event(f"stream ended ({ended}, {self.summary.frames_read if self.summary else 0} frames "
                                   f"read){': ' + why if why else ''}")

    def stop(self, join: bool = True, timeout: float = 5.0) -> None:
        self._stop_requested = True
        self.stop_event.set()
        self.slot.close()
        if join and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _on_result(self, pred: Prediction, frame: np.ndarray, overlay: np.ndarray | None) -> None:
        self._counts[{"live": "processed", "frozen": "frozen", "no_image": "no_image"}.get(pred.state, "errors")] += 1
        if pred.state == "error":
            self.last_error = pred.reason
        # frozen repeats, frames without an image and failed outputs are not model results: only their
        # wait enters the latency figures
        for stage in STAGES if pred.state == "live" else ("wait",):
            if stage in pred.latency_ms:
                self._samples[stage].append(pred.latency_ms[stage])
        with self._lock:
            self._latest = [pred, frame, overlay]
            self._new_result.notify_all()

    def _report_source_failures(self) -> None:
        """Files a watched folder could not read (`reader.failed`, filled by the capture thread): each is an
        error result in the sinks and a line through the pipeline's on_event, written from this loop thread."""
        failed = getattr(self.reader, "failed", None)
        while failed and self._failures_reported < len(failed):
            source, line, *frame = failed[self._failures_reported]     # (file, line) or (file, line, frame)
            self._failures_reported += 1
            self._counts["errors"] += 1
            self.last_error = line
            self.pipeline.write_error(source, line, frame[0] if frame else None)
            if self.pipeline.on_event is not None:
                self.pipeline.on_event(f"skipped {line}")

    def run(self) -> StreamSummary:
        """Blocking: run until the source ends, max_frames, stop(), a sink asks to quit, or Ctrl-C.
        Once per runner (StreamError on a second start() or run())."""
        self._claim()
        return self._run()

    def _run(self) -> StreamSummary:
        import cv2

        opencv_threads = self.budget.apply()
        try:
            return self._loop()
        finally:
            cv2.setNumThreads(opencv_threads)     # the host application's setting back

    def _loop(self) -> StreamSummary:
        self.reader.decode_threads = self.budget.decode_threads
        if isinstance(getattr(self.reader, "stop", None), threading.Event):
            self.reader.stop = self.stop_event      # a watched folder waiting for files ends at Ctrl-C / stop()
        self.capture = CaptureThread(self.reader, self.slot, realtime=self.realtime, fps=self.fps,
                                     stop=self.stop_event, max_frames=self.max_frames,
                                     max_reconnects=self.max_reconnects, nice=self.budget.decode_nice,
                                     on_event=self.pipeline.on_event)
        self.capture.start()
        self.capture.opened.wait()
        if self.capture.open_error is not None:
            raise _open_error(self.capture.open_error, self.reader.name, str(self.capture.open_error))
        self._t0 = time.perf_counter()
        ended_by = "end of source"
        output_error: OutputError | None = None
        try:
            while not self.stop_event.is_set():
                frame = self.slot.get(timeout=0.5)
                self._report_source_failures()     # the reader records a failure before it closes the slot
                if frame is None:
                    if self.slot.closed:
                        break
                    continue
                try:
                    self.pipeline.run_frame(frame.image, index=frame.index, source=frame.source,
                                            t_capture=frame.t_capture, time_s=frame.time_s)
                except OutputError:
                    raise
                except UsedgeError as exc:
                    self._counts["errors"] += 1
                    self.last_error = exc.one_line()
                    self.pipeline.write_error(frame.source, self.last_error, frame.index)
                    continue
                if self.pipeline.quit:
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
        if ended_by == "end of source" and self._stop_requested:     # stop() closed the slot: not the source's end
            ended_by = "stopped"
        if ended_by == "end of source":
            if cap.error:
                ended_by = "source failed"
            elif cap.ended_early and cap.truncated:     # damage passed over is the error below, not an early end
                ended_by = "ended early"
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
            source=self.reader.name, backend=self.pipeline.classifier.backend.describe(), frames_read=cap.read,
            processed=self._counts["processed"], dropped=self.slot.dropped, late_skipped=cap.late, frozen_skipped=self._counts["frozen"],
            errors=self._counts["errors"], reconnects=cap.reconnects,
            layout_detections=self.pipeline.layout_detections,
            resolution_changes=self.pipeline.resolution_changes, notes=list(self.pipeline.notes),
            duration_s=round(duration, 3), fps=round(results / duration, 2) if duration > 0 else 0.0,
            source_fps=round(self.capture.fps, 2), latency_ms=lat,
            model_share=round(float(model / c2r), 4) if c2r == c2r and c2r > 0 else float("nan"),
            no_image=self._counts["no_image"],
            ended_by=ended_by, error=cap.error or cap.ended_early or self.last_error,
            failed_outputs=list(self.pipeline.failed_outputs), threads=self.budget.to_dict(),
            backend_reason=self.pipeline.classifier.backend_reason,
        )
