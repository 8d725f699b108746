"""Model artifact -> `Classifier.predict(frame) -> Prediction`: the stages crop, normalise, model, post.

Every stage is timed (milliseconds, `time.perf_counter`) and every Prediction carries the model's
sha256, so a JSONL line says exactly which bytes produced it. uint8 is kept through cropping and
resizing; the float32 model input is written into one reused buffer per thread. The chain around
it (quality, freeze, smoothing, sinks) is `usedge.runtime.pipeline`.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from usedge.errors import BackendUnavailable, ConfigError, InputError, ModelError, NoImage, UsedgeError
from usedge.fileio import sha256_file
from usedge.runtime.backends import CPU_BACKENDS, Backend, candidate_backends, create_backend
from usedge.runtime.backends.ort import is_torch_checkpoint
from usedge.runtime.backends.trial import choose_cpu_backend
from usedge.runtime.crop import CropInfo, prepare
from usedge.runtime.doppler import COLOUR_NOTE, MOSTLY_COLOUR
from usedge.runtime.model_info import ModelInfo, model_info_from_metadata
from usedge.runtime.preprocess import PreprocessSpec, normalise
from usedge.runtime.quality import no_image_reason, too_small_reason
from usedge.runtime.threads import check_threads, thread_budget

#: frame (H x W or H x W x C, any dtype) -> (uint8 size x size model image, where it came from)
Cropper = Callable[[np.ndarray], tuple[np.ndarray, CropInfo]]


#: what a Prediction is: `live` (the model's answer for this frame), `frozen` (the scanner's image is
#: frozen: the last live answer repeated, no inference), `no_image` (the frame shows no usable image:
#: usedge.runtime.quality; no label, no probabilities), `error` (the model gave no valid answer; `reason`)
STATES = ("live", "frozen", "no_image", "error")


@dataclass
class Prediction:
    """What the model says about one frame. Boxes are (x, y, w, h) in the original frame's pixels.

    Only `live` and `frozen` predictions have a label and probabilities; `no_image` and `error` have
    label None, class_index None, empty probs and a one-line `reason` (see STATES)."""

    label: str | None
    class_index: int | None
    probs: dict[str, float]
    crop_box: tuple[int, int, int, int]
    fov_box: tuple[int, int, int, int]
    latency_ms: dict[str, float]                 # per stage: crop, normalise, model, post, total (+ stream stages)
    model_sha256: str
    cam: np.ndarray | None = None                # low-res map of the predicted class (model's own grid), float32
    frame_index: int = 0
    source: str = ""
    crop_method: str = "none"
    frozen: bool = False                         # the scanner's image was frozen: result repeated, no inference
    smoothed: bool = False                       # probs are a temporal average
    state: str = "live"                          # one of STATES
    reason: str = ""                             # why there is no label (no_image, error)
    doppler_fraction: float = 0.0                # fraction of the model input filled as colour Doppler
    uncertain_margin: float | None = None        # the model card's: a top-2 margin below it is `uncertain`
    views: int = 1                               # image regions found on the frame (2: a dual view, the largest classified)
    time_s: float | None = None                  # the frame's time in its file (video timestamp, cine frame time)
    engine: str = ""                             # the backend that ran the model (ort-cpu, openvino, ...: what auto chose)

    @property
    def margin(self) -> float | None:
        """Top probability minus the second (None without a label)."""
        return probability_margin(self.probs) if self.has_label else None

    @property
    def uncertain(self) -> bool | None:
        """The margin is below the model card's `uncertain_margin`: to be shown as uncertain, not as a
        diagnosis (None without a label or without a margin in the card)."""
        if self.margin is None or self.uncertain_margin is None:
            return None
        return self.margin < self.uncertain_margin

    @classmethod
    def without_label(cls, state: str, reason: str, *, model_sha256: str, frame_index: int = 0, source: str = "",
                      latency_ms: dict | None = None, info: "CropInfo | None" = None, engine: str = "") -> "Prediction":
        """A `no_image` or `error` result: no label, no probabilities, the reason in one line."""
        box = tuple(int(v) for v in info.crop_box) if info is not None else (0, 0, 0, 0)
        fov = tuple(int(v) for v in info.fov_box) if info is not None else (0, 0, 0, 0)
        return cls(label=None, class_index=None, probs={}, crop_box=box, fov_box=fov,
                   latency_ms=dict(latency_ms or {}), model_sha256=model_sha256, frame_index=frame_index,
                   source=source, crop_method=info.method if info is not None else "none", state=state,
                   reason=" ".join(reason.split()), doppler_fraction=info.doppler_fraction if info is not None else 0.0,
                   views=max(1, len(info.fov_boxes)) if info is not None else 0,   # 0: refused before any region was looked for
                   engine=engine)

    @property
    def has_label(self) -> bool:
        return self.label is not None

    def to_record(self, source: bool = True) -> dict:
        """The ONE prediction JSON (JSONL lines, HTTP answers): JSON-safe (finite numbers only), no CAM
        array, no patient data, only pixels' geometry and the model's answer. `state` says what it is;
        label, class_index and probs are null unless the state is live or frozen. source=False leaves
        out `source` (HTTP: it may be a file path or a URL)."""
        return {
            **({"source": self.source} if source else {}),
            "frame": self.frame_index,
            "time_s": None if self.time_s is None else round(float(self.time_s), 6),
            "state": self.state,
            "label": self.label,
            "class_index": self.class_index,
            "probs": {k: round(float(v), 6) for k, v in self.probs.items()} if self.has_label else None,
            **({"reason": self.reason} if self.reason else {}),
            "crop_box": list(self.crop_box),
            "fov_box": list(self.fov_box),
            "margin": None if self.margin is None else round(self.margin, 6),
            "uncertain": self.uncertain,
            "crop_method": self.crop_method,
            "views": self.views,
            "doppler_fraction": round(float(self.doppler_fraction), 4),
            "frozen": self.frozen,
            "smoothed": self.smoothed,
            "latency_ms": {k: round(float(v), 3) for k, v in self.latency_ms.items()},
            "model_sha256": self.model_sha256,
            "engine": self.engine,
        }


def probability_margin(probs: dict) -> float:
    """Top probability minus the second (the top one alone for a single class), 6 decimals."""
    top = sorted((float(v) for v in probs.values()), reverse=True) + [0.0]
    return round(top[0] - top[1], 6)


#: the stages of one model call, in order: the keys of Prediction.latency_ms (plus "total"), of the
#: stream summary and of `usedge bench`'s stage breakdown
STAGES = ("crop", "normalise", "model", "post")


#: |sum of a probability vector - 1| above which a model's output is not a probability distribution:
#: float32 softmax over a few classes sums to 1 within ~1e-6; 1e-3 leaves room for FP16/INT8 models
PROB_SUM_TOLERANCE = 1e-3


def output_problem(p: np.ndarray) -> str:
    """Why one row of class probabilities is not a valid answer ("" when it is)."""
    if not np.all(np.isfinite(p)):
        return "model output is not finite (NaN or Inf: FP16 overflow or damaged weights?)"
    total = float(p.sum(dtype=np.float64))
    if abs(total - 1.0) > PROB_SUM_TOLERANCE or np.any(p < -PROB_SUM_TOLERANCE):
        return (f"model output is not a probability distribution (sums to {total:.4g}): 'probs' must be "
                "probabilities (a model that outputs logits must end in softmax)")
    return ""


def _check_io_shapes(engine: Backend, info: ModelInfo, path: Path) -> None:
    """ModelError unless the declared input is float32 N x 1 x size x size (N dynamic or 1) and probs has one
    column per class name; symbolic (dynamic) dimensions pass. Every backend declares its I/O tensors."""
    want_in = [None, 1, info.preprocess.size, info.preprocess.size]
    shape_in = list(engine.inputs[0].shape)
    dtype_in = str(engine.inputs[0].dtype or "float32")
    probs_shape = next((o.shape for o in engine.outputs if o.name == "probs"), None)
    problem = ""
    if dtype_in != "float32":
        problem = f"input is {dtype_in}; usedge feeds float32 (an FP16 model keeps float32 inputs and outputs)"
    elif len(shape_in) == 4 and isinstance(shape_in[0], int) and shape_in[0] != 1:
        problem = f"input has a fixed batch of {shape_in[0]}; usedge runs one frame at a time (batch 1 or dynamic)"
    elif (len(shape_in) != 4 or any(
            isinstance(got, int) and want is not None and got != want for got, want in zip(shape_in, want_in))):
        problem = f"input shape {shape_in} does not fit N x 1 x {info.preprocess.size} x {info.preprocess.size}"
    elif probs_shape and isinstance(probs_shape[-1], int) and probs_shape[-1] != len(info.class_names):
        problem = f"'probs' has {probs_shape[-1]} classes but its metadata names {len(info.class_names)}"
    if problem:
        raise ModelError(f"model does not match its usedge metadata: {problem}", path=path,
                         hint="re-export it with `usedge export` (do not edit exported models)")


class Classifier:
    """A loaded model on one backend, in four public stages: `prepare` (crop), `normalise`, `run_model`,
    `post`; `predict` runs them in that order. Threads may share a Classifier: each thread gets its own
    reused model-input buffer, and the model stage takes a lock unless the backend is `thread_safe`
    (`for_another_thread` gives a thread its own Classifier instead, to run in parallel)."""

    def __init__(self, backend: Backend, info: ModelInfo, model_sha256: str, backend_reason: str = "",
                 load_options: dict | None = None) -> None:
        self.backend = backend
        self.info = info
        self.spec: PreprocessSpec = info.preprocess
        self.class_names = list(info.class_names)
        self.model_sha256 = model_sha256
        self.backend_reason = backend_reason
        margin = info.model_card.get("uncertain_margin")     # checked at load (model_info.validate)
        self.uncertain_margin: float | None = float(margin) if margin is not None else None
        self.has_cam = "cam" in backend.output_names
        self._load_options = load_options or {}
        self._buffers = threading.local()          # per-thread reused 1 x 1 x size x size model input
        self._model_lock = threading.Lock()        # the model stage, for backends not declared thread_safe

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", *, threads: int | None = None, spinning: bool | None = None,
             opt_level: str = "all", device_id: int = 0, verify: bool = True) -> "Classifier":
        """Load model.onnx / model.int8.onnx / model.fp16.onnx or a TensorRT engine (with sidecar).

        backend: see `usedge.runtime.backends.BACKEND_NAMES`; `auto` takes the first GPU backend that starts,
        else the fastest CPU backend by a short timed trial cached per model and machine (backends/trial.py);
        `backend_reason` says which and why.
        threads: the engine's intra-op threads (None: `thread_budget().model_threads`, every usable core, set
        explicitly so onnxruntime never pins its pool); spinning: busy-wait between ops, at most
        usedge.runtime.threads.SPIN_US after the last (None: `thread_budget().spinning`, on).
        verify: refuse a file whose weights digest (engine: sha256 in its sidecar) does not match.
        """
        check_threads(threads)
        threads = None if threads is None else int(threads)
        if not isinstance(path, (str, os.PathLike)):
            raise ModelError(f"the model path is a {type(path).__name__}", hint="pass a str or pathlib.Path")
        path = Path(path)
        which = "pass model.onnx, model.int8.onnx, model.fp16.onnx or a .engine from `usedge export`"
        if path.is_dir():
            try:
                inside = sorted(p.name for p in path.iterdir() if p.name.endswith((".onnx", ".engine")))
            except OSError:          # an unreadable folder: the generic hint
                inside = []
            raise ModelError("is a folder, not a model file", path=path,
                             hint=f"pass one of its files: {', '.join(inside)}" if inside else which)
        if path.exists() and not path.is_file():
            raise ModelError("not a regular file (a device, FIFO or socket)", path=path, hint=which)
        if not path.is_file():
            raise ModelError("model file not found", path=path, hint=which)
        # a checkpoint is refused before any engine tries it (OpenVINO floods stderr parsing one)
        if path.suffix.lower() != ".engine" and is_torch_checkpoint(path):
            raise ModelError("this is a PyTorch checkpoint, not an ONNX model", path=path,
                             hint=f"export it first: usedge export {path} --out DIR, then pass DIR/model.onnx")
        if threads is None:
            threads = thread_budget().model_threads
        if spinning is None:
            spinning = thread_budget().spinning
        options = {"threads": threads, "spinning": spinning, "opt_level": opt_level, "device_id": device_id}
        digest = ""
        candidates = candidate_backends(path, backend)
        # auto: GPU backends in order; the CPU backends are chosen among by a timed trial (backends/trial.py)
        cpu = [name for name, _ in candidates if name in CPU_BACKENDS] if backend == "auto" else []
        failed: list[str] = []
        engine, name, reason = None, "", ""
        for name, reason in candidates:
            if name in cpu:
                break
            engine = create_backend(name, **options)
            try:
                engine.load(path)
                break
            except BaseException as exc:
                engine.close()
                engine = None
                if backend != "auto" or not isinstance(exc, BackendUnavailable):
                    raise
                failed.append(f"{name} failed to start ({exc.message})")  # e.g. the TensorRT EP without its libraries
        def contract(engine: Backend) -> ModelInfo:
            """The model as this engine sees it is a usedge classifier: metadata (weights digest when verify),
            a 'probs' output, I/O shapes; ModelError otherwise."""
            info = model_info_from_metadata(engine.metadata, path, verify=verify)
            if "probs" not in engine.output_names:
                raise ModelError(f"model outputs {engine.output_names}, expected 'probs'", path=path,
                                 hint="export with `usedge export`")
            _check_io_shapes(engine, info, path)
            return info

        info = None
        if engine is None and cpu:
            digest = sha256_file(path)
            # each engine is checked before it is timed: a refused model never runs, a failing engine never wins
            choice = choose_cpu_backend(path, cpu, digest, options, check=contract)
            engine, name, reason, info = choice.engine, choice.engine.name, choice.reason, choice.checked
        if engine is None:
            raise BackendUnavailable(f"no backend could run this model: {'; '.join(failed)}", path=path,
                                     hint="see `usedge doctor`")
        if failed:
            reason += f"; {'; '.join(failed)}"
        if info is None:
            try:
                info = contract(engine)
            except ModelError:
                engine.close()
                raise
        return cls(engine, info, digest or sha256_file(path), reason if backend == "auto" else "asked for",
                   {"path": path, "backend": name, "verify": verify, **options})

    @property
    def threads(self) -> int | None:
        """The engine's intra-op threads this Classifier was loaded with."""
        return self._load_options.get("threads")

    @property
    def thread_safe(self) -> bool:
        """Whether two threads may call this Classifier at once (the backend declares it)."""
        return self.backend.thread_safe

    def for_another_thread(self) -> "Classifier":
        """This Classifier when its backend is thread-safe, else a second one loaded from the same file."""
        if self.thread_safe:
            return self
        opts = dict(self._load_options)
        return Classifier.load(opts.pop("path"), opts.pop("backend"), **opts)

    # -- stages ---------------------------------------------------------------------------------
    def prepare(self, frame: np.ndarray, regions: list | None = None,
                cropper: Cropper | None = None) -> tuple[np.ndarray, CropInfo]:
        """Frame -> uint8 size x size model image (the ONE preprocessing definition, crop stage).

        regions: DICOM ultrasound region boxes (x, y, w, h) used for the field of view when they fit.
        cropper: a stateful crop for streams (FrameCropper); default: `prepare` per frame.
        """
        return cropper(frame) if cropper is not None else prepare(frame, self.spec, regions=regions)

    def normalise(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """uint8 image(s) -> float32 N x 1 x size x size model input (preprocess.normalise); one image is
        written into this thread's reused buffer (the next call on this thread overwrites it: copy it to keep it)."""
        side = (self.spec.size, self.spec.size)
        for image in [images] if isinstance(images, np.ndarray) else images:
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != side:
                got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise InputError(f"normalise takes the uint8 {side[0]}x{side[1]} model image that prepare() gives, "
                                 f"got {got}", hint="pass prepare(frame)[0], or call predict(frame)")
        if isinstance(images, np.ndarray):
            buf = getattr(self._buffers, "input", None)
            if buf is None:
                buf = self._buffers.input = np.empty((1, 1, self.spec.size, self.spec.size), np.float32)
            return normalise(images, self.spec, out=buf)
        batch = np.empty((len(images), 1, self.spec.size, self.spec.size), np.float32)
        for i, image in enumerate(images):
            normalise(image, self.spec, out=batch[i:i + 1])
        return batch

    def run_model(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The model stage: the backend's outputs by name (one call at a time unless the backend is thread_safe)."""
        if self.backend.closed:
            raise ModelError("this Classifier was closed", hint="load the model again: Classifier.load(path)")
        try:
            if self.backend.thread_safe:
                return self.backend.infer(batch)
            with self._model_lock:
                return self.backend.infer(batch)
        except UsedgeError:
            raise
        except Exception as exc:   # a foreign model that loads but fails at run time (onnxruntime's own error)
            if self.backend.closed:        # closed by another thread while this call ran
                raise ModelError("this Classifier was closed",
                                 hint="load the model again: Classifier.load(path)") from exc
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            model = Path(self._load_options.get("path", "model")).name
            raise ModelError(f"the model {model} failed to run on this frame ({type(exc).__name__}: {first})",
                             hint="use a model exported by `usedge export`") from exc

    def post(self, outputs: dict[str, np.ndarray], infos: Sequence[CropInfo], *, first_index: int = 0,
             source: str = "") -> list[Prediction]:
        """Model outputs -> one Prediction per crop (CAM of the top class).

        `probs` must be probabilities (usedge's export ends in softmax): a row that is not finite, has a
        negative value or does not sum to 1 (PROB_SUM_TOLERANCE) gives an `error` Prediction with the
        reason and no label. Logits or per-class sigmoids are never turned into probabilities by guessing."""
        probs = np.asarray(outputs["probs"], dtype=np.float32).reshape(-1, len(self.class_names))
        cam = outputs.get("cam")
        cam = np.asarray(cam, dtype=np.float32) if cam is not None else None
        preds = []
        for i, info in enumerate(infos):
            if problem := output_problem(probs[i]):
                preds.append(Prediction.without_label("error", problem, model_sha256=self.model_sha256,
                                                      frame_index=first_index + i, source=source, info=info,
                                                      engine=self.backend.name))
                continue
            k = int(np.argmax(probs[i]))
            c = None
            if cam is not None:
                c = cam[i]
                if c.ndim == 3:
                    c = c[k] if c.shape[0] == len(self.class_names) else c[0]
                c = np.ascontiguousarray(c)
            preds.append(Prediction(
                label=self.class_names[k], class_index=k,
                probs={n: float(p) for n, p in zip(self.class_names, probs[i])},
                crop_box=tuple(int(v) for v in info.crop_box), fov_box=tuple(int(v) for v in info.fov_box),
                latency_ms={}, model_sha256=self.model_sha256, cam=c,
                frame_index=first_index + i, source=source, crop_method=info.method,
                doppler_fraction=info.doppler_fraction, uncertain_margin=self.uncertain_margin,
                views=max(1, len(info.fov_boxes)), engine=self.backend.name))
        return preds

    # -- public ---------------------------------------------------------------------------------
    def predict(self, frame: np.ndarray, *, frame_index: int = 0, source: str = "",
                regions: list | None = None, cropper: Cropper | None = None,
                quality: Callable[[np.ndarray], str | None] | None = no_image_reason) -> Prediction:
        """One frame -> Prediction; latency_ms has crop, normalise, model, post, total. NoImage when the
        frame shows no usable ultrasound image (see predict_batch's `quality`)."""
        return self.predict_batch([frame], first_index=frame_index, source=source, regions=regions,
                                  cropper=cropper, quality=quality)[0]

    def predict_batch(self, frames: Sequence[np.ndarray], *, first_index: int = 0, source: str = "",
                      regions: list | None = None, cropper: Cropper | None = None,
                      quality: Callable[[np.ndarray], str | None] | None = no_image_reason) -> list[Prediction]:
        """Several frames in one model call; per-frame latency is the batch's time divided by N.

        quality: the frame-quality gate on each cropped model image, the one streams, files and uploads
        use (usedge.runtime.quality.no_image_reason; a crop upscaled more than 8x is refused with it):
        NoImage (nothing run) for a crop it refuses (a lit empty screen, a probe in air, a thumbnail).
        None turns it off (a blank frame is still refused)."""
        if isinstance(frames, np.ndarray) and (frames.ndim == 2 or frames.ndim == 3 and frames.shape[2] <= 4):
            raise InputError(f"predict_batch takes a list of frames (or an N x H x W[ x C] array), got what looks "
                             f"like one frame {frames.shape}", hint="pass [frame], or call predict(frame)")
        if not isinstance(frames, (Sequence, np.ndarray)):
            frames = list(frames)          # a generator of frames
        if quality is not None and not callable(quality):
            raise ConfigError(f"quality must be a gate (frame -> reason or None) or None, got {quality!r}",
                              hint="leave it out for the default gate (usedge.runtime.quality.no_image_reason)")
        if not len(frames):
            return []
        t = [time.perf_counter()]
        crops = []
        for i, f in enumerate(frames):
            try:
                crops.append(self.prepare(f, regions, cropper))
            except UsedgeError as exc:
                if len(frames) > 1:          # which frame of the batch
                    exc.message = f"frame {i} of the batch: {exc.message}"
                    exc.args = (exc.one_line(),)
                raise
        if quality is not None:
            for image, info in crops:
                if reason := too_small_reason(info.crop_box[2], info.crop_box[3], self.spec.size) or quality(image):
                    if info.doppler_fraction > MOSTLY_COLOUR:    # what is left after the fill: say why
                        reason += f"; the crop was {COLOUR_NOTE}"
                    exc = NoImage(f"no usable image: {reason}", path=source or None,
                                  hint="the scanner shows no ultrasound image")
                    exc.info = info          # where the crop was: the no_image result keeps its boxes
                    raise exc
        t.append(time.perf_counter())
        batch = self.normalise(crops[0][0] if len(crops) == 1 else [image for image, _ in crops])
        t.append(time.perf_counter())
        outputs = self.run_model(batch)
        t.append(time.perf_counter())
        preds = self.post(outputs, [info for _, info in crops], first_index=first_index, source=source)
        t.append(time.perf_counter())
        n = len(frames)
        share = {s: (b - a) * 1e3 / n for s, a, b in zip(STAGES, t[:-1], t[1:])}
        share["total"] = (t[-1] - t[0]) * 1e3 / n
        for p in preds:
            p.latency_ms = dict(share)
        return preds

    def describe(self) -> str:
        return (f"{self.backend.describe()} — {self.info.precision}, {len(self.class_names)} classes, "
                f"{self.spec.size} px, sha256 {self.model_sha256[:12]}")

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
