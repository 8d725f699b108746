"""`usedge crop` as a library call: every frame of every input (image, DICOM, video: every `every`-th
frame of a video, or of a multi-frame DICOM with all_frames) through the crop, written as PNGs with
one crops.jsonl line per crop (and optional overlays of the boxes). Videos are read by
`sources.iter_file_frames`, the reader of `usedge infer FILES`. `usedge infer FILES` is
`usedge.runtime.pipeline.run_files`."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from usedge.errors import UsedgeError
from usedge.fileio import write_text_atomic
from usedge.runtime.crop import FrameCropper, prepare, prepare_all
from usedge.runtime.dicom import is_dicom, open_dicom
from usedge.runtime.doppler import MOSTLY_COLOUR
from usedge.runtime.formats import is_video, read_pages
from usedge.runtime.overlay import draw_crop
from usedge.runtime.preprocess import PreprocessSpec
from usedge.runtime.sinks import OutputNames, claim_output_folder, write_png
from usedge.runtime.sources import iter_file_frames

@dataclass
class CropRun:
    files: int
    lines: list[dict] = field(default_factory=list)      # crops.jsonl
    failed: int = 0

    def line(self, out: Path) -> str:
        methods: dict[str, int] = {}
        for line in self.lines:
            if "method" in line:
                methods[line["method"]] = methods.get(line["method"], 0) + 1
        crops = sum("error" not in line for line in self.lines)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(methods.items()))
        colour = sum(line.get("doppler_fraction", 0.0) > MOSTLY_COLOUR for line in self.lines)
        note = (f"; {colour} crop(s) more than {MOSTLY_COLOUR:.0%} colour were filled as colour Doppler (tinted B-mode? "
                "--keep-doppler keeps them)" if colour else "")
        return (f"wrote {crops} crops from {self.files - self.failed} of {self.files} files to {out} ({summary}); "
                f"see {out / 'crops.jsonl'}{note}")


def crop_files(files: list[Path], spec: PreprocessSpec, out: Path, *, presets: Path | None = None,
               all_frames: bool = False, every: int = 1, views: str = "all", overlay_dir: Path | None = None,
               allow_any_modality: bool = False, on_error: Callable[[str], None] = lambda line: None,
               on_file: Callable[[], None] = lambda: None) -> CropRun:
    """Crop every file into `out` (<name>.png + crops.jsonl); overlays of the boxes into `overlay_dir`
    (named <name>.overlay.png when that is `out` itself). A single input that fails raises."""
    claim_output_folder(out, "--out", ours=("crops.jsonl",))
    if overlay_dir is not None:
        claim_output_folder(overlay_dir, "--overlay", ours=("crops.jsonl",))
    overlay_suffix = ".overlay.png" if overlay_dir is not None and overlay_dir.resolve() == out.resolve() else ".png"
    _remove_earlier_crops(out, overlay_dir, overlay_suffix)
    names = OutputNames()
    run = CropRun(files=len(files))

    def crop_one(frame, regions, cropper):
        if cropper is not None:
            return [cropper(frame)]
        if views == "all":
            return prepare_all(frame, spec, regions=regions, presets=presets)
        return [prepare(frame, spec, regions=regions, presets=presets)]

    def crop_file(src):
        try:
            if src.is_file() and is_dicom(src):
                d = open_dicom(src, allow_any_modality=allow_any_modality)
                regions = d.raw_regions or None
                cropper = (FrameCropper(spec, regions=regions, presets=presets)
                           if all_frames and d.n_frames > 1 and views == "largest" else None)
                # a damaged cine frame is passed over (named at the end, as `usedge infer` does)
                frames = d.frames(range(0, d.n_frames, every) if all_frames else range(1))
                multi = d.n_frames > 1
            elif is_video(src):
                regions, cropper, multi = None, None, True
                frames = ((f.index, f.image) for f in iter_file_frames(src) if f.index % every == 0)
            else:      # a still; a multi-page TIFF is cropped like a cine (its pages with --all-frames)
                pages = read_pages(src, every=every, allow_any_modality=allow_any_modality)
                first = next(pages)
                regions, cropper, multi = None, None, first.frames_in_file > 1
                frames = itertools.chain([(0, first.frame)], ((d.frame_index, d.frame) for d in pages) if all_frames else ())
            for i, frame in frames:
                results = crop_one(frame, regions, cropper)
                for small, info in results:
                    name = names(src, i if multi else None, info.view if len(results) > 1 else None)
                    # listed first, written then: a Ctrl-C between the two leaves no crop unlisted (crops.jsonl
                    # keeps only the lines whose PNG exists)
                    run.lines.append({"input": str(src), "frame": i, "view": info.view, **info.to_dict(),
                                      "output": f"{name}.png"})
                    write_png(out / f"{name}.png", small)
                    if overlay_dir is not None:
                        write_png(overlay_dir / f"{name}{overlay_suffix}", draw_crop(frame, info))
        except UsedgeError as exc:
            if exc.path is None:   # a frame-level error (blank frame, NaN pixels): name the file
                exc.path = str(src)
            run.failed += 1
            run.lines.append({"input": str(src), "error": exc.one_line()})
            if len(files) == 1:
                raise
            on_error(exc.one_line())
        on_file()

    try:
        for src in files:
            crop_file(src)
    finally:   # also on Ctrl-C or an output error: crops.jsonl lists every crop written so far
        run.lines = [line for line in run.lines if "output" not in line or (out / line["output"]).is_file()]
        write_text_atomic(out / "crops.jsonl", "".join(json.dumps(line) + "\n" for line in run.lines))
    return run


def _remove_earlier_crops(out: Path, overlay_dir: Path | None, overlay_suffix: str) -> None:
    """The PNGs (and overlays) an earlier `usedge crop` into this folder listed in its crops.jsonl: a rerun
    replaces crops.jsonl, and its old crops left beside the new ones would be taken for this run's by
    anything that reads crops/*.png."""
    try:
        lines = [json.loads(x) for x in (out / "crops.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return
    for line in lines:
        name = line.get("output") if isinstance(line, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".png"):
            continue         # only plain names in the folder, never a path elsewhere
        (out / name).unlink(missing_ok=True)
        if overlay_dir is not None:
            (overlay_dir / f"{name[:-4]}{overlay_suffix}").unlink(missing_ok=True)

