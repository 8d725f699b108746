"""Colour-flow / power Doppler: find it on a crop and fill it from the B-mode around it (the ONE path).

    detect_doppler(image_bgr)        -> bool mask of colour-flow pixels (chroma)
    doppler_cells(roi, size)         -> those pixels on the size x size model grid (dilated), or None
    fill_from_surroundings(gray, m)  -> gray with masked pixels replaced by a smooth local B-mode fill
"""

from __future__ import annotations

import cv2
import numpy as np

from usedge.runtime.pixels import grid_sample

DOPPLER_MIN_CHROMA = 40      # max(B,G,R) - min(B,G,R), 8-bit levels; JPEG chroma noise stays below
DOPPLER_MIN_SATURATION = 0.35  # chroma / max: tinted B-mode maps (sepia, blue) stay below
MOSTLY_COLOUR = 0.5          # a crop more than this fraction Doppler is worth a note: a strongly tinted B-mode map?
COLOUR_NOTE = (f"more than {MOSTLY_COLOUR:.0%} colour, filled as colour Doppler before the model: a tinted B-mode "
               "display? (a model trained with --set data.remove_doppler=false keeps the colour)")


# the two thresholds as one per-brightness threshold: chroma >= 40 and chroma * 100 >= max * 35
# <=> chroma >= max(40, ceil(35 * max / 100)) for whole numbers, looked up per pixel by cv2.LUT
_MIN_CHROMA_AT = np.array([max(DOPPLER_MIN_CHROMA, -(-round(DOPPLER_MIN_SATURATION * 100) * v // 100))
                           for v in range(256)], np.uint8)


def _doppler_255(image: np.ndarray) -> np.ndarray | None:
    """Doppler pixels of a uint8 BGR image as uint8 0/255, or None when the image has none."""
    if image.ndim == 2:
        return None
    b, g, r = cv2.split(image)
    hi = cv2.max(cv2.max(b, g), r)
    chroma = cv2.subtract(hi, cv2.min(cv2.min(b, g), r))
    if cv2.minMaxLoc(chroma)[1] < DOPPLER_MIN_CHROMA:      # gray B-mode (most frames): no colour at all
        return None
    found = cv2.compare(chroma, cv2.LUT(hi, _MIN_CHROMA_AT), cv2.CMP_GE)
    return found if cv2.countNonZero(found) else None


def detect_doppler(image: np.ndarray) -> np.ndarray:
    """Colour-flow / power Doppler pixels of a uint8 BGR image: bool H x W (all False for gray).

    A pixel is Doppler when its chroma (max - min channel) is at least DOPPLER_MIN_CHROMA levels and
    its saturation (chroma / max) at least DOPPLER_MIN_SATURATION: B-mode gray, JPEG chroma noise
    and tinted gray maps stay below both.
    """
    found = _doppler_255(image)
    if found is None:
        return np.zeros(image.shape[:2], bool)
    return (found & 1).view(bool)


def fill_from_surroundings(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace masked pixels of a uint8 gray image by a smooth fill from the unmasked ones around.

    Normalised convolution with box windows of 5, 17, 65 and 257 px (box filters cost the same
    at any size: well under 1 ms at 224 px); no texture is invented, large holes get the local
    B-mode mean.
    """
    if not mask.any():
        return gray
    valid = (~mask).astype(np.float32)
    weighted = gray.astype(np.float32) * valid
    result = gray.copy()
    todo = mask.copy()
    h, w = gray.shape
    for k in (5, 17, 65, 257):
        # only the window around what is left to fill: the box sums are whole numbers (exact in
        # OpenCV's double accumulator), so a window's result equals the whole image's there
        ys, xs = np.nonzero(todo.any(axis=1))[0], np.nonzero(todo.any(axis=0))[0]
        y0, y1 = max(0, ys[0] - k // 2), min(h, ys[-1] + 1 + k // 2)
        x0, x1 = max(0, xs[0] - k // 2), min(w, xs[-1] + 1 + k // 2)
        num = cv2.blur(weighted[y0:y1, x0:x1], (k, k), borderType=cv2.BORDER_REFLECT)
        den = cv2.blur(valid[y0:y1, x0:x1], (k, k), borderType=cv2.BORDER_REFLECT)
        part = todo[y0:y1, x0:x1]
        ok = part & (den > 0.05)
        result[y0:y1, x0:x1][ok] = np.clip(num[ok] / den[ok] + 0.5, 0, 255).astype(np.uint8)
        part &= ~ok
        if not todo.any():
            return result
    result[todo] = 0      # the whole image was Doppler: nothing to fill from
    return result


def doppler_cells(roi: np.ndarray, size: int) -> np.ndarray | None:
    """Colour-flow pixels of a crop (uint8 BGR) on the size x size model grid, or None when there are none.

    Doppler is found on the crop's pixels sampled every `side // size` pixels (about the model's
    resolution; every pixel of a crop already sampled at the model grid, as colour-halve-linear
    passes), mapped to the model grid (any touched cell counts) and dilated by one cell, so the
    colour rim that the resize (any PreprocessSpec.resize method) blends into neighbours is covered too.
    """
    h, w = roi.shape[:2]
    step = max(1, min(w, h) // size)
    found = _doppler_255(grid_sample(roi, step))
    if found is None:
        return None
    cover = cv2.resize(found, (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.dilate(cover, np.ones((3, 3), np.uint8)) > 0
