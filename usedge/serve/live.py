"""The server's view of the ONE latest-frame loop (`usedge.runtime.stream.StreamRunner`).

The runner's loop thread calls `LiveFeed._on_result` (a `subscribe()` callback) for every result;
nothing here reads the source or runs the model. The overlay JPEG (MJPEG `/v1/live`) and the page's
view (`/v1/frame`: the frame of one result, no label drawn on it, the CAM only when asked) are encoded
at most once per result and only when a client asks (no viewer: no cost to the loop), in a worker
thread, never on the event loop.

The live view's bandwidth is capped (`ViewSettings`): width, JPEG quality, frames per second, and a
bitrate. Each view is at most `frame_budget` bytes (mbps / 8 / fps; the quality, then the size, is
lowered until it fits), and at most `fps` views are made per second, so a viewer receives at most
`mbps` megabits per second of images, whatever the scanner's resolution and frame rate.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("usedge.serve")

MIN_QUALITY = 20      # below this a B-mode image is not worth looking at: the size goes down instead
STALLED_AFTER_S = 2.0  # a running stream with no result for this long is "stalled" (source stopped sending)


@dataclass(frozen=True)
class ViewSettings:
    max_width: int = 640          # pixels; a wider frame is scaled down (aspect kept)
    quality: int = 70             # JPEG quality to start from
    fps: float = 10.0             # views per second at most
    mbps: float = 5.0             # megabits per second per viewer at most (images only)

    @property
    def frame_budget(self) -> int:
        """Bytes one view may take so that fps views a second stay within mbps."""
        return int(self.mbps * 1e6 / 8 / self.fps)


def encode_view(image: np.ndarray, view: ViewSettings) -> bytes | None:
    """BGR/gray uint8 image -> JPEG within the view's width and byte budget (None if it cannot be encoded)."""
    import cv2

    h, w = image.shape[:2]
    if w > view.max_width:
        image = cv2.resize(image, (view.max_width, max(1, round(h * view.max_width / w))), interpolation=cv2.INTER_AREA)
    quality = view.quality
    while True:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            return None
        if buf.size <= view.frame_budget or min(image.shape[:2]) <= 16:
            return buf.tobytes()
        if quality > MIN_QUALITY:
            quality = max(MIN_QUALITY, quality - 15)
        else:
            h, w = image.shape[:2]
            image = cv2.resize(image, (max(1, w * 3 // 4), max(1, h * 3 // 4)), interpolation=cv2.INTER_AREA)



class LiveFeed:
    """Counts the runner's results and hands out overlay JPEGs of the newest one."""

    def __init__(self, runner, *, view: ViewSettings = ViewSettings(), observe=None):
        self.runner = runner
        self.observe = observe               # called with each Prediction in the loop thread (metrics)
        self.view = view
        self.closed = False
        self._views: dict[bool, tuple[int, float, object, bytes]] = {}   # cam -> (seq, made at, pred, jpeg)
        self._lock = threading.Lock()
        self._seq = -1                       # results seen since the server started
        self._t_result: float | None = None  # time.monotonic() of the newest result
        self._jpeg: tuple[int, bytes] | None = None
        self._jpeg_lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._unsubscribe = runner.subscribe(self._on_result, needs_overlay=False)

    # -- the loop thread -------------------------------------------------------------------------
    def _on_result(self, pred, frame, overlay) -> None:
        if self.observe is not None:
            self.observe(pred)
        with self._lock:
            self._seq += 1
            self._t_result = time.monotonic()
            waiters = list(self._waiters)
        self._wake(waiters)

    @staticmethod
    def _wake(waiters) -> None:
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that event loop has closed
                pass

    # -- readers ---------------------------------------------------------------------------------
    def age_s(self) -> float | None:
        """Seconds since the newest result (None before the first)."""
        with self._lock:
            t = self._t_result
        return None if t is None else round(time.monotonic() - t, 3)

    def state(self) -> str:
        """starting | running | stalled (running, but no result for STALLED_AFTER_S: the source stopped
        sending, e.g. a cable pulled while it reconnects; the newest result is old, not live) | ended | failed."""
        summary = getattr(self.runner, "summary", None)
        if summary is not None:      # failed: the source failed, or nothing could be classified (not a frame read)
            return ("failed" if summary.ended_by == "source failed" or summary.error and not summary.processed
                    or not summary.frames_read else "ended")
        if self.runner.running:
            age = self.age_s()
            return "stalled" if age is not None and age > STALLED_AFTER_S else "running"
        return "starting"

    def latest(self):
        """(seq, prediction, frame) of the newest result, from the runner's latest() (no overlay drawn)."""
        with self._lock:
            seq = self._seq
        pred, frame, _ = self.runner.latest(overlay=False)
        return seq, pred, frame

    def stats_json(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.runner.stats().items()
                if isinstance(v, (int, float, str, bool))}

    def latest_json(self) -> dict:
        """/v1/latest: seq, state (of the loop), image (what the newest result is: live | frozen |
        no_image | error, null before the first), counters and the newest prediction (no overlay
        drawn; label and probs null unless live or frozen)."""
        seq, pred, _frame = self.latest()
        summary = getattr(self.runner, "summary", None)
        error = (summary.error if summary is not None else "") or getattr(self.runner, "last_error", "")
        return {"seq": seq, "state": self.state(), "age_s": self.age_s(), "error": error or None,
                "image": pred.state if pred is not None else None,
                "stats": self.stats_json(), "prediction": pred.to_record(source=False) if pred is not None else None}

    def _jpeg_for(self) -> tuple[int, bytes] | None:
        """(seq, overlay JPEG) of the newest result, encoded once per result; runs in a worker thread."""
        with self._jpeg_lock:
            with self._lock:
                seq = self._seq
            if self._jpeg is not None and self._jpeg[0] == seq:
                return self._jpeg
            pred, _frame, image = self.runner.latest()     # the overlay, drawn once per result
            if pred is None:
                return None
            jpeg = encode_view(image, self.view)
            if jpeg is None:
                return None
            self._jpeg = (seq, jpeg)
            return self._jpeg

    def _view_for(self, cam: bool):
        """(seq, prediction, JPEG) of the newest result for the page: that result's own frame, no label
        drawn on it (the page shows the label beside it), the CAM blended in only when `cam`."""
        from usedge.runtime.overlay import to_bgr, blend_cam

        with self._jpeg_lock:
            seq, pred, frame = self.latest()
            cached = self._views.get(cam)
            if cached is not None and cached[0] == seq:
                return cached[0], cached[2], cached[3]
            if pred is None or frame is None:
                return None
            image = to_bgr(frame)                         # a copy: the captured frame is never drawn on
            if cam and pred.has_label and pred.cam is not None:
                blend_cam(image, pred.cam, pred.crop_box)
            jpeg = encode_view(image, self.view)
            if jpeg is None:
                return None
            self._views[cam] = (seq, time.monotonic(), pred, jpeg)
            return seq, pred, jpeg

    async def _wait_newer(self, after_seq: int, timeout: float) -> bool:
        event = asyncio.Event()
        key = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.add(key)
            newer = self._seq > after_seq
        try:
            if not newer:
                try:
                    await asyncio.wait_for(event.wait(), timeout)
                except asyncio.TimeoutError:
                    return False
        finally:
            with self._lock:
                self._waiters.discard(key)
        return not self.closed

    async def next_view(self, after_seq: int, cam: bool, timeout: float = 1.0):
        """(seq, prediction, JPEG) of a result newer than `after_seq` for the page, or None after `timeout`.
        At most `view.fps` views are made per second (a newer one waits its turn), so a page that passes
        the seq it has shown receives at most view.mbps."""
        import anyio.to_thread

        if not await self._wait_newer(after_seq, timeout):
            return None
        cached = self._views.get(cam)
        if cached is not None:
            if cached[0] > after_seq:          # made already (for another viewer), newer than what this one has
                return cached[0], cached[2], cached[3]
            wait = cached[1] + 1.0 / self.view.fps - time.monotonic()
            if wait > 0:                       # the last view is younger than 1/fps: this one waits its turn
                await asyncio.sleep(wait)
        return await anyio.to_thread.run_sync(self._view_for, cam)

    async def next_jpeg(self, after_seq: int, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """(seq, overlay JPEG) of a result newer than `after_seq`, or None after `timeout` seconds."""
        import anyio.to_thread

        if not await self._wait_newer(after_seq, timeout):
            return None
        return await anyio.to_thread.run_sync(self._jpeg_for)

    def close(self) -> None:
        """Stop listening to the runner and release every waiting MJPEG response."""
        self.closed = True
        self._unsubscribe()
        with self._lock:
            waiters = list(self._waiters)
        self._wake(waiters)


def start_stream(classifier, source: str, *, replay: bool, smooth_window: int, open_timeout_s: float = 30.0,
                 quality_gate: bool = True):
    """Start the ONE latest-frame loop (usedge.runtime.stream.StreamRunner) on `source` in the background.

    A file source is paced at its own frame rate (realtime) and, with `replay`, restarted at its end,
    so it behaves like a scanner. smooth_window > 1 averages the live probabilities over that many
    frames. Returns the started runner once its source is open; raises StreamError otherwise.
    """
    from pathlib import Path

    from usedge.runtime.pipeline import FramePipeline
    from usedge.runtime.sources import open_source
    from usedge.runtime.stream import StreamRunner
    from usedge.serve.replay import ReplayReader

    reader = open_source(source)
    # a file (or a URL: whether it serves a file is known once open) is paced and replayed like a scanner
    paced = (not reader.live or "://" in source) and not source.startswith("watch:") and not Path(source).is_dir()
    if replay and paced:
        reader = ReplayReader(reader)
    # a source that stops and is reopened, a resolution change: one log line each
    pipeline = FramePipeline(classifier, stream=True, regions=reader.regions, freeze=True,
                             smooth=smooth_window if smooth_window > 1 else None, cam=True, quality_gate=quality_gate,
                             on_event=lambda line: log.warning("%s: %s", reader.name, line))
    runner = StreamRunner(pipeline, reader, realtime=None if paced else False)     # None: unless live once open
    runner.start(open_timeout_s=open_timeout_s)
    return runner
