"""Replay a recorded source (video file, DICOM cine, image) forever, so a file behaves like a scanner.

A wrapper around any `usedge.runtime.sources.FrameReader`: at the end it reopens the source and goes
on. Paired with the stream runner's `realtime` pacing, a clip stands in for a live scanner in demos,
tests and the browser check; the runner, its latest-frame slot and its counters stay the only loop.
"""

from __future__ import annotations

import numpy as np

from usedge.runtime.sources import FrameReader


class ReplayReader(FrameReader):
    """FrameReader that restarts `reader` when it ends; stops only when a restart yields no frame. A source
    that turns out live once open (a URL of a camera, not of a file) is not replayed: it reconnects as
    live sources do."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self.name = reader.name
        self.replays = 0          # times the source was restarted

    @property
    def live(self) -> bool:
        return bool(self.reader.live)

    @property
    def fps(self) -> float | None:
        return self.reader.fps

    @property
    def regions(self):
        return getattr(self.reader, "regions", None)

    @property
    def frame_number(self) -> int | None:
        """The frame's number in the file (from 0 again after each restart), as `usedge infer` on it numbers it."""
        return getattr(self.reader, "frame_number", None)

    @property
    def time_s(self) -> float | None:
        return getattr(self.reader, "time_s", None)

    @property
    def pass_over_damaged(self) -> bool:
        """A cine's damaged frame is passed over (and listed in `failed`), replayed or not."""
        return bool(getattr(self.reader, "pass_over_damaged", False))

    @property
    def failed(self) -> list:
        return getattr(self.reader, "failed", [])

    def open(self) -> None:
        self.reader.open()

    def read(self) -> np.ndarray | None:
        frame = self.reader.read()
        if frame is None and not self.reader.live:
            self.reader.close()
            self.reader.open()
            self.replays += 1
            frame = self.reader.read()
        return frame

    def close(self) -> None:
        self.reader.close()
