"""onnxruntime backends: one class, one row per execution provider in `ORT_PROVIDERS`.

    ort-cpu   CPUExecutionProvider                 thread-safe session
    ort-cuda  CUDAExecutionProvider                IO binding: input copied once, outputs bound on the device
    ort-trt   TensorrtExecutionProvider            engines cached beside the model, FP16 allowed

    ort-trt-rtx NvTensorRTRTXExecutionProvider     TensorRT for RTX plugin EP (backends/rtx.py: RTX_ROW)

A new execution provider is one more `OrtProvider` row (plus its name in backends/__init__.py):
`providers` gives the provider list for the session (None: the row's `configure` adds its devices to
the session options instead, as plugin EPs do), `check` replaces the generic availability test.
Threads, spinning and graph optimisation are options of every row.
"""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from usedge.errors import BackendUnavailable, ModelError
from usedge.fileio import read_head
from usedge.runtime.backends.base import Backend, TensorSpec
from usedge.runtime.threads import SPIN_US

OPT_LEVELS = ("disable", "basic", "extended", "all")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:  # the base install has it; a broken env may not
        raise BackendUnavailable("onnxruntime is not installed",
                                 hint="pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA/TensorRT)") from exc
    return onnxruntime


def cuda_driver_present() -> tuple[bool, str]:
    """Whether an NVIDIA driver library can be loaded (no GPU call made)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True, f"NVIDIA driver found ({name})"
        except OSError:
            continue
    return False, "no NVIDIA driver (libcuda) on this machine"


def engine_cache(folder: Path, fallback: str) -> Path:
    """`folder` (created), or `<temp>/<fallback>` when it cannot be made (a read-only model folder)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / fallback
        os.makedirs(folder, exist_ok=True)
    return folder


def _trt_cache(backend: "OrtBackend") -> Path:
    """Where the TensorRT EP caches its engines: beside the model, else the temp folder."""
    return engine_cache(Path(backend.cache_dir) if backend.cache_dir else (backend.path.parent / ".trt-cache"),
                        "usedge-trt-cache")


@dataclass(frozen=True)
class OrtProvider:
    """One onnxruntime execution provider as a backend: a row of ORT_PROVIDERS."""

    name: str                                           # backend name (--backend)
    provider: str                                       # onnxruntime's provider name
    providers: Callable[["OrtBackend"], list]           # the session's provider list (with options)
    package: str = "onnxruntime-gpu"                    # what to install when the provider is missing
    gpu: bool = True                                    # needs an NVIDIA driver; inputs bound on the device
    thread_safe: bool = False                           # CPU sessions are; GPU sessions/contexts are not shared
    check: Callable[[], tuple[bool, str]] | None = None  # replaces the generic test below (plugin EPs)
    configure: Callable[["OrtBackend", object], None] | None = None   # extends SessionOptions (plugin EPs)
    artifact: str = "onnx"

    def available(self) -> tuple[bool, str]:
        if self.check is not None:
            return self.check()
        try:
            ort = import_onnxruntime()
        except BackendUnavailable as exc:
            return False, exc.message
        if self.provider not in ort.get_available_providers():
            return False, f"onnxruntime {ort.__version__} lacks {self.provider} (install {self.package})"
        if self.gpu:
            ok, why = cuda_driver_present()
            if not ok:
                return False, why
        return True, f"onnxruntime {ort.__version__} {self.provider}"

    def __call__(self, **options) -> "OrtBackend":
        return OrtBackend(self, **options)


ORT_PROVIDERS = {p.name: p for p in (
    OrtProvider("ort-cpu", "CPUExecutionProvider", lambda b: ["CPUExecutionProvider"], package="onnxruntime",
                gpu=False, thread_safe=True),
    OrtProvider("ort-cuda", "CUDAExecutionProvider", lambda b: [
        ("CUDAExecutionProvider", {"device_id": b.device_id, "cudnn_conv_algo_search": "HEURISTIC"}),
        "CPUExecutionProvider"]),
    OrtProvider("ort-trt", "TensorrtExecutionProvider", lambda b: [
        ("TensorrtExecutionProvider", {"device_id": b.device_id, "trt_engine_cache_enable": True,
                                       "trt_engine_cache_path": str(_trt_cache(b)), "trt_timing_cache_enable": True,
                                       "trt_fp16_enable": True}),
        ("CUDAExecutionProvider", {"device_id": b.device_id}), "CPUExecutionProvider"]),
)}

_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64"}


def _spec(arg) -> TensorSpec:
    return TensorSpec(arg.name, _NUMPY_TYPES.get(arg.type, arg.type), tuple(arg.shape))


_EXTERNAL = re.compile(rb"\x0a\x08location\x12([\x01-\x7f])")      # an external-data entry: key "location"


def is_torch_checkpoint(path: Path) -> bool:
    """A file torch.save wrote (a zip archive, or a legacy pickle) or named like one (.pt, .pth, .ckpt)."""
    if path.suffix.lower() in (".pt", ".pth", ".ckpt"):
        return True
    head = read_head(path, 4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _load_failure(path: Path, error: str) -> tuple[str, str]:
    """What a file onnxruntime cannot load most likely is, and the fix: (message or "", hint)."""
    head = read_head(path, 1 << 20)
    if is_torch_checkpoint(path):
        return ("this is a PyTorch checkpoint, not an ONNX model",
                f"export it first: usedge export {path} --out DIR, then pass DIR/model.onnx")
    if "external" in error.lower():
        names = sorted({head[m.end():m.end() + m.group(1)[0]].decode("utf-8", "replace")
                        for m in _EXTERNAL.finditer(head)})
        outside = [n for n in names if Path(n).is_absolute() or ".." in Path(n).parts]
        if outside or "escapes" in error or "absolute path" in error.lower():
            return (f"its weights file path escapes the model's folder ({', '.join(outside) or error}): refused",
                    "a model's external weights must sit beside it; re-export it with `usedge export`")
        missing = [n for n in names if not (path.parent / n).exists()] or names
        which = ", ".join(missing) if missing else "its external data file"
        return (f"its weights are stored in a separate file that is missing ({which})",
                "keep the weights file(s) beside the model, under the name it was exported with")
    fp16 = "fp16" in path.name.lower() or "float16" in error.lower()
    return "", "re-export it with `usedge export`" + ("; an fp16 model needs a GPU backend" if fp16 else "")


class OrtBackend(Backend):
    """onnxruntime with one execution provider (plus CPU for the ops it lacks)."""

    def __init__(self, row: OrtProvider, threads: int | None = None, spinning: bool = False, opt_level: str = "all",
                 device_id: int = 0, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        if opt_level not in OPT_LEVELS:
            raise ModelError(f"unknown graph optimisation level '{opt_level}'", hint=f"use one of {', '.join(OPT_LEVELS)}")
        self.row = row
        self.name, self.thread_safe = row.name, row.thread_safe
        self.threads = threads              # intra-op threads; None: onnxruntime's choice (all cores)
        self.spinning = spinning            # busy-wait between ops (at most SPIN_US after the last): lower latency
        self.opt_level = opt_level
        self.device_id = device_id
        self.cache_dir = cache_dir
        self.session = None
        self._input_value = None            # GPU rows: the reused device input

    def session_options(self):
        ort = import_onnxruntime()
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.opt_level]
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.spinning:       # awake through a run, asleep SPIN_US after it (usedge.runtime.threads)
            so.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
        so.log_severity_level = 3
        if self.row.configure is not None:
            self.row.configure(self, so)
        return so

    def load(self, path: str | Path) -> "OrtBackend":
        ort = import_onnxruntime()
        ok, why = self.row.available()
        if not ok:
            raise BackendUnavailable(f"backend {self.name} cannot run here: {why}",
                                     hint="use --backend ort-cpu or see `usedge doctor`")
        self.path = Path(path)
        try:
            providers = self.row.providers(self)
            self.session = ort.InferenceSession(str(self.path), sess_options=self.session_options(),
                                                **({} if providers is None else {"providers": providers}))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            what, hint = _load_failure(self.path, first)
            raise ModelError(what or f"onnxruntime cannot load this model ({first})", path=self.path,
                             hint=hint) from exc
        self.providers = self.session.get_providers()
        if self.row.provider not in self.providers:
            raise BackendUnavailable(f"{self.row.provider} did not start (onnxruntime fell back to {self.providers})",
                                     path=self.path, hint="check CUDA/cuDNN/TensorRT libraries with `usedge doctor`")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        if len(self.inputs) != 1:
            raise ModelError(f"model has {len(self.inputs)} inputs, expected 1", path=self.path,
                             hint="export with `usedge export`")
        return self

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if not self.row.gpu:
            return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: batch})))
        ort = import_onnxruntime()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        value = self._input_value
        if value is None or tuple(value.shape()) != batch.shape:
            value = self._input_value = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self.device_id)
        else:
            value.update_inplace(batch)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))

    def release(self) -> None:
        self._input_value = None
        self.session = None
