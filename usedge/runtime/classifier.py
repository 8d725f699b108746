"""Model artifact -> `Classifier.predict(frame) -> Prediction`: crop, normalise, infer, postprocess.

Every stage is timed (milliseconds, `time.perf_counter`) and every Prediction carries the model's
sha256, so a JSONL line says exactly which bytes produced it. uint8 is kept through cropping and
resizing; the float32 model input is written into one reused buffer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from usedge.errors import BackendUnavailable, ModelError
from usedge.fileio import sha256_file
from usedge.runtime.backends import Backend, candidate_backends, create_backend
from usedge.runtime.model_info import ModelInfo, model_info_from_metadata
from usedge.runtime.preprocess import CropInfo, PreprocessSpec, normalise, prepare

#: frame (H x W or H x W x C, any dtype) -> (uint8 size x size model image, where it came from)
Cropper = Callable[[np.ndarray], tuple[np.ndarray, CropInfo]]


@dataclass
class Prediction:
    """What the model says about one frame. Boxes are (x, y, w, h) in the original frame's pixels."""

    label: str
    class_index: int
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
    extra: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        """JSON-safe dict (no CAM array, no patient data: only pixels' geometry and the model's answer)."""
        return {
            "source": self.source,
            "frame": self.frame_index,
            "label": self.label,
            "probs": {k: round(float(v), 6) for k, v in self.probs.items()},
            "crop_box": list(self.crop_box),
            "fov_box": list(self.fov_box),
            "crop_method": self.crop_method,
            "frozen": self.frozen,
            "smoothed": self.smoothed,
            "latency_ms": {k: round(float(v), 3) for k, v in self.latency_ms.items()},
            "model_sha256": self.model_sha256,
            **self.extra,
        }


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _looks_like_probs(p: np.ndarray) -> bool:
    return bool(np.all(p >= -1e-4) and np.all(p <= 1 + 1e-4) and np.allclose(p.sum(axis=-1), 1.0, atol=1e-2))


def _check_io_shapes(engine: Backend, info: ModelInfo, path: Path) -> None:
    """ModelError (engine closed) unless the declared input is N x 1 x size x size and probs has one
    column per class name; symbolic (dynamic) dimensions pass. Backends that declare no shapes pass."""
    want_in = [None, 1, info.preprocess.size, info.preprocess.size]
    shape_in = getattr(engine, "input_shape", None)
    probs_shape = (getattr(engine, "output_shapes", None) or {}).get("probs")
    problem = ""
    if shape_in is not None and (len(shape_in) != 4 or any(
            isinstance(got, int) and want is not None and got != want for got, want in zip(shape_in, want_in))):
        problem = f"input shape {shape_in} does not fit N x 1 x {info.preprocess.size} x {info.preprocess.size}"
    elif probs_shape and isinstance(probs_shape[-1], int) and probs_shape[-1] != len(info.class_names):
        problem = f"'probs' has {probs_shape[-1]} classes but its metadata names {len(info.class_names)}"
    if problem:
        engine.close()
        raise ModelError(f"model does not match its usedge metadata: {problem}", path=path,
                         hint="re-export it with `usedge export` (do not edit exported models)")


class Classifier:
    """A loaded model on one backend. Not thread-safe: one inference loop owns it."""

    def __init__(self, backend: Backend, info: ModelInfo, model_sha256: str, backend_reason: str = "") -> None:
        self.backend = backend
        self.info = info
        self.spec: PreprocessSpec = info.preprocess
        self.class_names = list(info.class_names)
        self.model_sha256 = model_sha256
        self.backend_reason = backend_reason
        self.has_cam = "cam" in backend.output_names
        self._input = np.empty((1, 1, self.spec.size, self.spec.size), np.float32)  # reused model input

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", *, threads: int | None = None, spinning: bool = False,
             opt_level: str = "all", device_id: int = 0, verify: bool = True) -> "Classifier":
        """Load model.onnx / model.int8.onnx / model.fp16.onnx or a TensorRT engine (with sidecar).

        backend: auto | ort-cpu | ort-cuda | ort-trt | tensorrt; `auto` picks the fastest that works here.
        threads: onnxruntime intra-op threads (None: all cores); spinning: busy-wait between ops.
        verify: refuse a file whose weights digest (engine: sha256 in its sidecar) does not match.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelError("model file not found", path=path,
                             hint="pass model.onnx, model.int8.onnx, model.fp16.onnx or a .engine from `usedge export`")
        failed: list[str] = []
        for name, reason in candidate_backends(path, backend):
            engine = create_backend(name, threads=threads, spinning=spinning, opt_level=opt_level, device_id=device_id)
            try:
                engine.load(path)
                break
            except BackendUnavailable as exc:  # e.g. the TensorRT EP listed but its libraries missing
                if backend != "auto":
                    raise
                failed.append(f"{name} failed to start ({exc.message})")
        else:
            raise BackendUnavailable(f"no backend could run this model: {'; '.join(failed)}", path=path,
                                     hint="see `usedge doctor`")
        if failed:
            reason += f"; {'; '.join(failed)}"
        info = model_info_from_metadata(engine.metadata, path, verify=verify)
        if "probs" not in engine.output_names:
            engine.close()
            raise ModelError(f"model outputs {engine.output_names}, expected 'probs'", path=path,
                             hint="export with `usedge export`")
        _check_io_shapes(engine, info, path)
        return cls(engine, info, sha256_file(path), reason if backend == "auto" else "asked for")

    # -- stages ---------------------------------------------------------------------------------
    def crop(self, frame: np.ndarray, regions: list | None = None) -> tuple[np.ndarray, CropInfo]:
        """Frame -> uint8 size x size model image (the ONE preprocessing definition).

        regions: DICOM ultrasound region boxes (x, y, w, h) used for the field of view when they fit.
        """
        return prepare(frame, self.spec, regions=regions)

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """uint8 H x W -> the reused float32 1 x 1 x H x W model input (preprocess.normalise)."""
        return normalise(image, self.spec, out=self._input)

    def _postprocess(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        probs = np.asarray(outputs["probs"], dtype=np.float32).reshape(-1, len(self.class_names))
        if not _looks_like_probs(probs):  # a model exported with logits
            probs = softmax(probs)
        cam = outputs.get("cam")
        return probs, (np.asarray(cam, dtype=np.float32) if cam is not None else None)

    def _cam_for(self, cam: np.ndarray | None, i: int, cls: int) -> np.ndarray | None:
        if cam is None:
            return None
        c = cam[i]
        if c.ndim == 3:
            c = c[cls] if c.shape[0] == len(self.class_names) else c[0]
        return np.ascontiguousarray(c)

    def _make(self, probs_row: np.ndarray, info: CropInfo, cam: np.ndarray | None, latency: dict,
              frame_index: int, source: str) -> Prediction:
        k = int(np.argmax(probs_row))
        return Prediction(
            label=self.class_names[k], class_index=k,
            probs={n: float(p) for n, p in zip(self.class_names, probs_row)},
            crop_box=tuple(int(v) for v in info.crop_box), fov_box=tuple(int(v) for v in info.fov_box),
            latency_ms=latency, model_sha256=self.model_sha256, cam=cam,
            frame_index=frame_index, source=source, crop_method=info.method,
        )

    # -- public ---------------------------------------------------------------------------------
    def predict(self, frame: np.ndarray, *, frame_index: int = 0, source: str = "",
                regions: list | None = None, cropper: Cropper | None = None) -> Prediction:
        """One frame -> Prediction; latency_ms has crop, normalise, model, post, total.

        cropper: a stateful crop for streams (preprocess.FrameCropper); default: `prepare` per frame.
        """
        t0 = time.perf_counter()
        image, info = cropper(frame) if cropper is not None else self.crop(frame, regions)
        t1 = time.perf_counter()
        self.normalise(image)
        t2 = time.perf_counter()
        outputs = self.backend.infer(self._input)
        t3 = time.perf_counter()
        probs, cam = self._postprocess(outputs)
        k = int(np.argmax(probs[0]))
        pred = self._make(probs[0], info, self._cam_for(cam, 0, k), {}, frame_index, source)
        t4 = time.perf_counter()
        pred.latency_ms = {"crop": (t1 - t0) * 1e3, "normalise": (t2 - t1) * 1e3, "model": (t3 - t2) * 1e3,
                           "post": (t4 - t3) * 1e3, "total": (t4 - t0) * 1e3}
        return pred

    def predict_batch(self, frames: Sequence[np.ndarray], *, first_index: int = 0, source: str = "",
                      regions: list | None = None, cropper: Cropper | None = None) -> list[Prediction]:
        """Several frames in one model call; per-frame latency is the batch's time divided by N."""
        if not len(frames):
            return []
        t0 = time.perf_counter()
        crops = [cropper(f) if cropper is not None else self.crop(f, regions) for f in frames]
        t1 = time.perf_counter()
        batch = np.empty((len(frames), 1, self.spec.size, self.spec.size), np.float32)
        for i, (image, _) in enumerate(crops):
            normalise(image, self.spec, out=batch[i:i + 1])
        t2 = time.perf_counter()
        outputs = self.backend.infer(batch)
        t3 = time.perf_counter()
        probs, cam = self._postprocess(outputs)
        preds = []
        for i, (_, info) in enumerate(crops):
            k = int(np.argmax(probs[i]))
            preds.append(self._make(probs[i], info, self._cam_for(cam, i, k), {}, first_index + i, source))
        t4 = time.perf_counter()
        n = len(frames)
        share = {"crop": (t1 - t0) * 1e3 / n, "normalise": (t2 - t1) * 1e3 / n, "model": (t3 - t2) * 1e3 / n,
                 "post": (t4 - t3) * 1e3 / n, "total": (t4 - t0) * 1e3 / n}
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
