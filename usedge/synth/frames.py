"""Scanner screenshots with ground truth, for testing and benchmarking field-of-view detection.

    <out>/frames/frame_00000.png           BGR scanner screen (1280x720 .. 1920x1080)
    <out>/masks/frame_00000_doppler.png    colour-flow mask (uint8 0/255), only for Doppler frames
    <out>/masks/frame_00000_fov.png        field-of-view mask (uint8 0/255), only for curved (fan) frames
    <out>/truth.jsonl                      one JSON object per frame (see write_scanner_frames)

Masks sit in a sibling folder of the frames, so `usedge crop OUT/frames` and `usedge infer
OUT/frames` see screens only.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from usedge.errors import ConfigError, OutputError
from usedge.fileio import write_bytes_atomic, write_text_atomic
from usedge.synth.lesions import CLASSES, mask_bbox
from usedge.synth.phantom import PhantomOptions, render_view, sample_patient, sample_view
from usedge.synth.scanner import ScannerScreen

TRUTH_NAME = "truth.jsonl"


def _png(out: Path, rel: str, image: np.ndarray) -> str:
    """Write image to out/rel; return rel (the path truth.jsonl records, relative to out)."""
    path = out / rel
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OutputError("PNG encoding failed", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.tobytes())
    return rel


def write_scanner_frames(out_dir: str | Path, *, count: int, seed: int = 0, doppler_fraction: float = 0.3,
                         curved_fraction: float = 0.1, dual_fraction: float = 0.1,
                         size: tuple[int, int] | None = None, difficulty: float = 0.5,
                         progress: bool = True) -> Path:
    """Write `count` scanner screens and truth.jsonl; return the truth path.

    Each JSONL line: file, frame_size [W, H], probe, dual, fov_box / fov_boxes / doppler_box
    ([x, y, w, h] screen pixels), doppler_mask / fov_mask (path or null), lesion_box (screen
    pixels, first view), label, scale (screen px per B-mode px), depth_mm, bmode_size [w, h].
    """
    if count < 1:
        raise ConfigError(f"count={count}", hint="ask for at least one frame")
    for name, f in (("doppler", doppler_fraction), ("curved", curved_fraction), ("dual", dual_fraction)):
        if not 0.0 <= f <= 1.0:
            raise ConfigError(f"{name} fraction {f} is outside 0..1", hint="use a share between 0 and 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = PhantomOptions()
    lines = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("synth frames", total=count)
        for i in range(count):
            rng = np.random.default_rng([seed, 271828, i])
            label = CLASSES[int(rng.integers(len(CLASSES)))]
            patient = sample_patient(f"f{i}", label, rng, difficulty, options)
            bmode, mask = render_view(patient, sample_view(patient, rng, options), rng)
            probe = "curved" if rng.random() < curved_fraction else "linear"
            dual = bool(rng.random() < dual_fraction)
            doppler = bool(rng.random() < doppler_fraction)
            screen = ScannerScreen(rng, bmode.shape, size=size, probe=probe, dual=dual, doppler=doppler)
            frame = screen.background.copy()
            screen.place(frame, bmode, 0)
            if dual:
                screen.place(frame, np.ascontiguousarray(bmode[:, ::-1]), 1)
            screen.paint_doppler(frame, float(rng.uniform(0, 2 * np.pi)))
            stem = f"frame_{i:05d}"
            truth = screen.truth()
            fov_mask = truth.pop("fov_mask")
            lesion = mask_bbox(screen.map_mask(mask, 0))
            rec = {"file": _png(out, f"frames/{stem}.png", frame), **truth,
                   "doppler_mask": _png(out, f"masks/{stem}_doppler.png", screen.doppler_mask.astype(np.uint8) * 255)
                   if doppler else None,
                   "fov_mask": _png(out, f"masks/{stem}_fov.png", fov_mask.astype(np.uint8) * 255)
                   if probe == "curved" else None,
                   "lesion_box": list(lesion) if lesion else None, "label": label,
                   "bmode_size": [int(bmode.shape[1]), int(bmode.shape[0])]}
            lines.append(json.dumps(rec))
            bar.advance(task)
    return write_text_atomic(out / TRUTH_NAME, "\n".join(lines) + "\n")
