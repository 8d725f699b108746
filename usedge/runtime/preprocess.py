"""The ONE definition of scanner frame -> model input, used by training and by the bedside.

    prepare(frame, spec, regions=None) -> (uint8 spec.size x spec.size, CropInfo)   # crop, Doppler, gray, resize
    normalise(image, spec)             -> float32 N x 1 x H x W, (x/255 - mean) / std  ([-1, 1] by default)
    preprocess(frame, spec)            = normalise(prepare(frame, spec))
    FrameCropper(spec)                 the same as `prepare` for a stream: detects the layout once,
                                       re-checks it cheaply per frame, re-detects when it changes
    prepare_file(path, spec)           read_image(path) (+ its DICOM regions) -> prepare

Training augments the uint8 output of `prepare` and then calls `normalise`, so both paths feed the
model identical bytes for the same file. `regions` are DICOM SequenceOfUltrasoundRegions boxes
(x, y, w, h, frame pixels); they are used with crop=auto/fov only after they are checked against
the frame size (see usedge.runtime.crop.validate_regions), else detection runs.

Order of work (per frame): to uint8 (channels kept) -> field of view (DICOM regions | preset |
manual box | detection) -> skin-centred square inside it (crop=auto) -> resize to spec.size with
INTER_AREA (gray) -> Doppler pixels (found on the crop's colour pixels) filled from the surrounding
B-mode. Non-square boxes (fov, none, manual, presets without square) are
resized without keeping the aspect ratio, like torchvision's Resize((224, 224)) of the paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from usedge.errors import InputError
from usedge.runtime.crop import (
    Box,
    CropMode,
    FieldOfView,
    _background_colour,
    _check_not_blank,
    _clip_box,
    as_uint8,
    crop_field_of_view,
    find_skin_line,
    gray_of,
    grid_sample,
    parse_crop,
    fill_from_surroundings,
    detect_doppler,
    skin_centred_square,
    validate_regions,
)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a frame becomes a model input. Defaults reproduce the paper (224 px, (x/255-0.5)/0.5)."""

    size: int = 224                 # model input side, pixels
    mean: float = 0.5               # on the [0, 1] scale
    std: float = 0.5
    crop: str = "auto"              # auto | fov | none | x,y,w,h | preset:NAME
    remove_doppler: bool = True
    skin_margin: float = 0.02       # fraction of the FOV height kept above the skin line (crop=auto)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class CropInfo:
    """Where the model input came from in the original frame (pixels, x, y, w, h)."""

    frame_shape: tuple[int, int]
    fov_box: tuple[int, int, int, int]
    crop_box: tuple[int, int, int, int]
    method: str = "none"            # dicom-regions | detection | preset | manual | none | fallback
    doppler_fraction: float = 0.0   # fraction of the model input's pixels filled (Doppler removed)
    notes: list[str] = field(default_factory=list)
    fov_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # all views (dual screens)
    view: int = 0                   # index into fov_boxes of the cropped view

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("frame_shape", "fov_box", "crop_box"):
            d[k] = list(d[k])
        d["fov_boxes"] = [list(b) for b in self.fov_boxes]
        return d


def to_gray_uint8(frame: np.ndarray) -> np.ndarray:
    """Gray, BGR, BGRA; uint8, uint16 or float -> 2-D uint8 (no crop, no Doppler removal)."""
    return gray_of(as_uint8(frame))


# --------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class Layout:
    """Where the image sits on a screen of one shape: what a stream caches between frames."""

    frame_shape: tuple[int, int]
    fov: FieldOfView
    square: bool                    # skin-centred square inside fov.box


def _scale_box(box: Box, frm: tuple[int, int] | None, shape: tuple[int, int]) -> Box:
    """A preset box measured on a frame of `frm` = (width, height), scaled to this frame."""
    if not frm:
        return box
    sx, sy = shape[1] / frm[0], shape[0] / frm[1]
    return (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))


def detect_layout(image: np.ndarray, mode: CropMode, regions: list[Box] | None = None) -> Layout:
    """uint8 frame (from as_uint8) + crop mode -> Layout (field of view and whether to square it)."""
    shape = image.shape[:2]
    h, w = shape
    if mode.kind == "none":
        fov = FieldOfView(box=(0, 0, w, h), boxes=[(0, 0, w, h)], method="none")
    elif mode.kind in ("manual", "preset"):
        box = _scale_box(mode.box, mode.frame_size, shape)
        clipped = _clip_box(box, shape)
        notes = [] if clipped == tuple(box) else [f"box {list(box)} clipped to the frame: {list(clipped)}"]
        fov = FieldOfView(box=clipped, boxes=[clipped], method=mode.kind, notes=notes)
    else:
        valid = validate_regions(regions, shape)
        if valid:
            best = max(valid, key=lambda b: b[2] * b[3])
            fov = FieldOfView(box=best, boxes=valid, method="dicom-regions")
        else:
            fov = crop_field_of_view(image)
            if regions:
                fov.notes.insert(0, "DICOM regions do not fit the image (measured before downscaling?): detected instead")
    return Layout(frame_shape=shape, fov=fov, square=mode.square and fov.method != "none")


def _crop_box(image: np.ndarray, layout: Layout, box: Box, spec: PreprocessSpec) -> tuple[Box, int]:
    if not layout.square:
        return box, box[1]
    skin = find_skin_line(image, box)
    return skin_centred_square(box, skin, margin=spec.skin_margin), skin


def doppler_cells(roi: np.ndarray, size: int) -> np.ndarray | None:
    """Colour-flow pixels of a crop (uint8 BGR) on the size x size model grid, or None when there are none.

    Doppler is found on the crop's pixels sampled every `side // size` pixels (about the model's
    resolution), mapped to the model grid (any touched cell counts) and dilated by one cell, so
    the colour rim that INTER_AREA blends into neighbours is covered too.
    """
    h, w = roi.shape[:2]
    step = max(1, min(w, h) // size)
    found = detect_doppler(grid_sample(roi, step))
    if not found.any():
        return None
    cover = cv2.resize(found.view(np.uint8) * np.uint8(255), (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.dilate((cover > 0).view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def _render(image: np.ndarray, crop_box: Box, spec: PreprocessSpec) -> tuple[np.ndarray, float]:
    """Crop -> gray -> resize to size x size (INTER_AREA) -> Doppler cells filled: uint8 + fraction filled."""
    x, y, w, h = crop_box
    roi = image[y:y + h, x:x + w]
    gray = roi if roi.ndim == 2 else cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, (spec.size, spec.size), interpolation=cv2.INTER_AREA)
    if roi.ndim == 2 or not spec.remove_doppler:
        return small, 0.0
    mask = doppler_cells(roi, spec.size)
    if mask is None:
        return small, 0.0
    return fill_from_surroundings(small, mask), float(mask.mean())


def _info(layout: Layout, view: int, box: Box, crop_box: Box, frac: float, notes: list[str]) -> CropInfo:
    return CropInfo(frame_shape=layout.frame_shape, fov_box=box, crop_box=crop_box, method=layout.fov.method,
                    doppler_fraction=frac, notes=list(layout.fov.notes) + notes,
                    fov_boxes=list(layout.fov.boxes), view=view)


def _check_size(spec: PreprocessSpec) -> None:
    if not isinstance(spec.size, int) or spec.size < 8:
        raise InputError(f"model input size {spec.size!r} is too small", hint="use a size of at least 8 pixels (224 by default)")


# --------------------------------------------------------------------------- public entry points

def prepare(frame: np.ndarray, spec: PreprocessSpec = PreprocessSpec(), *,
            regions: list[Box] | None = None) -> tuple[np.ndarray, CropInfo]:
    """Crop, remove Doppler, grayscale and resize a frame to spec.size x spec.size uint8.

    Dual-view screens: the largest view is cropped (CropInfo.fov_boxes lists all; see prepare_all).
    """
    _check_size(spec)
    image = as_uint8(frame)
    _check_not_blank(image)
    layout = detect_layout(image, parse_crop(spec.crop), regions)
    box = layout.fov.box
    crop_box, _ = _crop_box(image, layout, box, spec)
    out, frac = _render(image, crop_box, spec)
    return out, _info(layout, layout.fov.boxes.index(box) if box in layout.fov.boxes else 0, box, crop_box, frac, [])


def prepare_all(frame: np.ndarray, spec: PreprocessSpec = PreprocessSpec(), *,
                regions: list[Box] | None = None) -> list[tuple[np.ndarray, CropInfo]]:
    """Like `prepare`, but one model input per image region (two for a dual-view screen), left to right."""
    _check_size(spec)
    image = as_uint8(frame)
    _check_not_blank(image)
    layout = detect_layout(image, parse_crop(spec.crop), regions)
    results = []
    for i, box in enumerate(layout.fov.boxes or [layout.fov.box]):
        crop_box, _ = _crop_box(image, layout, box, spec)
        out, frac = _render(image, crop_box, spec)
        results.append((out, _info(layout, i, box, crop_box, frac, [])))
    return results


def normalise(image: np.ndarray, spec: PreprocessSpec = PreprocessSpec(), *,
              out: np.ndarray | None = None) -> np.ndarray:
    """uint8 H x W (or N x H x W) -> float32 N x 1 x H x W, (x/255 - mean)/std.

    out: a float32 N x 1 x H x W buffer to write into (a stream reuses one: no allocation per frame).
    """
    images = image[None] if image.ndim == 2 else image
    if out is None:
        out = np.empty((images.shape[0], 1) + images.shape[1:], np.float32)
    x = out[:, 0]
    np.multiply(images, np.float32(1.0 / 255.0), out=x, casting="unsafe")
    np.subtract(x, np.float32(spec.mean), out=x)
    np.divide(x, np.float32(spec.std), out=x)
    return out


def preprocess(frame: np.ndarray, spec: PreprocessSpec = PreprocessSpec(), *,
               regions: list[Box] | None = None) -> tuple[np.ndarray, CropInfo]:
    """normalise(prepare(frame)): float32 1 x 1 x size x size and where it came from."""
    image, info = prepare(frame, spec, regions=regions)
    return normalise(image, spec), info


def prepare_file(path: str | Path, spec: PreprocessSpec = PreprocessSpec(), *, frame_index: int = 0
                 ) -> tuple[np.ndarray, CropInfo]:
    """Read an image or DICOM file (its ultrasound regions included) and prepare one frame of it."""
    from usedge.runtime.imageio import read_image_and_regions

    frame, regions = read_image_and_regions(path, frame_index=frame_index)
    return prepare(frame, spec, regions=regions)


def crop_mask(mask: np.ndarray, info: CropInfo, size: int) -> np.ndarray:
    """Map a full-frame mask (e.g. a lesion annotation, H x W) through a crop: uint8 size x size, 0/255.

    Nearest-neighbour after INTER_AREA would alias thin masks, so it resizes as float and thresholds at 0.5.
    """
    x, y, w, h = (int(v) for v in info.crop_box)
    mask = np.asarray(mask)
    fh, fw = mask.shape[:2]
    roi = np.zeros((max(h, 1), max(w, 1)), dtype=np.float32)   # a box reaching past the frame: zero outside
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
    if x1 > x0 and y1 > y0:
        roi[y0 - y:y1 - y, x0 - x:x1 - x] = mask[y0:y1, x0:x1] > 0
    small = cv2.resize(roi, (size, size), interpolation=cv2.INTER_AREA)
    return ((small >= 0.5) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- streams

RECHECK_INSET = 0.03      # fraction of the box side: where the inside/outside check lines sit
RECHECK_TOLERANCE = 0.3   # change in the fraction of non-background pixels on a check line that means "new layout"
SKIN_HYSTERESIS = 0.03    # fraction of the FOV height the skin line must move before the crop follows


class FrameCropper:
    """`prepare` for a stream of frames from one scanner: same bytes as `prepare` on the first frame.

    Detects the layout once; per frame it samples eight short lines (just inside and just outside
    each edge of the field of view, every 4th pixel) and compares their fraction of pixels that
    differ from the screen's background colour with the detection frame; a change of more than RECHECK_TOLERANCE on any line, or a new frame
    shape, triggers a new detection. If that detection finds no image (probe lifted, frozen
    screen) the previous layout is kept. The skin line is re-measured per frame (cheap, strided)
    and the crop follows it only when it moves by more than SKIN_HYSTERESIS x FOV height.
    Call it like a function: `cropper(frame) -> (uint8, CropInfo)`.
    """

    def __init__(self, spec: PreprocessSpec = PreprocessSpec(), *, regions: list[Box] | None = None):
        _check_size(spec)
        self.spec = spec
        self.mode = parse_crop(spec.crop)
        self.regions = regions
        self.layout: Layout | None = None
        self.detections = 0          # how many full detections ran (1 for a static layout)
        self._ref: np.ndarray | None = None
        self._bg = np.zeros(3, np.int16)
        self._tol = 2
        self._skin: int | None = None
        self._crop_box: Box | None = None

    def reset(self) -> None:
        self.layout = None

    # -- cheap layout check
    def _lines(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Fraction of not-background pixels on 8 short lines just inside / outside the box edges
        (every 4th pixel; -1 where a line falls off the frame)."""
        h, w = image.shape[:2]
        bg = self._bg

        def content(px: np.ndarray) -> float:
            d = np.abs(px.astype(np.int16) - bg)
            return float(((d if d.ndim == 1 else d.max(axis=1)) > self._tol).mean()) if len(px) else -1.0

        x, y, bw, bh = box
        dx, dy = max(2, int(RECHECK_INSET * bw)), max(2, int(RECHECK_INSET * bh))
        ys, xs = slice(y + dy, y + bh - dy, 4), slice(x + dx, x + bw - dx, 4)
        fr = []
        for inside, outside in (((y + dy), (y - dy)), ((y + bh - 1 - dy), (y + bh - 1 + dy))):
            for row in (inside, outside):
                fr.append(content(image[row, xs]) if 0 <= row < h else -1.0)
        for inside, outside in (((x + dx), (x - dx)), ((x + bw - 1 - dx), (x + bw - 1 + dx))):
            for col in (inside, outside):
                fr.append(content(image[ys, col]) if 0 <= col < w else -1.0)
        return np.array(fr, np.float32)

    def _detect(self, image: np.ndarray) -> None:
        layout = detect_layout(image, self.mode, self.regions)
        self.detections += 1
        if self.layout is not None and layout.fov.method == "fallback" and self.layout.frame_shape == layout.frame_shape:
            layout = self.layout     # no image on this frame: keep the last good layout
        self.layout = layout
        bg, _, tol = _background_colour(grid_sample(image, 4))
        self._bg = bg if image.ndim == 3 else bg[0]
        self._tol = tol
        self._ref = self._lines(image, layout.fov.box)
        self._skin = None

    def prepare(self, frame: np.ndarray) -> tuple[np.ndarray, CropInfo]:
        image = as_uint8(frame)
        # full check on a new layout; every 16th pixel on the cached path (a blank frame is blank anywhere)
        _check_not_blank(image if self.layout is None else grid_sample(image, 16))
        if self.layout is None or self.layout.frame_shape != image.shape[:2]:
            self._detect(image)
        elif self.mode.kind in ("auto", "fov") and self.layout.fov.method not in ("dicom-regions",):
            now = self._lines(image, self.layout.fov.box)
            if np.any(np.abs(now - self._ref) > RECHECK_TOLERANCE):
                self._detect(image)
        layout = self.layout
        box = layout.fov.box
        if layout.square:
            skin = find_skin_line(image, box)
            if self._skin is None or abs(skin - self._skin) > SKIN_HYSTERESIS * box[3]:
                self._skin = skin
                self._crop_box = skin_centred_square(box, skin, margin=self.spec.skin_margin)
            crop_box = self._crop_box
        else:
            crop_box = box
        out, frac = _render(image, crop_box, self.spec)
        view = layout.fov.boxes.index(box) if box in layout.fov.boxes else 0
        return out, _info(layout, view, box, crop_box, frac, [])

    __call__ = prepare


__all__ = [
    "CropInfo", "FrameCropper", "Layout", "PreprocessSpec", "crop_mask", "detect_layout", "doppler_cells", "normalise",
    "prepare", "prepare_all", "prepare_file", "preprocess", "to_gray_uint8",
]
