"""Native TensorRT (10/11 tensor API) with cuda-python buffers, one CUDA stream and pinned host memory.

Life of one call: numpy batch -> pinned host input -> cudaMemcpyAsync H2D -> execute_async_v3 ->
D2H into pinned outputs -> stream sync -> copies returned. Buffers are allocated for the engine's
largest profile batch once at load and reused. cuda-python (`cuda.bindings`) rather than pycuda:
its calls are context-free, so a capture thread beside the inference thread is safe (NVIDIA's own
samples switched to it in TensorRT 10.13).

Runs only where an NVIDIA GPU, TensorRT and cuda-python exist; every import is lazy.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from usedge.errors import BackendUnavailable, ModelError
from usedge.runtime.backends.base import Backend, TensorSpec
from usedge.runtime.engine_sidecar import check_engine_compatible as _check_sidecar, local_target


def _cudart():
    """cuda-python's runtime module under its 12.x/13.x name or the older one."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendUnavailable("cuda-python is not installed",
                                     hint="pip install 'usedge[gpu]' (cuda-python)") from exc
    return cudart


def _trt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed",
                                 hint="pip install tensorrt, or use NVIDIA's container/JetPack build") from exc
    return tensorrt


def _check(result):
    """cuda-python returns (err, *values): raise on error, return the values."""
    err, *values = result
    code = getattr(err, "value", err)
    if code != 0:
        cudart = _cudart()
        _, name = cudart.cudaGetErrorName(err)
        raise BackendUnavailable(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}",
                                 hint="check the GPU and driver with `usedge doctor` / nvidia-smi")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


class _Buffer:
    """One I/O tensor: pinned host array + device allocation of the same byte size."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        cudart = _cudart()
        self.dtype = np.dtype(dtype)
        self.capacity = int(np.prod(shape)) * self.dtype.itemsize
        self.host_ptr = _check(cudart.cudaMallocHost(self.capacity))
        ctype = ctypes.c_byte * self.capacity
        raw = np.ctypeslib.as_array(ctype.from_address(int(self.host_ptr)))
        self.host = raw.view(self.dtype)            # flat pinned view, reshaped per call
        self.device = _check(cudart.cudaMalloc(self.capacity))

    def free(self) -> None:
        cudart = _cudart()
        if self.device is not None:
            cudart.cudaFree(self.device)
            self.device = None
        if self.host_ptr is not None:
            cudart.cudaFreeHost(self.host_ptr)
            self.host_ptr = None


class TensorRTBackend(Backend):
    """A serialized TensorRT engine (`*.engine`/`*.plan`) with its sidecar."""

    name = "tensorrt"
    artifact: ClassVar[str] = "engine"

    def __init__(self, device_id: int = 0, **_: object) -> None:
        super().__init__()
        self.device_id = device_id
        self.engine = self.context = self.stream = None
        self.buffers: dict[str, _Buffer] = {}
        self.max_batch = 1

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            trt = _trt()
            cudart = _cudart()
        except BackendUnavailable as exc:
            return False, exc.message
        major = int(str(trt.__version__).split(".")[0])
        if major < 10:
            return False, f"TensorRT {trt.__version__} is too old (the tensor API needs 10 or newer)"
        err, count = cudart.cudaGetDeviceCount()
        if getattr(err, "value", err) != 0 or count == 0:
            return False, "no CUDA device visible"
        return True, f"TensorRT {trt.__version__}, {count} CUDA device(s)"

    def load(self, path: str | Path) -> "TensorRTBackend":
        ok, why = self.available()
        if not ok:
            raise BackendUnavailable(f"backend tensorrt cannot run here: {why}",
                                     hint="run the .onnx with --backend ort-cpu, or see `usedge doctor`")
        trt, cudart = _trt(), _cudart()
        self.path = Path(path)
        # refuse an engine built for another GPU / TensorRT before TensorRT fails obscurely
        gpu, cc, version = local_target(self.device_id)
        sidecar = _check_sidecar(self.path, gpu, cc, version, engine_path=self.path)
        self.metadata = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in sidecar.to_dict().items()}
        _check(cudart.cudaSetDevice(self.device_id))
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelError("TensorRT could not deserialize this engine", path=self.path,
                             hint="rebuild it on this machine with `usedge export --engine`")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ModelError(f"engine has {len(inputs)} inputs, expected 1", path=self.path,
                             hint="build it from a usedge ONNX with `usedge export --engine`")
        def spec(n: str) -> TensorSpec:   # -1: a dynamic dimension
            return TensorSpec(n, np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))).name,
                              tuple(None if int(d) < 0 else int(d) for d in self.engine.get_tensor_shape(n)))

        self.inputs = [spec(inputs[0])]
        self.outputs = [spec(n) for n in names if n not in inputs]
        in_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if in_shape[0] == -1:  # dynamic batch: size buffers for the profile's maximum
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        else:
            self.max_batch = int(in_shape[0])
        self._in_sample = tuple(int(d) for d in in_shape[1:])
        self.context.set_input_shape(self.input_name, (self.max_batch, *self._in_sample))
        for n in names:
            shape = tuple(self.context.get_tensor_shape(n))
            buf = _Buffer(shape, trt.nptype(self.engine.get_tensor_dtype(n)))
            self.buffers[n] = buf
            self.context.set_tensor_address(n, int(buf.device))
        self.providers = [f"TensorRT {trt.__version__}", f"cuda:{self.device_id}"]
        return self

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cudart = _cudart()
        n = batch.shape[0]
        if n > self.max_batch:  # split what the engine profile cannot take at once
            parts = [self.infer(batch[i:i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        self.context.set_input_shape(self.input_name, (n, *self._in_sample))
        src = self.buffers[self.input_name]
        flat = np.ascontiguousarray(batch, dtype=src.dtype).reshape(-1)
        src.host[:flat.size] = flat
        H2D, D2H = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(src.device, src.host_ptr, flat.nbytes, H2D, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise ModelError("TensorRT execute_async_v3 failed", path=self.path,
                             hint="rerun with --debug; rebuild the engine with `usedge export --engine`")
        shapes = {}
        for name in self.output_names:
            buf = self.buffers[name]
            shapes[name] = tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shapes[name])) * buf.dtype.itemsize
            _check(cudart.cudaMemcpyAsync(buf.host_ptr, buf.device, nbytes, D2H, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        out = {}
        for name in self.output_names:
            size = int(np.prod(shapes[name]))
            out[name] = self.buffers[name].host[:size].reshape(shapes[name]).astype(np.float32, copy=True)
        return out

    def release(self) -> None:
        for buf in self.buffers.values():
            buf.free()
        self.buffers = {}
        if self.stream is not None:
            _cudart().cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = None
