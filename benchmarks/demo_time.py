"""Wall time of the default demo, as `make demo` runs it, against its 10-minute budget (issue 20).

    .venv/bin/python benchmarks/demo_time.py [--out /tmp/usedge-demo-time] [--tag TAG] [-- extra demo options]

Runs `usedge demo --out OUT --overwrite --quiet` in a child process with this interpreter (so from
`make test`'s environment when run with .venv/bin/python), times it end to end (imports included),
and reads the demo's own `demo.json` for the per-step seconds, the cross-validated accuracy and the
stream scores. Not niced: the budget is for the demo as a user runs it, so run it on a quiet machine
(the load averages before and after are recorded; a result with a start load above 0.5 x cores is
marked "loaded"). Writes benchmarks/results/demo_time.json and .md (demo_time_<tag>.* with --tag) with
the CPU and its flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from usedge.bench.machine import machine_info
from usedge.bench.stats import load_average
from usedge.fileio import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET_S = 600.0


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/usedge-demo-time"))
    ap.add_argument("--tag", default="", help="write demo_time_<tag>.json/.md (another CPU)")
    ap.add_argument("extra", nargs="*", help="more `usedge demo` options (after --)")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "usedge", "demo", "--out", str(args.out), "--overwrite", "--quiet", *args.extra]
    machine = machine_info()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"demo_time: `{' '.join(cmd)}` exited {res.returncode}; nothing written")
    demo = json.loads((args.out / "report" / "demo.json").read_text())
    cores = machine["cores"] or 1
    start_load = (machine.get("load_average_start") or [0.0])[0]
    result = {
        "command": "usedge demo --overwrite --quiet " + " ".join(args.extra), "config": demo["config"],
        "wall_seconds": round(wall, 1), "demo_total_seconds": demo["total_seconds"],
        "budget_seconds": BUDGET_S, "ratio_to_budget": round(wall / BUDGET_S, 3),
        "within_budget": wall < BUDGET_S, "quiet": start_load <= 0.5 * cores,
        "steps": {s["key"]: {"seconds": s["seconds"], "cpu_seconds": s["cpu_seconds"], "reused": s["reused"]}
                  for s in demo["steps"]},
        "checks_failed": demo["checks_failed"], "cv": demo["cv"], "stream": demo["stream"],
        "machine": machine, "load_average_end": load_average(),
    }
    RESULTS.mkdir(exist_ok=True)
    stem = f"demo_time_{args.tag}" if args.tag else "demo_time"
    write_json_atomic(RESULTS / f"{stem}.json", result)
    minutes = f"{int(wall // 60)} min {int(round(wall % 60)):02d} s"
    lines = [
        "# Demo wall time (`benchmarks/demo_time.py`)", "",
        f"`{result['command'].strip()}` from start to exit: **{minutes}** ({wall:.1f} s), "
        f"{result['ratio_to_budget']:.2f} x the 10-minute budget ({'within' if result['within_budget'] else 'OVER'}).", "",
        f"Machine: {machine['cpu']}, {cores} cores, load average at start {machine['load_average_start']} "
        f"({'quiet' if result['quiet'] else 'loaded'}), at end {result['load_average_end']}.", "",
        f"CPU flags: {' '.join(machine['cpu_flags'])}", "",
        "| step | seconds | CPU seconds |", "|---|---:|---:|",
        *[f"| {k} | {v['seconds']:.1f} | {v['cpu_seconds']:.1f} |" for k, v in result["steps"].items()], "",
        f"Cross-validated (mean over folds): balanced accuracy {_pct(demo['cv'].get('balanced_accuracy'))}, "
        f"overall accuracy {_pct(demo['cv'].get('overall_accuracy'))}, macro AUC {_pct(demo['cv'].get('macro_roc_auc'))}; "
        f"export checks failed: {demo['checks_failed']}.", "",
        "| stream | per-frame accuracy | label changes / min |", "|---|---:|---:|",
        *[f"| {tag} | {_pct(s.get('accuracy'))} | {s.get('changes_per_minute', float('nan')):.1f} |"
          for tag, s in demo["stream"].items()], "",
    ]
    write_text_atomic(RESULTS / f"{stem}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
