"""Every backend and precision side by side at the paper's 224 px: `usedge bench` at each thread count.

With MODEL_DIR (a `usedge export` folder, ideally with its checkpoint copied beside it as model.pt so the
torch row runs the same weights) it benchmarks that; without, it exports a random-init 224 px
AGResNet18 once (latency does not depend on the weights; the INT8 accuracy then means nothing —
take it from the export report of a trained model). One `usedge bench` run per thread count:

    nice -n 10 .venv/bin/python benchmarks/bench_backends.py [MODEL_DIR] --threads 2,1 [--prefix bench_quiet_]

Writes benchmarks/results/<prefix><N>thread(s)/{bench.json, bench.md, latency.png, stages.png}
(prefix `bench_` by default; README's figures come from a run on the quiet machine, `bench_quiet_`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path, nargs="?")
    ap.add_argument("--threads", default="2,1", help="comma-separated thread counts, one run each")
    ap.add_argument("--work", type=Path, default=Path("/tmp/usedge-bench-backends"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--prefix", default="bench_", help="results folder name before <N>thread(s)")
    args = ap.parse_args(argv)

    from usedge.bench import BenchOptions, run_bench

    model_dir = args.model_dir
    if model_dir is None:
        from stream_realtime import build_models   # the stream benchmark's random-init 224 px export
        model_dir = build_models(args.work, 224)
    for t in (int(v) for v in args.threads.split(",")):
        out = args.out / f"{args.prefix}{t}thread{'s' if t > 1 else ''}"
        result = run_bench(model_dir, BenchOptions(quick=args.quick, threads=t, work_dir=args.work), out)
        print((out / "bench.md").read_text())
        print("\n".join(result["files"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
