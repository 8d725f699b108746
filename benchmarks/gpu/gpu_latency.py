"""Latency rows of the GPU check: the model at batch 1/8/32 on every engine this machine has.

Each row is {"engine", "precision", "batch", "median_ms", "p90_ms", "per_image_ms", "n"} or, for an
engine that cannot run here, {"engine", "precision", "skipped": reason}. torch rows time the plain
model (logits) on a device-resident input, synchronising after every call; onnxruntime/TensorRT rows go
through usedge's runtime backends (host input and output, as the bedside runs them).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from usedge.bench.stats import latency_stats


def _timed(fn, sync, warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t) * 1e3)
    return latency_stats(samples)


def _row(engine: str, precision: str, batch: int, stats: dict, **extra) -> dict:
    return {"engine": engine, "precision": precision, "batch": batch, "median_ms": stats["median"],
            "p90_ms": stats["p90"], "per_image_ms": round(stats["median"] / batch, 4), "n": stats["n"], **extra}


def _torch_rows(device: str, sizes: dict, dry: bool, log, deadline: float) -> list[dict]:
    import torch

    from usedge.train.model import build_model

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    base = build_model("ag_resnet18", 3, "sigmoid").eval()
    s, warm, iters = sizes["lat_size"], sizes["warmup"], sizes["iters"]
    fp32 = copy_to(base, dev, torch.float32)
    half = torch.float16 if cuda else torch.bfloat16   # CPU fp16 convolutions are not a thing to time
    fp16 = copy_to(base, dev, half)
    hname = "fp16" if cuda else "bf16"
    rows = []
    for b in sizes["batches"]:
        x32 = torch.randn(b, 1, s, s, device=dev).contiguous(memory_format=torch.channels_last)
        x16 = x32.to(half)
        with torch.inference_mode():
            rows.append(_row("torch eager", "fp32", b, _timed(lambda: fp32(x32), sync, warm, iters)))
            rows.append(_row("torch eager", hname, b, _timed(lambda: fp16(x16), sync, warm, iters)))
        if time.monotonic() > deadline:
            log("latency: time budget reached after torch eager")
            return rows
    # CUDA graph replay: one capture per batch size, the input copied into the captured buffer
    if cuda:
        for b in sizes["batches"]:
            try:
                rows.append(_row("torch CUDA graph", hname, b, _graph_replay(fp16, b, s, half, sync, warm, iters)))
            except Exception as exc:  # a capture that fails is this row's result, not the step's
                rows.append({"engine": "torch CUDA graph", "precision": hname, "batch": b, "skipped": _why(exc)})
    else:
        rows.append({"engine": "torch CUDA graph", "precision": "fp16", "skipped": "needs a CUDA device"})
    # torch.compile: inductor on the GPU; in the dry run the tracing path only (no C++ build on a shared CPU)
    backend = "inductor" if cuda else "aot_eager"
    compiled = torch.compile(fp16, backend=backend, dynamic=False)
    for b in sizes["batches"]:
        if time.monotonic() > deadline:
            rows.append({"engine": "torch.compile", "precision": hname, "batch": b, "skipped": "time budget"})
            continue
        x16 = torch.randn(b, 1, s, s, device=dev, dtype=half).contiguous(memory_format=torch.channels_last)
        try:
            t = time.perf_counter()
            with torch.inference_mode():
                compiled(x16)
                sync()
                first = time.perf_counter() - t
                rows.append(_row("torch.compile", hname, b, _timed(lambda: compiled(x16), sync, warm, iters),
                                 backend=backend, compile_s=round(first, 1)))
        except Exception as exc:
            rows.append({"engine": "torch.compile", "precision": hname, "batch": b, "skipped": _why(exc)})
    return rows


def _why(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())[:300]


def _graph_replay(model, b: int, s: int, dtype, sync, warm: int, iters: int) -> dict:
    import torch

    static = torch.randn(b, 1, s, s, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):
            model(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        model(static)
    return _timed(graph.replay, sync, warm, iters)


def copy_to(model, dev, dtype):
    import copy

    import torch

    return copy.deepcopy(model).to(dev, dtype=dtype, memory_format=torch.channels_last)


def _runtime_rows(models: Path | None, sizes: dict, log, deadline: float) -> list[dict]:
    """onnxruntime CPU (reference), ORT-CUDA, TensorRT for RTX, native TensorRT through usedge's backends."""
    from usedge.runtime.backends import BACKENDS, create_backend

    rows = []
    if models is None or not (models / "model.onnx").is_file():
        return [{"engine": n, "skipped": "no exported model (export step did not run)"}
                for n in ("ort-cpu", "ort-cuda", "ort-trt-rtx", "tensorrt")]
    s = sizes["lat_size"]
    plan = [("ort-cpu", "fp32", models / "model.onnx"), ("ort-cuda", "fp32", models / "model.onnx"),
            ("ort-cuda", "fp16", models / "model.fp16.onnx"), ("ort-trt-rtx", "fp16", models / "model.fp16.onnx")]
    for name, precision, path in plan:
        ok, why = BACKENDS[name].available()
        if not ok:
            rows.append({"engine": name, "precision": precision, "skipped": why})
            continue
        try:
            t = time.perf_counter()
            backend = create_backend(name).load(path)
            load_s = round(time.perf_counter() - t, 2)
            side = backend.input_shape[-1] if isinstance(backend.input_shape[-1], int) else s
            with backend:
                for b in sizes["batches"]:
                    if time.monotonic() > deadline:
                        rows.append({"engine": name, "precision": precision, "batch": b, "skipped": "time budget"})
                        continue
                    x = np.random.default_rng(b).standard_normal((b, 1, side, side)).astype(np.float32)
                    iters = sizes["iters"] if name != "ort-cpu" else max(3, sizes["iters"] // 5)
                    rows.append(_row(name, precision, b, _timed(lambda: backend.infer(x), lambda: None,
                                                                 sizes["warmup"], iters), load_s=load_s))
            t = time.perf_counter()   # a second start: engine/runtime caches beside the model make it fast
            create_backend(name).load(path).close()
            for r in rows:
                if r["engine"] == name and r.get("precision") == precision and "median_ms" in r:
                    r["second_load_s"] = round(time.perf_counter() - t, 2)
        except Exception as exc:  # e.g. a provider that fails at session creation: that is the row's result
            rows.append({"engine": name, "precision": precision, "skipped": _why(exc)})
    ok, why = BACKENDS["tensorrt"].available()
    if not ok:
        rows.append({"engine": "tensorrt", "precision": "fp16", "skipped": why})
    else:
        try:
            from usedge.export.tensorrt import build_engine

            engine, _ = build_engine(models / "model.fp16.onnx", models, max_batch=max(sizes["batches"]),
                                     opt_batch=1)
            with create_backend("tensorrt").load(engine) as trt:
                for b in sizes["batches"]:
                    x = np.random.default_rng(b).standard_normal((b, 1, s, s)).astype(np.float32)
                    rows.append(_row("tensorrt", "fp16", b, _timed(lambda: trt.infer(x), lambda: None,
                                                                    sizes["warmup"], sizes["iters"])))
        except Exception as exc:
            rows.append({"engine": "tensorrt", "precision": "fp16", "skipped": _why(exc)})
    log(f"latency: {sum('median_ms' in r for r in rows)} runtime rows measured")
    return rows


def latency_rows(device: str, sizes: dict, models: Path | None, *, dry: bool, log, deadline: float) -> list[dict]:
    rows = _torch_rows(device, sizes, dry, log, deadline)
    return rows + _runtime_rows(models, sizes, log, deadline)
