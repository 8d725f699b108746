"""The model alone, paced as in a stream, with onnxruntime's workers sleeping, spinning without a bound,
or spinning at most usedge.runtime.threads.SPIN_US after each run (the runtime's default).

Why (issue 18 item 1, the model in the stream at its standalone speed): between two frames of a paced
stream the CPU is idle; with spinning off, each operator of the next run wakes a sleeping worker, and
on a virtual machine the host has parked that worker's idle vCPU, so the wake costs far more than on
bare metal. With onnxruntime's own spinning the workers busy-wait through the whole idle frame period
instead, taking the core the decoder and the crop need. The bounded spin keeps them awake through a run
and lets them sleep a few ms after it.

Per setting: one onnxruntime session (2 intra-op threads), called once per frame period (sleeping the
rest), `--calls` times; wall ms per call (p50, p90, p99), and the CPU cores the process used over the
run (process CPU time / wall time: what the spinning costs the other threads). The settings run one
after another, each in a fresh session; the back-to-back median of the same session (no idle gaps)
is the baseline each paced p50 is divided by.

    nice -n 10 .venv/bin/python benchmarks/spin_paced.py --calls 300
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from usedge.bench.machine import cpu_model, library_versions  # noqa: E402
from usedge.bench.stats import cpu_counters, load_average, steal_since  # noqa: E402
from usedge.runtime.threads import SPIN_US  # noqa: E402

COMMAND = "nice -n 10 .venv/bin/python benchmarks/spin_paced.py"
SETTINGS = {"off": {"session.intra_op.allow_spinning": "0"},
            "unbounded (onnxruntime's default duration)": {"session.intra_op.allow_spinning": "1"},
            f"bounded, at most {SPIN_US} µs (the runtime's default)": {
                "session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": str(SPIN_US)}}
RATES = {"model.int8.onnx": 30.0, "model.onnx": 15.0}     # the stream targets' rates (issue 18 item 5)


def session(path: Path, threads: int, entries: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    for k, v in entries.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure(path: Path, threads: int, entries: dict, fps: float, calls: int) -> dict:
    s = session(path, threads, entries)
    name = s.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 1, 224, 224)).astype(np.float32)
    back = []
    for _ in range(10 + 40):
        t = time.perf_counter()
        s.run(None, {name: x})
        back.append((time.perf_counter() - t) * 1e3)
    paced = []
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        t = time.perf_counter()
        s.run(None, {name: x})
        dt = time.perf_counter() - t
        paced.append(dt * 1e3)
        time.sleep(max(0.0, 1.0 / fps - dt))
    cores = (time.process_time() - c0) / (time.perf_counter() - w0)
    p = {f"p{q}": round(float(np.percentile(paced, q)), 3) for q in (50, 90, 99)}
    b50 = float(np.median(back[10:]))
    return {"back_to_back_p50_ms": round(b50, 3), "paced_ms": p, "paced_p50_vs_back_to_back": round(p["p50"] / b50, 3),
            "cpu_cores_used": round(cores, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", type=Path, default=None, help="folder with model.onnx and model.int8.onnx "
                    "(default: the stream benchmark's, built if missing)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/usedge-bench-stream"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--tag", default="", help="write spin_paced_<tag>.json/.md (another CPU)")
    args = ap.parse_args()
    from stream_realtime import build_models

    from usedge.fileio import write_json_atomic, write_text_atomic

    models = args.models or build_models(args.work, 224)
    load0, counters = load_average(), cpu_counters()
    rows = []
    for model, fps in RATES.items():
        for label, entries in SETTINGS.items():
            r = measure(Path(models) / model, args.threads, entries, fps, args.calls)
            rows.append({"model": model, "fps": fps, "spinning": label, **r})
            print(rows[-1], flush=True)
    cpu, flags = cpu_model()
    meta = {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "threads": args.threads, "calls": args.calls,
            "spin_us": SPIN_US, "load_average_start": load0, "load_average_end": load_average(),
            "cpu_steal": steal_since(counters), "libraries": library_versions(),
            "command": f"{COMMAND} --calls {args.calls} --threads {args.threads}" + (f" --tag {args.tag}" if args.tag else "")}
    stem = f"spin_paced_{args.tag}" if args.tag else "spin_paced"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{stem}.json", {"meta": meta, "rows": rows})
    steal = meta["cpu_steal"]
    md = ["# The model alone, paced, by onnxruntime spinning setting", "", f"`{meta['command']}`", "",
          f"{cpu} ({', '.join(flags) or 'no AVX2'}), {os.cpu_count()} cores; onnxruntime "
          f"{meta['libraries'].get('onnxruntime')}, {args.threads} intra-op threads; {args.calls} paced calls per row; "
          f"load average {load0} at the start, {meta['load_average_end']} at the end"
          + (f"; CPU steal {steal:.1%} (the VM host's other guests)" if steal is not None else "") + ".", "",
          "| model | paced fps | spinning | back-to-back p50 ms | paced p50 / p90 / p99 ms | paced p50 / back-to-back | "
          "CPU cores used |", "|---|---|---|---:|---|---:|---:|"]
    for r in rows:
        p = r["paced_ms"]
        md.append(f"| {r['model']} | {r['fps']:g} | {r['spinning']} | {r['back_to_back_p50_ms']:.2f} | "
                  f"{p['p50']:.2f} / {p['p90']:.2f} / {p['p99']:.2f} | {r['paced_p50_vs_back_to_back']:.2f} | "
                  f"{r['cpu_cores_used']:.2f} |")
    md += ["", "CPU cores used = the process's CPU time over the paced run's wall time: what is left of the "
           f"{os.cpu_count()} cores for the decoder and the crop is the rest.", ""]
    write_text_atomic(args.out / f"{stem}.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
