"""usedge crop: check the crop on your own scanner's images before training (lean: no torch)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import List, Optional

import typer

from usedge.cli.app import app
from usedge.cli.options import deprecated, quiet_option
from usedge.cli.terminal import say, terminal_safe
from usedge.runtime.interrupts import interrupt_between_frames
from usedge.runtime.preprocess import MAX_INPUT_SIZE, RESIZE_FOR_NEW_MODELS, RESIZE_METHODS


@app.command()
def crop(
    inputs: List[Path] = typer.Argument(..., help="Images (PNG/JPEG/BMP/TIFF/WebP), DICOM, video files "
                              "or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: crop PNGs + crops.jsonl."),
    crop_mode: str = typer.Option("auto", "--crop", help="auto | fov | none | x,y,w,h | preset:NAME."),
    image_size: int = typer.Option(224, "--image-size", help="Output side in pixels (the model input size)."),
    size: Optional[int] = typer.Option(None, "--size", hidden=True, help="Deprecated: use --image-size."),
    doppler: bool = typer.Option(True, "--remove-doppler/--keep-doppler", help="Fill colour Doppler pixels from the B-mode around them."),
    resize: str = typer.Option(RESIZE_FOR_NEW_MODELS, help="Crop -> model size: colour-halve-linear (what usedge "
                               "train uses) | halve-linear (the previous default) | area (models trained "
                               "before usedge had this choice): use your model's."),
    presets: Optional[Path] = typer.Option(None, help="Your presets TOML (a table preset.NAME with box = x, y, w, h), added to the built-in ones."),
    all_frames: bool = typer.Option(False, "--all-frames", help="Every frame of a multi-frame DICOM, every page of a multi-page TIFF (default: the first)."),
    every: int = typer.Option(1, "--every", min=1, help="Only every N-th frame of a video (and of a multi-frame DICOM "
                              "with --all-frames); a video's frames are all cropped by default."),
    views: str = typer.Option("all", help="Dual-view screens: 'all' writes one crop per view, 'largest' one."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", metavar="DIR", help="Also write <name>.png in DIR: the "
                                           "frame with FOV (green) and crop (magenta) boxes."),
    overlay_switch: bool = typer.Option(False, "--overlay-beside-crops", hidden=True,
                                        help="Deprecated switch form of --overlay: <name>.overlay.png in --out."),
    quiet: bool = quiet_option(),
    any_modality: bool = typer.Option(False, "--any-modality", help="Crop DICOM of any Modality (default: US only)."),
) -> None:
    """Crop scanner frames the way training and `usedge infer` do; write PNGs and crops.jsonl to check them.

    crops.jsonl, one line per crop: input, frame, view, frame_shape, fov_box, fov_boxes, crop_box (x, y, w, h
    pixels), doppler_fraction (of the output's pixels), method (dicom-regions, detection, preset, manual, none,
    fallback), notes, output; or input and error for a file that could not be cropped.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from usedge.errors import ConfigError, InputError
    from usedge.fileio import refuse_overwriting_inputs
    from usedge.runtime.batch import crop_files
    from usedge.runtime.crop import parse_crop
    from usedge.runtime.formats import INPUT_SUFFIXES, drop_lesion_masks, drop_repeats, expand_inputs, other_types
    from usedge.runtime.preprocess import PreprocessSpec

    image_size = deprecated(image_size, size, old="--size", new="--image-size", default=224)
    overlay = deprecated(overlay, out if overlay_switch else None, old="--overlay (a switch)", new="--overlay DIR")
    if views not in ("all", "largest"):
        raise ConfigError(f"--views {views!r}", hint="use all or largest")
    parse_crop(crop_mode, presets)                 # ConfigError on a bad presets file, malformed --crop, unknown preset
    if not 8 <= image_size <= MAX_INPUT_SIZE:
        raise ConfigError(f"--image-size {image_size} is too {'small' if image_size < 8 else 'large'}",
                          hint=f"use 8 to {MAX_INPUT_SIZE} (224 for the paper's model)")
    if resize not in RESIZE_METHODS:       # a typo here, not a model's metadata from a newer usedge
        guess = resize.strip().lower().replace("color", "colour")
        raise ConfigError(f"--resize {resize!r} is not a resize method",
                          hint=(f"did you mean {guess}? " if guess in RESIZE_METHODS else "")
                          + f"use one of {', '.join(RESIZE_METHODS)}: your model's (usedge doctor MODEL prints it)")
    spec = PreprocessSpec(size=image_size, crop=crop_mode, remove_doppler=doppler, resize=resize)
    ignored: list[Path] = []
    files, notes = expand_inputs(inputs, INPUT_SUFFIXES, ignored=ignored)
    files, left_out = drop_lesion_masks(inputs, files)
    files, repeats = drop_repeats(files)
    left_out += repeats + other_types(ignored)
    for line in left_out:
        say(f"usedge: {line}")
    refuse_overwriting_inputs(out, files, "--out")
    if overlay is not None:
        refuse_overwriting_inputs(overlay, files, "--overlay")
    for note in notes:
        say(f"usedge: skipped {note}")
    if not files and not notes:
        raise InputError("no image, DICOM or video file found", path=", ".join(map(str, inputs)),
                         hint="pass image/DICOM/video files or folders holding them")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=quiet, transient=True) as progress:
        task = progress.add_task("cropping", total=len(files))
        done = []
        try:
            with interrupt_between_frames(signal.SIGINT, signal.SIGTERM):   # docker stop / systemd: as Ctrl-C
                run = crop_files(files, spec, out, presets=presets, all_frames=all_frames, every=every, views=views,
                                 overlay_dir=overlay, allow_any_modality=any_modality,
                                 on_error=lambda line: say(f"usedge: {line}"),
                                 on_file=lambda: (progress.advance(task), done.append(1)))
        except KeyboardInterrupt:
            say(f"usedge: crop interrupted after {len(done)} of {len(files)} files; {out / 'crops.jsonl'} lists every "
                "crop written")
            raise typer.Exit(130) from None
    typer.echo(terminal_safe(run.line(out)))
    if run.failed or notes:
        raise typer.Exit(1)
