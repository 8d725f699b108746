"""Crop modes, presets and the crop itself: scanner frame -> uint8 model-sized gray image + CropInfo.

    prepare(frame, spec, regions=None) -> (uint8 spec.size x spec.size, CropInfo)   # crop, Doppler, gray, resize
    prepare_all(frame, spec)           one per image region (dual-view screens), left to right
    FrameCropper(spec)                 the same as `prepare` for a stream: detects the layout once,
                                       re-checks it cheaply per frame, re-detects when it changes
    prepare_file(path, spec)           read_image(path) (+ its DICOM regions) -> prepare
    resize_to_model(crop, size, method) the resize step, by PreprocessSpec.resize (area | halve-linear |
                                       colour-halve-linear)
    model_image(crop, spec)            -> (gray model image before the Doppler fill, the colour pixels
                                       Doppler is found on)
    parse_crop(text) / load_presets()  'auto' | 'fov' | 'none' | 'x,y,w,h' | 'preset:NAME'

`regions` are DICOM SequenceOfUltrasoundRegions boxes (x, y, w, h, frame pixels); they are used with
crop=auto/fov only after they are checked against the frame size and the detected field of view
(usedge.runtime.fov.validate_regions),
else detection runs.

Order of work (per frame): to uint8 (channels kept) -> field of view (DICOM regions | preset |
manual box | detection) -> skin-centred square inside it (crop=auto) -> gray, resized to spec.size by
spec.resize (`resize_to_model`: area | halve-linear; colour-halve-linear halves the colour crop before
the gray) -> Doppler pixels (found on the crop's colour pixels; for colour-halve-linear on the halved
colour crop) filled from the surrounding B-mode. Non-square boxes (fov, none, manual, presets without square) are
resized without keeping the aspect ratio, like torchvision's Resize((224, 224)) of the paper.
"""

from __future__ import annotations

import functools
import math
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from usedge.errors import ConfigError, InputError
from usedge.runtime.doppler import doppler_cells, fill_from_surroundings
from usedge.runtime.fov import FieldOfView, crop_field_of_view, find_skin_line, skin_centred_square, validate_regions
from usedge.runtime.pixels import MIN_SIDE, Box, as_uint8, background_colour, check_not_blank, clip_box, gray_of, grid_sample
from usedge.runtime.preprocess import MAX_INPUT_SIZE, PreprocessSpec


# --------------------------------------------------------------------------- crop specs and presets

@dataclass(frozen=True)
class CropMode:
    """A parsed `PreprocessSpec.crop` string."""

    kind: str                       # auto | fov | none | manual | preset
    box: Box | None = None          # manual / preset field of view
    square: bool = True             # skin-centred square inside the FOV (auto, preset with square=true)
    frame_size: tuple[int, int] | None = None  # preset: (width, height) the box was measured on


PRESETS_FILE = "presets.toml"


@functools.lru_cache(maxsize=8)
def _read_presets(path: str | None) -> dict:
    try:
        if path is None:
            text = resources.files("usedge.runtime").joinpath(PRESETS_FILE).read_text()
            where = f"usedge/runtime/{PRESETS_FILE}"
        else:
            text = Path(path).read_text()
            where = path
        data = tomllib.loads(text)
    except FileNotFoundError as exc:
        raise ConfigError("presets file not found", path=path, hint="pass an existing TOML file") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read presets ({exc})", path=path or PRESETS_FILE,
                          hint="fix the TOML: [preset.NAME] with box = [x, y, w, h]") from exc
    presets = data.get("preset", {})
    for name, p in presets.items():
        box = p.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) and v >= 0 for v in box)
                and box[2] > 0 and box[3] > 0):
            raise ConfigError(f"preset '{name}' needs box = [x, y, w, h] (non-negative integers)", path=where,
                              hint="measure the image region on a screenshot of the scanner")
    return presets


def load_presets(path: str | Path | None = None) -> dict[str, dict]:
    """Named scanner layouts: the packaged presets.toml, then the file `path` (its names win); cached per path."""
    presets = dict(_read_presets(None))
    if path is not None:
        presets.update(_read_presets(str(path)))
    return presets


def parse_crop(text: str, presets_path: str | Path | None = None) -> CropMode:
    """'auto' | 'fov' | 'none' | 'x,y,w,h' | 'preset:NAME' -> CropMode (ConfigError when malformed)."""
    t = (text or "auto").strip().lower()
    presets = load_presets(presets_path)     # cached; a bad presets file is a ConfigError whatever the mode
    if t in ("auto", "fov", "none"):
        return CropMode(kind=t, square=(t == "auto"))
    if t.startswith("preset:"):
        name = t.split(":", 1)[1]
        if name not in presets:
            raise ConfigError(f"unknown crop preset '{name}'", hint=f"known presets: {', '.join(sorted(presets)) or 'none'}"
                              " (add yours to a TOML file and pass --presets)")
        p = presets[name]
        fs = p.get("frame_size")
        return CropMode(kind="preset", box=tuple(p["box"]), square=bool(p.get("square", False)),
                        frame_size=tuple(fs) if fs else None)
    try:
        floats = [float(v) for v in t.replace(" ", "").split(",")]
    except ValueError:
        floats = []
    if floats and not all(math.isfinite(v) and v.is_integer() for v in floats):
        raise ConfigError(f"bad crop '{text}': x,y,w,h are whole pixels", hint="e.g. --crop 100,80,640,480")
    vals = [int(v) for v in floats]
    if len(vals) != 4 or vals[0] < 0 or vals[1] < 0 or vals[2] <= 0 or vals[3] <= 0:
        raise ConfigError(f"bad crop '{text}'", hint="use auto, fov, none, x,y,w,h (pixels) or preset:NAME")
    return CropMode(kind="manual", box=tuple(vals), square=False)


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
        clipped = clip_box(box, shape)
        if min(clipped[2], clipped[3]) < MIN_SIDE:
            where = ("is smaller than" if clipped == tuple(box) else
                     f"lies outside the {w}x{h} frame (clipped to {list(clipped)}), leaving less than")
            raise InputError(f"crop box {list(box)} {where} {MIN_SIDE}x{MIN_SIDE} pixels",
                             hint="give a box inside the frame (--crop x,y,w,h in its pixels), or a preset's "
                                  "frame_size for frames of another size")
        notes = [] if clipped == tuple(box) else [f"box {list(box)} clipped to the frame: {list(clipped)}"]
        fov = FieldOfView(box=clipped, boxes=[clipped], method=mode.kind, notes=notes)
    else:
        fov = crop_field_of_view(image)
        valid = validate_regions(regions, shape, fov)
        if valid:
            fov = FieldOfView(box=max(valid, key=lambda b: b[2] * b[3]), boxes=valid, method="dicom-regions")
        elif regions:
            fov.notes.insert(0, "DICOM regions do not fit the image (measured before downscaling, or off the"
                                " B-mode image on screen): detected instead")
    return Layout(frame_shape=shape, fov=fov, square=mode.square and fov.method != "none")


def _square(image: np.ndarray, layout: Layout, box: Box, spec: PreprocessSpec) -> Box:
    """The crop box inside one field-of-view box: the skin-centred square, or the box itself."""
    if not layout.square:
        return box
    return skin_centred_square(box, find_skin_line(image, box), margin=spec.skin_margin)


def _halvings(side: int, size: int) -> int:
    """The power of two k by which halve-linear box-averages a side: the largest with side // k >= size."""
    k = 1
    while side // (2 * k) >= size:
        k *= 2
    return k


def _halve(image: np.ndarray, size: int) -> np.ndarray:
    """The box-halving steps of halve-linear (any number of channels): per axis, the side trimmed to a
    multiple of k = _halvings(side, size) (the remainder split between both ends), then 2x2 (or 2x1)
    box averages log2(k) times (INTER_AREA at exactly 1/2: OpenCV's integer fast path, rounded)."""
    h, w = image.shape[:2]
    ky, kx = _halvings(h, size), _halvings(w, size)
    y0, x0 = (h % ky) // 2, (w % kx) // 2
    x = image[y0:y0 + h - h % ky, x0:x0 + w - w % kx]
    while ky > 1 or kx > 1:
        fy, fx = min(ky, 2), min(kx, 2)
        x = cv2.resize(x, (x.shape[1] // fx, x.shape[0] // fy), interpolation=cv2.INTER_AREA)
        ky, kx = ky // fy, kx // fx
    return x


def resize_to_model(image: np.ndarray, size: int, method: str) -> np.ndarray:
    """A crop (uint8 gray, or BGR for colour-halve-linear; or a float32 mask) -> gray size x size by a
    PreprocessSpec.resize method.

    area:         one cv2.resize INTER_AREA (exact pixel-area averages; slow at a non-integer factor).
    halve-linear: per axis, k = the largest power of two with side // k >= size; the side is trimmed
                  to a multiple of k (the remainder, under k pixels, split between both ends), halved
                  by 2x2 (or 2x1) box averages log2(k) times (INTER_AREA at exactly 1/2: OpenCV's
                  integer fast path, rounded), then resized by bit-exact bilinear (INTER_LINEAR_EXACT)
                  at a remaining factor under 2. Anti-aliased by the box steps; a side under twice
                  `size` gets the bilinear step only.
    colour-halve-linear: the same steps with the box halvings on the colour crop and the gray
                  conversion after them (so a colour crop's pixels are read once, by the first
                  halving); on a gray crop, or gray pixels of a colour one (B = G = R), the same bytes
                  as halve-linear. _render also finds Doppler on the halved colour crop, sampled at
                  the model grid (model_image).
    """
    if method == "area":
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    if method not in ("halve-linear", "colour-halve-linear"):
        raise ConfigError(f"unknown resize method {method!r}", hint="use area, halve-linear or colour-halve-linear")
    return _linear(gray_of(_halve(image, size)), size)


def _linear(image: np.ndarray, size: int) -> np.ndarray:
    """The last step of halve-linear: bit-exact bilinear to size x size."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR_EXACT)


def model_image(roi: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """A crop -> (uint8 gray spec.size x spec.size, the colour pixels Doppler is looked for on): the crop
    itself (doppler_cells samples it at about the model's resolution), or for colour-halve-linear the
    halved colour crop (already read) sampled at the model grid, size x size by nearest neighbour (not
    sampled for a spec that keeps Doppler: the halved crop itself)."""
    if spec.resize == "colour-halve-linear" and roi.ndim == 3:
        halved = _halve(roi, spec.size)
        grid = (cv2.resize(halved, (spec.size, spec.size), interpolation=cv2.INTER_NEAREST)
                if spec.remove_doppler else halved)
        return _linear(gray_of(halved), spec.size), grid
    return resize_to_model(gray_of(roi), spec.size, spec.resize), roi


def _render(image: np.ndarray, layout: Layout, box: Box, crop_box: Box, spec: PreprocessSpec
            ) -> tuple[np.ndarray, CropInfo]:
    """Crop -> gray -> resize to size x size (spec.resize) -> Doppler cells filled: uint8 + where it came from."""
    x, y, w, h = crop_box
    roi = image[y:y + h, x:x + w]
    small, colour = model_image(roi, spec)
    mask = doppler_cells(colour, spec.size) if roi.ndim == 3 and spec.remove_doppler else None
    frac = 0.0 if mask is None else float(mask.mean())
    if mask is not None:
        small = fill_from_surroundings(small, mask)
    view = layout.fov.boxes.index(box) if box in layout.fov.boxes else 0
    return small, CropInfo(frame_shape=layout.frame_shape, fov_box=box, crop_box=crop_box, method=layout.fov.method,
                           doppler_fraction=frac, notes=list(layout.fov.notes), fov_boxes=list(layout.fov.boxes),
                           view=view)


def _check_size(spec: PreprocessSpec) -> None:
    if not isinstance(spec.size, int) or spec.size < 8:
        raise InputError(f"model input size {spec.size!r} is too small", hint="use a size of at least 8 pixels (224 by default)")
    if spec.size > MAX_INPUT_SIZE:
        raise InputError(f"model input size {spec.size} is too large",
                         hint=f"use at most {MAX_INPUT_SIZE} pixels (224 by default)")


# --------------------------------------------------------------------------- public entry points

def prepare(frame: np.ndarray, spec: PreprocessSpec = PreprocessSpec(), *, regions: list[Box] | None = None,
            presets: str | Path | None = None) -> tuple[np.ndarray, CropInfo]:
    """Crop, remove Doppler, grayscale and resize a frame to spec.size x spec.size uint8.

    Dual-view screens: the largest view is cropped (CropInfo.fov_boxes lists all; see prepare_all).
    `presets`: a presets TOML file whose names `preset:NAME` may use, besides the packaged ones.
    """
    return FrameCropper(spec, regions=regions, presets=presets)(frame)


def prepare_all(frame: np.ndarray, spec: PreprocessSpec = PreprocessSpec(), *, regions: list[Box] | None = None,
                presets: str | Path | None = None) -> list[tuple[np.ndarray, CropInfo]]:
    """Like `prepare`, but one model input per image region (two for a dual-view screen), left to right."""
    _check_size(spec)
    image = as_uint8(frame)
    check_not_blank(image)
    layout = detect_layout(image, parse_crop(spec.crop, presets), regions)
    out = [_render(image, layout, box, _square(image, layout, box, spec), spec)
           for box in layout.fov.boxes or [layout.fov.box]]
    for _, info in out:     # every view is cropped here: not "cropping the largest"
        info.notes = [n.replace("; cropping the largest", "; each cropped") if n.startswith("dual view") else n
                      for n in info.notes]
    return out


def prepare_file(path: str | Path, spec: PreprocessSpec = PreprocessSpec(), *, frame_index: int = 0
                 ) -> tuple[np.ndarray, CropInfo]:
    """Read an image or DICOM file (its ultrasound regions included) and prepare one frame of it (a file of
    several frames says which in its CropInfo's notes: "frame 1 of 30")."""
    from usedge.runtime.formats import read_file

    d = read_file(path, frame_index=frame_index)
    small, info = prepare(d.frame, spec, regions=d.regions)
    if d.frames_in_file > 1:        # a cine or a multi-page TIFF: one of its frames only
        info.notes.append(f"frame {d.frame_index + 1} of {d.frames_in_file}")
    return small, info


def crop_mask(mask: np.ndarray, info: CropInfo, size: int, resize: str = "area") -> np.ndarray:
    """Map a full-frame mask (e.g. a lesion annotation, H x W) through a crop: uint8 size x size, 0/255.

    `resize`: the model's PreprocessSpec.resize, so the mask lands where the image's pixels did.
    Nearest-neighbour would alias thin masks, so it resizes as float and thresholds at 0.5.
    """
    x, y, w, h = (int(v) for v in info.crop_box)
    mask = np.asarray(mask)
    fh, fw = mask.shape[:2]
    roi = np.zeros((max(h, 1), max(w, 1)), dtype=np.float32)   # a box reaching past the frame: zero outside
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
    if x1 > x0 and y1 > y0:
        roi[y0 - y:y1 - y, x0 - x:x1 - x] = mask[y0:y1, x0:x1] > 0
    small = resize_to_model(roi, size, resize)
    return ((small >= 0.5) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- streams

RECHECK_INSET = 0.03      # fraction of the box side: where the inside/outside check lines sit
RECHECK_TOLERANCE = 0.3   # change in the fraction of non-background pixels on a check line that means "new layout"
SKIN_HYSTERESIS = 0.03    # fraction of the FOV height the skin line must move before the crop follows


def _line_pixels(shape: tuple[int, int], box: Box) -> tuple[np.ndarray, ...]:
    """Where FrameCropper's 8 check lines lie: row and column index of every sampled pixel (the lines
    one after another) and its index in the flattened frame, which of the 8 lines are on the frame,
    where each starts, and its length."""
    h, w = shape
    x, y, bw, bh = box
    dx, dy = max(2, int(RECHECK_INSET * bw)), max(2, int(RECHECK_INSET * bh))
    along_x = np.arange(w)[x + dx:x + bw - dx:4]        # along a row (the slice's own clipping)
    along_y = np.arange(h)[y + dy:y + bh - dy:4]        # along a column
    lines = [(r, along_x, True) for r in (y + dy, y - dy, y + bh - 1 - dy, y + bh - 1 + dy)] \
        + [(c, along_y, False) for c in (x + dx, x - dx, x + bw - 1 - dx, x + bw - 1 + dx)]
    rows, cols, present, lengths = [], [], [], []
    for at, along, is_row in lines:
        ok = 0 <= at < (h if is_row else w) and len(along) > 0
        present.append(ok)
        if ok:
            rows.append(np.full(len(along), at) if is_row else along)
            cols.append(along if is_row else np.full(len(along), at))
            lengths.append(len(along))
    if not lengths:
        none = np.zeros(0, np.intp)
        return none, none, none, np.asarray(present, bool), none, none
    lengths_a = np.asarray(lengths, np.intp)
    starts = np.concatenate([[0], np.cumsum(lengths_a)[:-1]]).astype(np.intp)
    rows_a, cols_a = np.concatenate(rows).astype(np.intp), np.concatenate(cols).astype(np.intp)
    return rows_a, cols_a, rows_a * w + cols_a, np.asarray(present, bool), starts, lengths_a


def _checked_regions(regions) -> list[Box] | None:
    """DICOM-style region boxes as given by a caller: a list of (x, y, w, h) with finite numbers, or None.
    (Whether they fit the frame is fov.validate_regions' question; this is about their form.)"""
    if regions is None:
        return None
    form = "regions must be a list of (x, y, w, h) boxes"
    if isinstance(regions, (str, bytes)) or not hasattr(regions, "__iter__"):
        raise InputError(f"{form}, got a {type(regions).__name__}", hint="e.g. regions=[(10, 40, 600, 400)], or None")
    boxes = list(regions)
    if len(boxes) == 4 and all(isinstance(v, (int, float, np.number)) for v in boxes):
        raise InputError(f"{form}, got one box {tuple(boxes)}", hint="wrap it in a list: regions=[(x, y, w, h)]")
    out = []
    for box in boxes:
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise InputError(f"{form}; {box!r} is not one", hint="four finite numbers per box, in frame pixels")
        out.append(tuple(int(v) for v in values))
    return out


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

    def __init__(self, spec: PreprocessSpec = PreprocessSpec(), *, regions: list[Box] | None = None,
                 presets: str | Path | None = None):
        _check_size(spec)
        self.spec = spec
        self.mode = parse_crop(spec.crop, presets)
        self.regions = _checked_regions(regions)
        self.layout: Layout | None = None
        self.detections = 0          # how many full detections ran (1 for a static layout)
        self._ref: np.ndarray | None = None
        self._bg = np.zeros(3, np.int16)
        self._tol = 2
        self._skin: int | None = None
        self._crop_box: Box | None = None
        self._line_key: tuple | None = None
        self._line_px: tuple = ()

    # -- cheap layout check
    def reset(self) -> None:
        """Detect the layout afresh on the next frame (the pipeline calls it after a frame without an
        image: the probe was lifted, the layout or depth may have changed)."""
        self.layout = None

    def _lines(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Fraction of not-background pixels on 8 short lines just inside / outside the box edges
        (every 4th pixel; -1 where a line falls off the frame): top in/out, bottom in/out, left in/out,
        right in/out. The pixels of all 8 lines are read in one gather (indices kept per frame shape and box)."""
        key = (image.shape[:2], box)
        if self._line_key != key:
            self._line_key, self._line_px = key, _line_pixels(image.shape[:2], box)
        rows, cols, flat, present, starts, lengths = self._line_px
        out = np.full(8, -1.0, np.float32)
        if len(rows) == 0:
            return out
        if image.flags.c_contiguous:      # a decoded frame: take from the flat pixels (4x faster than [rows, cols])
            px = np.take(image.reshape(image.shape[0] * image.shape[1], -1), flat, axis=0)
        else:
            px = image[rows, cols].reshape(len(rows), -1)
        d = np.abs(px.astype(np.int16) - self._bg)
        d = np.maximum(np.maximum(d[:, 0], d[:, 1]), d[:, 2]) if d.shape[1] == 3 else d[:, 0]
        hits = np.add.reduceat((d > self._tol).view(np.uint8), starts, dtype=np.int64)
        out[present] = hits / lengths
        return out

    def _detect(self, image: np.ndarray) -> None:
        layout = detect_layout(image, self.mode, self.regions)
        self.detections += 1
        if self.layout is not None and layout.fov.method == "fallback" and self.layout.frame_shape == layout.frame_shape:
            layout = self.layout     # no image on this frame: keep the last good layout
        self.layout = layout
        bg, _, tol = background_colour(grid_sample(image, 4))
        self._bg = bg if image.ndim == 3 else bg[0]
        self._tol = tol
        self._ref = self._lines(image, layout.fov.box)
        self._skin = None

    def prepare(self, frame: np.ndarray) -> tuple[np.ndarray, CropInfo]:
        image = as_uint8(frame)
        cached = self.layout is not None and self.layout.frame_shape == image.shape[:2]
        # The checks read a few sparse pixels first; the crop box is then known, and its pixels are read
        # once (gray + resize). Reading the last crop box first instead (to warm the CPU cache for the
        # checks) read it twice whenever the skin line moved the box, and measured no faster when it did not.
        # full check on a new layout; every 16th pixel on the cached path (a blank frame is blank anywhere)
        check_not_blank(grid_sample(image, 16) if cached else image)
        if not cached:
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
        return _render(image, layout, box, crop_box, self.spec)

    __call__ = prepare
