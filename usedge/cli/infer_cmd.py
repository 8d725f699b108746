"""usedge infer (files and --stream). Lean: only usedge.runtime, never torch."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from usedge.cli.app import app
from usedge.cli.options import (backend_option, deprecated, quality_gate_option, quiet_option, spinning_option,
                                threads_option)
from usedge.cli.terminal import rich_console, say
from usedge.runtime.interrupts import finishing, interrupt_between_frames


def _err(text: str) -> None:
    say(text)


def _infer_files(clf, inputs: list[str], fmt: str, out: str, overlay_dir: Optional[Path], cam: bool,
                 quiet: bool, any_modality: bool, quality_gate: bool) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from usedge.errors import UsedgeError
    from usedge.runtime.pipeline import FramePipeline, run_files
    from usedge.runtime.sinks import OverlayFolderSink, results_sink
    from usedge.runtime.formats import drop_lesion_masks, drop_repeats, expand_inputs, other_types
    from usedge.fileio import refuse_overwriting_inputs

    ignored: list[Path] = []
    files, notes = expand_inputs(inputs, ignored=ignored)     # notes: symlinked/unreadable folders, FIFOs: reported, exit 1
    files, left_out = drop_lesion_masks(inputs, files)
    files, repeats = drop_repeats(files)
    left_out += repeats + other_types(ignored)
    for line in left_out:
        _err(f"usedge: {line}")
    if out != "-":
        refuse_overwriting_inputs(out, files, "--out", folder=False)
    if overlay_dir is not None:
        refuse_overwriting_inputs(overlay_dir, files, "--overlay")
    for note in notes:
        _err(f"usedge: skipped {note}")
    if not files and not notes:
        _err("usedge: no image, DICOM or video file found in the inputs")
        return 1
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=rich_console(stderr=True), transient=True,
                        disable=(quiet or out == "-" or not sys.stderr.isatty()))
    with results_sink(out, fmt, clf.class_names, atomic=True) as sink, progress, \
            (OverlayFolderSink(overlay_dir) if overlay_dir else contextlib.nullcontext()) as overlays:
        pipeline = FramePipeline(clf, [sink] + ([overlays] if overlays is not None else []), cam=cam,
                                 quality_gate=quality_gate)
        for note in notes:       # what was skipped is in the results too, as an error line naming it
            pipeline.write_error(note.path, str(note))
        task = progress.add_task("classifying", total=len(files))
        # each failure at once: a long run shows failures as they come
        try:
            with interrupt_between_frames(signal.SIGINT, signal.SIGTERM):   # docker stop: end like Ctrl-C
                run = run_files(pipeline, files, allow_any_modality=any_modality,
                                on_error=lambda line: _err(f"usedge: failed: {line}"),   # whole or in part
                                on_no_image=lambda line: _err(f"usedge: no image: {line}"),
                                on_note=lambda line: _err(f"usedge: note: {line}"),
                                on_file=lambda: progress.advance(task))
        except BaseException as exc:  # an output that failed (the overlay folder's disk full), or anything else:
            sink.keep_partial = True     # the part stays in <out>.partial, an earlier results file as it was
            tmp = getattr(sink, "_tmp", None)
            if isinstance(exc, UsedgeError) and tmp is not None and str(tmp) not in (exc.hint or ""):
                exc.hint = f"{exc.hint}; the results so far are in {tmp}" if exc.hint else f"the results so far are in {tmp}"
            raise
        sink.keep_partial = run.interrupted     # a part never replaces an earlier complete results file
    run.skipped = len(notes)
    _err(f"usedge: {run.line(out)}")
    if run.interrupted:
        if out != "-":
            _err(f"usedge: the results so far are in {out}.partial; "
                 + (f"{out} is the earlier run's, unchanged" if Path(out).exists() else f"{out} was not written"))
        return 130
    return 1 if run.failed or notes else 0


class _StatusLine:
    """The live stream's one status line on stderr (fps, current label, drops), redrawn at most twice a
    second from the loop thread; cleared when the stream ends, before the summary."""

    def __init__(self, runner, force: bool) -> None:
        from rich.live import Live

        self.runner, self.next_at = runner, 0.0
        console = rich_console(stderr=True, force_terminal=True if force else None)
        self.live = Live("", console=console, transient=True, auto_refresh=False)

    def __call__(self, pred, frame, overlay) -> None:
        import time

        from rich.text import Text

        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + 0.5
        st = self.runner.stats()
        top = (f"{pred.label} {pred.probs[pred.label]:.0%}" if pred.has_label else pred.state.replace("_", " ")) + (
            " frozen" if pred.frozen else "")
        extra = "".join(f", {st[key]} {name}" for key, name in (("late_skipped", "late"), ("frozen", "frozen"),
                                                               ("errors", "errors")) if st[key])
        line = f"live {st['fps']:.1f} fps | {top} | {st['frames']} done, {st['dropped']} dropped{extra}"
        self.live.update(Text(line, no_wrap=True, overflow="ellipsis"), refresh=True)


def _infer_stream(clf, source: str, *, realtime: bool, fps: Optional[float], smooth: bool, smooth_window: int,
                  freeze: bool, record: Optional[Path], show: bool, jsonl: Optional[str], fmt: str, out: Optional[str],
                  max_frames: Optional[int], max_reconnects: Optional[int], idle_timeout: Optional[float],
                  cam: bool, summary_path: Optional[Path], quiet: bool, status: Optional[bool], budget,
                  quality_gate: bool = True, any_modality: bool = False) -> int:
    from usedge.errors import OutputError
    from usedge.fileio import write_json_atomic
    from usedge.runtime.pipeline import FramePipeline
    from usedge.runtime.sinks import JsonlSink, ShowSink, VideoRecorderSink, results_sink
    from usedge.runtime.sources import open_source
    from usedge.runtime.stream import StreamRunner

    reader = open_source(source, watch_idle_timeout_s=idle_timeout, allow_any_modality=any_modality)
    if hasattr(reader, "ignore_outputs"):      # a watched folder never reads the results it is given to write
        reader.ignore_outputs([jsonl, out, record, summary_path])
    with finishing(signal.SIGINT, signal.SIGTERM) as finish, contextlib.ExitStack() as stack:
        sinks = []
        if jsonl:
            sinks.append(stack.enter_context(JsonlSink(jsonl, earlier=True)))
        if out:
            sinks.append(stack.enter_context(results_sink(out, fmt, clf.class_names, earlier=True)))
        if record is not None:
            # the source's rate as the capture thread knows it once the source is open (a video: its container's)
            sinks.append(stack.enter_context(VideoRecorderSink(record, fps=lambda: runner.capture.fps)))
        if show:
            sinks.append(stack.enter_context(ShowSink()))
        pipeline = FramePipeline(clf, sinks, stream=True, regions=reader.regions, freeze=freeze,
                                 smooth=smooth_window if smooth else None, cam=cam, quality_gate=quality_gate,
                                 on_event=lambda line: _err(f"usedge: {reader.name}: {line}"))
        runner = StreamRunner(pipeline, reader, realtime=realtime, fps=fps, max_frames=max_frames,
                              max_reconnects=max_reconnects, budget=budget)
        if status if status is not None else (not quiet and sys.stderr.isatty()):
            line = _StatusLine(runner, force=bool(status))
            runner.subscribe(line)
            stack.enter_context(line.live)
        # Ctrl-C, systemd / docker stop: end between frames (recording finalised, summary)
        # an output that cannot be written (disk full) is dropped and the stream goes on with the others;
        # when it was the last one, it ends the stream: summarised, then said
        output_error = None
        with interrupt_between_frames(signal.SIGINT, signal.SIGTERM):
            try:
                summary = runner.run()
            except OutputError as exc:
                summary, output_error = runner.summary, exc
        finish.hold()      # a second Ctrl-C / SIGTERM cannot cut the outputs' closing (the recording's moov)
        try:
            stack.close()
        except OutputError as exc:
            output_error = output_error or exc
        for line in summary.lines()[:1] if quiet else summary.lines():
            _err(line)
        if summary_path is not None:
            try:
                write_json_atomic(summary_path, summary.to_dict())
            except OSError as exc:
                raise OutputError(f"cannot write the summary ({exc.strerror or exc})", path=summary_path,
                                  hint="free disk space or choose another --summary; it was printed above") from exc
        if output_error is not None:
            raise output_error
        if summary.failed_outputs:      # an output stopped mid-stream; classification went on without it
            _err(f"usedge: {summary.failed_outputs[-1]}")
            return 1
    if runner.all_failed:
        _err(f"usedge: every frame failed ({summary.errors}); last: {runner.last_error}")
        return 1
    if summary.errors:     # as a batch of files: an input (here: frames) that could not be classified is a failure
        _err(f"usedge: {summary.errors} frame(s) or file(s) could not be classified (error lines in the results); "
             f"last: {runner.last_error}")
        return 1
    # a file whose damaged data was passed over ends at its end, with the damage as its error: a failure too
    return 1 if summary.ended_by in ("source failed", "ended early") or (summary.error and summary.ended_by == "end of source") else 0


def _check_outputs(model: Path, stream: Optional[str], **outputs) -> None:
    """Output files (--out, --jsonl, --summary, --record) are errors before anything is opened when one is
    the model or the streamed file (writing results there would destroy it), a folder, or when two name
    one file (the last to write would wipe the other)."""
    from usedge.errors import ConfigError
    from usedge.fileio import refuse_overwriting_inputs

    protected = [model] + ([Path(stream)] if stream is not None and Path(stream).is_file() else [])
    given = {name: path for name, path in outputs.items() if path is not None and str(path) != "-"}
    for name, path in given.items():
        refuse_overwriting_inputs(path, protected, f"--{name}", folder=False)
        if Path(path).is_dir():
            raise ConfigError(f"--{name} {path} is a folder, not a file", hint=f"give --{name} a file name")
    seen: dict[str, str] = {}
    for name, path in given.items():     # two outputs in one file: the last to write would wipe the other
        key = os.path.realpath(path)
        if key in seen:
            raise ConfigError(f"--{seen[key]} and --{name} both name {path}: one would overwrite the other",
                              hint="give each output its own file name")
        seen[key] = name


def _refuse_options_that_do_not_apply(streaming: bool, **given: bool) -> None:
    """An option that does nothing in this mode is an error naming it, never silently ignored."""
    from usedge.errors import ConfigError

    if streaming and given.pop("overlay"):
        raise ConfigError("--overlay writes one PNG per INPUT file and does not apply to --stream",
                          hint="use --record out.mp4 (or --show) for the annotated stream")
    given.pop("overlay", None)
    used = [f"--{name.replace('_', '-')}" for name, on in given.items() if on]
    if not streaming and used:
        raise ConfigError(f"{used[0]} applies to --stream only, not to INPUT files",
                          hint=f"drop {used[0]}, or give one video as --stream VIDEO to classify it as a live source")


@app.command()
def infer(
    model: Path = typer.Argument(..., help="model.onnx, model.int8.onnx, model.fp16.onnx or a TensorRT .engine"),
    inputs: Optional[List[str]] = typer.Argument(None, help="images, folders (recursive), DICOM, video files"),
    stream: Optional[str] = typer.Option(None, "--stream", help="live source: camera index, /dev/videoN, URL, "
                                         "GStreamer pipeline, video file, DICOM cine, watch:DIR or a folder"),
    fmt: Optional[str] = typer.Option(None, "--format", help="jsonl | csv (default: csv for an --out file ending in .csv, else jsonl)"),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="results file ('-' = stdout, the default for files)"),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="save annotated images in this folder"),
    cam: bool = typer.Option(False, "--cam", help="draw the class activation map (models exported with CAM)"),
    backend: str = backend_option(),
    threads: Optional[int] = threads_option(),
    spinning: Optional[bool] = spinning_option(),
    ort_opt_level: str = typer.Option("all", "--ort-opt-level", help="onnxruntime graph optimisation: disable | "
                                      "basic | extended | all"),
    opt_level: Optional[str] = typer.Option(None, "--opt-level", hidden=True, help="Deprecated: use --ort-opt-level."),
    realtime: bool = typer.Option(False, "--realtime", help="pace a file source at its own frame rate"),
    fps: Optional[float] = typer.Option(None, "--fps", help="the source's frame rate, used instead of what the file or camera says (pacing with --realtime, the recording)"),
    smooth: bool = typer.Option(False, "--smooth", help="average probabilities over the last --smooth-window results"),
    smooth_window: int = typer.Option(5, "--smooth-window", min=1),
    freeze: bool = typer.Option(True, "--freeze-detect/--no-freeze-detect", help="skip frozen (repeated) images"),
    record: Optional[Path] = typer.Option(None, "--record", help="write the annotated stream to this .mp4 "
                                         "(H.264, plays in browsers) or .avi (MJPG)"),
    show: bool = typer.Option(False, "--show", help="show the annotated stream in a window"),
    jsonl: Optional[str] = typer.Option(None, "--jsonl", help="stream: one JSON line per frame, flushed per line"),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="stream: stop after N frames read"),
    max_reconnects: Optional[int] = typer.Option(None, "--max-reconnects", help="live source: give up after N"),
    idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="watched folder: end after S seconds without a new file"),
    summary: Optional[Path] = typer.Option(None, "--summary", help="stream: write the run summary as JSON here"),
    status: Optional[bool] = typer.Option(None, "--status/--no-status", help="stream: a live status line on stderr "
                                          "(fps, label, drops); default: when stderr is a terminal and not --quiet"),
    any_modality: bool = typer.Option(False, "--any-modality", help="classify DICOM of any Modality (default: US only)"),
    quality_gate: bool = quality_gate_option(),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Refuse a model whose weights digest does not match (--no-verify: load a damaged or hand-edited file anyway)."),
    quiet: bool = quiet_option("No model line, progress bar or status line; errors, `no image` lines and the "
                               "final line stay."),
) -> None:
    """Classify images/folders/DICOM/videos, or a live scanner with --stream. Results: JSONL or CSV."""
    from usedge.errors import ConfigError
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.model_info import model_card_line
    from usedge.runtime.threads import thread_budget

    if fmt is None:
        fmt = "csv" if out and out.lower().endswith(".csv") else "jsonl"
    if fmt not in ("jsonl", "csv"):
        raise ConfigError(f"unknown --format '{fmt}'", hint="use jsonl or csv")
    if stream is None and not inputs:
        raise ConfigError("nothing to classify", hint="give INPUT files/folders, or --stream SOURCE")
    if stream is not None and inputs:
        raise ConfigError("give either INPUT files or --stream, not both", hint="run two commands")
    _refuse_options_that_do_not_apply(stream is not None, overlay=overlay is not None, record=record is not None,
                                      smooth=smooth, realtime=realtime, show=show, jsonl=jsonl is not None,
                                      summary=summary is not None, max_frames=max_frames is not None,
                                      max_reconnects=max_reconnects is not None, idle_timeout=idle_timeout is not None,
                                      fps=fps is not None, status=status is not None)
    if cam and overlay is None and record is None and not show:
        from usedge.errors import ConfigError

        raise ConfigError("--cam draws the heatmap on annotated images, and none is asked for",
                          hint="add --overlay DIR (files) or --record out.mp4 / --show (--stream)")
    ort_opt_level = deprecated(ort_opt_level, opt_level, old="--opt-level", new="--ort-opt-level", default="all")
    _check_outputs(model, stream, out=out, jsonl=jsonl, summary=summary, record=record)
    from usedge.runtime.stream import FPS_RANGE

    if fps is not None and not (math.isfinite(fps) and FPS_RANGE[0] <= fps <= FPS_RANGE[1]):
        raise ConfigError(f"--fps {fps} is not a frame rate",
                          hint=f"give frames per second from {FPS_RANGE[0]:g} to {FPS_RANGE[1]:g}, e.g. --fps 30")
    for name, value in (("--max-frames", max_frames), ("--max-reconnects", max_reconnects), ("--idle-timeout", idle_timeout)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} {value} is negative", hint=f"give {name} 0 or more (leave it out for no limit)")
    if summary is not None:      # written at the end of the stream: a folder it cannot go into fails now
        from usedge.fileio import check_writable_folder

        check_writable_folder(Path(summary).parent, "--summary")
    budget = thread_budget(capture_threads=0 if stream is None else 1, model_threads=threads, spinning=spinning)
    clf = Classifier.load(model, backend, threads=budget.model_threads, spinning=budget.spinning,
                          opt_level=ort_opt_level, verify=verify)
    if not quiet:
        _err(f"usedge: {model.name} on {clf.describe()}" + (f" [{clf.backend_reason}]" if clf.backend_reason else ""))
        _err(f"usedge: model card: {model_card_line(clf.info)}")
    if cam and not clf.has_cam:
        _err("usedge: --cam ignored: this model has no 'cam' output (export it with CAM)")
    try:
        if stream is None:
            code = _infer_files(clf, list(inputs), fmt, out or "-", overlay, cam, quiet, any_modality, quality_gate)
        else:
            code = _infer_stream(clf, stream, realtime=realtime, fps=fps, smooth=smooth, smooth_window=smooth_window,
                                 freeze=freeze, record=record, show=show, jsonl=jsonl, fmt=fmt, out=out,
                                 max_frames=max_frames, max_reconnects=max_reconnects, idle_timeout=idle_timeout,
                                 cam=cam, summary_path=summary, quiet=quiet, status=status, budget=budget,
                                 quality_gate=quality_gate, any_modality=any_modality)
    finally:
        clf.close()
    if code:
        raise typer.Exit(code)
