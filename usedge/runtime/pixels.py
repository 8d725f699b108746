"""Pixel formats, boxes and screen-background helpers shared by the crop modules (numpy + OpenCV only).

All boxes are (x, y, w, h) in pixels of the frame they were measured on.
"""

from __future__ import annotations

import cv2
import numpy as np

from usedge.errors import InputError, NoImage

Box = tuple[int, int, int, int]

MIN_SIDE = 8                 # pixels: smaller frames cannot hold an ultrasound image

def standard_depth(top: int) -> int | None:
    """The smallest standard pixel depth (8, 10, 12, 14 or 16 bits) that holds values up to `top`;
    None above 16 bits."""
    return next((b for b in (8, 10, 12, 14, 16) if top < (1 << b)), None)


OUTLIERS = 0.005    # the share of full-white pixels (labels, markers) the depth guess may leave above it
FLOAT_OVERSHOOT = 1.1   # a float frame whose values all stay below this is a [0, 1] image (a resize overshoots 1)


def _alpha_over_black(frame: np.ndarray) -> np.ndarray:
    """BGRA or gray + alpha -> its colour channels composited over black (transparent = black, the
    screen's background; an opaque frame is just its colour channels)."""
    colour, alpha = frame[:, :, :-1], frame[:, :, -1]
    full = 1.0 if np.issubdtype(frame.dtype, np.floating) else np.iinfo(frame.dtype).max
    if not np.issubdtype(frame.dtype, np.floating) and int(alpha.min()) == full:
        return colour[:, :, 0] if colour.shape[2] == 1 else colour
    a = np.clip(alpha.astype(np.float32) / np.float32(full), 0, 1)[:, :, None]
    out = colour.astype(np.float32) * a
    if not np.issubdtype(frame.dtype, np.floating):
        out = (out + 0.5).astype(frame.dtype)
    return out[:, :, 0] if out.shape[2] == 1 else out


def label_free_top(frame: np.ndarray, full_whites) -> int:
    """The largest value of an integer frame that counts for its bit depth: its maximum, leaving out pixels
    at a full white (one of `full_whites`, above 255: a label or marker burned in at full scale) when they
    are at most OUTLIERS of the frame, so a 12-bit scan with a white label is not read as 16-bit and
    darkened 16x. Other bright pixels always count (a dark 12-bit scan with a few saturated reflectors at
    4095 is still 12-bit)."""
    top = int(frame.max(initial=0))
    if top > 255 and top in full_whites and 0 < (n := np.count_nonzero(frame == top)) <= OUTLIERS * frame.size \
            and n < frame.size:
        top = int(frame[frame < top].max())
    return top


def _depth(frame: np.ndarray) -> int:
    """The bit depth to scale an integer frame by: the smallest standard one (8, 10, 12, 14, 16) holding
    `label_free_top` (the container's full white, 65535 for uint16, as the label's value)."""
    top = label_free_top(frame, {int(np.iinfo(frame.dtype).max)})
    return standard_depth(max(top, 1)) or top.bit_length()


def _refuse_negative(frame: np.ndarray) -> None:
    """InputError when more than OUTLIERS of a frame's pixels are below 0: not display values."""
    negative = np.count_nonzero(frame < 0)
    if negative > int(OUTLIERS * frame.size):
        raise InputError(f"{negative / frame.size:.1%} of the frame's pixels are negative: not display values "
                         "(a zero-centred or normalised tensor, or signed data without its window?)",
                         hint="pass the image as displayed: 0..255, 0..1 or unsigned 10-16-bit values")


def as_uint8(frame: np.ndarray) -> np.ndarray:
    """Gray, BGR, BGRA; uint8, uint16, other ints or float -> uint8 H x W or H x W x 3 (BGR).

    Alpha: the colour composited over black (transparent pixels are screen background).
    uint16 (and other ints) above 255 are scaled by their bit depth: the smallest standard depth
    (8, 10, 12, 14 or 16 bits) holding the maximum, not counting up to OUTLIERS (0.5 %) of pixels at the
    container's full white, which are clipped to 255 (a 12-bit frame keeps its contrast with a label
    burned in at 65535);
    float frames are scaled by 255 as [0, 1] images when none exceeds FLOAT_OVERSHOOT (1.1: a resize's
    overshoot), or none exceeds 2 and at most OUTLIERS of them exceed 1; else they are 0..255 values,
    clipped (a black 0..255 frame with noise up to 2 stays black; one bright pixel at 200 in a dark
    0..255 frame keeps it dark). NaN/Inf, a boolean array (a mask, not an image) and more than OUTLIERS of
    pixels below 0 (a zero-centred, normalised tensor or signed data without its window) -> InputError;
    fewer negative pixels (resampling undershoot) are clipped to 0.
    """
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame is a {type(frame).__name__}, not an image array",
                         hint="pass a numpy array H x W or H x W x C")
    if frame.size == 0:
        raise InputError(f"empty frame (shape {frame.shape})", hint="check the source delivers images")
    if frame.ndim < 2:
        raise InputError(f"a {frame.ndim}-D array (shape {frame.shape}) is not an image",
                         hint="pass H x W, H x W x 3 (BGR) or H x W x 4 (BGRA): reshape a flat buffer first")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.dtype == np.bool_:
        raise InputError("frame is a boolean array (a mask?), not an image",
                         hint="pass the image's pixels (uint8, uint16 or float)")
    if frame.ndim == 3 and frame.shape[2] in (2, 4) and np.issubdtype(frame.dtype, np.number):   # BGRA, gray + alpha
        frame = _alpha_over_black(frame)
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise InputError(f"frame of shape {frame.shape} is not an image", hint="pass H x W, H x W x 3 (BGR), H x W x 4 (BGRA) or H x W x 2 (gray + alpha)")
    h, w = frame.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"frame of {w}x{h} pixels is too small for an ultrasound image",
                         hint=f"frames need at least {MIN_SIDE}x{MIN_SIDE} pixels")
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    if np.issubdtype(frame.dtype, np.floating):
        with np.errstate(over="ignore", invalid="ignore"):     # a finite float64 beyond float32 is refused below
            f = frame.astype(np.float32, copy=False)
        if not np.isfinite(f).all():
            what = "NaN or Inf" if not np.isfinite(frame).all() else "values beyond float32's range"
            raise InputError(f"frame contains {what}", hint="check the source's pixel data")
        _refuse_negative(f)
        top = float(f.max())
        unit = top <= FLOAT_OVERSHOOT or (top <= 2.0 and np.count_nonzero(f > 1.0) <= int(OUTLIERS * f.size))
        return np.clip(f * (255.0 if unit else 1.0) + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(frame.dtype, np.integer):
        if np.issubdtype(frame.dtype, np.signedinteger):
            _refuse_negative(frame)
        top = int(frame.max())
        if top <= 255:
            return np.clip(frame, 0, 255).astype(np.uint8)
        # a standard depth, so that frames of one source whose maxima differ a little get the same scale;
        # an integer shift: 12-bit >> 4, 16-bit >> 8; a full-white label above it clipped to 255
        bits = max(8, _depth(frame))
        return np.minimum(np.clip(frame, 0, None) >> (bits - 8), 255).astype(np.uint8)
    raise InputError(f"frame of dtype {frame.dtype} is not an image", hint="pass uint8, uint16 or float pixels")


def grid_sample(image: np.ndarray, step_y: int, step_x: int | None = None) -> np.ndarray:
    """About every step-th pixel of an image (or a rectangular view of one), as a new contiguous array.

    Like image[::step_y, ::step_x] (a nearest-neighbour resize to ceil(size / step), so the picked
    rows/columns may differ by one), but OpenCV reads the view in place instead of numpy copying a
    strided array first (~5x faster). Deterministic: the same input gives the same pixels.
    """
    step_x = step_y if step_x is None else step_x
    h, w = image.shape[:2]
    if step_y <= 1 and step_x <= 1:
        return image
    size = (max(1, -(-w // step_x)), max(1, -(-h // step_y)))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)


def gray_of(image: np.ndarray) -> np.ndarray:
    """uint8 gray or BGR -> uint8 gray (luma)."""
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

def brightness(image: np.ndarray) -> np.ndarray:
    """Max over channels: a coloured Doppler pixel counts as bright as its strongest channel."""
    if image.ndim == 2:
        return image
    b, g, r = cv2.split(image)
    return cv2.max(cv2.max(b, g), r)


def check_not_blank(image: np.ndarray) -> None:
    """InputError when every pixel (any channel) has about the same value: no image on the screen."""
    flat = np.ascontiguousarray(image).reshape(image.shape[0], -1)
    lo, hi, _, _ = cv2.minMaxLoc(flat)
    lo, hi = int(lo), int(hi)
    if hi - lo <= 2:
        raise NoImage(f"frame is blank (every pixel is about {lo})",
                         hint="the scanner shows no image (frozen, off, or wrong input); check the source")


def clip_box(box: Box, shape: tuple[int, int]) -> Box:
    """The part of a box inside a frame of `shape`, at least 1 x 1 pixel."""
    h, w = shape[:2]
    x, y, bw, bh = (int(v) for v in box)
    x0, y0 = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
    x1, y1 = min(max(x + bw, x0 + 1), w), min(max(y + bh, y0 + 1), h)
    return (x0, y0, x1 - x0, y1 - y0)


def background_colour(image: np.ndarray) -> tuple[np.ndarray, float, int]:
    """The screen background from the outermost 2-pixel ring: (per-channel median colour, int16;
    fraction of the ring within 8 levels of it (low: no flat screen around the image); the level
    difference above which a pixel is not background (2, or more on a noisy capture / JPEG))."""
    px = image.reshape(image.shape[0], image.shape[1], -1)
    ring = np.concatenate([px[:2].reshape(-1, px.shape[2]), px[-2:].reshape(-1, px.shape[2]),
                           px[:, :2].reshape(-1, px.shape[2]), px[:, -2:].reshape(-1, px.shape[2])])
    bg = np.median(ring, axis=0).astype(np.int16)
    d = np.abs(ring.astype(np.int16) - bg).max(axis=1)
    near = d <= 8
    flat = float(near.mean())
    noise = int(np.percentile(d[near], 98)) if near.any() else 0
    return bg, flat, max(2, noise + 1)
