"""Measurable class signatures of a B-mode image with its lesion mask (gray levels, 0..255).

    interior_contrast   mean gray inside the lesion minus mean gray of a ring around it
                        (< 0: darker than its surroundings, e.g. a cyst)
    posterior_contrast  median gray of a band below the lesion minus the same depths beside it
                        (> 0: posterior enhancement, cyst; < 0: shadowing, pilomatricoma)
    aspect              lesion width / height from its bounding box (> 1: wider than tall, lipoma)
"""

from __future__ import annotations

import cv2
import numpy as np


def measure_signatures(image: np.ndarray, mask: np.ndarray, ring_px: int = 8) -> dict:
    inside = mask > 0
    if not inside.any():
        return {"interior_contrast": float("nan"), "posterior_contrast": float("nan"), "aspect": float("nan")}
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
    post = float(np.median(below) - np.median(beside)) if below.size and beside.size else float("nan")
    return {"interior_contrast": float(img[core].mean() - img[ring].mean()),
            "posterior_contrast": post, "aspect": float(lw / max(lh, 1))}
