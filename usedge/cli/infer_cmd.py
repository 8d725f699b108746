"""usedge infer (files and --stream) and usedge doctor. Lean: only usedge.runtime, never torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from usedge.cli.app import app


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _overlay_name(used: set[str], src: Path, frame: int, multi: bool) -> str:
    base = f"{src.stem}_f{frame:04d}" if multi else src.stem
    name, k = f"{base}.png", 1
    while name in used:  # same file name in two folders
        k += 1
        name = f"{base}_{k}.png"
    used.add(name)
    return name


def _infer_files(clf, inputs: list[str], fmt: str, out: str, overlay_dir: Optional[Path], cam: bool) -> int:
    import cv2
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from usedge.errors import OutputError, UsedgeError
    from usedge.fileio import write_bytes_atomic
    from usedge.runtime.overlay import draw_prediction
    from usedge.runtime.sinks import CsvSink, JsonlSink
    from usedge.runtime.sources import IMAGE_SUFFIXES, expand_inputs, iter_file_frames

    files = list(expand_inputs(inputs))
    if not files:
        _err("usedge: no image, DICOM or video file found in the inputs")
        return 1
    sink = JsonlSink(out) if fmt == "jsonl" else CsvSink(out, clf.class_names)
    failed: list[str] = []
    frames = 0
    used: set[str] = set()
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=Console(stderr=True), transient=True, disable=(out == "-" or not sys.stderr.isatty()))
    try:
        with progress:
            task = progress.add_task("classifying", total=len(files))
            for path in files:
                try:
                    multi = path.suffix.lower() not in IMAGE_SUFFIXES   # DICOM, video: name overlays by frame
                    for index, frame, regions in iter_file_frames(path):  # lazily: a long video stays small
                        pred = clf.predict(frame, frame_index=index, source=str(path), regions=regions)
                        sink.write(pred)
                        frames += 1
                        if overlay_dir is not None:
                            image = draw_prediction(frame, pred, cam=cam)
                            ok, buf = cv2.imencode(".png", image)
                            if not ok:
                                raise OutputError("cannot encode overlay", path=overlay_dir)
                            write_bytes_atomic(overlay_dir / _overlay_name(used, path, index, multi),
                                               buf.tobytes())
                except OutputError:
                    raise
                except UsedgeError as exc:
                    if exc.path is None:   # a frame-level error (NaN pixels, blank frame): name the file
                        exc.path = str(path)
                    failed.append(exc.one_line())
                    _err(f"usedge: skipped {exc.one_line()}")   # at once: a long run shows failures as they come
                    if isinstance(sink, JsonlSink):
                        sink.write_record({"source": str(path), "error": exc.one_line()})
                    else:
                        sink.write_error(str(path), exc.one_line())
                progress.advance(task)
    finally:
        sink.close()
    _err(f"usedge: {len(files) - len(failed)}/{len(files)} files, {frames} frames classified"
         + (f", {len(failed)} failed" if failed else "") + (f" -> {out}" if out != "-" else ""))
    return 1 if failed else 0


def _infer_stream(clf, source: str, *, realtime: bool, fps: Optional[float], smooth: bool, smooth_window: int,
                  freeze: bool, record: Optional[Path], show: bool, jsonl: Optional[str], fmt: str, out: Optional[str],
                  max_frames: Optional[int], max_reconnects: Optional[int], idle_timeout: Optional[float],
                  cam: bool, summary_path: Optional[Path]) -> int:
    import contextlib

    from usedge.fileio import write_json_atomic
    from usedge.runtime.sinks import CsvSink, JsonlSink, ShowSink, VideoRecorderSink
    from usedge.runtime.sources import open_source
    from usedge.runtime.stream import StreamRunner

    reader = open_source(source, watch_idle_timeout_s=idle_timeout)
    with contextlib.ExitStack() as stack:
        sinks = []
        if jsonl:
            sinks.append(stack.enter_context(JsonlSink(jsonl)))
        if out:
            sinks.append(stack.enter_context(JsonlSink(out) if fmt == "jsonl" else CsvSink(out, clf.class_names)))
        if record is not None:
            sinks.append(stack.enter_context(VideoRecorderSink(record, fps=fps or reader.fps or 30.0)))
        if show:
            sinks.append(stack.enter_context(ShowSink()))
        runner = StreamRunner(clf, reader, sinks, realtime=realtime, fps=fps, smooth=smooth,
                              smooth_window=smooth_window, freeze=freeze, max_frames=max_frames,
                              max_reconnects=max_reconnects, cam=cam)
        summary = runner.run()
    for line in summary.lines():
        _err(line)
    if summary_path is not None:
        write_json_atomic(summary_path, summary.to_dict())
    return 1 if summary.ended_by == "source failed" else 0


@app.command()
def infer(
    model: Path = typer.Argument(..., help="model.onnx, model.int8.onnx, model.fp16.onnx or a TensorRT .engine"),
    inputs: Optional[List[str]] = typer.Argument(None, help="images, folders (recursive), DICOM, video files"),
    stream: Optional[str] = typer.Option(None, "--stream", help="live source: camera index, /dev/videoN, URL, "
                                         "GStreamer pipeline, video file, DICOM cine, watch:DIR or a folder"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl | csv"),
    out: Optional[str] = typer.Option(None, "--out", help="results file ('-' = stdout, the default for files)"),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="save annotated images in this folder"),
    cam: bool = typer.Option(False, "--cam", help="draw the class activation map (models exported with CAM)"),
    backend: str = typer.Option("auto", "--backend", help="auto | ort-cpu | ort-cuda | ort-trt | tensorrt"),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads (default: all cores)"),
    spinning: bool = typer.Option(False, "--spinning/--no-spinning", help="onnxruntime busy-waits between ops"),
    opt_level: str = typer.Option("all", "--opt-level", help="graph optimisation: disable | basic | extended | all"),
    realtime: bool = typer.Option(False, "--realtime", help="pace a file source at its own frame rate"),
    fps: Optional[float] = typer.Option(None, "--fps", help="source frame rate when the file does not say"),
    smooth: bool = typer.Option(False, "--smooth", help="average probabilities over the last --smooth-window results"),
    smooth_window: int = typer.Option(5, "--smooth-window", min=1),
    freeze: bool = typer.Option(True, "--freeze-detect/--no-freeze-detect", help="skip frozen (repeated) images"),
    record: Optional[Path] = typer.Option(None, "--record", help="write the annotated stream to this .mp4/.avi"),
    show: bool = typer.Option(False, "--show", help="show the annotated stream in a window"),
    jsonl: Optional[str] = typer.Option(None, "--jsonl", help="stream: one JSON line per frame, flushed per line"),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="stream: stop after N frames read"),
    max_reconnects: Optional[int] = typer.Option(None, "--max-reconnects", help="live source: give up after N"),
    idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="watched folder: end after S seconds without a new file"),
    summary: Optional[Path] = typer.Option(None, "--summary", help="stream: write the run summary as JSON here"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Refuse a model whose weights digest does not match (--no-verify: load a damaged or hand-edited file anyway)."),
) -> None:
    """Classify images/folders/DICOM/videos, or a live scanner with --stream. Results: JSONL or CSV."""
    from usedge.errors import ConfigError
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.model_info import model_card_line

    if fmt not in ("jsonl", "csv"):
        raise ConfigError(f"unknown --format '{fmt}'", hint="use jsonl or csv")
    if stream is None and not inputs:
        raise ConfigError("nothing to classify", hint="give INPUT files/folders, or --stream SOURCE")
    if stream is not None and inputs:
        raise ConfigError("give either INPUT files or --stream, not both", hint="run two commands")
    clf = Classifier.load(model, backend, threads=threads, spinning=spinning, opt_level=opt_level, verify=verify)
    _err(f"usedge: {model.name} on {clf.describe()}" + (f" [{clf.backend_reason}]" if clf.backend_reason else ""))
    _err(f"usedge: model card: {model_card_line(clf.info)}")
    if cam and not clf.has_cam:
        _err("usedge: --cam ignored: this model has no 'cam' output (export it with CAM)")
    try:
        if stream is None:
            code = _infer_files(clf, list(inputs), fmt, out or "-", overlay, cam)
        else:
            code = _infer_stream(clf, stream, realtime=realtime, fps=fps, smooth=smooth, smooth_window=smooth_window,
                                 freeze=freeze, record=record, show=show, jsonl=jsonl, fmt=fmt, out=out,
                                 max_frames=max_frames, max_reconnects=max_reconnects, idle_timeout=idle_timeout,
                                 cam=cam, summary_path=summary)
    finally:
        clf.close()
    if code:
        raise typer.Exit(code)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="print the checks as JSON")) -> None:
    """What is installed, which backends and providers work here, and why not."""
    import json

    from usedge.runtime.doctor import run_checks

    checks = run_checks()
    if as_json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="usedge doctor", show_lines=False)
    for col in ("section", "check", "", "detail"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.section, c.name, "[green]ok[/]" if c.ok else "[red]no[/]", c.detail)
    Console().print(table)
