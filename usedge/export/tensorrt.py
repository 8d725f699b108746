"""model.fp16.onnx -> TensorRT engine (strongly typed network) + sidecar JSON, on the target GPU.

TensorRT 10/11 Python API: the network is created STRONGLY_TYPED, so TensorRT computes in exactly
the types the FP16 ONNX carries (FP16 convolutions, FP32 softmax/resize/mean, FP32 I/O); TensorRT
11 removed BuilderFlag.FP16 and this path works on 10.x and 11.x alike. One optimisation profile
(batch min 1 / opt / max), a timing cache file reused across builds, builder optimisation level
(0..5, TensorRT default 3) and a workspace memory-pool limit in MiB.

The engine is named model.<gpu-slug>.sm<cc>.trt<major.minor>.engine and written atomically with
its sidecar (usedge.runtime.engine_sidecar). TensorRT is imported lazily: without it (or without a
GPU) `build_engine` raises BackendUnavailable with the command to run on the target machine.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from usedge.errors import BackendUnavailable, ConfigError, ModelError
from usedge.fileio import sha256_bytes, sha256_file, write_bytes_atomic
from usedge.export.onnx_export import read_model_info
from usedge.runtime.engine_sidecar import EngineSidecar, engine_filename, local_target, write_sidecar

BUILD_ELSEWHERE = ("copy the export folder to the GPU machine and run there: "
                   "usedge export CHECKPOINT --out DIR --engine (needs pip install tensorrt and 'usedge[gpu]')")


def tensorrt_available() -> tuple[bool, str]:
    """(True, 'TensorRT x on GPU') or (False, why not) — never raises."""
    try:
        gpu, cc, version = local_target()
    except BackendUnavailable as exc:
        return False, exc.message
    except Exception as exc:  # a broken driver install: say so, do not crash the export
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"TensorRT {version} on {gpu} (sm_{cc.replace('.', '')})"


def _strongly_typed_flags(trt) -> int:
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is None:
        raise BackendUnavailable(f"TensorRT {trt.__version__} has no strongly typed networks",
                                 hint="install TensorRT 10.x or newer")
    flags |= 1 << int(strongly)
    return flags


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    max_batch: int = 8,
    opt_batch: int = 1,
    optimization_level: int = 3,
    workspace_mib: int = 1024,
    timing_cache: str | Path | None = None,
    stem: str = "model",
) -> tuple[Path, EngineSidecar]:
    """Build and write the engine + sidecar into out_dir; returns (engine path, sidecar)."""
    if not 1 <= opt_batch <= max_batch:
        raise ConfigError(f"batch profile min 1 / opt {opt_batch} / max {max_batch} is not ordered",
                          hint="pass 1 <= --opt-batch <= --max-batch")
    if not 0 <= optimization_level <= 5:
        raise ConfigError(f"builder optimisation level {optimization_level} is outside 0..5", hint="use 0..5 (default 3)")
    ok, why = tensorrt_available()
    if not ok:
        raise BackendUnavailable(f"cannot build a TensorRT engine here: {why}", hint=BUILD_ELSEWHERE)
    import tensorrt as trt

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    gpu, cc, version = local_target()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse the ONNX: {errors[:300]}", path=onnx_path,
                         hint="re-export with usedge export; check the TensorRT version supports opset 18")
    if network.num_inputs != 1:
        raise ModelError(f"ONNX has {network.num_inputs} inputs, expected 1", path=onnx_path,
                         hint="export it with usedge export")
    image = network.get_input(0)
    sample = tuple(int(d) for d in image.shape[1:])
    shapes = {"min": [1, *sample], "opt": [opt_batch, *sample], "max": [max_batch, *sample]}

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    config.builder_optimization_level = int(optimization_level)
    profile = builder.create_optimization_profile()
    profile.set_shape(image.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        previous = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(previous)
        # a cache from another GPU/TensorRT is refused (ignore_mismatch=False): start a fresh one
        if cache is None or config.set_timing_cache(cache, ignore_mismatch=False) is False:
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - started
    if plan is None:
        raise ModelError("TensorRT returned no engine", path=onnx_path,
                         hint="rerun with --debug for the builder log; if it mentions memory raise --workspace-mib")
    data = bytes(memoryview(plan))
    engine_path = out_dir / engine_filename(gpu, cc, version, stem)
    write_bytes_atomic(engine_path, data)
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))

    sidecar = EngineSidecar(
        gpu_name=gpu, compute_capability=cc, trt_version=str(version), precision="fp16",
        input_name=image.name, input_shapes=shapes,
        outputs=[network.get_output(i).name for i in range(network.num_outputs)],
        source_onnx=onnx_path.name, source_onnx_sha256=sha256_file(onnx_path), engine_sha256=sha256_bytes(data),
        builder={"strongly_typed": True, "optimization_level": int(optimization_level),
                 "workspace_mib": int(workspace_mib), "timing_cache": str(cache_path) if cache_path else "",
                 "build_s": round(build_s, 2)},
        model_info=read_model_info(onnx_path).to_json(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    write_sidecar(engine_path, sidecar)
    return engine_path, sidecar
