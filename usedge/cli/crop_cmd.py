"""usedge crop: check the crop on your own scanner's images before training (lean: no torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from usedge.cli.app import app


def _name(used: set[str], src: Path, frame: int | None, view: int | None) -> str:
    base = src.stem + (f"_f{frame:04d}" if frame is not None else "") + (f"_v{view}" if view is not None else "")
    name, k = base, 1
    while name in used:          # the same file name in two folders
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def _overlay(frame, info):
    """The frame (BGR uint8) with every field of view in green and the crop box in magenta."""
    import cv2

    from usedge.runtime.pixels import as_uint8

    vis = as_uint8(frame)
    vis = cv2.cvtColor(vis, cv2.COLOR_GRAY2BGR) if vis.ndim == 2 else vis.copy()
    t = max(1, round(max(vis.shape[:2]) / 500))
    for x, y, w, h in info.fov_boxes or [info.fov_box]:
        cv2.rectangle(vis, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), t)
    x, y, w, h = info.crop_box
    cv2.rectangle(vis, (x, y), (x + w - 1, y + h - 1), (255, 0, 255), t)
    return vis


def _png(path: Path, image) -> None:
    import cv2

    from usedge.errors import OutputError
    from usedge.fileio import write_bytes_atomic

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OutputError("cannot encode PNG", path=path, hint="report this as a bug")
    write_bytes_atomic(path, buf.tobytes())


@app.command()
def crop(
    inputs: List[Path] = typer.Argument(..., help="Images (PNG/JPEG/BMP/TIFF/WebP), DICOM files or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: crop PNGs + crops.jsonl."),
    crop_mode: str = typer.Option("auto", "--crop", help="auto | fov | none | x,y,w,h | preset:NAME."),
    size: int = typer.Option(224, help="Output side in pixels (the model input size)."),
    doppler: bool = typer.Option(True, "--remove-doppler/--keep-doppler", help="Fill colour Doppler pixels from the B-mode around them."),
    presets: Optional[Path] = typer.Option(None, help="Your presets TOML (a table preset.NAME with box = x, y, w, h), added to the built-in ones."),
    all_frames: bool = typer.Option(False, "--all-frames", help="Every frame of multi-frame DICOM (default: the first)."),
    views: str = typer.Option("all", help="Dual-view screens: 'all' writes one crop per view, 'largest' one."),
    overlay: bool = typer.Option(False, help="Also write <name>.overlay.png: the frame with FOV (green) and crop (magenta) boxes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    any_modality: bool = typer.Option(False, "--any-modality", help="Crop DICOM of any Modality (default: US only)."),
) -> None:
    """Crop scanner frames the way training and `usedge infer` do; write PNGs and crops.jsonl to check them.

    crops.jsonl, one line per crop: input, frame, view, frame_shape, fov_box, fov_boxes, crop_box (x, y, w, h
    pixels), doppler_fraction (of the output's pixels), method (dicom-regions, detection, preset, manual, none,
    fallback), notes, output; or input and error for a file that could not be cropped.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from usedge.errors import ConfigError, InputError, UsedgeError
    from usedge.fileio import write_text_atomic
    from usedge.runtime.crop import FrameCropper, parse_crop, prepare, prepare_all
    from usedge.runtime.dicom import is_dicom, open_dicom
    from usedge.runtime.formats import IMAGE_SUFFIXES, expand_inputs, read_image
    from usedge.runtime.preprocess import PreprocessSpec

    if views not in ("all", "largest"):
        raise ConfigError(f"--views {views!r}", hint="use all or largest")
    parse_crop(crop_mode, presets)                 # ConfigError on a bad presets file, malformed --crop, unknown preset
    spec = PreprocessSpec(size=size, crop=crop_mode, remove_doppler=doppler)
    if size < 8:
        raise ConfigError(f"--size {size} is too small", hint="use at least 8 (224 for the paper's model)")
    files, notes = expand_inputs(inputs, IMAGE_SUFFIXES)
    for note in notes:
        print(f"usedge: skipped {note}", file=sys.stderr)
    if not files and not notes:
        raise InputError("no images or DICOM files found", path=", ".join(map(str, inputs)),
                         hint="pass image/DICOM files or folders holding them")
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    lines: list[dict] = []
    failed = 0

    def crop_one(frame, regions, cropper=None):
        if cropper is not None:
            return [cropper(frame)]
        if views == "all":
            return prepare_all(frame, spec, regions=regions, presets=presets)
        return [prepare(frame, spec, regions=regions, presets=presets)]

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=quiet, transient=True) as progress:
        task = progress.add_task("cropping", total=len(files))
        for src in files:
            try:
                if src.is_file() and is_dicom(src):
                    d = open_dicom(src, allow_any_modality=any_modality)
                    regions = d.raw_regions or None
                    indices = range(d.n_frames) if all_frames else range(1)
                    cropper = FrameCropper(spec, regions=regions, presets=presets) if all_frames and d.n_frames > 1 and views == "largest" \
                        else None
                    frames = ((i, d.frame(i)) for i in indices)
                    multi = d.n_frames > 1
                else:
                    regions, cropper, multi = None, None, False
                    frames = iter([(0, read_image(src, allow_any_modality=any_modality))])
                for i, frame in frames:
                    results = crop_one(frame, regions, cropper)
                    for small, info in results:
                        view = info.view if len(results) > 1 else None
                        name = _name(used, src, i if multi else None, view)
                        _png(out / f"{name}.png", small)
                        if overlay:
                            _png(out / f"{name}.overlay.png", _overlay(frame, info))
                        lines.append({"input": str(src), "frame": i, "view": info.view, **info.to_dict(),
                                      "output": f"{name}.png"})
            except UsedgeError as exc:
                if len(files) == 1:
                    raise
                failed += 1
                lines.append({"input": str(src), "error": exc.one_line()})
                print(f"usedge: {exc.one_line()}", file=sys.stderr)
            progress.advance(task)
    write_text_atomic(out / "crops.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    crops = sum("error" not in line for line in lines)
    methods: dict[str, int] = {}
    for line in lines:
        if "method" in line:
            methods[line["method"]] = methods.get(line["method"], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(methods.items()))
    typer.echo(f"wrote {crops} crops from {len(files) - failed} of {len(files)} files to {out} ({summary}); "
               f"see {out / 'crops.jsonl'}")
    if failed or notes:
        raise typer.Exit(1)
