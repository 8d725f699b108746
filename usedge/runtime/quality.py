"""The frame-quality gate: does the cropped model image show an ultrasound image at all?

A scanner screen can show no image: the screen is blank (scanner off, input lost, a black frame
between clips), the probe is in air or lifted (the field of view is dark but for a few
reverberation lines), or no B-mode field of view is found and the whole screen is cropped (menus,
text on black). Classifying such a frame gives a confident but meaningless label, so the pipeline
gives it the state `no_image` (no label, no probabilities) instead.

Measured on the uint8 model image (the crop, size x size, before normalisation), three criteria;
any one means "no usable image":

    contrast   P99 - P1 of the pixel levels < MIN_RANGE levels           (a uniform field of view)
    echoes     fraction of pixels brighter than P1 + MIN_RANGE < MIN_ECHO  (dark: probe in air, or
               text and menus on black when no field of view is found and the whole screen is cropped)
    flat       one grey level from FLAT_LEVELS covers more than MAX_FLAT of the image (a form, a
               lit menu or a drawing: large areas of one exact value, which speckle never gives; black
               and saturated white are left out, as gel, shadows and a high gain give them)

Speckle texture (the step between neighbouring pixels) is not a criterion: a small field of view
upsampled to 224 px is smooth (pydicom's examples_palette.dcm: mean step 0.94 levels at 224 px,
2.9 at 64 px), so it would refuse real images.

A crop too small for the model is refused too (`too_small_reason`, on the crop box before the resize):
its shorter side under 1/MAX_UPSCALE of the model input (28 px at 224 px) is upscaled more than
MAX_UPSCALE times, a thumbnail with no detail at the model's scale.

A frame whose every pixel has one value is refused before cropping (`pixels.check_not_blank`).
The thresholds are far from what real screens give: usedge's synthetic scanner screens and
pydicom's ultrasound test files (examples_jpeg2k, _rgb_color, _ybr_color, _palette) show a
contrast of 95-245 levels and 32-99 % echoes at 64 and 224 px
(tests/test_reliability_faults.py checks that none of them is refused).
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_RANGE = 24          # levels (8 bit)
MIN_ECHO = 0.10         # fraction of the model image
MAX_FLAT = 0.30         # fraction of the model image at one grey level of FLAT_LEVELS
FLAT_LEVELS = (16, 254)  # the levels that count (inclusive)
MAX_UPSCALE = 8         # a crop upscaled more than this to the model input is too small to classify


def too_small_reason(crop_w: int, crop_h: int, size: int) -> str | None:
    """Why a crop of crop_w x crop_h frame pixels is too small for a size x size model input, or None."""
    side = min(crop_w, crop_h)
    if side * MAX_UPSCALE >= size:
        return None
    return (f"the image crop is {crop_w}x{crop_h} px, upscaled {size / max(side, 1):.0f}x to the model's {size} px "
            f"(more than {MAX_UPSCALE}x): a thumbnail? classify the full-resolution image")


def _percentile(cumulative: np.ndarray, q: float) -> float:
    """numpy.percentile(px, q) (its default 'linear' method) from the cumulative histogram of px.

    The same float64 steps as numpy: virtual index (n - 1) x q/100, the order statistics on either
    side of it (read off the histogram instead of partitioning the pixels) and numpy's lerp.
    """
    n = int(cumulative[-1])
    virtual = (n - 1) * (q / 100)
    below = min(int(np.floor(virtual)), n - 1)
    a, b = (int(np.searchsorted(cumulative, k, side="right")) for k in (below, min(below + 1, n - 1)))
    gamma = virtual - below
    d = float(b - a)
    return b - d * (1 - gamma) if gamma >= 0.5 else a + d * gamma


def no_image_reason(image: np.ndarray) -> str | None:
    """Why the uint8 model image holds no usable ultrasound image, or None when it does.

    Computed from the image's 256-level histogram (one pass over the pixels): the same numbers as
    numpy.percentile and a comparison per pixel.
    """
    px = np.ascontiguousarray(image, dtype=np.uint8)
    if px.size < 1 << 24:       # OpenCV counts in float32: exact below 2^24 pixels
        hist = cv2.calcHist([px.reshape(px.shape[0], -1)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        hist = np.bincount(px.ravel(), minlength=256)
    cumulative = np.cumsum(hist)
    lo, hi = _percentile(cumulative, 1), _percentile(cumulative, 99)
    if hi - lo < MIN_RANGE:
        return f"uniform field of view (contrast {hi - lo:.0f} < {MIN_RANGE} levels)"
    # pixels brighter than lo + MIN_RANGE: every level above its integer part
    above = int(cumulative[-1] - cumulative[min(int(np.floor(lo + MIN_RANGE)), 255)])
    echo = above / int(cumulative[-1])
    if echo < MIN_ECHO:
        return f"almost no echoes ({echo:.0%} of the field of view; probe in air or lifted?)"
    a, b = FLAT_LEVELS
    level = a + int(np.argmax(hist[a:b + 1]))
    flat = int(hist[level]) / int(cumulative[-1])
    if flat > MAX_FLAT:
        return f"one flat grey level ({level}) covers {flat:.0%} of the image: a form, menu or drawing, not a scan"
    return None
