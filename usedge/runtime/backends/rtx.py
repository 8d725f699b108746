"""TensorRT for RTX on the plain (CPU) onnxruntime: NVIDIA's plugin execution provider, from pip only.

    pip install 'usedge[rtx]'    # onnxruntime >= 1.24 + onnxruntime-ep-nv-tensorrt-rtx-cu13 (CUDA 13 driver)
    pip install onnxruntime-ep-nv-tensorrt-rtx-cu12               # instead, for a CUDA 12 driver

The plugin package (module `onnxruntime_ep_nv_tensorrt_rtx`) bundles libtensorrt_rtx, its ONNX parser
and the CUDA runtime beside `libonnxruntime_providers_nv_tensorrt_rtx.so`. It is registered with
`onnxruntime.register_execution_provider_library`, its device is taken from `onnxruntime.get_ep_devices()`
and given to the session with `SessionOptions.add_provider_for_devices` (ONNX Runtime's plugin-EP API;
NVIDIA's "TensorRT-RTX-EP-ABI" integration guide). Unlike onnxruntime-gpu it does not replace the
`onnxruntime` module, so the base install keeps working.

Precision: TensorRT for RTX builds strongly typed networks and its 0.5.0 options have no FP16 switch;
the FP16 model is `model.fp16.onnx` (FP16 compute, FP32 I/O). Compiled kernels are cached in
`.trt-rtx-cache/` beside the model (option nv_runtime_cache_path), so the second start is fast.
Supported GPUs (plugin 0.5.0, `IsComputeCapabilitySupported` in its tensorrt_rtx_provider_options.h):
compute capability 8.6, 8.9 and 12.0 or newer (RTX 30xx/40xx/50xx class), not 9.0 (Hopper).

The backend itself is one row of the onnxruntime table (`RTX_ROW`): register first, then a session.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

from usedge.errors import BackendUnavailable
from usedge.runtime.backends.ort import OrtProvider, import_onnxruntime, cuda_driver_present, engine_cache

EP_NAME = "NvTensorRTRTXExecutionProvider"
PLUGIN_MODULE = "onnxruntime_ep_nv_tensorrt_rtx"
PLUGIN_PACKAGES = ("onnxruntime-ep-nv-tensorrt-rtx-cu13", "onnxruntime-ep-nv-tensorrt-rtx-cu12")
MIN_ORT = (1, 24)
INSTALL = "pip install 'usedge[rtx]' (CUDA 13 driver) or pip install onnxruntime-ep-nv-tensorrt-rtx-cu12"
CACHE_DIR = ".trt-rtx-cache"

_registered: dict[str, str] = {}   # library path -> registration name (onnxruntime refuses a second registration)


def version_tuple(text: str) -> tuple[int, ...]:
    """'1.24.2' -> (1, 24, 2); stops at the first part that is not a number ('1.25.0.dev1' -> (1, 25, 0))."""
    out = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def compute_capability_supported(major: int, minor: int) -> bool:
    """What plugin 0.5.0 accepts: 8.6, 8.9, and 12.0 or newer."""
    return (major, minor) in {(8, 6), (8, 9)} or major >= 12


def nvidia_gpus() -> list[tuple[str, int, int]]:
    """(name, major, minor) of every visible NVIDIA GPU, asked from the driver (libcuda) without torch."""
    lib = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None or lib.cuInit(0) != 0:
        return []
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    gpus = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        buf = ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(dev), i) != 0:
            continue
        lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)   # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)   # ..._MINOR
        lib.cuDeviceGetName(buf, 256, dev)
        gpus.append((buf.value.decode(errors="replace"), major.value, minor.value))
    return gpus


def plugin_library() -> Path:
    """Path of the plugin's shared library from the installed package, or BackendUnavailable saying what to install."""
    if importlib.util.find_spec(PLUGIN_MODULE) is None:
        raise BackendUnavailable("the TensorRT for RTX plugin is not installed", hint=INSTALL)
    try:
        import onnxruntime_ep_nv_tensorrt_rtx as plugin

        return Path(plugin.get_library_path())
    except (ImportError, OSError) as exc:   # FileNotFoundError: an incomplete install
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailable(f"the TensorRT for RTX plugin is broken ({first})",
                                 hint=f"reinstall it: pip install --force-reinstall {PLUGIN_PACKAGES[0]}") from exc


def register_plugin(library: str | Path | None = None) -> str:
    """Register the plugin library with onnxruntime (once per process); returns the registration name."""
    ort = import_onnxruntime()
    if version_tuple(ort.__version__) < MIN_ORT:
        raise BackendUnavailable(f"onnxruntime {ort.__version__} cannot load plugin execution providers "
                                 f"(needs >= {'.'.join(map(str, MIN_ORT))})", hint="pip install -U 'onnxruntime>=1.24'")
    path = Path(library) if library is not None else plugin_library()
    key = str(path.resolve())
    if key in _registered:
        return _registered[key]
    if not path.is_file():
        raise BackendUnavailable("TensorRT for RTX plugin library not found", path=path, hint=INSTALL)
    name = EP_NAME if not _registered else f"{EP_NAME}.{len(_registered)}"
    try:
        ort.register_execution_provider_library(name, key)
    except Exception as exc:  # onnxruntime raises its own Fail type
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailable(f"onnxruntime could not load the TensorRT for RTX plugin ({first})", path=path,
                                 hint=f"reinstall it ({INSTALL}) and check the NVIDIA driver with `usedge doctor`") from exc
    _registered[key] = name
    return name


def rtx_devices(device_id: int = 0) -> list:
    """The plugin's OrtEpDevice number `device_id` among the supported GPUs it lists (after register_plugin),
    as add_provider_for_devices wants it."""
    ort = import_onnxruntime()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise BackendUnavailable("the TensorRT for RTX plugin found no supported GPU",
                                 hint="it runs on compute capability 8.6, 8.9 or 12.x (RTX 30xx/40xx/50xx class)")
    if device_id >= len(devices):
        raise BackendUnavailable(f"GPU {device_id} asked for, but the TensorRT for RTX plugin sees {len(devices)} "
                                 "supported GPU(s)", hint="pick a device id from `nvidia-smi -L` that is RTX-class")
    return [devices[device_id]]


def availability() -> tuple[bool, str]:
    """(True, what runs) or (False, exactly why not and what to install); registers the plugin only when all else fits."""
    try:
        ort = import_onnxruntime()
    except BackendUnavailable as exc:
        return False, exc.one_line()
    if version_tuple(ort.__version__) < MIN_ORT:
        return False, f"onnxruntime {ort.__version__} < 1.24 has no plugin execution providers — pip install -U 'onnxruntime>=1.24'"
    if importlib.util.find_spec(PLUGIN_MODULE) is None:
        return False, f"TensorRT for RTX plugin not installed — {INSTALL}"
    ok, why = cuda_driver_present()
    if not ok:
        return False, why
    gpus = nvidia_gpus()
    if not gpus:
        return False, "NVIDIA driver found but it reports no GPU (cuInit failed or no device visible)"
    name, major, minor = gpus[0]
    if not compute_capability_supported(major, minor):
        return False, (f"{name} has compute capability {major}.{minor}, which TensorRT for RTX does not support "
                       "(8.6, 8.9, 12.x) — use ort-cuda (onnxruntime-gpu) or native TensorRT on this GPU")
    try:
        register_plugin()
        rtx_devices()
    except BackendUnavailable as exc:
        return False, exc.one_line()
    return True, f"TensorRT for RTX plugin on {name} (sm_{major}{minor}), onnxruntime {ort.__version__}"


def cache_folder(model: Path) -> Path:
    """`.trt-rtx-cache/` beside the model, or a temp folder when the model's folder is read-only."""
    return engine_cache(model.parent / CACHE_DIR, "usedge-trt-rtx-cache")


def provider_options(cache: Path, cuda_graph: bool = False) -> dict[str, str]:
    """Session provider options (all strings, as onnxruntime passes them to a plugin). The GPU is the
    OrtEpDevice given with them, so no device_id here."""
    return {"nv_runtime_cache_path": str(cache), "enable_cuda_graph": "1" if cuda_graph else "0"}


def session_options_for(model: Path, device_id: int = 0, cuda_graph: bool = False, base=None,
                        cache: str | Path | None = None):
    """SessionOptions with the plugin registered and its device added (`base`: options to extend;
    `cache`: the runtime-cache folder, default `.trt-rtx-cache/` beside the model)."""
    ort = import_onnxruntime()
    register_plugin()
    so = base if base is not None else ort.SessionOptions()
    folder = Path(cache) if cache is not None else cache_folder(model)
    folder.mkdir(parents=True, exist_ok=True)
    so.add_provider_for_devices(rtx_devices(device_id), provider_options(folder, cuda_graph))
    return so


#: ort-trt-rtx as a row of the one onnxruntime backend: availability from `availability()`, the plugin
#: registered and its device added to the session options, no provider list.
RTX_ROW = OrtProvider(
    "ort-trt-rtx", EP_NAME, lambda b: None, package=INSTALL, check=availability,
    configure=lambda b, so: session_options_for(b.path, b.device_id, base=so, cache=b.cache_dir))
