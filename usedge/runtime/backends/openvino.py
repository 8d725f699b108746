"""OpenVINO on the CPU (`usedge[openvino]`): the same ONNX files, read by OpenVINO's ONNX frontend.

    openvino  Core().compile_model(model.onnx, "CPU", PERFORMANCE_HINT=LATENCY, INFERENCE_NUM_THREADS=threads)

The ONNX metadata_props arrive in the model's rt_info ("framework"), byte for byte, so the usedge
metadata and the weights digest are checked as on onnxruntime. fp32 models are compiled with
INFERENCE_PRECISION_HINT=f32: OpenVINO would otherwise run them in bf16 on CPUs that have it
(AVX-512 BF16, AMX), which changes probabilities beyond what an fp32 kernel does. A compiled model
is thread-safe; an infer request is not, so each thread gets its own (thread_safe = True).
`openvino` is imported only in `available()` and `load()`: the base install never needs it.

One `Core` serves the whole process (`core()`). OpenVINO's CPU plugin, when a Core loads it, gives the
calling thread a new signal stack (for AMX state) and puts the old one back when that Core goes, but
only if its own is still current: two Cores released out of order leave the thread on an unmapped
stack, and the next Ctrl-C or SIGTERM crashes the process with a segmentation fault instead of ending
the run (seen on an AMX Xeon with openvino 2026.4; tests/test_backends_openvino.py). A Core that is
never released cannot do that.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from usedge.errors import BackendUnavailable, ModelError
from usedge.runtime.backends.base import Backend, TensorSpec

PACKAGE = "openvino (pip install 'usedge[openvino]')"


def _ov():
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable("openvino is not installed", hint=f"install {PACKAGE}") from exc
    return openvino


_CORE = None
_CORE_LOCK = threading.Lock()


def core():
    """The process's one OpenVINO Core, created on first use and kept (see the module's docstring)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = _ov().Core()
        return _CORE


def _spec(port, names: frozenset = frozenset()) -> TensorSpec:
    """A port's spec under the model file's own tensor name: compiling can give a port a second name (an FP16
    model's `probs` also became `node_softmax_output_cast_0`), and get_any_name may pick either."""
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    name = min((n for n in port.get_names() if n in names), default=port.get_any_name())
    return TensorSpec(name, np.dtype(port.get_element_type().to_dtype()).name, shape)


class OpenVINOBackend(Backend):
    """OpenVINO CPU plugin with the latency hint."""

    name = "openvino"
    artifact = "onnx"
    thread_safe = True

    def __init__(self, threads: int | None = None, **_ignored) -> None:
        super().__init__()
        self.threads = threads          # INFERENCE_NUM_THREADS; None: OpenVINO's choice
        self.compiled = None
        self._requests = threading.local()

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            ov = _ov()
        except BackendUnavailable as exc:
            return False, f"{exc.message}: pip install 'usedge[openvino]'"
        try:
            if "CPU" not in core().available_devices:
                return False, f"openvino {ov.__version__} sees no CPU device"
        except Exception as exc:  # a broken plugin install: its first line says what
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:160]
            return False, f"openvino {ov.__version__} cannot start ({type(exc).__name__}{': ' + first if first else ''})"
        return True, f"openvino {ov.__version__} CPU"

    def config(self, precision: str) -> dict:
        """The compile configuration: latency hint, threads, f32 kept f32."""
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        return config

    def load(self, path: str | Path) -> "OpenVINOBackend":
        ov = _ov()
        self.path = Path(path)
        try:
            model = core().read_model(str(self.path))
            framework = model.get_rt_info(["framework"]).astype(dict) if model.has_rt_info(["framework"]) else {}
            self.metadata = {k: v.astype(str) for k, v in framework.items()}
            precision = "fp16" if self.path.name.endswith(".fp16.onnx") else self.metadata.get("precision", "fp32")
            self.compiled = core().compile_model(model, "CPU", self.config(precision))
        except BackendUnavailable:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError/GeneralFailure with multi-line text
            # its first line is often only "Exception from src/inference/src/cpp/core.cpp:84:": take the first
            # line that says something
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = next((ln for ln in lines if not (ln.startswith("Exception from ") and ln.endswith(":"))),
                         lines[0] if lines else type(exc).__name__)[:200]
            raise ModelError(f"OpenVINO cannot load this model ({first})", path=self.path,
                             hint="re-export it with `usedge export`, or use --backend ort-cpu") from exc
        declared = frozenset(n for port in (*model.inputs, *model.outputs) for n in port.get_names())
        self.inputs = [_spec(p, declared) for p in self.compiled.inputs]
        self.outputs = [_spec(p, declared) for p in self.compiled.outputs]
        if len(self.inputs) != 1:
            raise ModelError(f"model has {len(self.inputs)} inputs, expected 1", path=self.path,
                             hint="export with `usedge export`")
        self.providers = [f"openvino {ov.__version__} CPU"]
        return self

    def _request(self):
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        return request

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        request = self._request()
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        # copies: the request's output buffers are reused by its next call
        return {spec.name: request.get_output_tensor(i).data.copy() for i, spec in enumerate(self.outputs)}

    def release(self) -> None:
        self._requests = threading.local()
        self.compiled = None
