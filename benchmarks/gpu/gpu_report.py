"""The GPU check's markdown: environment, every step's status, parity figures and the latency table."""

from __future__ import annotations


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def markdown(result: dict) -> str:
    env = result.get("env", {})
    title = env.get("gpu") or ("dry run on the CPU" if result.get("dry_run") else "no GPU")
    lines = [f"# usedge GPU check: {title}", "",
             "Written by `benchmarks/gpu/check.sh` (benchmarks/gpu/check.py); every figure below is from that run."
             + (" **Dry run: CPU, tiny sizes — checks the code, measures nothing.**" if result.get("dry_run") else ""),
             "", f"Started {result.get('started')}, {result.get('seconds')} s in all.", "", "## Environment", ""]
    for k in ("python", "torch", "cuda", "gpu", "compute_capability", "gpu_memory_gib", "onnxruntime", "ort_providers",
              "cpu_cores"):
        if k in env:
            lines.append(f"- {k}: {_fmt(env[k])}")
    missing = [k for k, v in env.get("packages", {}).items() if v is None]
    if missing:
        lines.append(f"- not installed: {', '.join(missing)}")
    lines += ["", "## Steps", "", "| step | status | seconds | figures |", "|---|---|---|---|"]
    for name, rec in result.get("steps", {}).items():
        figs = "; ".join(f"{k} {_fmt(v)}" for k, v in rec.items() if k not in ("status", "seconds", "files"))
        lines.append(f"| {name} | {rec['status']} | {rec.get('seconds', '')} | {figs.replace('|', '/')} |")
    rows = result.get("latency", [])
    if rows:
        lines += ["", "## Latency (median of timed calls, ms)", "",
                  "| engine | precision | batch | median ms | p90 ms | ms / image | note |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "median_ms" in r:
                note = ", ".join(f"{k} {r[k]}" for k in ("backend", "compile_s", "load_s", "second_load_s") if k in r)
                lines.append(f"| {r['engine']} | {r['precision']} | {r['batch']} | {r['median_ms']:.3f} | "
                             f"{r['p90_ms']:.3f} | {r['per_image_ms']:.3f} | {note} |")
            else:
                lines.append(f"| {r['engine']} | {r.get('precision', '')} | {r.get('batch', '')} | — | — | — | "
                             f"not run: {r['skipped'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"
