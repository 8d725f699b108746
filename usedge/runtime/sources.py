"""Where frames come from: files for `usedge infer`, live sources for `usedge infer --stream`.

    open_source("0" | "/dev/video0" | "rtsp://..." | "v4l2src ! ... ! appsink" | "clip.mp4"
                | "cine.dcm" | "image.png" | "watch:DIR" | DIR)  -> FrameReader
    CaptureThread(reader, LatestFrameSlot) keeps only the newest frame; the loop takes it.

A reader is a blocking producer (`open` / `read() -> image or None at the end` / `close`). The
capture thread owns the reader: it paces files at their own frame rate with `realtime`, reconnects
a failed live source with exponential back-off, and puts each frame in a capacity-1 slot. A frame
not yet taken when the next arrives is dropped and counted, never queued, so the result's age is
bounded by one frame plus one inference whatever the model's speed.

Frames are numpy arrays as OpenCV delivers them (BGR or gray, uint8). DICOM patient data never
leaves this module: only pixels and the frame rate are read.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib.util
import math
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np

from usedge.errors import InputError, StreamError, Undecodable, UnsupportedInput, UsedgeError
from usedge.runtime.dicom import is_dicom, open_dicom
from usedge.runtime.formats import LITTER_FOLDERS, StillPages, is_video, read_bytes, read_pages
from usedge.runtime.threads import lower_this_thread

DEFAULT_FPS = 30.0


@dataclass
class Frame:
    """One captured frame. t_capture: time.perf_counter() (s) when it was ready to hand over."""

    image: np.ndarray
    index: int            # frame number in the source, from 0, counting frames read (dropped too)
    source: str           # display name: a path, "camera:0", a URL (never patient data)
    t_capture: float
    time_s: float | None = None   # the frame's time in its file (a video's timestamp, a cine's frame time)


class FileFrame(NamedTuple):
    """One frame of a file, as `iter_file_frames` gives it."""

    index: int                    # its number in the file (a cine's frame, a TIFF page, a video's frame)
    image: np.ndarray
    regions: list | None          # DICOM ultrasound region boxes, or None
    time_s: float | None          # seconds from the file's first frame (a video's presentation timestamp,
                                  # a DICOM cine's frame time); None for a still image or without a rate


# --------------------------------------------------------------------------------------------
# Reading files (images, DICOM, video). DICOM goes through usedge.runtime.dicom (patient-data-free).
# --------------------------------------------------------------------------------------------
def iter_file_frames(path: str | Path, *, allow_any_modality: bool = False) -> Iterator[FileFrame]:
    """FileFrame(index, image, DICOM region boxes or None, time_s) for every frame of an image, DICOM or video."""
    path = Path(path)
    if not path.is_file():
        read_bytes(path)            # InputError: missing, or not a regular file (a FIFO would hang)
    if is_dicom(path):
        dcm = open_dicom(path, allow_any_modality=allow_any_modality)
        regions = dcm.regions or None
        for i, frame in dcm.frames():
            yield FileFrame(i, frame, regions, dcm.frame_time_s(i))
        return
    if is_video(path):
        reader = VideoFileReader(path)
        reader.open()
        try:
            i = 0
            while (frame := reader.read()) is not None:
                yield FileFrame(i if reader.frame_number is None else reader.frame_number, frame, None, reader.time_s)
                i += 1
            if i == 0:
                raise InputError("video has no readable frames", path=path, hint="check the codec (ffmpeg build)")
            if reader.ended_early:      # the frames before were given; the file is still reported
                raise Undecodable(reader.ended_early.removeprefix(f"{reader.name}: "), path=path,
                                  hint="copy or export the video again (the frames that could be read were used)")
        finally:
            reader.close()
        return
    for page in read_pages(path, allow_any_modality=allow_any_modality):     # a multi-page TIFF: each page
        yield FileFrame(page.frame_index, page.frame, None, None)


# --------------------------------------------------------------------------------------------
# Readers: blocking producers of frames.
# --------------------------------------------------------------------------------------------
class FrameReader:
    """open() / read() -> image or None (end or failure) / close(). `live`: reconnect on failure."""

    live = False
    name = ""
    fps: float | None = None
    regions: list | None = None     # DICOM ultrasound region boxes, when the source has them
    decode_threads: int | None = None   # decoder threads (a video file's FFmpeg); None: the decoder's default
    open_notice = ""                    # a line to say once the source is open (the capture thread's on_event)
    time_s: float | None = None         # the last frame's time in its file (None: a still image, a live source)

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def skip(self) -> bool:
        """Pass over one frame as cheaply as the format allows (realtime catch-up); False at the end."""
        return self.read() is not None

    def close(self) -> None:
        pass


class ArrayReader(FrameReader):
    """Frames already in memory (a still image)."""

    def __init__(self, frames, name: str, fps: float | None = None) -> None:
        self.frames, self.name, self.fps = frames, name, fps
        self._i = 0
        self.frame_number: int | None = None    # the last frame's number (a page of a multi-page TIFF)

    def open(self) -> None:
        self._i = 0

    def read(self) -> np.ndarray | None:
        if self._i >= len(self.frames):
            return None
        frame = self.frames[self._i]
        self.frame_number = self._i
        self._i += 1
        return frame

    def skip(self) -> bool:
        self._i += 1
        return self._i <= len(self.frames)


class _StillFrames:
    """The pages of a still image file (one; each page of a multi-page TIFF) as ArrayReader's frames,
    each decoded when it is read."""

    def __init__(self, path: str | Path) -> None:
        self.pages = StillPages(read_bytes(path), str(path))

    def __len__(self) -> int:       # a damaged TIFF: one more, whose read reports the damage
        return len(self.pages) + self.pages.damaged

    def __getitem__(self, i: int) -> np.ndarray:
        return self.pages[i].frame


class DicomCineReader(FrameReader):
    """A multi-frame DICOM (cine loop), decoded one frame at a time, at its own frame rate.

    Its frames are independent (`pass_over_damaged`): a frame that cannot be decoded (damaged data) is
    passed over by the capture thread, recorded in `failed` (the stream loop writes it as an error
    result), and the next frame is read, as `usedge infer` on the file does."""

    pass_over_damaged = True

    def __init__(self, path: str | Path, *, allow_any_modality: bool = False) -> None:
        self.dcm = open_dicom(path, allow_any_modality=allow_any_modality)
        self.name, self.fps = str(path), self.dcm.fps
        self.regions = self.dcm.regions or None
        self.failed: list[tuple[str, str, int]] = []   # (file, one-line reason, frame number)
        self.frame_number: int | None = None           # the last frame's number in the cine
        self._i = 0

    def open(self) -> None:
        self._i = 0

    def read(self) -> np.ndarray | None:
        if self._i >= self.dcm.n_frames:
            return None
        self._i += 1
        self.frame_number, self.time_s = self._i - 1, self.dcm.frame_time_s(self._i - 1)
        return self.dcm.frame(self._i - 1)

    def skip(self) -> bool:  # no decoding
        self._i += 1
        return self._i <= self.dcm.n_frames


def _attached_pic() -> int:
    """PyAV's disposition flag of a cover-art picture stored as a video track."""
    from av.stream import Disposition

    return int(Disposition.attached_pic)


class VideoFileReader(FrameReader):
    """A video file, decoded by PyAV (FFmpeg) at each frame's own size; fps from the container.

    OpenCV's FFmpeg backend scales every frame to the size in the stream header, so a video whose
    resolution changes half-way (a scanner switching presets in a recorded transport stream) would
    reach the cropper squeezed; PyAV hands over each frame as decoded. A file PyAV cannot open (or
    without a video stream) is read through OpenCV instead (`backend` says which one reads it).

    The main video track is read: never an attached picture (cover art), else the track with the most
    frames, then the largest picture (a thumbnail track first in the file is not the video).

    `ended_early` (one line, else "") when decoding stopped before the end the file declares (a
    truncated or damaged file): more than one frame short of the frame count the container stores,
    or, without a count, the last frame's time short of the video track's own duration (the
    container's only when the video is its one stream: an audio track may be longer; a transport
    stream's duration is FFmpeg's estimate from the file itself, so a cut one is not noticed);
    when damaged packets mid-file were passed over (PyAV decodes packet by packet and goes on
    after one that fails); or when the file grew while it was read (a recording still being written).
    After a damaged packet the frames up to the next key frame (decoded from missing data) and any frame
    the decoder marks corrupt are left out and counted in `concealed`, and `frame_number` is a frame's place
    among the file's packets (a damaged one included), so every later frame keeps its own number in the
    video, at any frame rate; a packet the decoder gives no picture for without an error is counted in `lost`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.cap = None             # OpenCV's VideoCapture, when PyAV could not open the file
        self._container = None      # PyAV's container and its frame iterator
        self._frames = None
        self.backend = ""           # "pyav" | "opencv" once open
        self.declared = 0           # frames the container declares (0: unknown)
        self.position = 0           # frames read or skipped so far
        self.ended_early = ""
        self.truncated = False      # ended_early says the file ended early (cut, still growing), not damage passed over
        self.damaged = 0            # packets that failed to decode and were passed over (PyAV)
        self.concealed = 0          # frames left out after damage (decoded from missing data, or marked corrupt)
        self.lost = 0               # packets the decoder gave no picture for, without an error (PyAV)
        self.frame_number: int | None = None   # the last frame's number in the video (PyAV: its place among the packets)
        self.time_s: float | None = None       # the last frame's presentation time, seconds from the track's start
        self._stream = None         # PyAV's video stream being read
        self._seconds = 0.0         # the video track's own duration (0: not declared)
        self._start = 0.0                      # the track's start time, seconds
        self._size = -1             # the file's size when opened (a recording still being written grows)

    def open(self) -> None:
        self.position, self.ended_early, self.damaged, self.concealed, self.lost = 0, "", 0, 0, 0
        self.frame_number, self.time_s = None, None
        try:
            self._size = self.path.stat().st_size
            empty = self._size == 0
        except OSError:
            empty = False     # a device or a missing path: the decoders say why
        if empty:
            raise Undecodable("empty file (0 bytes)", path=self.path, hint="copy or record the video again")
        if not self._open_pyav():
            self._open_opencv()

    def _open_pyav(self) -> bool:
        """Open with PyAV; False (nothing kept open) when PyAV is missing or cannot read the file."""
        try:
            import av
        except ImportError:
            return False
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError, ValueError):
            return False
        if not container.streams.video:
            kinds = sorted({str(s.type) for s in container.streams})
            container.close()
            raise InputError(f"has no video stream ({' and '.join(kinds) + ' only' if kinds else 'no streams at all'})",
                             path=self.path, hint="pass a video recording of the scanner's screen")
        if not self._use(container):
            return False
        self.declared = self._declared(self._stream)
        return True

    def _declared(self, stream) -> int:
        """The frame count the container stores for the video track (0: none stored). Without it, the
        track's own duration (`_seconds`) is what the last frame's time is checked against; the
        container's duration only when the video is its one stream (an audio track may be longer)."""
        import av

        container = stream.container
        seconds = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                   else container.duration / av.time_base if container.duration and len(container.streams) == 1
                   else 0.0)
        self._seconds = seconds if 0 < seconds < 1e7 else 0.0
        return int(stream.frames) if stream.frames and stream.frames > 0 else 0

    @staticmethod
    def _main_stream(container):
        """The video track to read: not an attached picture, then the most frames, then the largest picture."""
        import av

        whole = container.duration / av.time_base if container.duration else 0.0

        def key(stream):      # frames: stored, else duration (the track's own, else the file's) x rate
            cover = bool(int(stream.disposition) & int(_attached_pic()))
            seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else whole
            rate = float(stream.guessed_rate or stream.average_rate or 0)
            frames = stream.frames or int(seconds * rate)
            ctx = stream.codec_context
            return (not cover, frames, (ctx.width or 0) * (ctx.height or 0), -stream.index)
        return max(container.streams.video, key=key)

    def _use(self, container) -> bool:
        """Read frames from an open PyAV container: its main video track, its rate, the decoder's
        threads. False (the container closed) when it has no video stream."""
        if not container.streams.video:
            container.close()
            return False
        stream = self._stream = self._main_stream(container)
        if self.decode_threads:
            stream.codec_context.thread_count = int(self.decode_threads)
        rate = stream.guessed_rate or stream.average_rate
        self.fps = float(rate) if rate and 0 < rate < 1000 else None
        self._container, self._frames, self.backend = container, self._decoded(container, stream), "pyav"
        return True

    def _decoded(self, container, stream):
        """Decoded frames, packet by packet: a packet that fails to decode (damaged data mid-file) is passed
        over and counted in `damaged`, and decoding goes on; the container failing to give packets (a cut
        file) ends it."""
        import av

        start = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
        self._start = start
        after_damage = False       # frames up to the next key frame were decoded from missing data
        packet_pts: list[int] = []  # every packet's timestamp so far, damaged ones too, sorted: a frame's rank is its place
        first_rank: int | None = None   # the first frame's rank (packets before it that give no picture: not frames)
        passed = 0                 # frames passed over (damaged packets, concealed frames) since the last one given
        for packet in container.demux(stream):
            if packet.pts is not None:
                bisect.insort(packet_pts, packet.pts)
            try:
                frames = packet.decode()
            except av.error.EOFError:
                return
            except av.error.FFmpegError:
                self.damaged += 1
                passed += 1
                after_damage = True
                continue
            for frame in frames:
                t = (frame.time - start) if frame.time is not None else None
                if after_damage and frame.key_frame and not frame.is_corrupt:
                    after_damage = False
                if after_damage or frame.is_corrupt:
                    self.concealed += 1
                    passed += 1
                    continue
                following = 0 if self.frame_number is None else self.frame_number + 1
                if frame.pts is not None and packet_pts:
                    # a frame's number is its place among the file's packets (those lost included), whatever the
                    # frame rate: frames lost leave a gap in the numbers, and a gap nobody reported (a packet the
                    # decoder gave no picture for, without an error) is counted in `lost`
                    rank = bisect.bisect_left(packet_pts, frame.pts)
                    first_rank = rank if first_rank is None else first_rank
                    number = max(rank - first_rank, following)
                    self.lost += max(0, number - following - passed)
                    self.frame_number = number
                else:
                    self.frame_number = following
                passed = 0
                self.time_s = t
                yield frame

    def _open_opencv(self) -> None:
        params = [cv2.CAP_PROP_N_THREADS, int(self.decode_threads)] if self.decode_threads else []
        self.cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, params) if params else cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            self.cap.release()
            self.cap = None
            if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") and b"moov" not in _head_and_tail(self.path):
                raise Undecodable("cannot open this video: its index (moov) is missing", path=self.path,
                                  hint="the file was cut short or is still being recorded; copy or export it again")
            raise InputError("cannot open this video", path=self.path,
                             hint="check the file and that FFmpeg (PyAV or OpenCV) can decode its codec")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared = int(count) if count and 0 < count < 1e9 else 0
        self.backend = "opencv"

    @property
    def threads_in_use(self) -> int | None:
        """The decoder's thread count as set (None before open)."""
        if self._container is not None:
            return int(self._stream.codec_context.thread_count)
        return int(self.cap.get(cv2.CAP_PROP_N_THREADS)) if self.cap is not None else None

    def _next_av(self):
        """PyAV's next decoded frame, or None at the end (a decoding error ends the file too)."""
        import av

        try:
            return next(self._frames)
        except (StopIteration, av.error.FFmpegError, EOFError):
            return None

    def _advanced(self, ok: bool) -> bool:
        if ok:
            self.position += 1
            if self.cap is not None:
                self.frame_number = self.position - 1
                msec = self.cap.get(cv2.CAP_PROP_POS_MSEC)
                self.time_s = msec / 1000.0 if msec is not None and math.isfinite(msec) and msec >= 0 else None
            return ok
        try:
            grew = self._size >= 0 and self.path.stat().st_size > self._size
        except OSError:
            grew = False
        left_out = f", {self.concealed} frame(s) decoded from damaged data left out" if self.concealed else ""
        self.truncated = False      # damage passed over (below) is not an early end
        if grew:
            self.truncated = True
            self.ended_early = (f"{self.name}: the file grew while it was read (still being recorded?): "
                                f"{self.position} frames read up to its end at that moment")
        elif self.declared and self.position + self.damaged + self.concealed + self.lost < self.declared - 1:
            self.truncated = True
            self.ended_early = (f"{self.name}: video ended early, after {self.position} of the "
                                f"{self.declared} frames its header declares (truncated or damaged file)")
        elif self.damaged:
            self.ended_early = (f"{self.name}: {self.damaged} damaged packet(s) could not be decoded and were "
                                f"passed over{left_out}; the other {self.position} frames were read")
        elif self.lost:
            self.ended_early = (f"{self.name}: the decoder gave no picture for {self.lost} frame(s) (damaged data?), "
                                f"left out{left_out}; the other {self.position} frames were read")
        elif (not self.declared and self._seconds and self.fps and self.time_s is not None
              # a Matroska duration is the end's timestamp, not the span: a file starting at 2 s is measured so
              and self.time_s + max(self._start, 0.0) + 1.0 / self.fps < self._seconds - max(2.0 / self.fps, 0.1)):
            self.truncated = True
            self.ended_early = (f"{self.name}: video ended early, at {self.time_s + 1.0 / self.fps:.2f} s of the "
                                f"{self._seconds:.2f} s its header declares (truncated or damaged file)")
        return ok

    def read(self) -> np.ndarray | None:
        if self._frames is not None:
            frame = self._next_av()
            image = as_shown(frame) if frame is not None else None
            return image if self._advanced(image is not None) else None
        if self.cap is None:
            return None
        ok, image = self.cap.read()
        return image if self._advanced(ok) else None

    def skip(self) -> bool:  # decode without the colour conversion and copy of to_ndarray / retrieve()
        if self._frames is not None:
            return self._advanced(self._next_av() is not None)
        return self._advanced(self.cap is not None and bool(self.cap.grab()))

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = self._frames = None
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def as_shown(frame) -> np.ndarray:
    """A PyAV frame as BGR, turned as players show it: a phone recording carries its rotation (90, 180 or
    270 degrees) in a display matrix, not in its pixels (OpenCV's FFmpeg backend turns it the same way)."""
    image = frame.to_ndarray(format="bgr24")
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def _head_and_tail(path: Path, size: int = 8 << 20) -> bytes:
    """The first and last `size` bytes of a file (an MP4 keeps its index, the moov box, at one end)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(size)
            fh.seek(max(fh.seek(0, os.SEEK_END) - size, 0))
            return head + fh.read(size)
    except OSError:
        return b""


@contextlib.contextmanager
def _quiet_opencv():
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging.setLogLevel(level)


class CaptureReader(FrameReader):
    """A live OpenCV capture: camera index, device path or GStreamer pipeline (URLs: NetworkStreamReader)."""

    live = True

    def __init__(self, target: str | int, api: int = cv2.CAP_ANY, name: str | None = None) -> None:
        self.target, self.api = target, api
        self.name = name or (f"camera:{target}" if isinstance(target, int) else redact_source(str(target)))
        self.cap = None

    def open(self) -> None:
        with _quiet_opencv():  # OpenCV's own open warnings would repeat on every reconnect attempt
            self.cap = cv2.VideoCapture(self.target, self.api)
        if not self.cap.isOpened():
            self.cap.release()
            self.cap = None
            raise StreamError("cannot open live source", path=self.name,
                              hint="check the cable/URL/permissions; `usedge doctor` lists OpenCV's video backends")
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # not every driver honours it: the slot drops the rest
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            return None
        ok, frame = self.cap.read()
        return frame if ok else None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class NetworkStreamReader(VideoFileReader):
    """A live network stream (RTSP, HTTP(S), ...) decoded by PyAV (FFmpeg) at each frame's own size.

    OpenCV's FFmpeg backend scales every frame to the size of the stream's first frame, so a source
    whose resolution changes (an encoder box following the scanner's output, a scanner switching
    presets) would reach the cropper squeezed and the resolution-change handling would never see it;
    PyAV hands over each frame as decoded (without PyAV, `open_source` gives OpenCV's CaptureReader).
    Reading fails (network gone, stream ended) -> None, and the capture thread reconnects.

    A URL that serves a file (its container declares a duration, or the server its length: an .mp4
    or .ts on a web server; not a live HLS/DASH playlist or RTSP) is read like that file, not as a
    live source (`live` is set when opened): every frame, its end is the end of the source (no
    reconnect, which would replay it from the start forever), and a file cut short is reported.
    """

    live = True
    OPEN_TIMEOUT_S = 10.0       # connecting and reading the stream's header
    READ_TIMEOUT_S = 5.0        # no data for this long: the read fails (then reconnect)
    OPTIONS: dict = {}          # FFmpeg's options for the input (PipeReader: a short probe)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url
        self.name = redact_source(url)

    def open(self) -> None:
        import av

        self.position, self.ended_early, self.damaged, self.concealed, self.lost = 0, "", 0, 0, 0
        self.frame_number, self.time_s = None, None
        try:
            container = av.open(self.url, timeout=(self.OPEN_TIMEOUT_S, self.READ_TIMEOUT_S), options=self.OPTIONS)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            why = " ".join(str(getattr(exc, "strerror", "") or exc).split())
            raise StreamError(f"cannot open live source ({redact_source(why)})", path=self.name,
                              hint="check the URL, the network and the credentials") from None
        if not self._use(container):
            raise StreamError("cannot open live source (no video stream)", path=self.name,
                              hint="check that the URL serves video")
        size = getattr(container, "size", -1) or -1        # the resource's length (HTTP Content-Length), if known
        streamed = set(container.format.name.split(",")) & {"hls", "dash", "rtsp", "rtp", "sdp"}
        self.live = not (container.duration or (size > 0 and not streamed))     # a file behind the URL: read as it
        self.declared = self._declared(self._stream) if container.duration else 0

    def _advanced(self, ok: bool) -> bool:
        if self.live:                           # a live stream declares no length: it does not end early
            self.position += ok
            return ok
        ok = super()._advanced(ok)
        if not ok and self.position == 0 and self.ended_early:
            self.ended_early = (f"{self.name}: no frame could be read from this video over the network (an MP4 whose "
                                "index is at its end needs a server that answers byte ranges; or remux it with "
                                "faststart)")
        return ok


class PipeReader(NetworkStreamReader):
    """A named pipe (FIFO) another program writes video into (MPEG-TS, Matroska), read as it comes.
    FFmpeg's default probe reads 5 MB or 5 s of input before the first frame is given: at a pipe's bit
    rate that held the first 5-6 s of frames back, which then arrived at once and were dropped as stale.
    A 64 KB / 1 s probe gives the first result about 1-2 s after the writer starts. A raw MJPEG pipe is
    still given only when its writer closes (FFmpeg's raw demuxer): wrap MJPEG in Matroska."""

    OPTIONS = {"probesize": "65536", "analyzeduration": "1000000"}

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.name = str(path)


class WatchedFolderReader(FrameReader):
    """New image/DICOM files appearing in a folder (a scanner exporting to a share), oldest first.

    Subfolders are watched too (a scanner exporting one folder per study), except hidden ones and
    folders usedge writes into. A file is read once its size and modification time have not changed for
    `settle_s` (the writer has finished: a copy over a network share may pause for a moment), and read
    again when it changes later (exported again: the complete copy of a file first read half-written).
    The folder is scanned every `poll_s`, or less often when one scan takes more than SCAN_SHARE of
    the wait (many files: a new file then waits up to 20 scans' time longer).
    Existing files are skipped unless `include_existing`. `idle_timeout_s`: end after that long without a
    new file (None: watch until stopped; `stop` ends it at once). Every frame of every file is given (a
    stream waits for the loop, nothing is dropped); `frame_source` names the file of the frame just read
    (`frame_number`: its number in that file, as `usedge infer` on the file numbers it), and a file that
    cannot be read is appended to `failed` (the stream loop writes it as an error result).
    """

    live = False  # never "fails": it waits
    SCAN_SHARE = 0.05   # the most of one core the idle polling may take: a folder of many files is polled less often

    def __init__(self, folder: str | Path, poll_s: float = 0.2, include_existing: bool = False,
                 idle_timeout_s: float | None = None, stop: threading.Event | None = None,
                 allow_any_modality: bool = False, settle_s: float = 1.0) -> None:
        self.folder = Path(folder)
        self.allow_any_modality = allow_any_modality
        self.name = f"watch:{folder}"
        self.poll_s, self.include_existing, self.idle_timeout_s = poll_s, include_existing, idle_timeout_s
        self.settle_s = settle_s
        self.stop = stop or threading.Event()
        self._seen: dict[str, tuple[int, int]] = {}                 # path -> (size, mtime) of the version read
        self._pending: dict[str, tuple[tuple[int, int], float]] = {}  # path -> (size, mtime), since when unchanged
        self._ready: list[Path] = []               # new files, complete, not read yet
        self._frames = None                        # frames of the file being read (iter_file_frames)
        self.failed: list[tuple[str, str]] = []   # (file, one-line reason)
        self.frame_source = ""                     # the file of the frame just read
        self.frame_number = 0                      # ... and its number in that file (a cine's frame, a TIFF page)
        self.ignore: set[str] = set()              # absolute paths never read: the stream's own outputs
        self._ignore_kept: set[tuple[str, str, str]] = set()   # (folder, stem, suffix) of their kept .unfinished copies
        self._refused: set[str] = set()            # files of a type usedge does not read: reported once

    def ignore_outputs(self, paths) -> None:
        """Never read these files (the stream's own results, recording, summary written into the folder),
        nor their temporary names, nor an earlier run's unfinished or complete copy the run keeps beside
        them (`<stem>.unfinished[N]<suffix>`, `<stem>.earlier[N]<suffix>`): each line written would change
        the file and have it read again."""
        from usedge.runtime.sinks import KEPT_TAGS, recording_partial, results_partial

        for p in paths:
            if p is None or str(p) == "-":
                continue
            p = Path(os.path.abspath(p))
            self.ignore |= {str(p), str(results_partial(p)), str(recording_partial(p))}
            self._ignore_kept |= {(str(p.parent), f"{p.stem}.{tag}", p.suffix) for tag in KEPT_TAGS}

    def open(self) -> None:
        if not self.folder.is_dir():
            raise StreamError("watched folder does not exist", path=self.folder, hint="create it or fix the path")
        if not self.include_existing:
            self._seen = dict(self._files())
            if self._seen:       # said once (CaptureThread): a folder already full of scans otherwise reads as dead
                self.open_notice = (f"{len(self._seen)} file(s) already in {self.folder} are not read: only files "
                                    "that arrive from now on are classified (`usedge infer` on the folder reads those)")

    def _files(self):
        """(path, (size, mtime_ns)) of every regular, non-hidden file under the folder (not in hidden folders
        nor in folders usedge writes into)."""
        from usedge.runtime.sinks import OUTPUT_MARK

        for top, dirs, names in os.walk(self.folder):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d.casefold() not in LITTER_FOLDERS
                       and not os.path.exists(os.path.join(top, d, OUTPUT_MARK))]      # a NAS's @eaDir thumbnails
            for n in names:
                if n.startswith("."):
                    continue
                path = os.path.join(top, n)
                if (self._refused and os.path.normpath(path) in self._refused) or (
                        self.ignore and self._is_output(os.path.abspath(path))):
                    continue
                try:
                    st = os.stat(path)
                except OSError:          # gone meanwhile
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield path, (st.st_size, st.st_mtime_ns)

    def _is_output(self, path: str) -> bool:
        if path in self.ignore:
            return True
        folder, name = os.path.split(path)
        return any(folder == d and name.startswith(stem) and name.endswith(suffix) for d, stem, suffix in self._ignore_kept)

    def _new_files(self) -> list[Path]:
        """Files new or changed since read, unchanged for settle_s: oldest first."""
        now, ready = time.monotonic(), []
        for path, sig in self._files():
            if sig[0] == 0 or self._seen.get(path) == sig:
                continue
            seen_sig, since = self._pending.get(path, (None, now))
            if seen_sig != sig:
                self._pending[path] = (sig, now)      # new, or still being written: the clock starts again
            elif now - since >= self.settle_s:
                ready.append((sig[1], path))
                self._seen[path] = sig
                del self._pending[path]
        return [Path(path) for _, path in sorted(ready)]

    def read(self) -> np.ndarray | None:
        idle_since = time.monotonic()
        while True:
            if self._frames is not None:     # the file being read, one frame at a time (a long cine stays small)
                try:
                    self.frame_number, frame, _, self.time_s = next(self._frames)
                    return frame
                except StopIteration:
                    self._frames = None
                except InputError as exc:   # frames read before a damaged part were given
                    self.failed.append((self.frame_source, exc.one_line()))
                    if isinstance(exc, UnsupportedInput):     # not a type usedge reads (a log, a report): once
                        self._refused.add(os.path.normpath(self.frame_source))
                    self._frames = None
                continue
            if self._ready:
                path = self._ready.pop(0)
                self.frame_source = str(path)
                self._frames = iter_file_frames(path, allow_any_modality=self.allow_any_modality)
                idle_since = time.monotonic()
                continue
            if self.stop.is_set():
                return None
            t_scan = time.monotonic()
            self._ready.extend(self._new_files())
            scan_s = time.monotonic() - t_scan
            if self._ready:
                continue
            if self._pending:               # a file is arriving (still being written): not idle
                idle_since = time.monotonic()
            if self.idle_timeout_s is not None and time.monotonic() - idle_since > self.idle_timeout_s:
                return None
            self.stop.wait(self.wait_after(scan_s))

    def wait_after(self, scan_s: float) -> float:
        """Seconds to wait after a scan that took scan_s: poll_s, or longer when the folder holds so many
        files that scanning every poll_s would take more than SCAN_SHARE of a core (a scanner's export
        folder only grows: 15000 files took a quarter of a core at 0.2 s polls)."""
        return max(self.poll_s, scan_s * (1 - self.SCAN_SHARE) / self.SCAN_SHARE)

    def close(self) -> None:
        if self._frames is not None:     # a video file left half-read: its decoder closes now
            self._frames.close()
            self._frames = None


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")   # greedy: up to the LAST '@' of the authority
_SECRET_PARAM = re.compile(r"((?:^|[?&;\s])[\w.-]*(?:pass|pwd|pw|token|key|secret|auth|sig|credential)[\w.-]*\s*=\s*)"
                           r"(?:\"[^\"]*\"|'[^']*'|[^&;#\s!]*)", re.IGNORECASE)


def redact_source(name: str) -> str:
    """A source name (URL, GStreamer pipeline, path) with its secrets replaced by `***`: the user:password
    of every URL (a password containing '@' included) and the value of every query-string or pipeline
    property whose name says password/pwd/pw/token/key/secret/auth/sig/credential. The ONE redaction:
    every reader's `name` (what logs, errors, JSONL/CSV `source`, summaries and the server print) uses it."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", str(name)))


def open_source(spec: str, *, stop: threading.Event | None = None, watch_idle_timeout_s: float | None = None,
                allow_any_modality: bool = False) -> FrameReader:
    """Parse a --stream SOURCE into a reader (not yet opened). allow_any_modality: DICOM of any Modality.

    "0", "1": camera index; "/dev/videoN": capture device; "rtsp://", "http(s)://": network stream;
    a string with " ! ": GStreamer pipeline; "watch:DIR" or an existing folder: watched folder;
    a named pipe (FIFO): live video another program writes into it; a .dcm: DICOM cine; a video file;
    an image file (one frame).
    """
    spec = str(spec).strip()
    if spec.isdigit():
        return CaptureReader(int(spec), cv2.CAP_ANY)
    if "!" in spec and not Path(spec).exists():
        return CaptureReader(spec, cv2.CAP_GSTREAMER, name=redact_source("gstreamer:" + spec.split("!", 1)[0].strip()))
    if "://" in spec:
        if importlib.util.find_spec("av") is None:    # OpenCV's FFmpeg then (it squeezes a resolution change)
            return CaptureReader(spec, cv2.CAP_FFMPEG)
        return NetworkStreamReader(spec)
    if spec.startswith("watch:"):
        return WatchedFolderReader(spec[len("watch:"):], stop=stop, idle_timeout_s=watch_idle_timeout_s,
                                   allow_any_modality=allow_any_modality)
    path = Path(spec)
    if spec.startswith("/dev/"):
        return CaptureReader(spec, cv2.CAP_V4L2 if hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY, name=redact_source(spec))
    if path.is_dir():
        return WatchedFolderReader(path, stop=stop, idle_timeout_s=watch_idle_timeout_s,
                                   allow_any_modality=allow_any_modality)
    if not path.exists():
        raise StreamError("source not found", path=redact_source(spec),
                          hint="give a camera index, /dev/videoN, a URL, a GStreamer pipeline, a file or a folder")
    if stat.S_ISFIFO(path.stat().st_mode):
        # a named pipe another program writes video into (`ffmpeg ... -f mpegts PIPE`): a live source, read
        # as it comes (it was read as an empty file); its writer closing ends it like a dropped connection
        if importlib.util.find_spec("av") is None:
            return CaptureReader(spec, cv2.CAP_FFMPEG, name=str(path))
        return PipeReader(spec)
    if is_dicom(path):
        return DicomCineReader(path, allow_any_modality=allow_any_modality)
    if is_video(path):
        return VideoFileReader(path)
    return ArrayReader(_StillFrames(path), str(path), None)


# --------------------------------------------------------------------------------------------
# The latest-frame slot and the capture thread.
# --------------------------------------------------------------------------------------------
class LatestFrameSlot:
    """Capacity-1 hand-over between the capture thread and the inference loop.

    put() replaces an untaken frame (counted in `dropped`); with `block=True` it instead waits until
    the loop has taken it (a file processed as fast as possible, every frame kept).
    """

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._waiting = 0           # loops blocked in get()
        self.dropped = 0
        self.put_count = 0

    def put(self, frame: Frame, block: bool = False, stop: threading.Event | None = None) -> None:
        with self._cond:
            if block:  # hand over only to a waiting loop, and stamp then: no queueing time in the latency
                while (self._frame is not None or self._waiting == 0) and not self._closed \
                        and not (stop and stop.is_set()):
                    self._cond.wait(0.1)
                frame.t_capture = time.perf_counter()
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self.put_count += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame, waiting up to `timeout` s; None when closed and empty (or timed out)."""
        with self._cond:
            end = None if timeout is None else time.monotonic() + timeout
            self._waiting += 1
            self._cond.notify_all()
            try:
                while self._frame is None and not self._closed:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return None
                    self._cond.wait(left)
            finally:
                self._waiting -= 1
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed and self._frame is None


@dataclass
class CaptureStats:
    read: int = 0          # frames decoded and handed to the slot
    late: int = 0          # realtime: frames the source moved past while decoding lagged (skipped, never decoded)
    reconnects: int = 0
    error: str = ""        # why the source ended early (a live source gave up, a file failed mid-way), one line
    ended_early: str = ""  # a file that ended before the frame count its header declares, one line (or damage)
    truncated: bool = False  # ended_early says the file ended early (cut, still growing), not damage passed over

    @property
    def source_frames(self) -> int:
        """Frames the source produced so far: read + late (the source's own frame numbering)."""
        return self.read + self.late


class CaptureThread(threading.Thread):
    """Reads a FrameReader into a LatestFrameSlot until the source ends or `stop` is set.

    realtime: pace the source at its frame rate (a file behaves like a live scanner; frames the loop
    has not taken in time are dropped); None: decide once the source is open (paced unless it is live: a
    URL is known to serve a file only then). Each frame is read (decoded) at its due time, never ahead,
    as a live source delivers it: decoding ahead ran the next frame's decode beside the model's
    threads and slowed the model on 2 cores (docs/runtime.md, Measured). Without realtime, a file
    source waits for the loop (no drops) and a live source delivers as fast as it produces.
    reconnect: live sources that fail are reopened after 0.5, 1, 2, 4 ... `max_backoff_s` seconds,
    `max_reconnects` times at most (None: forever).
    nice: raise this thread's nice value by that much before reading (the thread budget's `decode_nice`:
    a decoder that shares a core with the model's threads yields it to them).
    """

    def __init__(self, reader: FrameReader, slot: LatestFrameSlot, *, realtime: bool | None = False,
                 fps: float | None = None, stop: threading.Event | None = None, max_frames: int | None = None,
                 max_reconnects: int | None = None, max_backoff_s: float = 8.0, nice: int = 0,
                 on_event: Callable[[str], None] | None = None) -> None:
        super().__init__(name="usedge-capture", daemon=True)
        self.on_event = on_event    # one line when a live source stops and when it is reopened
        self.nice = nice
        self.niced = False          # whether `nice` took effect (Linux only)
        self.reader, self.slot = reader, slot
        self.realtime, self.fps_override = realtime, fps
        self.stop_event = stop or threading.Event()
        self.max_frames = max_frames
        self.max_reconnects, self.max_backoff_s = max_reconnects, max_backoff_s
        self.stats = CaptureStats()
        self._attempts = 0          # reconnect attempts since the last frame that arrived
        self.opened = threading.Event()
        self.open_error: BaseException | None = None
        self.t_start: float | None = None

    @property
    def fps(self) -> float:
        """The override, else the source's own rate, else DEFAULT_FPS (a rate that is not a positive finite
        number, e.g. from a damaged header, counts as none)."""
        for rate in (self.fps_override, self.reader.fps):
            if rate and math.isfinite(rate) and rate > 0:
                return float(rate)
        return DEFAULT_FPS

    def _reconnect(self) -> bool:
        """Reopen a failed live source; attempts count until a frame arrives again (a reopen that
        yields nothing is a failed attempt), with the back-off growing across them."""
        if self._attempts == 0 and self.on_event is not None:       # it just stopped (not a failed reopen)
            why = self.stats.error.removeprefix(f"{self.reader.name}: ") if self.stats.error else "no frame"
            self.on_event(f"source stopped ({why}); reconnecting")
        while not self.stop_event.is_set():
            if self.max_reconnects is not None and self._attempts >= self.max_reconnects:
                self.stats.error = f"{self.reader.name}: gave up after {self._attempts} reconnect attempts"
                return False
            self.stop_event.wait(min(0.5 * 2 ** self._attempts, self.max_backoff_s))
            self._attempts += 1
            self.stats.reconnects += 1
            try:
                self.reader.close()
                self.reader.open()
            except Exception:
                continue
            if self.on_event is not None:
                self.on_event(f"source reopened (attempt {self._attempts})")
            return True
        return False

    def run(self) -> None:
        self.niced = lower_this_thread(self.nice)
        try:
            self.reader.open()
        except BaseException as exc:
            self.open_error = exc
            self.opened.set()
            self.slot.close()
            return
        if self.realtime is None:
            self.realtime = not self.reader.live
        if (notice := getattr(self.reader, "open_notice", "")) and self.on_event is not None:
            self.on_event(notice)
        self.opened.set()
        block = not self.realtime and not self.reader.live      # a file or a watched folder: every frame
        period = 1.0 / self.fps
        t_start = self.t_start = time.perf_counter()    # frame k of a paced source is due at t_start + k * period
        index = 0  # the source's frame number (skipped frames included)
        try:
            while not self.stop_event.is_set():
                if self.max_frames is not None and index >= self.max_frames:
                    break
                if self.realtime and index > 0:
                    # a live scanner does not wait for us: pass over frames whose successor already exists
                    now_index = int((time.perf_counter() - t_start) / period)
                    while index < now_index and (self.max_frames is None or index < self.max_frames - 1):
                        if not self.reader.skip():
                            return
                        index += 1
                        self.stats.late += 1
                if self.realtime:
                    wait = t_start + index * period - time.perf_counter()
                    if wait > 0 and self.stop_event.wait(wait):
                        break       # stopped while waiting: no further frame is read
                try:
                    image = self.reader.read()
                except Undecodable as exc:
                    if getattr(self.reader, "pass_over_damaged", False):    # a cine's damaged frame: the next one
                        number = getattr(self.reader, "frame_number", None)
                        self.reader.failed.append((self.reader.name, exc.one_line(), index if number is None else number))
                        index += 1
                        continue
                    self.stats.error = exc.one_line()
                    image = None
                except UsedgeError as exc:
                    self.stats.error = exc.one_line()
                    image = None
                except Exception as exc:  # a driver/decoder failure: a live source reconnects
                    self.stats.error = f"{self.reader.name}: read failed ({type(exc).__name__})"
                    image = None
                if image is None:
                    if self.reader.live and self._reconnect():
                        self.stats.error = ""
                        continue
                    break
                self._attempts = 0
                self.stats.read += 1
                source = getattr(self.reader, "frame_source", "") or self.reader.name
                # a watched folder numbers frames per file, a video file by its place among the packets; a live
                # source is numbered here, across its reconnects (its reader starts again at 0)
                number = None if self.reader.live else getattr(self.reader, "frame_number", None)
                at = None if self.reader.live else getattr(self.reader, "time_s", None)
                self.slot.put(Frame(image, index if number is None else number, source, time.perf_counter(), at),
                              block=block, stop=self.stop_event)
                index += 1
        finally:
            self.stats.ended_early = getattr(self.reader, "ended_early", "")
            self.stats.truncated = bool(self.stats.ended_early) and bool(getattr(self.reader, "truncated", True))
            self.reader.close()
            self.slot.close()
