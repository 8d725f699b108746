"""Write a benchmark result as bench.json, bench.md and PNG plots (latency distribution, stages)."""

from __future__ import annotations

import io
from pathlib import Path

from usedge.bench.stages import STAGES
from usedge.bench.stats import STAT_KEYS
from usedge.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic


def _f(v, nd=2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown(result: dict) -> str:
    m = result["machine"]
    lib = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    opt = result["options"]
    lines = [f"# usedge bench: {Path(result['model_dir']).name}", "",
             f"{result['model']['arch']}, {result['model']['input_size']} px, outputs "
             f"{', '.join(result['model']['outputs'])}. Machine: {m['cpu']} ({m['cores']} cores; "
             f"{', '.join(m['cpu_flags'])}){'; GPU ' + m['gpu'] if m.get('gpu') else '; no GPU'}; "
             f"{m['platform']}, Python {m['python']}. {lib}.", "",
             f"Threads per CPU row: {opt['threads_used']}. Load average at start {m.get('load_average_start')}, "
             f"at end {m.get('load_average_end')}"
             + (f"; CPU steal {m['cpu_steal']:.1%} of the run's CPU time (the VM host ran other guests)"
                if m.get("cpu_steal") is not None else "")
             + " (other programs shared the CPU when the load exceeds the core count: "
             "compare the ratios, which come from one run with interleaved rounds, not absolute times)."
             + (" Quick run." if opt.get("quick") else ""), "",
             "## Batch-1 latency (ms, wall clock, as trtexec reports it)", "",
             "| row | " + " | ".join(STAT_KEYS) + " | CPU ms (median) | vs torch eager | vs ORT fp32 | "
             "CPU-time vs torch | CPU-time vs ORT fp32 |",
             "|---|" + "---:|" * (len(STAT_KEYS) + 5)]
    for r in result["rows"]:
        if "latency_ms" not in r:
            continue
        w = r["latency_ms"]
        lines.append(f"| {r['key']} | " + " | ".join(_f(w[k]) for k in STAT_KEYS) +
                     f" | {_f(r['cpu_ms']['median'])} | {_f(r.get('vs_torch_eager'), 3)} | "
                     f"{_f(r.get('vs_ort_fp32'), 3)} | {_f(r.get('cpu_vs_torch_eager'), 3)} | "
                     f"{_f(r.get('cpu_vs_ort_fp32'), 3)} |")
    lines += ["", "ratio < 1: faster than the baseline. CPU ms: time.process_time of all threads per call "
              "(time spent waiting for a busy CPU is not in it).", ""]
    batches = result["options"]["batches"]
    lines += ["## Throughput (images/s)", "", "| row | " + " | ".join(f"batch {b}" for b in batches) +
              " | " + " | ".join(f"batch {b} per CPU-s" for b in batches) + " |",
              "|---|" + "---:|" * (2 * len(batches))]
    for r in result["rows"]:
        if "throughput" not in r:
            continue
        t = r["throughput"]
        cells = [_f(t.get(str(b), {}).get("images_per_s"), 1) or t.get(str(b), {}).get("error", "") for b in batches]
        cpu = [_f(t.get(str(b), {}).get("images_per_cpu_s"), 1) for b in batches]
        lines.append(f"| {r['key']} | " + " | ".join(cells) + " | " + " | ".join(cpu) + " |")
    fl, g = result.get("flops", {}), result["gemm"]
    lines += ["", "## Hardware limit", ""]
    if "error" in fl:
        lines.append(f"FLOPs not counted: {fl['error']}")
    else:
        lines.append(f"Model: {fl['gemm_flops'] / 1e9:.3f} GFLOP of Conv/Gemm/MatMul per image (exact, from the "
                     f"ONNX graph of {fl['source']} with shape inference; 1 multiply-add = 2 FLOPs) + "
                     f"{fl['other_flops'] / 1e9:.3f} GFLOP element-wise (estimate).")
    lines += ["", f"Measured FP32 GEMM in this run: {g['limit_gflops']:.1f} GFLOP/s best "
              f"({g['before']['limit_from']} before the rows, {g['after']['limit_from']} after), "
              f"{g['limit_gflops_per_cpu_s']:.1f} GFLOP per CPU-second.", "",
              "| GEMM | n | best GFLOP/s | median GFLOP/s | GFLOP per CPU-s |", "|---|---:|---:|---:|---:|"]
    for when in ("before", "after"):
        for row in g[when]["rows"]:
            engine = row["engine"] + ("" if row.get("in_limit", True) else ", all cores: not in the limit")
            lines.append(f"| {engine} ({when}) | {row['n']} | {_f(row['gflops_best'], 1)} | "
                         f"{_f(row['gflops_median'], 1)} | {_f(row.get('gflops_per_cpu_s'), 1)} |")
    lines += ["", "| row | GFLOP/s at median | at min | fraction of GEMM limit (median / min) | per CPU-s | "
              "fraction (CPU time) |", "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "gflops_median" in r:
            lines.append(f"| {r['key']} | {_f(r['gflops_median'], 1)} | {_f(r['gflops_best'], 1)} | "
                         f"{_f(r['gemm_efficiency_median'], 3)} / {_f(r['gemm_efficiency_best'], 3)} | "
                         f"{_f(r.get('gflops_per_cpu_s'), 1)} | {_f(r.get('gemm_efficiency_cpu'), 3)} |")
    lines += ["", "int8 rows run fewer FP32 operations than they are credited with: their fraction can exceed 1.", ""]
    st = result.get("stages")
    if st:
        lines += [f"## Stage breakdown: 1080p scanner frame ({st['video']['frames']}-frame synthetic video, "
                  "onnxruntime CPU)", "",
                  "| model | time | " + " | ".join(STAGES) + " | total | outside model | outside model, loop only |",
                  "|---|---|" + "---:|" * (len(STAGES) + 3)]
        for name, m in st["models"].items():
            for kind in ("wall_ms", "cpu_ms"):
                p = m["per_stage"][kind]
                lines.append(f"| {name} | {kind.replace('_ms', '')} ms | " + " | ".join(
                    _f(p[s]) for s in (*STAGES, "total")) +
                    f" | {_f(100 * p['outside_model_share'], 1)} % | {_f(100 * p['loop_outside_model_share'], 1)} % |")
        lines += ["", "Medians per frame, frames processed one after another, through the stream loop's stages "
                  "(freeze detection on; crop includes the quality gate). *Loop only*: without decode, "
                  "which the stream's capture thread does beside the inference loop.", "",
                  "| model | stream fps | capture-to-result p50 / p90 / p99 ms | model p50 ms | outside model |",
                  "|---|---:|---|---:|---:|"]
        for name, m in st["models"].items():
            s = m["stream"]
            c = s["latency_ms"].get("capture_to_result", {})
            lines.append(f"| {name} | {_f(s['fps'], 1)} | {_f(c.get('p50'))} / {_f(c.get('p90'))} / "
                         f"{_f(c.get('p99'))} | {_f(s['model_p50_ms'])} | {_f(100 * s['outside_model_share'], 1)} % |")
        lines += ["", "Stream: the runtime's StreamRunner on the same video (capture thread + latest-frame slot, "
                  "not paced, freeze detection off, no sinks).", ""]
    lines += ["## Targets (the project's aims, measured in this run; information)", "", "| target | measured | aim | met | note |", "|---|---:|---:|---|---|"]
    for t in result["targets"]:
        met = {True: "yes", False: "no", None: "not measured"}[t["passed"]]
        sign = "<=" if t["better"] == "lower" else ">="
        lines.append(f"| {t['target']} | {_f(t['value'], 3)} | {sign} {t['aim']} | {met} | {t['note']} |")
    skipped = [r for r in result["rows"] if "latency_ms" not in r]
    if skipped:
        lines += ["", "## Rows not measured here", ""]
        lines += [f"- {r['key']}: {r['skipped']}" for r in skipped]
    engines = [r for r in result["rows"] if r.get("engine")]
    if engines:
        lines += ["", "## What ran", ""] + [f"- {r['key']}: {r['engine']}" for r in engines]
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def make_plots(result: dict) -> dict[str, bytes]:
    """PNG bytes by file name; empty when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out = {}
    rows = [r for r in result["rows"] if r.get("samples_ms")]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.6))
        data, labels = [r["samples_ms"] for r in rows], [r["key"] for r in rows]
        try:    # matplotlib >= 3.10
            ax.boxplot(data, orientation="horizontal", whis=(1, 99), tick_labels=labels)
        except TypeError:
            ax.boxplot(data, vert=False, whis=(1, 99), labels=labels)
        ax.set_xscale("log")
        from matplotlib.ticker import ScalarFormatter
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("batch-1 latency, ms (log scale; box: quartiles, whiskers: p1-p99)")
        ax.set_title("Latency per backend and precision")
        ax.grid(axis="x", alpha=0.3)
        out["latency.png"] = _png(fig)
        plt.close(fig)
    st = (result.get("stages") or {}).get("models")
    if st:
        names = list(st)
        stages = STAGES
        fig, axes = plt.subplots(1, 2, figsize=(9, 0.7 * len(names) + 1.8), sharey=True)
        for ax, kind in zip(axes, ("wall_ms", "cpu_ms")):
            left = [0.0] * len(names)
            for s in stages:
                vals = [st[n]["per_stage"][kind][s] for n in names]
                ax.barh(names, vals, left=left, label=s)
                left = [a + b for a, b in zip(left, vals)]
            ax.set_xlabel(f"{kind.replace('_ms', '')} ms per 1080p frame (median)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(stages), fontsize=8, bbox_to_anchor=(0.5, -0.08))
        fig.suptitle("Where a frame's time goes")
        out["stages.png"] = _png(fig)
        plt.close(fig)
    return out


def write_results(result: dict, out_dir: Path, plots: bool = True) -> list[Path]:
    """bench.json, bench.md and (with matplotlib) latency.png + stages.png in out_dir; returns the paths."""
    out_dir = Path(out_dir)
    files = [write_json_atomic(out_dir / "bench.json", result), write_text_atomic(out_dir / "bench.md", markdown(result))]
    if plots:
        for name, data in make_plots(result).items():
            files.append(write_bytes_atomic(out_dir / name, data))
    return files
