"""A scanner video with per-frame ground truth: probe motion, speckle decorrelation, freezes.

    truth_json = write_scanner_video("scan.mp4", seconds=20, fps=30, size=(1920, 1080), seed=0)

One wide scene (2.6 image widths) is simulated once as two independent complex speckle
fields; each frame crops the probe's window out of it (sub-pixel lateral motion), mixes the two
fields with a slowly drifting angle (speckle decorrelates, statistics stay the same), adds fresh
electronic noise, log-compresses and places the image in a fixed scanner screen. The lesion sits
in the middle of the scene; the probe slides in from one edge, holds over the lesion (rocking
slightly) and slides out, so the lesion enters, stays in and leaves the view. Freeze periods
repeat the last live frame byte for byte.

Truth JSON beside the video (same stem, .json): per frame its index, time (s), FOV box, lesion box
in screen pixels (x, y, w, h, or null when out of view), the visible share of the lesion, class
and frozen flag. Written with OpenCV: mp4v in .mp4, MJPG in .avi. This video is an input (the
simulated scanner for `infer --stream`, `serve` and `bench`), read back by OpenCV, so it needs no
H.264 encoder; the videos a person watches (`--record`, the demo's overlay.mp4) are H.264 through
`runtime.sinks.VideoRecorderSink`.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from usedge.errors import ConfigError, OutputError
from usedge.fileio import write_json_atomic
from usedge.synth.bmode import add_noise, log_compress, scatter_field
from usedge.synth.lesions import CLASSES, mask_bbox
from usedge.synth.phantom import PhantomOptions, build_maps, lesion_centre_depth_mm, sample_patient, sample_view
from usedge.synth.scanner import ScannerScreen

FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


def probe_track(n: int, fps: float, travel_px: float, rng: np.random.Generator) -> np.ndarray:
    """Lateral probe offset per frame (pixels of the scene, 0..travel), as a scan goes: the probe slides in
    from one edge of the scene to the lesion (2 s, or a quarter of a short video), holds over it with a
    slow rocking of 3 % of the travel and hand tremor, and slides out to the other edge."""
    t = np.arange(n) / fps
    length = max(n - 1, 1) / fps          # the last frame reaches the far edge
    ramp = min(2.0, length / 4)
    centre = np.interp(t, [0.0, ramp, length - ramp, length], [0.0, 0.5, 0.5, 1.0])
    holding = np.clip(np.minimum(t - ramp, length - ramp - t) / 0.5, 0, 1)    # rocking fades in and out
    rocking = 0.03 * np.sin(2 * np.pi * (t - ramp) / rng.uniform(2.0, 4.0)) * holding
    tremor = np.cumsum(rng.normal(0, 0.002, n))
    tremor -= np.linspace(0, tremor[-1], n) if n > 1 else 0
    return np.clip(centre + rocking + tremor, 0, 1) * travel_px


def freeze_flags(n: int, fps: float, rng: np.random.Generator, enabled: bool = True) -> np.ndarray:
    """Frozen frames: about one 0.5-1.5 s freeze per 8 s, never in the first second."""
    frozen = np.zeros(n, bool)
    if not enabled or n < 2 * fps:
        return frozen
    for _ in range(max(1, int(n / fps / 8))):
        length = int(rng.uniform(0.5, 1.5) * fps)
        start = int(rng.integers(int(fps), max(int(fps) + 1, n - length)))
        frozen[start:start + length] = True
    return frozen


def write_scanner_video(path: str | Path, *, seconds: float | None = None, frames: int | None = None,
                        fps: float = 30.0, size: tuple[int, int] = (1920, 1080), seed: int = 0,
                        label: str | None = None, doppler: bool = False, probe: str = "linear",
                        difficulty: float = 0.5, freeze: bool = True, progress: bool = True) -> Path:
    """Write a scanner video to `path` (.mp4 or .avi) and its ground truth; return the truth JSON path.

    Give either seconds or frames (default 10 s). size=(W, H) pixels; fps frames per second.
    """
    path = Path(path)
    if path.suffix.lower() not in FOURCC:
        raise ConfigError(f"unsupported video type {path.suffix!r}", path=path, hint="use .mp4 or .avi")
    if frames is None:
        frames = int(round((10.0 if seconds is None else float(seconds)) * fps))
    if frames < 1 or fps <= 0:
        raise ConfigError(f"need at least one frame (frames={frames}, fps={fps})", hint="use --seconds > 0")
    if label is not None and label not in CLASSES:
        raise ConfigError(f"unknown class {label!r}", hint=f"use one of {', '.join(CLASSES)}")
    rng = np.random.default_rng([seed, 31337])
    label = label or CLASSES[int(rng.integers(len(CLASSES)))]
    options = PhantomOptions()
    patient = sample_patient(f"video{seed}", label, rng, difficulty, options)
    view = sample_view(patient, rng, options)
    w, h, px = view.width, view.height, view.pixel_mm
    scene_w = int(2.6 * w)
    cz = lesion_centre_depth_mm(patient, rng) / px
    echo, atten, mask, _ = build_maps(patient, scene_w, h, px, (scene_w / 2, cz), rng,
                                      tilt_deg=view.tilt_deg, scale_z=view.scale_z)
    s = view.settings
    f1, f2 = scatter_field(echo, atten, s, rng), scatter_field(echo, atten, s, rng)
    lesion_area = int(mask.sum())
    mask8 = mask.astype(np.uint8) * 255

    screen = ScannerScreen(rng, (h, w), size=size, probe=probe, doppler=doppler,
                           depth_mm=h * px)
    offsets = probe_track(frames, fps, scene_w - w - 2, rng)
    frozen = freeze_flags(frames, fps, rng, freeze)
    angle = np.cumsum(rng.normal(0, 0.04, frames))           # speckle decorrelation, radians
    heart = 2 * np.pi * rng.uniform(1.0, 1.5) / fps          # Doppler pulsation per frame

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC[path.suffix.lower()]), fps, tuple(size))
    if not writer.isOpened():
        raise OutputError("OpenCV cannot open a video writer here", path=path,
                          hint="check the folder is writable; try .avi (MJPG)")
    truth, frame, last = [], None, None
    from rich.progress import Progress

    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("synth video", total=frames)
            for i in range(frames):
                if frozen[i] and last is not None:
                    frame = last
                    truth.append(dict(truth[-1], frame=i, time_s=round(i / fps, 4), frozen=True))
                else:
                    x = float(offsets[i])
                    xi, xf = int(x), x - int(x)
                    shift = np.float32([[1, 0, -xf], [0, 1, 0]])
                    a, b = np.float32(np.cos(angle[i])), np.float32(np.sin(angle[i]))
                    field = a * f1[:, xi:xi + w + 1] + b * f2[:, xi:xi + w + 1]
                    field = cv2.warpAffine(field, shift, (w, h), flags=cv2.INTER_LINEAR)
                    bmode = log_compress(add_noise(field, s, rng), s)
                    frame = screen.background.copy()
                    screen.place(frame, bmode)
                    screen.paint_doppler(frame, heart * i)
                    box, share = _lesion_box(screen, mask8, xi, xf, w, h, lesion_area)
                    truth.append({"frame": i, "time_s": round(i / fps, 4), "fov_box": list(screen.fov_box),
                                  "lesion_box": box, "lesion_visible": share, "label": label,
                                  "frozen": bool(frozen[i]), "probe_offset_mm": round(x * px, 3)})
                    last = frame
                writer.write(frame)
                bar.advance(task)
    finally:
        writer.release()
    os.replace(tmp, path)
    n_read = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
    if n_read != frames:
        raise OutputError(f"video has {n_read} frames, expected {frames}", path=path,
                          hint="this OpenCV build may lack the codec; try .avi")
    truth_path = path.with_suffix(".json")
    meta = screen.truth()
    meta.pop("fov_mask")
    write_json_atomic(truth_path, {
        "video": path.name, "frames": frames, "fps": fps, "size": list(size),
        "fourcc": FOURCC[path.suffix.lower()], "seed": seed, "label": label, "difficulty": difficulty,
        "patient_id": patient.patient_id, "atypical": patient.lesion.atypical,
        "bmode_size": [w, h], "pixel_mm": px, **meta, "frames_truth": truth,
    })
    return truth_path


def _lesion_box(screen: ScannerScreen, mask8: np.ndarray, xi: int, xf: float, w: int, h: int,
                lesion_area: int) -> tuple[list[int] | None, float]:
    """The lesion's box on screen (x, y, w, h) for the probe window at xi + xf, and its visible share."""
    crop = cv2.warpAffine(mask8[:, xi:xi + w + 1], np.float32([[1, 0, -xf], [0, 1, 0]]), (w, h),
                          flags=cv2.INTER_LINEAR)
    visible = crop > 127
    share = round(float(visible.sum()) / max(lesion_area, 1), 4)
    if not visible.any():
        return None, 0.0
    if screen.probe == "linear":
        bx, by, bw, bh = mask_bbox(visible)
        x0, y0, vw, vh = screen.fov_box
        sx, sy = vw / w, vh / h
        x1, y1 = int(np.floor(x0 + bx * sx)), int(np.floor(y0 + by * sy))
        x2, y2 = int(np.ceil(x0 + (bx + bw) * sx)), int(np.ceil(y0 + (by + bh) * sy))
        return [x1, y1, x2 - x1, y2 - y1], share
    on_screen = screen.map_mask(visible.astype(np.uint8) * 255)
    b = mask_bbox(on_screen)
    return (list(b) if b else None), share
