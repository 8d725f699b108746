"""onnxruntime backends: CPU, CUDA (IO binding: inputs copied once, outputs kept on the device until
read) and the TensorRT execution provider. Threads, spinning and graph optimisation are options."""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from usedge.errors import BackendUnavailable, ModelError
from usedge.runtime.backends.base import Backend

OPT_LEVELS = ("disable", "basic", "extended", "all")


def _ort():
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


class OrtBackend(Backend):
    """onnxruntime with one execution provider (plus CPU for the ops it lacks)."""

    name: ClassVar[str] = "ort-cpu"
    provider: ClassVar[str] = "CPUExecutionProvider"

    def __init__(self, threads: int | None = None, spinning: bool = False, opt_level: str = "all",
                 device_id: int = 0, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        if opt_level not in OPT_LEVELS:
            raise ModelError(f"unknown graph optimisation level '{opt_level}'", hint=f"use one of {', '.join(OPT_LEVELS)}")
        self.threads = threads              # intra-op threads; None: onnxruntime's choice (all cores)
        self.spinning = spinning            # busy-wait between ops: lower latency, burns a core
        self.opt_level = opt_level
        self.device_id = device_id
        self.cache_dir = cache_dir
        self.session = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            ort = _ort()
        except BackendUnavailable as exc:
            return False, exc.message
        if cls.provider not in ort.get_available_providers():
            pkg = "onnxruntime-gpu" if cls.provider != "CPUExecutionProvider" else "onnxruntime"
            return False, f"onnxruntime {ort.__version__} lacks {cls.provider} (install {pkg})"
        if cls.provider != "CPUExecutionProvider":
            ok, why = cuda_driver_present()
            if not ok:
                return False, why
        return True, f"onnxruntime {ort.__version__} {cls.provider}"

    def session_options(self):
        ort = _ort()
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
        so.log_severity_level = 3
        return so

    def provider_list(self) -> list:
        return ["CPUExecutionProvider"]

    def load(self, path: str | Path) -> "OrtBackend":
        ort = _ort()
        ok, why = self.available()
        if not ok:
            raise BackendUnavailable(f"backend {self.name} cannot run here: {why}",
                                     hint="use --backend ort-cpu or see `usedge doctor`")
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=self.session_options(),
                                                providers=self.provider_list())
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot load this model ({first})", path=self.path,
                             hint="re-export it with `usedge export`; an fp16 model needs a GPU backend") from exc
        self.providers = self.session.get_providers()
        if self.provider not in self.providers:
            raise BackendUnavailable(f"{self.provider} did not start (onnxruntime fell back to {self.providers})",
                                     path=self.path, hint="check CUDA/cuDNN/TensorRT libraries with `usedge doctor`")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"model has {len(inputs)} inputs, expected 1", path=self.path,
                             hint="export with `usedge export`")
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # declared shapes (ints or symbolic names), so the classifier can refuse a model that does not fit
        self.input_shape = list(inputs[0].shape)
        self.output_shapes = {o.name: list(o.shape) for o in self.session.get_outputs()}
        return self

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self.session = None


class OrtCpuBackend(OrtBackend):
    name = "ort-cpu"
    provider = "CPUExecutionProvider"


class OrtCudaBackend(OrtBackend):
    """CUDA EP with IO binding: the input goes to the GPU once per call into a reused device
    buffer and outputs are bound on the device, so onnxruntime adds no extra copies."""

    name = "ort-cuda"
    provider = "CUDAExecutionProvider"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._input_value = None

    def provider_list(self) -> list:
        return [(self.provider, {"device_id": self.device_id, "cudnn_conv_algo_search": "HEURISTIC"}),
                "CPUExecutionProvider"]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        ort = _ort()
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

    def close(self) -> None:
        self._input_value = None
        super().close()


class OrtTensorRTBackend(OrtCudaBackend):
    """TensorRT EP (engines cached beside the model, FP16 allowed), CUDA and CPU for the rest."""

    name = "ort-trt"
    provider = "TensorrtExecutionProvider"

    def provider_list(self) -> list:
        cache = Path(self.cache_dir) if self.cache_dir else (self.path.parent / ".trt-cache")
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError:  # a read-only model folder: cache the built engines in the temp folder instead
            cache = Path(tempfile.gettempdir()) / "usedge-trt-cache"
            os.makedirs(cache, exist_ok=True)
        trt_options = {
            "device_id": self.device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_fp16_enable": True,
        }
        return [(self.provider, trt_options),
                ("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
