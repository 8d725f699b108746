"""Where predictions go (the pipeline's last stage): JSONL (flushed per line), CSV, overlay PNGs in a
folder, an annotated video (H.264 .mp4 through PyAV), a window, a callback.

Every sink has `write(pred, frame, overlay)`, `write_error(source, message, frame=None)` and `close()`;
`needs_overlay` asks the pipeline to draw the annotated frame (drawn once per frame, shared by every
sink that wants it); `quit` set by a sink asks the live loop to stop. Streams (JSONL, CSV)
are appended line by line so a crash loses at most the frame in flight; a batch of files
(`results_sink(atomic=True)`) writes `<name>.partial` the same way and renames it at the end, so an
earlier results file stays whole until the run ends; the video is written to a temporary file
(a fragmented MP4 that plays up to a crash) and renamed on close, so `out.mp4` is either complete or absent.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import itertools
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from usedge.errors import InputError, OutputError, StreamError
from usedge.fileio import in_place, write_bytes_atomic
from usedge.runtime.classifier import STAGES, Prediction
from usedge.runtime.formats import INPUT_SUFFIXES, STILL_SUFFIXES


class Sink:
    needs_overlay = False
    quit = False
    bookkeeping = False     # not an output the user asked for (a stream's counters): see FramePipeline

    def write(self, pred: Prediction, frame: np.ndarray | None = None, overlay: np.ndarray | None = None) -> None:
        raise NotImplementedError

    def write_error(self, source: str, message: str, frame: int | None = None, *, model_sha256: str = "",
                    engine: str = "") -> None:
        """A file, or a frame of it (`frame`: its number), that could not be classified (default: not recorded);
        model_sha256 and engine: the model and backend of the run, as its results carry them."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


KEPT_TAGS = ("unfinished", "earlier")   # `<stem>.<tag>[N]<suffix>`: a dead run's partial file, an earlier stream's


def results_partial(path: Path) -> Path:
    """Where a batch writes the results file `path` until it ends."""
    return path.with_name(path.name + ".partial")


def recording_partial(path: Path) -> Path:
    """Where a recording to `path` is written until it is closed (hidden)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _free_name(path: Path, tag: str) -> Path:
    """`<stem>.<tag><suffix>`, or `<stem>.<tag>N<suffix>` with the first N from 2 that no file has."""
    for k in itertools.count(1):
        keep = path.with_name(f"{path.stem}.{tag}{'' if k == 1 else k}{path.suffix}")
        if not keep.exists():
            return keep
    raise AssertionError("unreachable")


def keep_earlier(path: Path, what: str = "results") -> None:
    """A stream writes its file from the start: an earlier run's file at `path` (yesterday's session) is
    kept beside it as `<stem>.earlier[N]<suffix>`, never overwritten, and one line says so."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
        keep = _free_name(path, KEPT_TAGS[1])
        os.replace(path, keep)
    except OSError as exc:
        raise OutputError(f"cannot keep the earlier {what} before this stream writes its own ({exc.strerror})",
                          path=path, hint="move it away, or write to another file") from exc
    print(f"usedge: kept the earlier {path.name} as {keep.name} (this stream writes its {what} from the start)",
          file=sys.stderr, flush=True)


def keep_unfinished(tmp: Path, path: Path, what: str, note: str) -> None:
    """A partial file at our temporary name `tmp` was left by a run that died: keep it beside `path` as
    `<stem>.unfinished[N]<suffix>` (never overwritten by the new run) and say so in one line."""
    if not tmp.exists():
        return
    keep = _free_name(path, KEPT_TAGS[0])
    try:
        os.replace(tmp, keep)
    except OSError as exc:
        raise OutputError(f"cannot keep an earlier unfinished {what} ({exc.strerror})", path=tmp,
                          hint=f"move it away, or write the {what} to another name") from exc
    print(f"usedge: an earlier run did not finish its {what}; kept it as {keep.name} ({note})",
          file=sys.stderr, flush=True)


def _lock(fh) -> bool:
    """Hold an exclusive lock on an open file for as long as it is open (POSIX flock; True where there is
    none): a second run finds the lock held and does not take the file for a dead run's."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:      # held by another process; a file system without locks (ENOLCK) counts as free
        return exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


def _refuse_if_in_use(tmp: Path, path: Path, what: str = "results file") -> None:
    """OutputError when another live run holds `tmp` (its results file or recording being written)."""
    try:
        with open(tmp, "rb") as other:
            if not _lock(other):
                raise OutputError(f"another usedge run is writing this {what} now (into {tmp.name})", path=path,
                                  hint="wait until it ends, or write to another file")
    except OSError:
        return          # gone meanwhile, or unreadable: the open for writing says why


def _open_text(path: str | Path, atomic: bool = False, earlier: bool = False):
    """(file, whether we own it, the temporary file to rename to `path` at close or None). A name that
    is not valid text (a non-UTF-8 file name, kept by Python as surrogates) is written with backslash
    escapes instead of stopping the run. The temporary file is locked while it is written: a second run
    into the same file is refused instead of taking it for a dead run's. earlier (a stream, written in
    place): an earlier run's file at `path` is kept as `<stem>.earlier<suffix>` (keep_earlier)."""
    if str(path) == "-":
        if sys.stdout is None:
            raise OutputError("stdout is closed", path="stdout", hint="pass --out FILE for the results")
        return sys.stdout, False, None
    path = Path(path)
    if path.is_dir():
        raise OutputError("is a folder", path=path, hint="give a file name, e.g. results.jsonl")
    tmp = None
    # a named pipe a consumer reads, /dev/null: written directly, nothing to lock, keep or rename over (opening a
    # pipe to test its lock waited for a writer forever)
    if not in_place(path):
        if path.exists():           # a stream writing it directly (its --jsonl) holds it locked
            _refuse_if_in_use(path, path)
        partial = results_partial(path)     # a batch writing this file holds it locked
        if partial.exists():
            _refuse_if_in_use(partial, path)
        tmp = partial if atomic else None
        if tmp is not None and tmp.exists():
            keep_unfinished(tmp, path, "results file", "its lines up to where that run stopped")
        if earlier and tmp is None:
            keep_earlier(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(tmp or path, "w", newline="", encoding="utf-8", errors="backslashreplace")
    except OSError as exc:
        raise OutputError(f"cannot write here ({exc.strerror})", path=path, hint="choose a writable file") from exc
    _lock(fh)
    return fh, True, tmp


def trim_torn_line(path: Path) -> None:
    """Cut a text file after its last complete line (a write that failed half-way through a line)."""
    try:
        with open(path, "r+b") as f:
            end = pos = f.seek(0, os.SEEK_END)
            while pos > 0:
                step = min(1 << 16, pos)
                f.seek(pos - step)
                i = f.read(step).rfind(b"\n")
                if i >= 0:
                    if pos - step + i + 1 < end:
                        f.truncate(pos - step + i + 1)
                    return
                pos -= step
            f.truncate(0)
    except OSError:
        pass


def _finish(fh, own: bool, tmp: Path | None, path, keep_partial: bool = False, broken: bool = False) -> None:
    """Close our file; an atomic one is renamed over `path` only now, so a run that dies leaves the
    previous results file whole (and the lines so far in `<name>.partial`). keep_partial: an interrupted
    batch, or one whose writes failed, whose lines stay in `<name>.partial` (a complete earlier file is not
    replaced by a part). broken: a write failed: the file ends at its last complete line."""
    if not own:
        return
    _close_quietly(fh, own)
    if broken:
        trim_torn_line(tmp if tmp is not None else Path(path))
    if tmp is not None and tmp.exists() and not keep_partial:
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"cannot write results ({exc.strerror})", path=path,
                              hint=f"the results are in {tmp}") from exc


@contextlib.contextmanager
def _output_errors(path, written: int, sink=None):
    """OSError while writing (disk full, device gone) -> one-line OutputError; lines before it stay intact.
    `sink`: its file is marked broken (closed at its last complete line, and an atomic one left in
    `<name>.partial`: the earlier complete results file is not replaced by a part)."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EPIPE:     # `usedge infer ... | head`: the reader stopped reading, not a disk problem
            raise OutputError(f"the program reading the results closed the pipe after {written} complete lines",
                              path="stdout" if str(path) == "-" else path,
                              hint="the results stop here (as expected after `| head`)") from exc
        tmp = getattr(sink, "_tmp", None)
        if sink is not None:
            sink.keep_partial = sink.broken = True
        earlier = f", and the earlier {Path(path).name} is left as it was" if Path(path).exists() else ""
        where = (f"the {written} complete lines are in {tmp}{earlier}" if tmp is not None else "the lines before are intact")
        raise OutputError(f"cannot write results ({exc.strerror or exc}) after {written} complete lines",
                          path=path, hint=f"free disk space or choose another output; {where}") from exc


def _close_quietly(fh, own: bool) -> None:
    """Close our file; a flush that fails again (disk still full) must not hide the first error."""
    if own and not fh.closed:
        with contextlib.suppress(OSError):
            fh.close()


class JsonlSink(Sink):
    """One JSON object per line (Prediction.to_record), flushed after each line. "-" is stdout."""

    def __init__(self, path: str | Path, fsync: bool = False, atomic: bool = False, earlier: bool = False) -> None:
        self.path = path
        self.fh, self._own, self._tmp = _open_text(path, atomic, earlier)
        self.keep_partial = False     # set for an interrupted batch: close leaves the lines in <name>.partial
        self.broken = False           # a write failed (disk full): the file ends at its last complete line
        self.fsync = fsync       # also survive power loss (slower: one disk sync per frame)
        self.count = 0

    def write(self, pred, frame=None, overlay=None) -> None:
        self.write_record(pred.to_record())

    def write_error(self, source: str, message: str, frame: int | None = None, *, model_sha256: str = "",
                    engine: str = "") -> None:
        self.write_record({"source": source, **({"frame": frame} if frame is not None else {}), "error": message,
                           "model_sha256": model_sha256, "engine": engine})

    def write_record(self, record: dict) -> None:
        """Any JSON-safe dict."""
        with _output_errors(self.path, self.count, self):
            self.fh.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
            self.fh.flush()
            if self.fsync and self._own:
                os.fsync(self.fh.fileno())
        self.count += 1

    def close(self) -> None:
        _finish(self.fh, self._own, self._tmp, self.path, self.keep_partial, self.broken)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value) -> str:
    """A text cell for a spreadsheet: one that starts like a formula (= + - @, tab, CR) gets a leading
    apostrophe, so Excel/LibreOffice show it as text instead of running it (a file named `=HYPERLINK(...)`)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class CsvSink(Sink):
    """source, frame, time_s, label, class_index, p_<class>..., margin, uncertain, crop box, fov box, crop method,
    views, Doppler fraction, frozen, smoothed, model sha256, engine (backend), latencies (ms), state, error;
    flushed per row. A `no_image` or `error` row has empty label and probability cells and its reason;
    a stage that did not run has an empty latency cell (as JSONL leaves it out), never 0.000."""

    def __init__(self, path: str | Path, class_names: list[str], atomic: bool = False, earlier: bool = False) -> None:
        self.path = path
        self.fh, self._own, self._tmp = _open_text(path, atomic, earlier)
        self.keep_partial = False     # set for an interrupted batch: close leaves the lines in <name>.partial
        self.broken = False           # a write failed (disk full): the file ends at its last complete line
        self.class_names = list(class_names)
        self.stages = [*STAGES, "total"]
        self.columns = (["source", "frame", "time_s", "label", "class_index", *[f"p_{c}" for c in self.class_names], "margin",
                         "uncertain", "crop_x", "crop_y", "crop_w", "crop_h", "fov_x", "fov_y", "fov_w", "fov_h",
                         "crop_method", "views", "doppler_fraction", "frozen", "smoothed", "model_sha256", "engine",
                         *[f"ms_{s}" for s in self.stages], "state", "error"])
        self.writer = csv.writer(self.fh)
        self.count = 0
        try:
            with _output_errors(self.path, self.count, self):
                self.writer.writerow(self.columns)
                self.fh.flush()
        except OutputError:
            _close_quietly(self.fh, self._own)
            raise

    def write(self, pred, frame=None, overlay=None) -> None:
        with _output_errors(self.path, self.count, self):
            self.writer.writerow([
                csv_text(pred.source), pred.frame_index, "" if pred.time_s is None else f"{pred.time_s:.6f}",
                csv_text(pred.label),
                "" if pred.class_index is None else pred.class_index,
                *[f"{pred.probs[c]:.6f}" if pred.has_label else "" for c in self.class_names],
                "" if pred.margin is None else f"{pred.margin:.6f}", "" if pred.uncertain is None else int(pred.uncertain),
                *pred.crop_box, *pred.fov_box, csv_text(pred.crop_method), pred.views, f"{pred.doppler_fraction:.4f}",
                int(pred.frozen), int(pred.smoothed), pred.model_sha256, csv_text(pred.engine),
                *[f"{pred.latency_ms[s]:.3f}" if s in pred.latency_ms else "" for s in self.stages],   # empty: did not run
                pred.state, csv_text(pred.reason),
            ])
            self.fh.flush()
        self.count += 1

    def write_error(self, source: str, message: str, frame: int | None = None, *, model_sha256: str = "",
                    engine: str = "") -> None:
        row = [""] * len(self.columns)
        row[0], row[-2], row[-1] = csv_text(source), "error", csv_text(message)
        row[self.columns.index("model_sha256")], row[self.columns.index("engine")] = model_sha256, csv_text(engine)
        if frame is not None:
            row[1] = frame
        with _output_errors(self.path, self.count, self):
            self.writer.writerow(row)
            self.fh.flush()

    def close(self) -> None:
        _finish(self.fh, self._own, self._tmp, self.path, self.keep_partial, self.broken)


def results_sink(path: str | Path, fmt: str, class_names: list[str], atomic: bool = False,
                 earlier: bool = False) -> Sink:
    """The results file of `usedge infer --out`: "jsonl" or "csv". atomic: written as `<name>.partial`
    and renamed at close (a batch of files: an earlier results file stays whole until the run ends; with
    `keep_partial` set, an interrupted batch, it is not renamed). A `<name>.partial` that a killed run left
    is kept as `<stem>.unfinished<suffix>` first. earlier (a stream, written in place from its start): an
    earlier run's file at `path` is kept as `<stem>.earlier<suffix>`."""
    if fmt == "jsonl":
        return JsonlSink(path, atomic=atomic, earlier=earlier)
    return CsvSink(path, class_names, atomic=atomic, earlier=earlier)


def _pyav():
    """PyAV (H.264 through its bundled libx264), or None when it is not installed."""
    try:
        import av
    except ImportError:
        return None
    return av


def fit_into(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A BGR image placed in the middle of a black (w, h) = size canvas: at its own size when it fits (its
    overlay text keeps its drawn size), else scaled down to fit with its aspect ratio kept (never stretched)."""
    W, H = size
    h, w = image.shape[:2]
    if w > W or h > H:
        s = min(W / w, H / h)
        w, h = max(1, min(W, round(w * s))), max(1, min(H, round(h * s)))
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((H, W, 3), np.uint8)
    x, y = (W - w) // 2, (H - h) // 2
    canvas[y:y + h, x:x + w] = image
    return canvas


class VideoRecorderSink(Sink):
    """The annotated frames as a video at `fps`: H.264 (yuv420p, faststart) in .mp4, which browsers
    play; MJPG in .avi.

    Both go through PyAV (the .mp4 through its bundled libx264). Without PyAV they fall back to
    OpenCV: an .mp4 as mp4v (MPEG-4 Part 2, which browsers do not play; one line on stderr says so),
    an .avi as MJPG that a crash leaves empty (OpenCV buffers it). Odd frame sides
    are padded by one edge pixel (yuv420p needs even sides); a frame of another size (a reconnected
    source, a scanner preset) is fitted into the first one by `fit_into`: centred at its own size when it
    fits, else scaled down with its aspect ratio kept, on black. Written to a hidden `.<name>.partial<suffix>` beside the
    target and renamed on close, so `out.mp4` is either complete or absent.

    A crash must not lose the recording: the partial .mp4 is a fragmented MP4 (a keyframe and a
    fragment about every second, flushed per frame), which plays up to its last fragment if the
    process dies (killed, power cut); the partial .avi is flushed per frame (an AVI without its
    closing index plays in FFmpeg-based players and OpenCV). A clean close remuxes it into an ordinary MP4 with its index
    first (faststart), which browsers seek in and show the duration of; if that fails (disk full),
    the fragmented file becomes `out.mp4`. A partial file that an earlier run left behind is kept
    as `<name>.unfinished<suffix>` (one line says so), never overwritten.
    """

    needs_overlay = True
    SUFFIXES = (".mp4", ".avi")

    def __init__(self, path: str | Path, fps: float | Callable[[], float] = 30.0) -> None:
        self.path = Path(path)
        # a callable is asked at the first frame: a video's rate is known only once its reader is open
        self._fps = fps
        self.fps = 30.0
        suffix = self.path.suffix.lower()
        if suffix not in self.SUFFIXES:
            raise OutputError(f"cannot record a {suffix or 'suffix-less'} video", path=self.path,
                              hint="name it .mp4 (H.264, plays in browsers) or .avi (MJPG)")
        if self.path.is_dir():
            raise OutputError("is a folder, not a video file", path=self.path, hint="give --record a file name, e.g. out.mp4")
        self.tmp = recording_partial(self.path)
        self.av = _pyav()
        self.codec = ("h264" if suffix == ".mp4" else "mjpeg") if self.av else ("mp4v" if suffix == ".mp4" else "MJPG")
        if suffix == ".mp4" and self.av is None:
            print(f"usedge: PyAV is not installed: {self.path.name} is written as mp4v, which browsers do not play "
                  "(pip install av)", file=sys.stderr, flush=True)
        self.writer = None        # cv2.VideoWriter, or (container, stream) for PyAV
        self.size = None          # (w, h) of the first frame, even
        self.count = 0
        self.failed = False       # a write failed: the partial file is left where the error says
        self._hold = None         # the partial file, open and locked while we write it: a second run is refused
        if self.tmp.exists():
            _refuse_if_in_use(self.tmp, self.path, "recording")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write here ({exc.strerror})", path=self.path, hint="choose a writable folder") from exc

    def _keep_unfinished(self) -> None:
        keep_unfinished(self.tmp, self.path, "recording", "it plays up to where that run stopped")

    def _open(self, w: int, h: int) -> None:
        rate = self._fps() if callable(self._fps) else self._fps
        self.fps = float(rate) if rate and math.isfinite(rate) and rate > 0 else 30.0
        self.size = (w + w % 2, h + h % 2)
        if self.tmp.exists():       # a run started since ours was set up
            _refuse_if_in_use(self.tmp, self.path, "recording")
        self._keep_unfinished()
        self._hold_partial()
        if self.av is None:
            fourcc = cv2.VideoWriter_fourcc(*self.codec)
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                self._drop_partial()
                raise OutputError("OpenCV cannot write this video", path=self.path, hint="use a .mp4 or .avi name")
            return
        from fractions import Fraction

        mp4 = self.codec == "h264"
        # flushed per packet, and an .mp4 fragmented: what is on disk plays if the process dies (see the class)
        options = {"flush_packets": "1"} | ({"movflags": "+frag_keyframe+empty_moov+default_base_moof"} if mp4 else {})
        try:
            container = self.av.open(str(self.tmp), mode="w", format="mp4" if mp4 else "avi", options=options)
        except (OSError, self.av.FFmpegError) as exc:
            self._drop_partial()
            raise OutputError(f"cannot write the video ({exc})", path=self.path,
                              hint="choose a writable folder") from exc
        stream = container.add_stream("libx264" if mp4 else "mjpeg", rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = self.size
        if mp4:
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "20", "preset": "veryfast", "g": str(max(1, round(self.fps)))}  # a keyframe a second
        else:       # JPEG quality about OpenCV's MJPG default (95)
            stream.pix_fmt, stream.options = "yuvj420p", {"qmin": "1", "qmax": "3"}
        self.writer = (container, stream)

    def _hold_partial(self) -> None:
        """Create the partial file and lock it while this run writes it (the encoder opens it again, the
        same file, and writes it from its start)."""
        with contextlib.suppress(OSError):
            self._hold = open(self.tmp, "ab")
            _lock(self._hold)

    def _drop_partial(self) -> None:
        """The writer could not open: remove the empty partial file this run created (no frame in it)."""
        self._release()
        with contextlib.suppress(OSError):
            if self.tmp.stat().st_size == 0:
                self.tmp.unlink()

    def _release(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            with contextlib.suppress(OSError):
                hold.close()

    @contextlib.contextmanager
    def _errors(self):
        """An encoder or disk failure -> one-line OutputError (the partial file is removed on close)."""
        try:
            yield
        except (OSError, self.av.FFmpegError) as exc:
            self.failed = True
            where = ("choose a writable folder" if getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM)
                     else "free disk space or choose another output")
            raise OutputError(f"cannot write the video ({exc}) after {self.count} frames", path=self.path,
                              hint=f"{where}; the frames written so far are in {self.tmp}") from exc

    def write(self, pred, frame=None, overlay=None) -> None:
        image = overlay if overlay is not None else frame
        if image is None:
            return
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        h, w = image.shape[:2]
        if self.writer is None:
            self._open(w, h)
        if (w + w % 2, h + h % 2) != self.size:
            image = fit_into(image, self.size)
        elif (w, h) != self.size:
            image = cv2.copyMakeBorder(image, 0, self.size[1] - h, 0, self.size[0] - w, cv2.BORDER_REPLICATE)
        if self.av is None:
            self.writer.write(image)
        else:
            container, stream = self.writer
            vf = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            with self._errors():
                for packet in stream.encode(vf):
                    container.mux(packet)
        self.count += 1

    def close(self) -> None:
        try:
            self._close()
        finally:
            self._release()

    def _close(self) -> None:
        if self.writer is None:     # never opened (no frame came; an earlier run's partial file is not ours to
            return                  # remove), or closed after its write failed: the partial file stays
        writer, self.writer = self.writer, None
        if self.av is None:
            writer.release()
        else:
            container, stream = writer
            with self._errors():
                try:
                    if not self.failed:
                        for packet in stream.encode():      # flush the encoder's delayed frames
                            container.mux(packet)
                finally:
                    container.close()
        if self.failed:         # the partial file stays where the write error said (it plays up to there)
            return
        if self.count:
            if self.codec == "h264":
                self._faststart()
            try:
                os.replace(self.tmp, self.path)
            except OSError as exc:       # e.g. a folder created at that name meanwhile: the recording stays
                raise OutputError(f"cannot put the recording in place ({exc.strerror})", path=self.path,
                                  hint=f"the {self.count} frames recorded are in {self.tmp}") from exc
        with contextlib.suppress(OSError):
            self.tmp.unlink()

    def _faststart(self) -> None:
        """Remux the fragmented partial file into an ordinary MP4 with its index first, in place of it
        (packets copied, nothing re-encoded). On failure the fragmented file stays, and says so."""
        out = self.tmp.with_name(f"{self.tmp.stem}.faststart{self.tmp.suffix}")
        try:
            with self.av.open(str(self.tmp)) as src, \
                    self.av.open(str(out), mode="w", format="mp4", options={"movflags": "+faststart"}) as dst:
                video = src.streams.video[0]
                copy = (dst.add_stream_from_template(video) if hasattr(dst, "add_stream_from_template")
                        else dst.add_stream(template=video))          # PyAV < 14
                for packet in src.demux(video):
                    if packet.dts is None:          # the demuxer's end-of-stream marker
                        continue
                    packet.stream = copy
                    dst.mux(packet)
            os.replace(out, self.tmp)
        except (OSError, self.av.FFmpegError) as exc:
            print(f"usedge: {self.path.name}: kept as a fragmented MP4, which plays but may not seek in a browser "
                  f"(could not rewrite it with its index first: {exc})", file=sys.stderr, flush=True)
        finally:
            with contextlib.suppress(OSError):
                out.unlink()


def write_png(path: Path, image: np.ndarray) -> None:
    """Encode and write one PNG atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OutputError("cannot encode PNG", path=path, hint="report this as a bug")
    write_bytes_atomic(path, buf.tobytes())


OUTPUT_MARK = ".usedge-output"     # in a folder usedge writes PNGs into: a later run may replace them


def claim_output_folder(folder: str | Path, option: str, *, ours: tuple[str, ...] = ()) -> Path:
    """Make `folder` ready for PNGs named after their inputs, or one-line OutputError: it is a file, it
    cannot be created, or it already holds images, DICOM or videos that no usedge run wrote there (no
    OUTPUT_MARK, nor any of `ours`, e.g. an older `usedge crop`'s crops.jsonl), which outputs named
    after inputs could replace. Then marks it, so that the next run into it may replace our own PNGs."""
    from usedge.fileio import write_text_atomic

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} is a file, not a folder", path=folder, hint=f"give {option} a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not any((folder / name).is_file() for name in (OUTPUT_MARK, *ours)):
            theirs = sorted(e.name for e in os.scandir(folder)
                            if e.is_file() and Path(e.name).suffix.lower() in INPUT_SUFFIXES)
            if theirs:
                raise OutputError(f"{option} already holds {len(theirs)} images or videos that usedge did not "
                                  f"write (e.g. {theirs[0]}); outputs named after inputs could replace them",
                                  path=folder, hint=f"give {option} a new or empty folder")
        write_text_atomic(folder / OUTPUT_MARK, "PNGs written by usedge; a later usedge run may replace them.\n")
    except OSError as exc:
        raise OutputError(f"cannot write into {option} ({exc.strerror or exc})", path=folder,
                          hint=f"give {option} a writable folder") from exc
    return folder


class OutputNames(set):
    """Unique output file names from input names: `stem`, `stem_f0003` (frame), `stem_v1` (view), and
    `_2`, `_3`... when two inputs in different folders share a name."""

    def __call__(self, src: str | Path, frame: int | None = None, view: int | None = None) -> str:
        src = Path(src)
        # a known suffix goes; any other stays: a DICOM named by its UID (1.2.840...1234.7) keeps its last part
        stem = src.stem if src.suffix.lower() in INPUT_SUFFIXES else src.name
        base = stem + (f"_f{frame:04d}" if frame is not None else "") + (f"_v{view}" if view is not None else "")
        name = next(n for n in itertools.chain([base], (f"{base}_{k}" for k in itertools.count(2))) if n not in self)
        self.add(name)
        return name


class OverlayFolderSink(Sink):
    """One annotated PNG per result in a folder: `<stem>.png` for an image, `<stem>_f0003.png` for a frame
    of a DICOM, a video or a multi-page TIFF (`_2`, `_3`... for inputs of one name in other folders), and
    at close `overlays.jsonl`: one line per PNG with its source file and frame (which scan each PNG is)."""

    needs_overlay = True
    INDEX = "overlays.jsonl"

    def __init__(self, folder: str | Path) -> None:
        self.folder = claim_output_folder(folder, "--overlay", ours=(self.INDEX,))
        self.names = OutputNames()
        self._pages: dict[str, int] = {}     # pages of each TIFF written so far
        self._index: list[dict] = []

    def _multi(self, source: str) -> bool:
        """Named by frame: a DICOM or video, or a TIFF of several pages."""
        suffix = Path(source).suffix.lower()
        if suffix not in STILL_SUFFIXES:
            return True
        if suffix not in (".tif", ".tiff"):
            return False
        if source not in self._pages:
            from usedge.runtime.formats import StillPages, read_bytes

            try:
                self._pages[source] = len(StillPages(read_bytes(source), source))
            except InputError:
                self._pages[source] = 1
        return self._pages[source] > 1

    def write(self, pred, frame=None, overlay=None) -> None:
        name = short_name(self.names(pred.source, pred.frame_index if self._multi(pred.source) else None))
        try:
            write_png(self.folder / f"{name}.png", overlay)
        except OSError as exc:
            raise OutputError(f"cannot write an overlay ({exc.strerror or exc}) after {len(self._index)} overlays",
                              path=self.folder / f"{name}.png",
                              hint="free disk space or choose another --overlay folder; "
                                   + (f"{self.INDEX} lists those written" if self._index else "no overlay was written")
                              ) from exc
        self._index.append({"overlay": f"{name}.png", "source": pred.source, "frame": pred.frame_index})

    def close(self) -> None:
        from usedge.fileio import write_text_atomic

        index = [r for r in self._index if (self.folder / r["overlay"]).is_file()]   # the folder may have gone
        if index:
            try:
                write_text_atomic(self.folder / self.INDEX, "".join(json.dumps(r) + "\n" for r in index))
            except OSError as exc:
                raise OutputError(f"cannot write {self.INDEX} ({exc.strerror or exc})", path=self.folder,
                                  hint="free disk space; the overlays written are in the folder") from exc


MAX_NAME_BYTES = 200   # an output name (before its suffix): file systems allow 255 bytes, with room for a temp prefix


def short_name(name: str) -> str:
    """An output file name (no suffix) within MAX_NAME_BYTES: a longer one (an input named near the file
    system's 255-byte limit) is cut and given 8 hex digits of its hash, so two cut names still differ."""
    raw = os.fsencode(name)
    if len(raw) <= MAX_NAME_BYTES:
        return name
    import hashlib

    digest = hashlib.sha256(raw).hexdigest()[:8]
    return os.fsdecode(raw[:MAX_NAME_BYTES - 9]).encode("utf-8", "ignore").decode("utf-8", "ignore") + "_" + digest


def display_available() -> tuple[bool, str]:
    """Whether cv2.imshow can open a window here (a GUI OpenCV build and a display)."""
    info = cv2.getBuildInformation()
    gui = ""
    for line in info.splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
    if not gui or gui.upper() == "NONE":
        return False, "this OpenCV build has no GUI (opencv-python-headless): pip install opencv-python"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    return True, f"OpenCV GUI {gui}"


class ShowSink(Sink):
    """A window with the annotated frames; closing it or pressing q/Esc sets `quit`."""

    needs_overlay = True

    def __init__(self, title: str = "usedge") -> None:
        ok, why = display_available()
        if not ok:
            raise StreamError(f"--show cannot open a window: {why}",
                              hint="drop --show, or use --record out.mp4 to watch afterwards")
        self.title = title

    def write(self, pred, frame=None, overlay=None) -> None:
        image = overlay if overlay is not None else frame
        if image is None:
            return
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self.quit = True

    def close(self) -> None:
        with contextlib.suppress(cv2.error):
            cv2.destroyWindow(self.title)


class CallbackSink(Sink):
    """Calls fn(pred, frame, overlay) in the loop thread (keep it fast: it delays the next frame).

    A subscriber that raises does not stop the loop (the scanner keeps being classified for the
    other sinks); its failures are counted in `errors` with the last one in `last_error`.
    """

    def __init__(self, fn: Callable, needs_overlay: bool = False) -> None:
        self.fn = fn
        self.needs_overlay = needs_overlay
        self.errors = 0
        self.last_error = ""

    def write(self, pred, frame=None, overlay=None) -> None:
        try:
            self.fn(pred, frame, overlay)
        except Exception as exc:  # noqa: BLE001 - a subscriber's bug must not end the live loop
            self.errors += 1
            self.last_error = f"{getattr(self.fn, '__qualname__', 'subscriber')}: {type(exc).__name__}: {exc}"[:300]
