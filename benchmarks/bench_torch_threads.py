"""Why torch eager is so slow on a shared 2-core machine: OpenMP parallel regions and an oversubscribed CPU.

torch's CPU kernels run each op as an OpenMP parallel region with a static split: the op ends when
its slowest thread ends. When other programs hold a core, the second thread waits for a timeslice
(milliseconds) on every op, and a network of ~100 ops pays it ~100 times. onnxruntime's thread pool
lets the calling thread take the work a descheduled worker has not started. Measured in one run,
interleaved (A, B, A, B ...): one element-wise op (ReLU on 64 x 112 x 112) and the whole model, at 1 and
`--threads` threads, torch eager vs onnxruntime fp32, wall and CPU time.

    nice -n 10 .venv/bin/python benchmarks/bench_torch_threads.py MODEL_DIR --threads 2

Writes benchmarks/results/bench_torch_threads.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    import torch

    from usedge.bench.engines import _ort_runner, read_model_info, torch_model
    from usedge.bench.stats import latency_stats, load_average, time_calls
    from usedge.fileio import write_json_atomic, write_text_atomic

    info = read_model_info(args.model_dir / "model.onnx")
    model, note = torch_model(args.model_dir, info)
    size = info.input_size
    x = np.random.default_rng(0).standard_normal((1, 1, size, size), dtype=np.float32)
    xt = torch.from_numpy(x)
    act = torch.randn(1, 64, size // 2, size // 2)
    load0 = load_average()
    cells: dict[str, dict[str, list]] = {}

    def torch_model_call():
        with torch.inference_mode():
            model(xt)

    ort = {t: _ort_runner("ort-cpu", args.model_dir / "model.onnx", t) for t in (1, args.threads)}
    for _ in range(args.rounds):
        for t in (1, args.threads):
            torch.set_num_threads(t)
            for name, fn, n in ((f"torch relu, {t} thr", lambda: torch.relu(act), 20),
                                (f"torch eager model, {t} thr", torch_model_call, 2),
                                (f"onnxruntime fp32 model, {t} thr", lambda t=t: ort[t].infer(x), 3)):
                fn()
                w, c = time_calls(fn, n)
                cell = cells.setdefault(name, {"wall": [], "cpu": []})
                cell["wall"] += w
                cell["cpu"] += c
    rows = {k: {"wall_ms": latency_stats(v["wall"]), "cpu_ms": latency_stats(v["cpu"])} for k, v in cells.items()}
    out = {"model_dir": str(args.model_dir), "torch": torch.__version__, "torch_note": note,
           "cores": os.cpu_count(), "load_average": [load0, load_average()], "rows": rows,
           "torch_parallel_info": torch.__config__.parallel_info()}
    lines = ["# torch eager vs onnxruntime at 1 and N threads (batch 1)", "",
             f"{args.model_dir}, {size} px; torch {torch.__version__} ({note}); {os.cpu_count()} cores; load average "
             f"{load0} -> {load_average()} (other work ran concurrently). Interleaved rounds: {args.rounds}.", "",
             "| what | median wall ms | min wall ms | median CPU ms |", "|---|---:|---:|---:|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['wall_ms']['median']:.3f} | {r['wall_ms']['min']:.3f} | {r['cpu_ms']['median']:.3f} |")
    lines += ["", f"Reproduce: `nice -n 10 .venv/bin/python benchmarks/bench_torch_threads.py MODEL_DIR --threads {args.threads}`"]
    write_json_atomic(args.out / "bench_torch_threads.json", out)
    write_text_atomic(args.out / "bench_torch_threads.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
