"""`usedge crop` as a library call: every frame of every input (image, DICOM, video: every `every`-th
frame of a video, or of a multi-frame DICOM with all_frames) through the crop, written as PNGs with
one crops.jsonl line per crop (and optional overlays of the boxes). Videos are read by
`sources.iter_file_frames`, the reader of `usedge infer FILES`. `usedge infer FILES` is
`usedge.runtime.pipeline.run_files`."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from usedge.errors import OutputError, UsedgeError
from usedge.fileio import write_text_atomic
from usedge.runtime.crop import FrameCropper, prepare, prepare_all
from usedge.runtime.dicom import is_dicom, open_dicom
from usedge.runtime.doppler import MOSTLY_COLOUR
from usedge.runtime.formats import is_video, read_pages
from usedge.runtime.overlay import draw_crop
from usedge.runtime.preprocess import PreprocessSpec
from usedge.runtime.sinks import OutputNames, claim_output_folder, trim_torn_line, write_png
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
        crops = sum("output" in line for line in self.lines)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(methods.items()))
        colour = sum(line.get("doppler_fraction", 0.0) > MOSTLY_COLOUR for line in self.lines)
        note = (f"; {colour} crop(s) more than {MOSTLY_COLOUR:.0%} colour were filled as colour Doppler (tinted B-mode? "
                "--keep-doppler keeps them)" if colour else "")
        cropped = len({line["input"] for line in self.lines if "output" in line})
        part = self.failed - (self.files - cropped) if self.failed else 0     # failed files that gave crops too
        return (f"wrote {crops} crops from {cropped} of {self.files} files to {out}" + (f" ({summary})" if summary else "")
                + (f", {self.failed} with errors" + (f" ({part} of them in part)" if part > 0 else "") if self.failed else "")
                + f"; see {out / 'crops.jsonl'}{note}")


def crop_files(files: list[Path], spec: PreprocessSpec, out: Path, *, presets: Path | None = None,
               all_frames: bool = False, every: int = 1, views: str = "all", overlay_dir: Path | None = None,
               allow_any_modality: bool = False, on_error: Callable[[str], None] = lambda line: None,
               on_file: Callable[[], None] = lambda: None) -> CropRun:
    """Crop every file into `out` (<name>.png + crops.jsonl); overlays of the boxes into `overlay_dir`
    (named <name>.overlay.png when that is `out` itself). A single input that fails raises.

    crops.jsonl is appended line by line as the crops are written (a run that is killed leaves the list
    of what it wrote, which the next run into `out` removes) and rewritten at the end with the crops that
    exist. A frame of a cine or video that cannot be cropped (a blank frame) is an error line naming the
    frame, and the next frames go on. A crop that cannot be written (disk full) ends the run with one
    OutputError line."""
    claim_output_folder(out, "--out", ours=("crops.jsonl",))
    if overlay_dir is not None:
        claim_output_folder(overlay_dir, "--overlay", ours=("crops.jsonl",))
    overlay_suffix = ".overlay.png" if overlay_dir is not None and overlay_dir.resolve() == out.resolve() else ".png"
    _remove_earlier_crops(out, overlay_dir, overlay_suffix)
    names = OutputNames()
    run = CropRun(files=len(files))
    listing = out / "crops.jsonl"
    try:
        log = open(listing, "w", encoding="utf-8", errors="backslashreplace")
    except OSError as exc:
        raise OutputError(f"cannot write crops.jsonl ({exc.strerror or exc})", path=listing,
                          hint="choose a writable --out folder") from exc

    def listed(line: dict) -> int:
        """Append a line to crops.jsonl; the file's length before it (to take it back)."""
        run.lines.append(line)
        try:
            at = log.tell()
            log.write(json.dumps(line) + "\n")
            log.flush()
            return at
        except OSError as exc:
            raise OutputError(f"cannot write crops.jsonl ({exc.strerror or exc})", path=listing,
                              hint="free disk space or choose another --out; it lists the crops written") from exc

    def written(path: Path, image, listed_at: int | None = None) -> None:
        try:
            write_png(path, image)
        except OSError as exc:
            if listed_at is not None:      # the crop is not there: its line goes too
                run.lines.pop()
                with contextlib.suppress(OSError):
                    log.seek(listed_at)
                    log.truncate()
            n = sum("output" in line for line in run.lines)
            raise OutputError(f"cannot write a crop ({exc.strerror or exc}) after {n} crops", path=path,
                              hint="free disk space or choose another --out; crops.jsonl lists the crops written"
                              ) from exc

    def crop_one(frame, regions, cropper):
        if cropper is not None:
            return [cropper(frame)]
        if views == "all":
            return prepare_all(frame, spec, regions=regions, presets=presets)
        return [prepare(frame, spec, regions=regions, presets=presets)]

    def crop_file(src):
        failed = False
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
                try:
                    results = crop_one(frame, regions, cropper)
                except OutputError:
                    raise
                except UsedgeError as exc:
                    if not multi:
                        raise
                    # one frame of a cine or video (a blank one): named, and the next frames go on
                    if exc.path is None:
                        exc.path = str(src)
                    line = f"{exc.path} frame {i}: {exc.message}" + (f" — {exc.hint}" if exc.hint else "")
                    listed({"input": str(src), "frame": i, "error": line})
                    on_error(line)
                    failed = True
                    continue
                for small, info in results:
                    name = names(src, i if multi else None, info.view if len(results) > 1 else None)
                    # listed first, written then: a Ctrl-C between the two leaves no crop unlisted (crops.jsonl
                    # keeps only the lines whose PNG exists)
                    at = listed({"input": str(src), "frame": i, "view": info.view, **info.to_dict(),
                                 "output": f"{name}.png"})
                    written(out / f"{name}.png", small, at)
                    if overlay_dir is not None:
                        written(overlay_dir / f"{name}{overlay_suffix}", draw_crop(frame, info))
        except OutputError:
            raise
        except UsedgeError as exc:
            if exc.path is None:   # a frame-level error (blank frame, NaN pixels): name the file
                exc.path = str(src)
            failed = True
            listed({"input": str(src), "error": exc.one_line()})
            if len(files) == 1 and not run.lines[:-1]:
                raise
            on_error(exc.one_line())
        run.failed += failed
        on_file()

    try:
        for src in files:
            crop_file(src)
    finally:   # also on Ctrl-C or an output error: crops.jsonl lists every crop written so far
        with contextlib.suppress(OSError):
            log.close()
        run.lines = [line for line in run.lines if "output" not in line or (out / line["output"]).is_file()]
        try:
            write_text_atomic(listing, "".join(json.dumps(line) + "\n" for line in run.lines))
        except OSError as exc:          # the appended list stays (cut at its last complete line)
            trim_torn_line(listing)
            if sys.exc_info()[0] is None:
                raise OutputError(f"cannot rewrite crops.jsonl ({exc.strerror or exc})", path=listing,
                                  hint="free disk space; it lists the crops written, line by line") from exc
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

