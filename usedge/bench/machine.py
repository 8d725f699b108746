"""What machine and which library versions a benchmark ran on (recorded in every result)."""

from __future__ import annotations

import importlib
import os
import platform
import sys

from usedge.bench.stats import load_average
from usedge.runtime.cpu import CPU_FLAGS, cpu_model  # noqa: F401 - re-exported for benchmarks

LIBRARIES = ("numpy", "onnxruntime", "cv2", "onnx", "torch", "openvino", "tensorrt", "pydicom")


def library_versions() -> dict[str, str | None]:
    """Version of each library the benchmark may use; None when it is not installed.

    Only libraries already imported, or cheap to import, are asked: torch is read from package
    metadata so the lean install never pays for importing it here.
    """
    from importlib import metadata

    out: dict[str, str | None] = {}
    dist = {"cv2": "opencv-python-headless", "torch": "torch", "tensorrt": "tensorrt", "openvino": "openvino"}
    for lib in LIBRARIES:
        if lib in sys.modules:
            out[lib] = getattr(sys.modules[lib], "__version__", None)
            continue
        try:
            out[lib] = metadata.version(dist.get(lib, lib))
        except metadata.PackageNotFoundError:
            if lib == "cv2":
                try:
                    out[lib] = importlib.import_module("cv2").__version__
                except ImportError:
                    out[lib] = None
            else:
                out[lib] = None
    return out


def machine_info() -> dict:
    name, flags = cpu_model()
    gpu = None
    try:
        import subprocess
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        gpu = res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, Exception):
        gpu = None
    return {"cpu": name, "cpu_flags": flags, "cores": os.cpu_count(), "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_start": load_average(), "libraries": library_versions()}
