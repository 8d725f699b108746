"""Where predictions go (the pipeline's last stage): JSONL (flushed per line), CSV, overlay PNGs in a
folder, an annotated video, a window, a callback.

Every sink has `write(pred, frame, overlay)`, `write_error(source, message)` and `close()`;
`needs_overlay` asks the pipeline to draw the annotated frame (drawn once per frame, shared by every
sink that wants it); `quit` set by a sink asks the live loop to stop. Streams (JSONL, CSV)
are appended line by line so a crash loses at most the frame in flight; the video is written to a
temporary file and renamed on close, so `out.mp4` is either complete or absent.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from usedge.errors import OutputError, StreamError
from usedge.fileio import write_bytes_atomic
from usedge.runtime.classifier import STAGES, Prediction
from usedge.runtime.formats import STILL_SUFFIXES


class Sink:
    needs_overlay = False
    quit = False

    def write(self, pred: Prediction, frame: np.ndarray | None = None, overlay: np.ndarray | None = None) -> None:
        raise NotImplementedError

    def write_error(self, source: str, message: str) -> None:
        """A file or frame that could not be classified (default: not recorded)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_text(path: str | Path):
    if str(path) == "-":
        return sys.stdout, False
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", newline="", encoding="utf-8"), True
    except OSError as exc:
        raise OutputError(f"cannot write here ({exc.strerror})", path=path, hint="choose a writable file") from exc


@contextlib.contextmanager
def _output_errors(path, written: int):
    """OSError while writing (disk full, device gone) -> one-line OutputError; lines before it stay intact."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write results ({exc.strerror or exc}) after {written} complete lines",
                          path=path, hint="free disk space or choose another output; the lines before are intact"
                          ) from exc


def _close_quietly(fh, own: bool) -> None:
    """Close our file; a flush that fails again (disk still full) must not hide the first error."""
    if own and not fh.closed:
        with contextlib.suppress(OSError):
            fh.close()


class JsonlSink(Sink):
    """One JSON object per line (Prediction.to_record), flushed after each line. "-" is stdout."""

    def __init__(self, path: str | Path, fsync: bool = False) -> None:
        self.path = path
        self.fh, self._own = _open_text(path)
        self.fsync = fsync       # also survive power loss (slower: one disk sync per frame)
        self.count = 0

    def write(self, pred, frame=None, overlay=None) -> None:
        self.write_record(pred.to_record())

    def write_error(self, source: str, message: str) -> None:
        self.write_record({"source": source, "error": message})

    def write_record(self, record: dict) -> None:
        """Any JSON-safe dict."""
        with _output_errors(self.path, self.count):
            self.fh.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
            self.fh.flush()
            if self.fsync and self._own:
                os.fsync(self.fh.fileno())
        self.count += 1

    def close(self) -> None:
        _close_quietly(self.fh, self._own)


class CsvSink(Sink):
    """source, frame, label, p_<class>..., crop box, fov box, model sha256, latencies (ms), state, error;
    flushed per row. A `no_image` or `error` row has empty label and probability cells and its reason."""

    def __init__(self, path: str | Path, class_names: list[str]) -> None:
        self.path = path
        self.fh, self._own = _open_text(path)
        self.class_names = list(class_names)
        self.stages = [*STAGES, "total"]
        self.columns = (["source", "frame", "label", *[f"p_{c}" for c in self.class_names],
                         "crop_x", "crop_y", "crop_w", "crop_h", "fov_x", "fov_y", "fov_w", "fov_h",
                         "crop_method", "frozen", "model_sha256", *[f"ms_{s}" for s in self.stages], "state",
                         "error"])
        self.writer = csv.writer(self.fh)
        self.writer.writerow(self.columns)
        self.fh.flush()
        self.count = 0

    def write(self, pred, frame=None, overlay=None) -> None:
        with _output_errors(self.path, self.count):
            self.writer.writerow([
                pred.source, pred.frame_index, pred.label or "",
                *[f"{pred.probs[c]:.6f}" if pred.has_label else "" for c in self.class_names],
                *pred.crop_box, *pred.fov_box, pred.crop_method, int(pred.frozen), pred.model_sha256,
                *[f"{pred.latency_ms.get(s, 0.0):.3f}" for s in self.stages], pred.state, pred.reason,
            ])
            self.fh.flush()
        self.count += 1

    def write_error(self, source: str, message: str) -> None:
        row = [""] * len(self.columns)
        row[0], row[-2], row[-1] = source, "error", message
        with _output_errors(self.path, self.count):
            self.writer.writerow(row)
            self.fh.flush()

    def close(self) -> None:
        _close_quietly(self.fh, self._own)


def results_sink(path: str | Path, fmt: str, class_names: list[str]) -> Sink:
    """The results file of `usedge infer --out`: "jsonl" or "csv"."""
    return JsonlSink(path) if fmt == "jsonl" else CsvSink(path, class_names)


class VideoRecorderSink(Sink):
    """The annotated frames as a video (mp4v in .mp4, MJPG in .avi) at `fps`."""

    needs_overlay = True

    def __init__(self, path: str | Path, fps: float = 30.0) -> None:
        self.path = Path(path)
        self.fps = fps
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.writer = None
        self.count = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write here ({exc.strerror})", path=self.path, hint="choose a writable folder") from exc

    def write(self, pred, frame=None, overlay=None) -> None:
        image = overlay if overlay is not None else frame
        if image is None:
            return
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            h, w = image.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, float(self.fps), (w, h))
            if not self.writer.isOpened():
                raise OutputError("OpenCV cannot write this video", path=self.path, hint="use a .mp4 or .avi name")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        self.writer.write(image)
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            if self.count:
                os.replace(self.tmp, self.path)
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def write_png(path: Path, image: np.ndarray) -> None:
    """Encode and write one PNG atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OutputError("cannot encode PNG", path=path, hint="report this as a bug")
    write_bytes_atomic(path, buf.tobytes())


class OutputNames(set):
    """Unique output file names from input names: `stem`, `stem_f0003` (frame), `stem_v1` (view), and
    `_2`, `_3`... when two inputs in different folders share a name."""

    def __call__(self, src: str | Path, frame: int | None = None, view: int | None = None) -> str:
        base = Path(src).stem + (f"_f{frame:04d}" if frame is not None else "") + (f"_v{view}" if view is not None else "")
        name = next(n for n in itertools.chain([base], (f"{base}_{k}" for k in itertools.count(2))) if n not in self)
        self.add(name)
        return name


class OverlayFolderSink(Sink):
    """One annotated PNG per result in a folder: `<stem>.png` for an image, `<stem>_f0003.png` for a frame
    of a DICOM or video."""

    needs_overlay = True

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.names = OutputNames()

    def write(self, pred, frame=None, overlay=None) -> None:
        multi = Path(pred.source).suffix.lower() not in STILL_SUFFIXES   # DICOM, video: name by frame
        name = self.names(pred.source, pred.frame_index if multi else None)
        write_png(self.folder / f"{name}.png", overlay)


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
