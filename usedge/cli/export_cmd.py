"""usedge export: checkpoint -> model.onnx (+ model.fp16.onnx, model.int8.onnx, TensorRT engine, Triton).

    usedge export runs/NAME/model.pt --out models/NAME --data DATA            # fp32 + fp16 + int8 + checks
    usedge export runs/NAME/model.pt --out models/NAME --engine              # on the GPU machine
    usedge export runs/NAME/model.pt --out models/NAME --rtx                 # TensorRT for RTX EP-context model
    usedge export runs/NAME/model.pt --out models/NAME --overwrite           # replace an earlier export
    usedge export runs/NAME/model.pt --out models/NAME --triton triton_repo  # + Triton model repository
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usedge.cli.app import app
from usedge.cli.options import deprecated, overwrite_option, quiet_option
from usedge.cli.terminal import rich_console


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint written by `usedge train` (.pt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for model.onnx, model.fp16.onnx, model.int8.onnx, engine, report."),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help="Write model.fp16.onnx (FP16 compute, FP32 I/O; the engine's input)."),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Write model.int8.onnx (QDQ static quantisation for CPUs; needs images)."),
    engine: bool = typer.Option(False, "--engine", help="Build a TensorRT FP16 engine (on a machine with an NVIDIA GPU and TensorRT)."),
    rtx: bool = typer.Option(False, "--rtx", help="Also write the TensorRT for RTX EP-context model (engine inside an ONNX; "
                             "model.fp16_ctx.onnx) for --backend ort-trt-rtx; on the RTX machine (pip extra rtx)."),
    triton: Optional[Path] = typer.Option(None, "--triton", help="Also write a Triton Inference Server model repository here."),
    overwrite: bool = overwrite_option("Replace the export already in --out (its model files and report)."),
    cam: bool = typer.Option(False, "--cam", help="Add the multi-branch CAM as a second output `cam` (N x C x H/8 x W/8)."),
    cam_weighting: str = typer.Option("exact", "--cam-weighting", help="CAM branch weights: exact (final layer folded in: the CAM of the output logits) | paper (the paper's per-branch weights)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Images for parity checks and INT8 calibration (default: the data path the checkpoint recorded)."),
    calib_count: int = typer.Option(64, "--calib-count", help="INT8 calibration images (training part, split by patient)."),
    calib_method: str = typer.Option("minmax", "--calib-method", help="INT8 calibration: minmax | entropy | percentile."),
    activations: str = typer.Option("uint8", "--activations", help="INT8 activation type: uint8 (fast on AVX2 CPUs) | int8."),
    parity_count: int = typer.Option(200, "--parity-count", help="Held-out images for the parity and INT8 accuracy checks (at least 100 resolve the INT8 aim of 1 point)."),
    reference_count: int = typer.Option(2, "--reference-count", help="Images for the onnx.reference cross-check (slow; 0 = skip)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (18: what the dynamo exporter emits; TensorRT 10/11 and onnxruntime run it)."),
    max_batch: int = typer.Option(8, "--max-batch", help="TensorRT profile maximum batch and Triton max_batch_size."),
    opt_batch: int = typer.Option(1, "--opt-batch", help="TensorRT profile batch to optimise for (1: one scanner, lowest latency)."),
    trt_opt_level: int = typer.Option(3, "--trt-opt-level", help="TensorRT builder optimisation level 0..5."),
    opt_level: Optional[int] = typer.Option(None, "--opt-level", hidden=True, help="Deprecated: use --trt-opt-level."),
    workspace_mib: int = typer.Option(1024, "--workspace-mib", help="TensorRT workspace memory pool limit, MiB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache file (default OUT/trt_timing.cache)."),
    triton_name: str = typer.Option("usedge", "--triton-name", help="Model name in the Triton repository."),
    triton_model: str = typer.Option("auto", "--triton-model", help="What Triton serves: auto (engine if built, else fp32) | fp32 | fp16 | int8 | engine."),
    uncertain_margin: float = typer.Option(0.2, "--uncertain-margin", help="Model card: call a result uncertain when its top two probabilities differ by less than this."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 2 when a check misses its aim, or model.int8.onnx could not be built (no calibration images)."),
    quiet: bool = quiet_option(),
) -> None:
    """Export a checkpoint to ONNX (+ FP16, INT8, TensorRT, Triton) and check every artifact."""
    from rich.markup import escape
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from usedge.export.onnx_export import read_model_info
    from usedge.export.pipeline import ExportOptions, run_export
    from usedge.runtime.model_info import model_card_line

    console = rich_console(stderr=True, quiet=quiet)
    if rtx:   # refuse before the export, not after minutes of it
        from usedge.errors import BackendUnavailable
        from usedge.runtime.backends.rtx import availability

        ok, why = availability()
        if not ok:
            raise BackendUnavailable(f"--rtx: TensorRT for RTX cannot run here: {why}",
                                     hint="drop --rtx, or export on the RTX machine")
    trt_opt_level = deprecated(trt_opt_level, opt_level, old="--opt-level", new="--trt-opt-level", default=3)
    opts = ExportOptions(fp16=fp16, int8=int8, engine=engine, triton=triton, cam=cam, cam_weighting=cam_weighting,
                         data=data, calib_count=calib_count, calib_method=calib_method, activations=activations,
                         parity_count=parity_count, reference_count=reference_count, opset=opset,
                         max_batch=max_batch, opt_batch=opt_batch, optimization_level=trt_opt_level,
                         workspace_mib=workspace_mib, timing_cache=timing_cache, triton_name=triton_name,
                         triton_model=triton_model, overwrite=overwrite,
                         uncertain_margin=uncertain_margin)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("exporting", total=None)
        try:
            report = run_export(checkpoint, out, opts, progress=lambda msg: bar.update(task, description=msg))
        except OSError as exc:     # a full disk mid-export: the files of an earlier export stay (atomic writes)
            from usedge.errors import OutputError

            raise OutputError(f"cannot write the export ({exc.strerror or exc})", path=exc.filename or out,
                              hint="free disk space or choose another --out; an earlier export there is kept") from exc
        if rtx:
            from usedge.export.rtx import write_ep_context

            bar.update(task, description="compiling with TensorRT for RTX (EP-context model)")
            fp16_model = out / "model.fp16.onnx"
            ctx = write_ep_context(fp16_model if fp16_model.is_file() else out / "model.onnx")

    out_console = rich_console()
    if rtx:
        out_console.print(f"TensorRT for RTX EP-context model: {ctx} (--backend ort-trt-rtx)", soft_wrap=True, markup=False)
    # --strict: a missed check, or an INT8 file asked for (the default) that could not be built
    strict_fail = strict and (report.failed or (int8 and "model.int8.onnx" in report.skipped))
    if quiet:   # only what went wrong, then the final line
        for c in report.failed:
            out_console.print(f"[red]missed[/]: {escape(c.name)} ({escape(Path(c.artifact).name)}): {escape(c.aim)}")
        for name, why in report.skipped.items():
            out_console.print(f"[yellow]{escape(name)} not built[/]: {escape(why)}")
        out_console.print(f"report: {out / 'export_report.md'}", soft_wrap=True, markup=False)
        if strict_fail:
            raise typer.Exit(code=2)
        return
    table = Table(title=f"usedge export -> {out}", show_lines=False)
    for col in ("check", "artifact", "result", "figures"):
        table.add_column(col)
    for c in report.checks:
        figs = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.figures.items())
        result = "[green]ok[/]" if c.passed else f"[red]missed[/] ({escape(c.aim)})"
        table.add_row(escape(c.name), escape(Path(c.artifact).name), result, escape(figs))
    out_console.print(table)
    for name, a in report.artifacts.items():
        out_console.print(f"  {name}  {a.get('precision', '')}  {a['bytes']} bytes  sha256 {a['sha256'][:12]}", markup=False)
    for name, why in report.skipped.items():
        out_console.print(f"  [yellow]{escape(name)} not built[/]: {escape(why)}")
    for name, why in report.not_run.items():
        out_console.print(f"  {escape(name)} not run: {escape(why)}")
    out_console.print(f"model card: {escape(model_card_line(read_model_info(out / 'model.onnx')))}", soft_wrap=True)
    out_console.print(f"report: {out / 'export_report.md'}", soft_wrap=True, markup=False)
    if strict_fail:
        raise typer.Exit(code=2)
