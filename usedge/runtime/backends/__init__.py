"""Inference engines behind one protocol (see base.py); `candidate_backends` picks them and says why.

    ort-cpu   onnxruntime CPUExecutionProvider     (base install)
    ort-cuda  onnxruntime CUDAExecutionProvider    (onnxruntime-gpu, NVIDIA driver), IO binding
    ort-trt   onnxruntime TensorrtExecutionProvider (onnxruntime-gpu + TensorRT libraries)
    ort-trt-rtx TensorRT for RTX plugin EP on the plain onnxruntime (usedge[rtx]; RTX-class GPU)
    tensorrt  native TensorRT engine + sidecar     (tensorrt + cuda-python: usedge[gpu])
    openvino  OpenVINO CPU plugin, latency hint    (usedge[openvino])

`auto` on an ONNX takes the first GPU backend that starts, in ARCHITECTURE.md's order; without one
it chooses among the CPU backends by a short timed trial cached per model and machine (trial.py).
"""

from __future__ import annotations

from pathlib import Path

from usedge.errors import BackendUnavailable, ConfigError
from usedge.runtime.backends.base import Backend, TensorSpec
from usedge.runtime.backends.openvino import OpenVINOBackend
from usedge.runtime.backends.ort import ORT_PROVIDERS
from usedge.runtime.backends.rtx import RTX_ROW
from usedge.runtime.backends.tensorrt import TensorRTBackend

#: name -> a factory of backends with `available()` and `artifact`: an onnxruntime row or a Backend class
BACKENDS = {**ORT_PROVIDERS, RTX_ROW.name: RTX_ROW, "tensorrt": TensorRTBackend, "openvino": OpenVINOBackend}
BACKEND_NAMES = ("auto", *BACKENDS)
ENGINE_SUFFIXES = {".engine", ".plan", ".trt"}
# Fastest first (ARCHITECTURE.md): a TensorRT engine, then TensorRT for RTX (pip only, RTX-class GPUs),
# ORT's TensorRT EP, CUDA EP; then the CPU engines, between which `auto` chooses by measurement (trial.py).
ONNX_PREFERENCE = ("ort-trt-rtx", "ort-trt", "ort-cuda", "ort-cpu", "openvino")
CPU_BACKENDS = ("ort-cpu", "openvino")


def artifact_kind(path: str | Path) -> str:
    """"engine" for a TensorRT plan, "onnx" otherwise."""
    return "engine" if Path(path).suffix.lower() in ENGINE_SUFFIXES else "onnx"


def availability() -> dict[str, tuple[bool, str]]:
    """Every backend: (works here, what runs or why not)."""
    return {name: cls.available() for name, cls in BACKENDS.items()}


def candidate_backends(path: str | Path, requested: str = "auto") -> list[tuple[str, str]]:
    """Backends to try for this artifact, best first, each with a one-line reason.

    An explicit request gives just that backend; `auto` gives every backend that says it is
    available, in ARCHITECTURE.md's order (a provider can still fail at session creation, e.g. the
    TensorRT EP without TensorRT's libraries: the caller then takes the next).
    """
    if requested not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend '{requested}'", hint=f"use one of {', '.join(BACKEND_NAMES)}")
    kind = artifact_kind(path)
    if requested != "auto":
        if BACKENDS[requested].artifact != kind:
            want = "a TensorRT .engine" if BACKENDS[requested].artifact == "engine" else "an .onnx model"
            raise ConfigError(f"backend {requested} needs {want}", path=path,
                              hint="pick --backend auto, or pass the matching artifact")
        return [(requested, "asked for")]
    if kind == "engine":
        ok, why = TensorRTBackend.available()
        if not ok:
            raise BackendUnavailable(f"a TensorRT engine needs TensorRT and a GPU: {why}", path=path,
                                     hint="run the matching model.onnx / model.int8.onnx on this machine instead")
        return [("tensorrt", f"TensorRT engine: {why}")]
    found, skipped = [], []
    for name in ONNX_PREFERENCE:
        ok, why = BACKENDS[name].available()
        if ok:
            reason = f"fastest available: {why}"
            if skipped:
                reason += f"; {', '.join(skipped)} unavailable (see `usedge doctor`)"
            found.append((name, reason))
        else:
            skipped.append(name)
    if not found:
        raise BackendUnavailable("no onnxruntime backend works here", hint="pip install onnxruntime")
    return found


def create_backend(name: str, **options) -> Backend:
    """A backend instance (options: threads, spinning, opt_level, device_id, cache_dir; a backend takes
    those that apply to it)."""
    return BACKENDS[name](**options)


__all__ = ["Backend", "BACKENDS", "BACKEND_NAMES", "CPU_BACKENDS", "TensorSpec", "availability", "artifact_kind", "candidate_backends",
           "create_backend"]
