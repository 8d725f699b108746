"""This machine's achievable FP32 GEMM rate, measured in the same run as the model (the hardware limit).

Two engines multiply the same square FP32 matrices: numpy (its BLAS) and onnxruntime's MatMul (MLAS,
the kernels onnxruntime's Conv uses, at the same thread count as the model rows). The limit is the
faster of the two at the model rows' thread count (numpy only counts when the rows use every core),
from the fastest repetition (the least disturbed by other work on the machine).
"""

from __future__ import annotations

import os
import time

import numpy as np


def _rate(fn, flops: float, reps: int) -> dict:
    fn()  # warm-up: page in, pick kernels
    times, cpu = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best, med, cpu_med = min(times), float(np.median(times)), float(np.median(cpu))
    # FLOPs per CPU-second: what one busy core achieves, steady while other programs share the machine
    return {"gflops_best": round(flops / best / 1e9, 2), "gflops_median": round(flops / med / 1e9, 2),
            "gflops_per_cpu_s": round(flops / cpu_med / 1e9, 2) if cpu_med > 0 else None,
            "ms_best": round(best * 1e3, 3), "ms_median": round(med * 1e3, 3), "reps": reps}


def numpy_gemm(n: int, reps: int) -> dict:
    """numpy float32 n x n @ n x n (BLAS threads: numpy's own default)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    return _rate(lambda: np.matmul(a, b, out=c), 2.0 * n ** 3, reps)


def ort_matmul(m: int, k: int, n: int, threads: int | None, seed: int = 0):
    """An onnxruntime CPU session computing a (m x k) @ (k x n) FP32 MatMul, and its input `a`."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    b = rng.standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])],
        [onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, rng.standard_normal((m, k), dtype=np.float32)


def ort_gemm(n: int, reps: int, threads: int | None) -> dict:
    """onnxruntime CPU MatMul of two float32 n x n matrices, intra-op threads = `threads`."""
    sess, a = ort_matmul(n, n, n, threads)
    return _rate(lambda: sess.run(None, {"a": a}), 2.0 * n ** 3, reps)


def gemm_limit(threads: int | None, sizes=(1024,), reps: int = 5) -> dict:
    """Measure numpy and onnxruntime FP32 GEMM at each size; `limit_gflops` is the best rate seen."""
    # numpy's BLAS uses every core: it sets the limit only when the model rows do too
    numpy_counts = not threads or threads >= (os.cpu_count() or 1)
    rows = []
    for n in sizes:
        rows.append({"engine": "numpy", "n": n, "in_limit": numpy_counts, **numpy_gemm(n, reps)})
        try:
            rows.append({"engine": "onnxruntime", "n": n, "threads": threads, "in_limit": True,
                         **ort_gemm(n, reps, threads)})
        except ImportError:  # onnx is not in the base install: numpy alone then
            pass
    counted = [r for r in rows if r["in_limit"]] or rows
    best = max(counted, key=lambda r: r["gflops_best"])
    return {"rows": rows, "limit_gflops": best["gflops_best"], "limit_from": f"{best['engine']} n={best['n']}",
            "limit_gflops_median": max(r["gflops_median"] for r in counted),
            "limit_gflops_per_cpu_s": max((r["gflops_per_cpu_s"] or 0) for r in counted)}
