"""Measurable class signatures of a B-mode image, with and without its lesion mask (gray levels 0..255).

With the mask (`measure_signatures`, original pixels):
    interior_contrast   mean gray inside the lesion minus mean gray of a ring around it
                        (< 0: darker than its surroundings, e.g. a cyst)
    posterior_contrast  median gray of a band below the lesion minus the same depths beside it
                        (> 0: posterior enhancement, cyst; < 0: shadowing, pilomatricoma)
    darkest_below       the darkest column of that band (mean over its rows) minus the median beside it
    aspect              lesion width / height from its bounding box (> 1: wider than tall, lipoma)
    depth               depth of the lesion centre as a share of the image height
    size                sqrt(lesion area / image area)
    shadow_black        share of the band's pixels at gray <= 2 (a pitch-black shadow)

Without the mask (`maskfree_signatures`, the image resized to `size` x `size` like a model input):
    posterior_free      mean of the lower half's central third minus its outer thirds
    interior_free       mean of the central third over 15-55 % depth minus the outer thirds there
    darkest_column_free / brightest_column_free
                        darkest / brightest column mean of the lower half minus the median column
"""

from __future__ import annotations

import cv2
import numpy as np

MASK_FEATURES = ("posterior_contrast", "interior_contrast", "darkest_below", "aspect", "depth", "size")
MASKFREE_FEATURES = ("posterior_free", "interior_free", "darkest_column_free", "brightest_column_free")


def measure_signatures(image: np.ndarray, mask: np.ndarray, ring_px: int = 8) -> dict:
    """The mask-based scalars above for one image and its lesion mask (nonzero = lesion)."""
    inside = mask > 0
    if not inside.any():
        return {k: float("nan") for k in (*MASK_FEATURES, "shadow_black")}
    img = image.astype(np.float32)
    h, w = img.shape
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    grown = cv2.dilate(inside.astype(np.uint8), k).astype(bool)
    ring = grown & ~inside
    core = cv2.erode(inside.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))).astype(bool)
    core = core if core.any() else inside
    ys, xs = np.nonzero(inside)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    lw, lh = x1 - x0, y1 - y0
    # band below: the central 60% of the lesion's columns, from just below it to half its height deeper
    b0, b1 = min(h, y1 + 2), min(h, y1 + 2 + max(lh // 2, 4))
    c0, c1 = x0 + int(0.2 * lw), x1 - int(0.2 * lw)
    below = img[b0:b1, c0:c1]
    side_cols = np.r_[max(0, x0 - lw):max(0, x0 - ring_px), min(w, x1 + ring_px):min(w, x1 + lw)]
    beside = img[b0:b1][:, side_cols] if side_cols.size else np.empty(0)
    ok = below.size and beside.size
    side = float(np.median(beside)) if ok else float("nan")
    return {"interior_contrast": float(img[core].mean() - img[ring].mean()),
            "posterior_contrast": float(np.median(below) - side) if ok else float("nan"),
            "darkest_below": float(below.mean(axis=0).min() - side) if ok else float("nan"),
            "aspect": float(lw / max(lh, 1)), "depth": float(ys.mean() / h),
            "size": float(np.sqrt(inside.sum() / inside.size)),
            "shadow_black": float((below <= 2).mean()) if below.size else float("nan")}


def maskfree_signatures(image: np.ndarray, size: int = 96) -> dict:
    """The mask-free scalars above for one image (what a model sees, without knowing the lesion)."""
    g = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    t, lo = size // 3, size // 2
    mid, sides = slice(t, size - t), np.r_[0:t, size - t:size]
    r0, r1 = int(0.15 * size), int(0.55 * size)
    cols = g[lo:].mean(axis=0)
    med = float(np.median(cols))
    return {"posterior_free": float(g[lo:, mid].mean() - g[lo:, sides].mean()),
            "interior_free": float(g[r0:r1, mid].mean() - g[r0:r1, sides].mean()),
            "darkest_column_free": float(cols.min() - med), "brightest_column_free": float(cols.max() - med)}
