"""The server's view of the ONE latest-frame loop (`usedge.runtime.stream.StreamRunner`).

The runner's loop thread calls `LiveFeed._on_result` (a `subscribe()` callback) for every result;
nothing here reads the source or runs the model. The overlay JPEG is drawn and encoded at most once
per frame and only when an MJPEG client asks for it (no viewer: no cost to the loop), in a worker
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading



class LiveFeed:
    """Counts the runner's results and hands out overlay JPEGs of the newest one."""

    def __init__(self, runner, *, jpeg_quality: int = 80, observe=None):
        self.runner = runner
        self.observe = observe               # called with each Prediction in the loop thread (metrics)
        self.jpeg_quality = int(jpeg_quality)
        self.closed = False
        self._lock = threading.Lock()
        self._seq = -1                       # results seen since the server started
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
    def state(self) -> str:
        """starting | running | ended | failed."""
        summary = getattr(self.runner, "summary", None)
        if summary is not None:
            return "failed" if summary.ended_by == "source failed" or summary.error and not summary.processed else "ended"
        if self.runner.running:
            return "running"
        return "starting"

    def latest_json(self) -> dict:
        """/v1/latest: seq, state (of the loop), image (what the newest result is: live | frozen |
        no_image | error, null before the first), counters and the newest prediction (no overlay
        drawn; label and probs null unless live or frozen)."""
        with self._lock:
            seq = self._seq
        pred, _frame, _ = self.runner.latest(overlay=False)
        stats = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.runner.stats().items()
                 if isinstance(v, (int, float, str, bool))}
        return {"seq": seq, "state": self.state(), "image": pred.state if pred is not None else None,
                "stats": stats, "prediction": pred.to_record(source=False) if pred is not None else None}

    def _jpeg_for(self) -> tuple[int, bytes] | None:
        """(seq, overlay JPEG) of the newest result, encoded once per result; runs in a worker thread."""
        import cv2

        with self._jpeg_lock:
            with self._lock:
                seq = self._seq
            if self._jpeg is not None and self._jpeg[0] == seq:
                return self._jpeg
            pred, _frame, image = self.runner.latest()     # the overlay, drawn once per result
            if pred is None:
                return None
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                return None
            self._jpeg = (seq, buf.tobytes())
            return self._jpeg

    async def next_jpeg(self, after_seq: int, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """(seq, JPEG) of a result newer than `after_seq`, or None after `timeout` seconds."""
        import anyio.to_thread

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
                    return None
        finally:
            with self._lock:
                self._waiters.discard(key)
        if self.closed:
            return None
        return await anyio.to_thread.run_sync(self._jpeg_for)

    def close(self) -> None:
        """Stop listening to the runner and release every waiting MJPEG response."""
        self.closed = True
        self._unsubscribe()
        with self._lock:
            waiters = list(self._waiters)
        self._wake(waiters)


def start_stream(classifier, source: str, *, replay: bool, smooth_window: int, open_timeout_s: float = 30.0):
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
    is_file = not reader.live and not source.startswith("watch:") and not Path(source).is_dir()
    if replay and is_file:
        reader = ReplayReader(reader)
    pipeline = FramePipeline(classifier, stream=True, regions=reader.regions, freeze=True,
                             smooth=smooth_window if smooth_window > 1 else None, cam=True)
    runner = StreamRunner(pipeline, reader, realtime=is_file)
    runner.start(open_timeout_s=open_timeout_s)
    return runner
