"""usedge synth commands: a synthetic cohort, scanner screenshots, a scanner video."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from usedge.cli.app import app
from usedge.errors import ConfigError

synth_app = typer.Typer(help="Synthetic ultrasound phantom: cohorts, scanner frames, scanner videos.",
                        no_args_is_help=True)
app.add_typer(synth_app, name="synth")


def _ints(text: str, n: int | None, what: str, sep: str = ",") -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.lower().replace("x", sep).split(sep) if v.strip())
    except ValueError as exc:
        raise ConfigError(f"cannot read {what} {text!r}", hint=f"write {n or 'some'} integers separated by '{sep}'") from exc
    if n is not None and len(vals) != n:
        raise ConfigError(f"{what} needs {n} numbers, got {text!r}", hint=f"e.g. {'149,74,32' if n == 3 else '1920x1080'}")
    return vals


# what the phantom's physics (bmode.py) is meant for: skin probes and depths
PLAUSIBLE = {"frequency": (2.0, 50.0, "MHz"), "depth": (5.0, 100.0, "mm")}


def _range(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"cannot read {what} range {text!r}", hint="write LOW,HIGH, e.g. 12,22") from exc
    low, high, unit = PLAUSIBLE[what]
    if not (low <= lo <= high and low <= hi <= high):       # also NaN and infinities
        raise ConfigError(f"{what} range {text!r} is outside {low:g}..{high:g} {unit}",
                          hint=f"write LOW,HIGH within {low:g}..{high:g} {unit}")
    if lo > hi:
        raise ConfigError(f"{what} range {text!r} is reversed", hint="write LOW,HIGH")
    return lo, hi


@synth_app.command("cohort")
def cohort(
    out: Path = typer.Argument(..., help="Output folder (new or empty)."),
    seed: int = typer.Option(0, min=0, help="Random seed; the same seed gives the same bytes."),
    difficulty: float = typer.Option(0.5, help="Class overlap, 0 (textbook) .. 1 (much overlap)."),
    patients: str = typer.Option("149,74,32", help="Patients per class: epidermal_cyst,lipoma,pilomatricoma."),
    images: int = typer.Option(None, help="Total images, 1-5 per patient (default: 698 for the default patients, "
                               "the paper's cohort; else the same 698/255 images per patient)."),
    freq_mhz: str = typer.Option(None, "--freq-mhz", help="Probe frequency range LOW,HIGH in MHz (default 12,22)."),
    depth_mm: str = typer.Option(None, "--depth-mm", help="Imaging depth range LOW,HIGH in mm (default 15,26; "
                                 "raised for a patient whose lesion would not fit, 3 mm below it)."),
    overwrite: bool = typer.Option(False, help="Replace a cohort previously generated in OUT."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate a cohort: <class>/<patient>_<k>.png + masks/ + manifest.csv + cohort.json."""
    from usedge.synth.cohort import make_cohort

    opts = {k: v for k, v in (("freq_mhz", _range(freq_mhz, "frequency")), ("depth_mm", _range(depth_mm, "depth")))
            if v is not None}
    per_class = _ints(patients, 3, "--patients")
    if images is None:
        images = max(sum(per_class), round(sum(per_class) * 698 / 255))
    t0 = time.perf_counter()
    manifest = make_cohort(out, seed=seed, patients=per_class, images=images,
                           difficulty=difficulty, progress=not quiet, overwrite=overwrite, **opts)
    typer.echo(f"wrote {images} images to {out} in {time.perf_counter() - t0:.1f} s; manifest: {manifest}")


@synth_app.command("frames")
def frames(
    out: Path = typer.Argument(..., help="Output folder: frames/frame_NNNNN.png, masks/ (Doppler and fan masks), truth.jsonl."),
    count: int = typer.Option(20, help="Number of scanner screens."),
    seed: int = typer.Option(0, min=0, help="Random seed."),
    doppler_fraction: float = typer.Option(0.3, help="Share of frames with a colour Doppler box."),
    curved_fraction: float = typer.Option(0.1, help="Share of frames from a curved probe (fan-shaped view)."),
    dual_fraction: float = typer.Option(0.1, help="Share of frames with two views side by side."),
    size: str = typer.Option(None, help="Screen size WxH, e.g. 1920x1080 (default: random 1280x720..1920x1080)."),
    difficulty: float = typer.Option(0.5, help="Class overlap of the lesions shown."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Scanner screenshots with the true field-of-view (and Doppler) boxes in truth.jsonl; masks go to OUT/masks."""
    from usedge.synth.frames import write_scanner_frames

    truth = write_scanner_frames(out, count=count, seed=seed, doppler_fraction=doppler_fraction,
                                 curved_fraction=curved_fraction, dual_fraction=dual_fraction,
                                 size=_ints(size, 2, "--size", "x") if size else None,
                                 difficulty=difficulty, progress=not quiet)
    typer.echo(f"wrote {count} frames to {out / 'frames'} (masks in {out / 'masks'}); truth: {truth}")


@synth_app.command("video")
def video(
    out: Path = typer.Argument(..., help="Output video, .mp4 (mp4v) or .avi (MJPG); truth goes to OUT.json."),
    seconds: float = typer.Option(10.0, help="Length in seconds (ignored when --frames is given)."),
    frames: int = typer.Option(None, help="Exact number of frames."),
    fps: float = typer.Option(30.0, help="Frames per second."),
    size: str = typer.Option("1920x1080", help="Screen size WxH."),
    seed: int = typer.Option(0, min=0, help="Random seed."),
    label: str = typer.Option(None, help="Lesion class (default: drawn from the seed)."),
    doppler: bool = typer.Option(False, help="Show a colour Doppler box."),
    probe: str = typer.Option("linear", help="linear or curved."),
    difficulty: float = typer.Option(0.5, help="Class overlap of the lesion."),
    freeze: bool = typer.Option(True, help="Include freeze periods (repeated identical frames)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """A scanner video with probe motion, speckle decorrelation, freezes, and per-frame truth JSON."""
    from usedge.synth.video import write_scanner_video

    t0 = time.perf_counter()
    truth = write_scanner_video(out, seconds=seconds, frames=frames, fps=fps, size=_ints(size, 2, "--size", "x"),
                                seed=seed, label=label, doppler=doppler, probe=probe, difficulty=difficulty,
                                freeze=freeze, progress=not quiet)
    typer.echo(f"wrote {out} in {time.perf_counter() - t0:.1f} s; truth: {truth}")
