"""The rows of the benchmark: one runner per backend x precision, each a tiny load / infer / close object.

A runner takes a float32 N x 1 x S x S batch and returns the model's outputs; everything heavy
(torch, onnxruntime providers, openvino, TensorRT) is imported when the runner is made, and a row
that cannot run here carries the reason instead of numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from usedge.errors import BackendUnavailable, ModelError, UsedgeError
from usedge.fileio import sha256_file
from usedge.runtime.model_info import ModelInfo


@dataclass
class Runner:
    """A loaded engine: infer(batch) runs the model; close() frees it; note says what runs."""

    infer: Callable[[np.ndarray], object]
    close: Callable[[], None] = lambda: None
    note: str = ""


@dataclass
class EngineSpec:
    """One row: `make()` loads it (or raises BackendUnavailable / ModelError with the reason)."""

    key: str                      # e.g. "ort-cpu/int8"
    backend: str                  # torch-eager | ort-cpu | openvino | ort-cuda | ort-trt | tensorrt | torch-cuda
    precision: str                # fp32 | fp16 | int8
    path: Path | None
    make: Callable[[], Runner] = field(repr=False, default=None)
    device: str = "cpu"


def read_model_info(onnx_path: Path) -> ModelInfo:
    """The usedge ModelInfo stored in an ONNX file's metadata, read as the runtime reads it."""
    from usedge.runtime.backends import create_backend
    from usedge.runtime.model_info import model_info_from_metadata

    with create_backend("ort-cpu", opt_level="disable").load(onnx_path) as backend:
        return model_info_from_metadata(backend.metadata, onnx_path)


# -- onnxruntime ------------------------------------------------------------------------------
def _ort_runner(name: str, path: Path, threads: int | None) -> Runner:
    from usedge.runtime.backends import create_backend

    # not spinning, unlike the runtime's default: the rows run in interleaved rounds, and a spinning session's
    # workers would busy-wait into the next row's calls (measured: the OpenVINO rows slowed beside it);
    # back to back, the spin changes little (benchmarks/spin_paced.py)
    backend = create_backend(name, threads=threads, spinning=False, opt_level="all")
    backend.load(path)
    return Runner(backend.infer, backend.close, backend.describe())


# -- OpenVINO ---------------------------------------------------------------------------------
def openvino_available() -> tuple[bool, str]:
    try:
        import openvino
    except ImportError:
        return False, "openvino is not installed (pip install openvino)"
    return True, f"openvino {openvino.__version__}"


def _openvino_runner(path: Path, threads: int | None, precision: str) -> Runner:
    import openvino as ov

    from usedge.runtime.backends.openvino import core

    config = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision == "fp32":     # never let it drop to bf16/fp16 on CPUs that have them
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core().compile_model(core().read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def infer(batch: np.ndarray):
        # dynamic batch axis: the request takes any batch; outputs are views into OpenVINO's buffers
        request.infer({0: batch}, share_inputs=True)
        return [request.get_output_tensor(i).data for i in range(len(compiled.outputs))]

    return Runner(infer, lambda: None, f"openvino {ov.__version__} CPU, {threads or 'auto'} threads")


# -- torch --------------------------------------------------------------------------------------
def find_checkpoint(model_dir: Path, info: ModelInfo) -> Path | None:
    """The checkpoint the ONNX was exported from, when it lies beside it (or one folder up).

    With a recorded checkpoint sha256 only a file with that hash counts; without one, model.pt beside.
    """
    candidates = [p for d in (model_dir, model_dir.parent) for p in sorted(d.glob("*.pt"))]
    if info.checkpoint_sha256:
        for p in candidates:
            if p.stat().st_size < 2 << 30 and sha256_file(p) == info.checkpoint_sha256:
                return p
        return None
    beside = model_dir / "model.pt"
    return beside if beside.is_file() else None


def torch_model(model_dir: Path, info: ModelInfo, device: str = "cpu"):
    """(eval model wrapped like the export — softmax, CAM when the ONNX has it —, note)."""
    import torch

    from usedge.train.checkpoint import load_checkpoint
    from usedge.train.model import build_model

    ckpt = find_checkpoint(model_dir, info)
    if ckpt is not None:
        model, _ = load_checkpoint(ckpt)
        note = f"weights from {ckpt.name}"
    else:   # latency does not depend on the weights
        torch.manual_seed(0)
        model = build_model(info.arch, num_classes=len(info.class_names))
        note = f"no checkpoint beside the ONNX: {info.arch} rebuilt from the ONNX metadata with random weights"
    try:
        from usedge.export.wrapper import ExportModel
        model = ExportModel(model, with_cam="cam" in info.outputs)
        note += ", softmax" + (" + CAM" if "cam" in info.outputs else "") + " as in the ONNX"
    except (ImportError, UsedgeError):
        note += ", logits only"
    return model.eval().to(device), note


def torch_available(cuda: bool = False) -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (pip install 'usedge[train]')"
    if cuda and not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA GPU"
    return True, f"torch {torch.__version__}"


def _torch_runner(model_dir: Path, info: ModelInfo, threads: int | None, device: str, precision: str) -> Runner:
    import torch

    if threads and device == "cpu":
        torch.set_num_threads(int(threads))
    model, note = torch_model(model_dir, info, device)
    if precision == "fp16":
        model = model.half()
    dtype = torch.float16 if precision == "fp16" else torch.float32

    def infer(batch: np.ndarray):
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device=device, dtype=dtype)
            out = model(x)
            outs = out if isinstance(out, tuple) else (out,)
            return [o.float().cpu().numpy() for o in outs]   # the copy back is part of the latency

    n = torch.get_num_threads()
    threads_note = f", {n} thread{'s' if n > 1 else ''}" if device == "cpu" else f", {torch.cuda.get_device_name()}"
    return Runner(infer, lambda: None, f"torch {torch.__version__} eager {device}{threads_note}; {note}")


# -- the rows ---------------------------------------------------------------------------------
def _first(model_dir: Path, pattern: str) -> Path | None:
    found = sorted(model_dir.glob(pattern))
    return found[0] if found else None


def engine_specs(model_dir: Path, info: ModelInfo, threads: int | None) -> list[tuple[EngineSpec, str | None]]:
    """Every row this benchmark knows, each with None (can run) or the reason it cannot run here."""
    from usedge.runtime.backends import BACKENDS

    fp32, int8 = model_dir / "model.onnx", model_dir / "model.int8.onnx"
    fp16, engine = model_dir / "model.fp16.onnx", _first(model_dir, "*.engine")
    rows: list[tuple[EngineSpec, str | None]] = []

    def add(spec: EngineSpec, why: str | None, path: Path | None) -> None:
        if why is None and path is not None and not path.is_file():
            why = f"{path.name} not in {model_dir}"
        rows.append((spec, why))

    ok, why = torch_available()
    add(EngineSpec("torch-eager/fp32", "torch-eager", "fp32", None,
                   lambda: _torch_runner(model_dir, info, threads, "cpu", "fp32")), None if ok else why, None)
    for prec, path in (("fp32", fp32), ("int8", int8)):
        add(EngineSpec(f"ort-cpu/{prec}", "ort-cpu", prec, path,
                       lambda p=path: _ort_runner("ort-cpu", p, threads)), None, path)
    ok, why = openvino_available()
    for prec, path in (("fp32", fp32), ("int8", int8)):
        add(EngineSpec(f"openvino/{prec}", "openvino", prec, path,
                       lambda p=path, q=prec: _openvino_runner(p, threads, q)), None if ok else why, path)
    # GPU rows
    ok, why = torch_available(cuda=True)
    for prec in ("fp32", "fp16"):
        add(EngineSpec(f"torch-cuda/{prec}", "torch-cuda", prec, None,
                       lambda q=prec: _torch_runner(model_dir, info, None, "cuda", q), device="cuda"),
            None if ok else why, None)
    for name, prec, path in (("ort-cuda", "fp32", fp32), ("ort-cuda", "fp16", fp16), ("ort-trt", "fp16", fp32)):
        ok, why = BACKENDS[name].available()
        add(EngineSpec(f"{name}/{prec}", name, prec, path,
                       lambda n=name, p=path: _ort_runner(n, p, None), device="cuda"), None if ok else why, path)
    ok, why = BACKENDS["tensorrt"].available()
    if ok and engine is None:
        why = f"no .engine in {model_dir} (usedge export --engine on this GPU)"
    add(EngineSpec("tensorrt/fp16", "tensorrt", "fp16", engine,
                   lambda: _ort_runner("tensorrt", engine, None), device="cuda"), None if ok else why, engine)
    return rows


def make_runner(spec: EngineSpec) -> tuple[Runner | None, str | None]:
    """Load a row; (runner, None) or (None, one-line reason it failed)."""
    try:
        return spec.make(), None
    except (BackendUnavailable, ModelError, UsedgeError) as exc:
        return None, exc.one_line()
    except Exception as exc:  # a third-party engine refusing this model: a row, not a crash
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"


__all__ = ["EngineSpec", "Runner", "engine_specs", "make_runner", "read_model_info", "find_checkpoint"]
