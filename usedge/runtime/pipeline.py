"""The ONE frame pipeline, built once and used by `usedge infer` (files and --stream), `usedge serve`
(live view and uploads) and `usedge bench`:

    source -> freeze -> prepare (crop) -> quality -> normalise -> model -> post (smoothing) -> sinks

`FramePipeline.run_frame` is that whole chain for one frame; read it first. docs/pipeline.md draws
the stages and where each lives. The live loop around it (capture thread, latest-frame slot,
summary) is `usedge.runtime.stream`; the file loop is `run_files` below.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import numbers
import os
import time
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from usedge.errors import ConfigError, NoImage, OutputError, UsedgeError
from usedge.runtime.classifier import Classifier, Prediction
from usedge.runtime.overlay import draw_prediction
from usedge.runtime.crop import FrameCropper
from usedge.runtime.doppler import COLOUR_NOTE, MOSTLY_COLOUR
from usedge.runtime.interrupts import whole_frame
from usedge.runtime.quality import no_image_reason
from usedge.runtime.sinks import Sink
from usedge.runtime.sources import iter_file_frames

FREEZE_SAMPLES = 240         # frames are compared on about this many columns (every n-th pixel, no averaging)
FPS_GAP_S = 2.0              # a pause between results longer than this (a stalled source) restarts the rate
MAX_NOTES = 20               # resolution-change lines a pipeline keeps for its summary
FREEZE_MAD = 0.05            # mean absolute difference (8-bit levels) below which two frames are "the same"

#: uint8 model image (the crop) -> why it holds no usable image (blank screen, probe in air), or None
QualityGate = Callable[[np.ndarray], "str | None"]


class FreezeDetector:
    """The scanner's freeze button: the same image again, byte for byte up to codec rounding.

    The reference is the last frame that was classified (`keep`), never a blank or failed frame, so
    a frozen repeat only ever repeats a real answer.

    Compares every n-th pixel (about FREEZE_SAMPLES columns; one channel of a colour frame) with the
    reference, without averaging: a live image changes there by its fresh electronic noise and
    speckle even with the probe held still (>= 0.2 levels on the synthetic scanner video), a frozen
    one through a digital path (HDMI/SDI grabber, file, DICOM) by ~0.001. A frozen image through a
    noisy analog grabber is not detected, which costs only an inference: the safe side.
    """

    def __init__(self, threshold: float = FREEZE_MAD) -> None:
        self.threshold = threshold
        self._prev: np.ndarray | None = None
        self._shape: tuple | None = None
        self._seen: tuple[np.ndarray, np.ndarray] | None = None   # (frame, its sample) of the last is_frozen
        self.last_mad = float("inf")

    def _sample(self, image: np.ndarray) -> np.ndarray:
        step = max(1, image.shape[1] // FREEZE_SAMPLES)
        sub = image[::step, ::step]
        if sub.ndim == 3:
            sub = sub[:, :, min(1, sub.shape[2] - 1)]   # green: closest to gray for B-mode, no conversion
        return np.ascontiguousarray(sub)

    def is_frozen(self, image: np.ndarray) -> bool:
        """Whether `image` is the reference frame again (the last one passed to `keep`)."""
        sample = self._sample(image)
        self._seen = (image, sample)
        if self._prev is None or self._shape != image.shape or self._prev.dtype != sample.dtype:
            self.last_mad = float("inf")
            return False
        self.last_mad = float(cv2.norm(sample, self._prev, cv2.NORM_L1)) / sample.size
        return self.last_mad < self.threshold

    def keep(self, image: np.ndarray) -> None:
        """Make `image` the reference: only a frame that was classified may be repeated as frozen.
        Right after `is_frozen(image)` (the pipeline's order) its sample is reused, not taken again."""
        seen, self._seen = self._seen, None
        self._prev = seen[1] if seen is not None and seen[0] is image else self._sample(image)
        self._shape = image.shape

    def reset(self) -> None:
        """No reference: the next frame is classified whatever it shows."""
        self._prev = None
        self._seen = None


class Smoother:
    """Moving average of the last `window` class-probability vectors (frozen frames excluded)."""

    def __init__(self, window: int = 5) -> None:
        if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
            raise ConfigError(f"the smoothing window must be a whole number of results >= 1, got {window!r}",
                              hint="e.g. smooth=5; None (or 0, in FramePipeline) turns smoothing off")
        self.window = int(window)
        self._hist: collections.deque = collections.deque(maxlen=self.window)

    def __call__(self, probs: dict[str, float]) -> dict[str, float]:
        self._hist.append(np.array(list(probs.values()), np.float64))
        mean = np.mean(self._hist, axis=0)
        return {k: float(v) for k, v in zip(probs, mean)}

    def smooth(self, pred: Prediction) -> Prediction:
        """A new Prediction with the averaged probabilities and the label they give (pred is unchanged)."""
        probs = self(pred.probs)
        k = int(np.argmax(list(probs.values())))
        # smoothed: averaged with earlier results (the first after a reset is the frame's own answer)
        return dataclasses.replace(pred, probs=probs, smoothed=len(self._hist) > 1, class_index=k,
                                   label=list(probs)[k], latency_ms=dict(pred.latency_ms))

    def reset(self) -> None:
        self._hist.clear()


class FramePipeline:
    """One classifier with the stages around it and the sinks its results go to.

    stream: frames of one source: the crop layout is detected once and re-detected on change
        (FrameCropper, with the source's DICOM `regions`), and overlays show the result rate. A frame
        of another size than the one before is a new screen: the layout is detected afresh, the freeze
        reference dropped, `resolution_changes` counted, and a line "frame N: resolution changed
        WxH -> W2xH2; layout re-detected" passed to `on_event` (the first MAX_NOTES kept in `notes`).
    freeze: repeat the last result for a frozen screen, without inference.
    smooth: average the probabilities over this many results (None: off).
    cam: draw the class activation map in overlays when the model has it.
    quality: the `QualityGate` on each crop (default usedge.runtime.quality.no_image_reason, for
        streams, files and uploads alike); quality_gate=False turns it off (a blank frame is still refused).
        A frame without a usable image (that gate, or a blank frame) gives a `no_image` Prediction (no
        label, no probabilities); it resets freeze, smoothing and the crop layout.
    A model output that is not a probability distribution gives an `error` Prediction (no label), written
    to the sinks like any other result; it too resets freeze, smoothing and the crop layout.
    A sink that cannot write (OutputError: disk full, device gone) ends a file run. In a stream it is
    closed and left out, its one line kept in `failed_outputs` and passed to `on_event`, and the stream
    goes on with the other outputs; when none is left (bookkeeping sinks do not count) the OutputError
    ends the stream.
    """

    def __init__(self, classifier: Classifier, sinks: Iterable[Sink] = (), *, stream: bool = False,
                 regions: list | None = None, freeze: bool = False, freeze_threshold: float = FREEZE_MAD,
                 smooth: int | None = None, cam: bool = True, quality: QualityGate | None = None,
                 quality_gate: bool = True, on_event: Callable[[str], None] | None = None) -> None:
        if isinstance(freeze_threshold, bool) or not (isinstance(freeze_threshold, numbers.Real)
                                                      and math.isfinite(freeze_threshold) and freeze_threshold >= 0):
            raise ConfigError(f"freeze_threshold must be a finite number >= 0, got {freeze_threshold!r}",
                              hint=f"the default is {FREEZE_MAD} (mean absolute difference, grey levels)")
        self.classifier = classifier
        self.sinks: list[Sink] = list(sinks)
        self.stream = stream
        self.cropper = FrameCropper(classifier.spec, regions=regions) if stream else None
        self.freeze = FreezeDetector(freeze_threshold) if freeze else None
        self.smoother = Smoother(smooth) if smooth else None
        self.cam = cam
        self.quality = (quality or no_image_reason) if quality_gate else None
        self.on_event = on_event
        self.failed_outputs: list[str] = []                      # stream: outputs dropped after a write failure
        self._colour_noted = False                               # stream: the mostly-colour line said once
        self._source: str | None = None                          # stream: the source of the frame before
        self.resolution_changes = 0                              # changes of frame size (stream)
        self.notes: list[str] = []                               # their lines, the first MAX_NOTES
        self._shape: tuple[int, int] | None = None
        self.last: Prediction | None = None                      # the newest result of the model
        self._result_times: collections.deque = collections.deque(maxlen=60)

    # -- the chain ------------------------------------------------------------------------------
    def run_frame(self, image: np.ndarray, *, index: int = 0, source: str = "", regions: list | None = None,
                  t_capture: float | None = None, time_s: float | None = None) -> Prediction:
        """The whole chain for one frame: freeze -> prepare -> quality -> model -> post -> sinks.

        t_capture: when the frame was captured (perf_counter s): adds the `wait` and
        `capture_to_result` stages. time_s: the frame's time in its file (Prediction.time_s).
        Raises UsedgeError for a frame that cannot be classified.
        """
        t_take = time.perf_counter()
        pred = self.process(image, index=index, source=source, regions=regions)
        pred.time_s = time_s
        t_done = time.perf_counter()
        if t_capture is not None:
            pred.latency_ms["wait"] = (t_take - t_capture) * 1e3
            pred.latency_ms["capture_to_result"] = (t_done - t_capture) * 1e3
        self._result_times.append(t_done)
        if self.stream and pred.doppler_fraction > MOSTLY_COLOUR and not self._colour_noted:
            self._colour_noted = True
            if self.on_event is not None:
                self.on_event(f"frame {index} is {COLOUR_NOTE} (said once)")
        self.emit(pred, image)
        return pred

    def process(self, image: np.ndarray, *, index: int = 0, source: str = "",
                regions: list | None = None) -> Prediction:
        """freeze -> prepare -> quality -> normalise -> model -> post: the Prediction, written nowhere."""
        t0 = time.perf_counter()
        if self.stream:
            new_source = self._source is not None and source != self._source
            if new_source:
                self.forget()          # a new file in a watched folder: not a frozen repeat, no smoothing across files
            self._source = source
            self._check_resolution(image, index, quiet=new_source)
        if self.freeze is not None and self.last is not None and self.freeze.is_frozen(image):
            return dataclasses.replace(self.last, frozen=True, state="frozen", frame_index=index,
                                       latency_ms={"total": (time.perf_counter() - t0) * 1e3})
        try:
            pred = self.classifier.predict(image, frame_index=index, source=source, regions=regions,
                                           cropper=self.cropper, quality=self.quality)
        except NoImage as exc:
            self.forget()
            spent = (time.perf_counter() - t0) * 1e3       # the crop stage (crop and gate) is what ran
            return Prediction.without_label("no_image", exc.message, model_sha256=self.classifier.model_sha256,
                                            frame_index=index, source=source, info=getattr(exc, "info", None),
                                            latency_ms={"crop": spent, "total": spent},
                                            engine=self.classifier.backend.name)
        except UsedgeError:
            self.forget()
            raise
        if not pred.has_label:         # the model gave no valid answer (NaN): nothing to repeat or average
            self.forget()
            return pred
        if self.smoother is not None:
            pred = self.smoother.smooth(pred)
        self.last = pred
        if self.freeze is not None:
            self.freeze.keep(image)
        return pred

    def _check_resolution(self, image: np.ndarray, index: int, quiet: bool = False) -> None:
        """A frame whose size differs from the one before: detect the layout afresh and say so. `quiet`:
        the frame opens another file (a watched folder), a new image whose size is its own: nothing to say."""
        shape = tuple(int(v) for v in np.shape(image)[:2])
        old, self._shape = self._shape, shape
        if old is None or old == shape or quiet:
            return
        self.forget()     # a new screen: no smoothing across it, layout and freeze detection afresh
        line = (f"frame {index}: resolution changed {old[1]}x{old[0]} -> {shape[1]}x{shape[0]}; "
                "layout re-detected")
        self.resolution_changes += 1
        if len(self.notes) < MAX_NOTES:
            self.notes.append(line)
        if self.on_event is not None:
            self.on_event(line)

    def forget(self) -> None:
        """After a frame without an answer: no frozen repeat of an older answer, smoothing starts again,
        and the crop layout is detected afresh on the next image (the probe may have moved)."""
        self.last = None
        if self.cropper is not None:
            self.cropper.reset()
        if self.freeze is not None:
            self.freeze.reset()
        if self.smoother is not None:
            self.smoother.reset()

    def emit(self, pred: Prediction, image: np.ndarray) -> None:
        """The sinks stage: the overlay is drawn once, only when a sink wants it, then every sink writes.
        A frame reaches every sink or none: Ctrl-C / SIGTERM under `interrupt_between_frames` waits
        until the last sink has written it."""
        sinks = list(self.sinks)
        overlay = self.draw(pred, image) if any(s.needs_overlay for s in sinks) else None
        with whole_frame():
            for sink in sinks:
                try:
                    sink.write(pred, image, overlay)
                except OutputError as exc:
                    self._output_failed(sink, exc)

    def write_error(self, source: str, message: str, frame: int | None = None) -> None:
        """A file, or a frame of it, that could not be classified: every sink records it its own way (all or none)."""
        with whole_frame():
            for sink in list(self.sinks):
                try:
                    sink.write_error(source, message, frame, model_sha256=self.classifier.model_sha256,
                                     engine=self.classifier.backend.name)
                except OutputError as exc:
                    self._output_failed(sink, exc)

    def _output_failed(self, sink: Sink, exc: OutputError) -> None:
        """A sink could not write. Files: the run ends (re-raised). A stream goes on without that output
        (closed, its line kept and reported) while another output is left; else the stream ends."""
        if not self.stream:
            raise exc
        if sink in self.sinks:
            self.sinks.remove(sink)
        try:
            sink.close()            # keeps what it can (a recording: the frames so far, named in exc)
        except OutputError:
            pass                    # the same disk failing again: the first line says it
        line = exc.one_line()
        self.failed_outputs.append(line)
        if not any(not s.bookkeeping for s in self.sinks):
            raise exc
        if self.on_event is not None:
            self.on_event(f"output stopped, classification goes on: {line}")

    def draw(self, pred: Prediction, image: np.ndarray) -> np.ndarray:
        """The frame with the prediction drawn on it (and the result rate, for a stream)."""
        return draw_prediction(image, pred, fps=self.fps() if self.stream else None, cam=self.cam)

    def fps(self, now: float | None = None) -> float:
        """Results per second over the last 60, up to `now` (default: this moment): when results stop
        (a stalled or unplugged source) it falls toward 0 instead of keeping the last rate; once they come
        again, only the results since the gap count (a gap of more than FPS_GAP_S)."""
        t = list(self._result_times)
        gaps = [i for i in range(1, len(t)) if t[i] - t[i - 1] > FPS_GAP_S]
        if gaps:
            t = t[gaps[-1]:]
        if len(t) < 2 or t[-1] <= t[0]:
            return 0.0
        now = time.perf_counter() if now is None else now
        return (len(t) - 1) / max(t[-1] - t[0], now - t[0])

    @property
    def quit(self) -> bool:
        """A sink asked to stop (its window was closed)."""
        return any(s.quit for s in self.sinks)

    @property
    def layout_detections(self) -> int:
        return int(self.cropper.detections) if self.cropper is not None else 0


@dataclasses.dataclass
class FileRun:
    """What `run_files` did."""

    files: int = 0
    frames: int = 0                    # frames with a result of the model (classified, or an invalid output)
    no_image: int = 0                  # frames without a usable image (quality gate): no label, not a failure
    failed: list[str] = dataclasses.field(default_factory=list)
    skipped: int = 0                   # inputs reported before the run (symlinked folders, FIFOs)
    done: int = 0                      # files finished (all of them unless interrupted)
    interrupted: bool = False          # Ctrl-C ended the run after `done` files
    mostly_colour: int = 0             # frames whose model input was more than MOSTLY_COLOUR filled as Doppler

    def line(self, out: str = "-") -> str:
        if self.interrupted:     # where the part went is the caller's line (<out>.partial, never `out`)
            return f"interrupted after {self.done} of {self.files} files ({self.frames} frames classified)"
        return (f"{self.files - len(self.failed)}/{self.files} files, {self.frames} frames classified"
                + (f", {self.no_image} no image" if self.no_image else "")
                + (f", {len(self.failed)} failed" if self.failed else "")
                + (f", {self.skipped} skipped" if self.skipped else "") + (f" -> {out}" if out != "-" else "")
                + (f"; {self.mostly_colour} frame(s) {COLOUR_NOTE}" if self.mostly_colour else ""))


def crop_note(pred: Prediction) -> str:
    """What a user should know about where a result's crop came from, or "": a dual view (one of the
    images classified) or no image region found (the whole frame classified)."""
    if pred.crop_method == "fallback":
        return "no ultrasound image region found: the whole frame was classified (check the crop: usedge crop --overlay)"
    if pred.views > 1:
        return (f"{pred.views} image regions (dual view): the largest was classified; usedge crop --views all "
                "writes each")
    return ""


def run_files(pipeline: FramePipeline, files: Sequence, *, allow_any_modality: bool = False,
              on_error: Callable[[str], None] = lambda line: None, on_no_image: Callable[[str], None] = lambda line: None,
              on_file: Callable[[], None] = lambda: None, on_note: Callable[[str], None] = lambda line: None) -> FileRun:
    """Every frame of every file (images, DICOM, videos; lazily) through `pipeline.run_frame`.

    A file that cannot be read or classified (or whose model output is not valid on a frame) is
    recorded in every sink and reported through `on_error` at once; an OutputError (a sink cannot
    write) ends the run. A frame without a usable image is a `no_image` result in the sinks (no
    label), counted, and reported once per file through `on_no_image`; it is not a failure. `on_note`:
    once per file whose crop found two image regions (a dual view: the largest is classified) or none
    (the whole frame is classified). `on_file` after each file. Ctrl-C ends the run between frames: `FileRun.interrupted` is set and `done`
    says how many files were finished.
    """
    if isinstance(files, (str, bytes, os.PathLike)):      # one file, not a sequence of its characters
        files = [files]
    files = [os.fsdecode(f) if isinstance(f, bytes) else f for f in files]    # a generator, bytes paths
    run = FileRun(files=len(files))
    try:
        for path in files:
            bad, empty, first_empty, seen, noted = "", 0, "", 0, False
            try:
                # lazily: a long video stays small
                for index, frame, regions, time_s in iter_file_frames(path, allow_any_modality=allow_any_modality):
                    pred = pipeline.run_frame(frame, index=index, source=str(path), regions=regions, time_s=time_s)
                    seen += 1
                    if pred.state == "no_image":
                        empty += 1
                        first_empty = first_empty or (f" frame {index}" if index else "") + f": {pred.reason}"
                        continue
                    run.frames += 1
                    run.mostly_colour += pred.doppler_fraction > MOSTLY_COLOUR
                    if not noted and (note := crop_note(pred)):
                        noted = True
                        on_note(f"{path}" + (f" frame {index}" if index else "") + f": {note}")
                    if pred.state == "error" and not bad:   # the sinks wrote it as an error result
                        bad = f"{path}" + (f" frame {index}" if index else "") + f": {pred.reason}"
            except OutputError:
                raise
            except UsedgeError as exc:
                if exc.path is None:   # a frame-level error (NaN pixels, blank frame): name the file
                    exc.path = str(path)
                bad = exc.one_line()
                pipeline.write_error(str(path), bad)
            if empty:
                run.no_image += empty
                on_no_image(f"{path}" + (f" ({empty} of {seen} frames)" if seen > 1 else "") + first_empty)
            if bad:
                run.failed.append(bad)
                on_error(bad)
            run.done += 1
            on_file()
    except KeyboardInterrupt:
        run.interrupted = True
    return run
