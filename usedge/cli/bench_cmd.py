"""usedge bench: every backend and precision side by side on this machine, against the hardware limit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usedge.cli.app import app
from usedge.cli.terminal import rich_console
from usedge.runtime.threads import MAX_THREADS


def _int_list(text: str, what: str) -> tuple[int, ...]:
    from usedge.errors import ConfigError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"bad {what} '{text}'", hint="give positive integers separated by commas, e.g. 1,8,32")
    return values


@app.command()
def bench(
    ctx: typer.Context,
    model_dir: Path = typer.Argument(..., help="Folder written by `usedge export` (model.onnx, model.int8.onnx, ...)."),
    out: Path = typer.Option(Path("bench"), "--out", "-o", help="Where bench.json, bench.md and the PNGs go."),
    quick: bool = typer.Option(False, "--quick", help="Short run (tens of seconds): few iterations, small GEMM, 6 video frames, 1 s paced streams; options given explicitly keep their values."),
    batch: str = typer.Option("1,8,32", "--batch", help="Batch sizes for the throughput table."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=MAX_THREADS, help="Intra-op threads of every CPU row (default: all cores)."),
    iters: int = typer.Option(100, "--iters", help="Timed batch-1 calls per row."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed batch-1 calls per row first."),
    rounds: int = typer.Option(5, "--rounds", help="Interleaving rounds (rows take turns, so bursts of other work hit all alike)."),
    rows: Optional[str] = typer.Option(None, "--rows", help="Only rows whose key starts with these, comma-separated (e.g. ort-cpu,openvino,ort-trt-rtx)."),
    max_cell_s: float = typer.Option(20.0, "--max-cell-s", help="Seconds at most per row and batch size (at least one call)."),
    stages: bool = typer.Option(True, "--stages/--no-stages", help="1080p frame stage breakdown and stream figure."),
    frames: int = typer.Option(40, "--frames", help="Frames of the 1080p synthetic video for the stage breakdown."),
    paced_seconds: float = typer.Option(10.0, "--paced-seconds", help="Length of the paced stream targets' 1080p "
                                        "video (int8 at 30 fps, fp32 at 15 fps); 0 skips them."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="PNG plots (needs matplotlib)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no table."),
) -> None:
    """Batch-1 latency (min/mean/median/p90/p95/p99/max), throughput, stage breakdown and the GEMM limit."""

    from usedge.bench import BenchOptions, run_bench
    from usedge.errors import ConfigError
    from usedge.fileio import writable_folder

    if frames < 3:
        raise ConfigError(f"--frames must be >= 3, got {frames}", hint="e.g. --frames 40")
    # options given on the command line (typer's own click reports where each value came from): --quick leaves them
    given = {name for name in ("iters", "warmup", "rounds", "max_cell_s", "frames", "paced_seconds")
             if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"}
    options = BenchOptions(quick=quick, batches=_int_list(batch, "--batch"), threads=threads, iters=iters,
                           warmup=warmup, rounds=rounds, max_cell_s=max_cell_s,
                           rows=tuple(r.strip() for r in rows.split(",") if r.strip()) if rows else (),
                           stages=stages, stage_frames=frames, paced_seconds=paced_seconds, plots=plots,
                           explicit=tuple("stage_frames" if n == "frames" else n for n in given))
    console = rich_console(stderr=True)
    writable_folder(out, "--out", "bench.json and bench.md")   # before minutes of measuring, not after
    result = run_bench(model_dir, options, out, progress=not quiet)
    if not quiet:
        from rich.table import Table
        table = Table(title=f"batch-1 latency, ms ({result['options']['threads_used']} threads)")
        for col in ("row", "median", "p99", "CPU ms", "vs torch", "vs ORT fp32", "GEMM eff."):
            table.add_column(col, justify="left" if col == "row" else "right")
        for r in result["rows"]:
            if "latency_ms" in r:
                fmt = lambda v, nd=2: "" if v is None else f"{v:.{nd}f}"  # noqa: E731
                table.add_row(r["key"], fmt(r["latency_ms"]["median"]), fmt(r["latency_ms"]["p99"]),
                              fmt(r["cpu_ms"]["median"]), fmt(r.get("vs_torch_eager"), 3),
                              fmt(r.get("vs_ort_fp32"), 3), fmt(r.get("gemm_efficiency_median"), 3))
        console.print(table)
        # the project's own aims, shown as information: a target not met here is a measurement, not an error
        targets = Table(title="project targets on this machine (information)")
        for col in ("target", "measured", "aim", "met"):
            targets.add_column(col, justify="left" if col == "target" else "right")
        for t in result["targets"]:
            value = "" if t["value"] is None else f"{t['value']:.3g}"
            met = {True: "yes", False: "no", None: "not measured"}[t["passed"]]
            targets.add_row(t["target"], value, f"{'<=' if t['better'] == 'lower' else '>='} {t['aim']}", met)
        console.print(targets)
    print("\n".join(result["files"]))
