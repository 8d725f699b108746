"""Scanner screen -> B-mode image region: field of view, DICOM region check, skin-centred square.

    crop_field_of_view(frame)        -> FieldOfView (box, boxes for dual views, method)
    validate_regions(boxes, shape, fov) -> DICOM region boxes that fit the frame (and the detected FOV), or None
    find_skin_line(gray, fov_box)    -> row (frame pixels) of the first echogenic band below the gel
    skin_centred_square(...)         -> the square crop box (rule in its docstring)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from usedge.runtime.doppler import detect_doppler
from usedge.runtime.pixels import (
    MIN_SIDE, Box, as_uint8, background_colour, brightness, check_not_blank, clip_box, grid_sample,
)

WORK_SIDE = 640              # pixels: detection runs on a copy whose longer side is at most this
GROW_MIN_LEVEL = 6           # 8-bit levels above the background that count as image when growing a box
SKIN_MARGIN = 0.02           # fraction of the FOV height kept above the skin line


@dataclass
class FieldOfView:
    """The B-mode image region(s) of a scanner screen, in frame pixels."""

    box: Box                                    # the region used for the crop
    boxes: list[Box] = field(default_factory=list)  # every B-mode region, left to right (2 in dual view)
    method: str = "detection"                   # detection | dicom-regions | preset | manual | none | fallback
    notes: list[str] = field(default_factory=list)


def _grow(box: Box, core: np.ndarray, nb_labels: np.ndarray, *, limit: float = 0.35) -> Box:
    """Extend `box` to every not-background pixel connected to the core inside it (8-connected,
    exact background colour = not connected), within `limit` x its size beyond each side: recovers
    dark but non-background bands (coupling gel, deep field) and the thin tips of a sector fan."""
    h, w = nb_labels.shape
    x0, y0, bw, bh = box
    inside = nb_labels[y0:y0 + bh, x0:x0 + bw][core[y0:y0 + bh, x0:x0 + bw]]
    if inside.size == 0:
        return box
    counts = np.bincount(inside.ravel())
    counts[0] = 0
    keep = np.nonzero(counts >= max(20, 0.002 * inside.size))[0]
    if len(keep) == 0:
        return box
    ex0, ey0 = max(0, x0 - int(limit * bw)), max(0, y0 - int(limit * bh))
    ex1, ey1 = min(w, x0 + bw + int(limit * bw)), min(h, y0 + bh + int(limit * bh))
    region = np.isin(nb_labels[ey0:ey1, ex0:ex1], keep)
    pts = cv2.findNonZero(region.view(np.uint8))
    if pts is None:
        return box
    rx, ry, rw, rh = cv2.boundingRect(pts)
    nx0, ny0 = min(x0, ex0 + rx), min(y0, ey0 + ry)
    nx1, ny1 = max(x0 + bw, ex0 + rx + rw), max(y0 + bh, ey0 + ry + rh)
    return (nx0, ny0, nx1 - nx0, ny1 - ny0)


def _cut_at_gaps(box: Box, not_bg: np.ndarray, *, search: float = 0.35, empty: float = 0.02) -> Box:
    """Cut off what lies beyond an (almost) empty background row/column near each side of `box`:
    text and labels that the density window joined to the image across a thin gap."""
    x0, y0, bw, bh = box
    x1, y1 = x0 + bw, y0 + bh
    mx, my = int(0.1 * bw), int(0.1 * bh)
    rows = not_bg[y0:y1, x0 + mx:x1 - mx].mean(axis=1) if x1 - mx > x0 + mx else np.ones(bh)
    cols = not_bg[y0 + my:y1 - my, x0:x1].mean(axis=0) if y1 - my > y0 + my else np.ones(bw)
    sy, sx = int(search * bh), int(search * bw)
    top = np.nonzero(rows[:sy] <= empty)[0]
    bottom = np.nonzero(rows[bh - sy:] <= empty)[0]
    left = np.nonzero(cols[:sx] <= empty)[0]
    right = np.nonzero(cols[bw - sx:] <= empty)[0]
    ny0 = y0 + (int(top[-1]) + 1 if len(top) else 0)
    ny1 = y0 + (bh - sy + int(bottom[0]) if len(bottom) else bh)
    nx0 = x0 + (int(left[-1]) + 1 if len(left) else 0)
    nx1 = x0 + (bw - sx + int(right[0]) if len(right) else bw)
    return (nx0, ny0, max(1, nx1 - nx0), max(1, ny1 - ny0))


def _extend_sparse(box: Box, not_bg: np.ndarray, *, limit: float = 0.35, sparse: float = 0.01) -> Box:
    """Extend each side through rows/columns (over the box's middle 80%) that still hold some
    non-background pixels (>= `sparse`) spread along them (in at least 12 of 16 stretches): the
    sparse speckle of a dark deep field, not a line of text. Two empty lines in a row (the gap
    between an image and the screen's labels) stop it."""
    h, w = not_bg.shape
    x0, y0, bw, bh = box
    x1, y1 = x0 + bw, y0 + bh
    mx, my = int(0.1 * bw), int(0.1 * bh)

    def walk(start: int, stop: int, step: int, line) -> int:
        pos, empty, last = start, 0, start
        while pos != stop and abs(pos - start) <= limit * (bh if line is row else bw):
            if line(pos) >= sparse:
                empty, last = 0, pos
            else:
                empty += 1
                if empty >= 2:
                    break
            pos += step
        return last

    def spread(line: np.ndarray) -> float:
        # speckle is spread along the whole line; a text line or a label sits in a few places
        n = len(line) // 16
        if n < 1:
            return float(line.mean())
        parts = line[:16 * n].reshape(16, n).any(axis=1)
        return float(line.mean()) if parts.mean() >= 0.75 else 0.0

    def row(r: int) -> float:
        return spread(not_bg[r, x0 + mx:x1 - mx])

    def col(c: int) -> float:
        return spread(not_bg[y0 + my:y1 - my, c])

    ny0 = walk(y0, -1, -1, row) if y0 > 0 else y0
    ny1 = walk(y1 - 1, h, 1, row) + 1
    nx0 = walk(x0, -1, -1, col) if x0 > 0 else x0
    nx1 = walk(x1 - 1, w, 1, col) + 1
    return (nx0, ny0, nx1 - nx0, ny1 - ny0)


def _refine(box: Box, core: np.ndarray, not_bg: np.ndarray, nb_labels: np.ndarray) -> Box:
    """Cut at gaps, then grow; a side that was cut at a gap is never grown back across it."""
    cut = _cut_at_gaps(_cut_at_gaps(box, not_bg), not_bg)   # twice: a cut row span changes the columns' view
    grown = _extend_sparse(_grow(cut, core, nb_labels), not_bg)
    (x0, y0, w0, h0), (cx, cy, cw, ch), (gx, gy, gw, gh) = box, cut, grown
    left = cx if cx > x0 else gx
    top = cy if cy > y0 else gy
    right = cx + cw if cx + cw < x0 + w0 else gx + gw
    bottom = cy + ch if cy + ch < y0 + h0 else gy + gh
    return (left, top, max(1, right - left), max(1, bottom - top))


def _screen_inside_bars(image: np.ndarray, bg: np.ndarray, tol: int) -> Box | None:
    """The scanner screen inside the bars of a letterboxed or pillarboxed capture (a 4:3 screen in a
    16:9 video), when its background is another flat colour than the bars': the box of everything that
    differs from the bars, if it leaves bars on at least one side and its own border is a flat colour of
    its own. None otherwise (no bars, or bars of the screen's own background)."""
    t = max(tol, GROW_MIN_LEVEL)
    lo, hi = (np.clip(np.asarray(bg, np.int16) + d, 0, 255).astype(np.uint8) for d in (-t, t))
    differs = cv2.bitwise_not(cv2.inRange(image, lo, hi))        # not the bars' colour (any channel)
    x, y, w, h = cv2.boundingRect(differs)
    if w == 0 or h == 0:
        return None
    H, W = differs.shape
    if w * h < 0.3 * W * H or (w >= W - 4 and h >= H - 4) or min(w, h) < 32:
        return None
    inner_bg, inner_flat, inner_tol = background_colour(image[y:y + h, x:x + w])
    if inner_flat < 0.6 or int(np.abs(inner_bg - bg).max()) <= max(tol, inner_tol, GROW_MIN_LEVEL):
        return None
    return (x, y, w, h)


def crop_field_of_view(frame: np.ndarray) -> FieldOfView:
    """Find the B-mode image region(s) in a scanner screen (linear and sector/curved probes).

    Method, on a copy whose longer side is at most WORK_SIDE px:
    1. core = where, over a window of ~1/32 of the frame, most pixels are brighter than the screen
       background, textured (speckle: local std above 3 levels) and not saturated colour; holes
       (dark cysts, Doppler blobs) are filled. Flat bars (title bars, gray ramps), text and
       rulers (sparse) and colour bars/logos (saturated) drop out.
    2. the largest core region is the field of view; another region of at least 40% of its area
       beside it at the same height makes a dual view (boxes left to right, the largest cropped).
    3. each side is cut at an empty background line within its outer 35% (text joined across a
       thin gap); then the box grows to every pixel that differs from the background colour and
       is connected to the region (dark coupling gel and deep field that carry no speckle, the
       thin tips of a sector fan), then through lines that still hold a little speckle (a dark
       deep field) up to two empty lines, by at most 35% of its size per side.
    A frame whose border is mostly not one flat colour, or whose region touches three frame edges
    (or both side edges over most of the height), is all image (a pre-cropped picture). No region -> the whole frame, method "fallback",
    with a note. Blank frames -> InputError.
    """
    image = as_uint8(frame)
    check_not_blank(image)
    H, W = image.shape[:2]
    scale = min(1.0, WORK_SIDE / max(H, W))
    if scale < 1.0:
        size = (max(1, round(W * scale)), max(1, round(H * scale)))
        small_img = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        step = max(1, int(round(1 / scale)))
        strided = image[::step, ::step]      # exact colours (no blending) for the background test
        strided = cv2.resize(strided, size, interpolation=cv2.INTER_NEAREST)
    else:
        small_img = strided = image
    small = brightness(small_img)
    h, w = small.shape

    bg, flat, tol = background_colour(strided)
    if flat < 0.5:     # speckle, not a flat screen, along most of the border: a pre-cropped image
        return FieldOfView(box=(0, 0, W, H), boxes=[(0, 0, W, H)], method="detection",
                           notes=["no screen background around the image: the frame is all image"])
    inner = _screen_inside_bars(strided, bg if strided.ndim == 3 else bg[:1], tol)
    if inner is not None:      # detect on the screen itself, whose background is not the bars' colour
        # to frame pixels, a working pixel (and one more) inside each side: the screen's own border only
        m = int(math.ceil(1 / scale)) + 1
        ix, iy = round(inner[0] / scale) + m, round(inner[1] / scale) + m
        iw = min(W, round((inner[0] + inner[2]) / scale)) - m - ix
        ih = min(H, round((inner[1] + inner[3]) / scale)) - m - iy
        inner = (ix, iy, iw, ih)
        sub = crop_field_of_view(image[iy:iy + ih, ix:ix + iw])
        if sub.method != "fallback":
            def shift(b: Box) -> Box:
                return (b[0] + ix, b[1] + iy, b[2], b[3])
            return FieldOfView(box=shift(sub.box), boxes=[shift(b) for b in sub.boxes], method=sub.method,
                               notes=[f"screen inside bars: {list(inner)}", *sub.notes])
    diff = np.abs(strided.astype(np.int16) - bg)
    bg_b = int(bg.max())
    p99 = int(np.percentile(small, 99))
    fg = small > bg_b + max(3, (p99 - bg_b) // 20)

    f = small.astype(np.float32)
    mu = cv2.blur(f, (5, 5))
    std = np.sqrt(np.maximum(cv2.blur(f * f, (5, 5)) - mu * mu, 0))
    textured = std > 3.0
    sat = detect_doppler(small_img) if small_img.ndim == 3 else np.zeros_like(fg)
    good = (fg & textured & ~sat).astype(np.float32)
    k = max(5, (max(h, w) // 32) | 1)
    dens = cv2.blur(good, (k, k))
    dens_fg = cv2.blur((fg | sat).astype(np.float32), (k, k))
    core = ((dens > 0.3) & (dens_fg > 0.5)).astype(np.uint8)
    # fill holes: everything not reachable from the border through non-core
    pad = cv2.copyMakeBorder(1 - core, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=1)
    cv2.floodFill(pad, None, (0, 0), 2)
    solid = (core | (pad[1:-1, 1:-1] == 1)).astype(np.uint8)

    n, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=4)
    cands = []
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if bw < 0.12 * w or bh < 0.12 * h or area < 0.03 * h * w:
            continue
        region = labels[y:y + bh, x:x + bw] == i
        if float(sat[y:y + bh, x:x + bw][region].mean()) > 0.6:
            continue                                        # coloured header / logo, not an image
        cands.append((area, (x, y, bw, bh), i))
    if not cands:
        return FieldOfView(box=(0, 0, W, H), boxes=[(0, 0, W, H)], method="fallback",
                           notes=["no ultrasound image region found: using the whole frame"])
    cands.sort(key=lambda c: -c[0])
    best_area, best, best_label = cands[0]
    views, view_labels = [best], [best_label]
    for area, b, label in cands[1:]:
        vertical_overlap = min(b[1] + b[3], best[1] + best[3]) - max(b[1], best[1])
        side_by_side = all(b[0] >= v[0] + v[2] or b[0] + b[2] <= v[0] for v in views)
        if area >= 0.4 * best_area and side_by_side and vertical_overlap >= 0.5 * min(b[3], best[3]):
            views.append(b)
            view_labels.append(label)
    # growing: a margin above the capture's noise, so JPEG ringing around text does not bridge gaps
    not_bg_grow = (diff.max(axis=2) if diff.ndim == 3 else diff) > max(tol, GROW_MIN_LEVEL)
    _, nb_labels = cv2.connectedComponents(not_bg_grow.view(np.uint8), connectivity=8)
    views = [_refine(b, labels == lab, not_bg_grow, nb_labels) for b, lab in zip(views, view_labels)]
    notes = []
    x, y, bw, bh = views[0]
    tol_x, tol_y = max(1, round(0.01 * w)), max(1, round(0.01 * h))
    touches = [x <= tol_x, y <= tol_y, x + bw >= w - tol_x, y + bh >= h - tol_y]
    if len(views) == 1 and (sum(touches) >= 3 or (touches[0] and touches[2] and bh >= 0.7 * h)):
        notes.append("the frame is all image (no scanner screen around it)")
        return FieldOfView(box=(0, 0, W, H), boxes=[(0, 0, W, H)], method="detection", notes=notes)
    sx, sy = W / w, H / h
    full = [clip_box((round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy)), (H, W))
            for b in views]
    full_best = full[0]
    full.sort(key=lambda b: b[0])
    if len(full) > 1:
        notes.append(f"dual view: {len(full)} image regions; cropping the largest")
    return FieldOfView(box=full_best, boxes=full, method="detection", notes=notes)


# --------------------------------------------------------------------------- DICOM regions

def validate_regions(boxes: list[Box] | None, shape: tuple[int, int], fov: FieldOfView | None = None, *,
                     min_fraction: float = 0.01, min_iou: float = 0.5) -> list[Box] | None:
    """DICOM ultrasound region boxes (x, y, w, h) that fit inside a frame of `shape`, or None.

    Real files carry boxes measured on the scanner's screen before it was downscaled: any box that
    leaves the frame, is empty or smaller than `min_fraction` of the frame makes the whole set
    untrustworthy -> None (the caller falls back to detection). With `fov` (the detected field of
    view), the largest box must also overlap one of its boxes by at least `min_iou` (intersection over
    union): a box that fits the frame but lies on text or a ruler is not trusted either.
    """
    if not boxes:
        return None
    h, w = shape[:2]
    good = []
    for x, y, bw, bh in boxes:
        if x < 0 or y < 0 or bw <= 0 or bh <= 0 or x + bw > w or y + bh > h:
            return None
        if bw * bh < min_fraction * w * h or bw < MIN_SIDE or bh < MIN_SIDE:
            return None
        good.append((int(x), int(y), int(bw), int(bh)))
    # the largest region must lie on a detected image region: any of them (on a dual-view screen the two
    # views may be the same size, and detection's largest may be the other one)
    largest = max(good, key=lambda b: b[2] * b[3])
    if fov is not None and fov.method == "detection" and max(iou(largest, b) for b in (fov.boxes or [fov.box])) < min_iou:
        return None
    return sorted(good, key=lambda b: b[0])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / float(a[2] * a[3] + b[2] * b[3] - ix * iy)


# --------------------------------------------------------------------------- skin line and square

def percentile90(values: np.ndarray) -> np.floating:
    """np.percentile(values, 90) of a 1-D float array, the same value bit for bit (numpy's linear method:
    partition, then its lerp in the array's dtype), without np.percentile's per-call overhead (the skin
    line runs per stream frame)."""
    n = values.shape[0]
    at = n * 0.9 + (1 + 0.9 * (1 - 1 - 1)) - 1        # numpy's virtual index for method="linear"
    lo = min(max(math.floor(at), 0), n - 1)
    hi = min(lo + 1, n - 1)
    gamma = float(at - math.floor(at))
    part = np.partition(values, (lo, hi) if hi != lo else lo)
    a, b = part[lo], part[hi]
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def find_skin_line(gray: np.ndarray, fov_box: Box) -> int:
    """Row (frame pixels, uint8 gray or BGR frame) of the skin line: the first echogenic band below the gel / probe face.

    Row profile = mean of the central 60% of the FOV's columns (sampled on a grid of about
    256 rows x 128 columns),
    smoothed over ~1% of the FOV height; the skin line is the first row in the upper half of the
    FOV whose profile reaches half-way from the gel level (top rows' minimum) to the upper half's
    90th percentile. A FOV bright from its first row (probe in contact) gives its top row.
    """
    x, y, w, h = fov_box
    if h < 4 or w < 4:
        return y
    cx0, cx1 = x + int(0.2 * w), x + max(int(0.8 * w), int(0.2 * w) + 1)
    half = max(2, h // 2)
    step = max(1, h // 256)
    block = grid_sample(gray[y:y + half, cx0:cx1], step, max(1, (cx1 - cx0) // 128))
    if block.ndim == 3:
        block = cv2.cvtColor(block, cv2.COLOR_BGR2GRAY)
    profile = block.mean(axis=1, dtype=np.float32)
    ks = max(1, int(0.01 * h / step)) * 2 + 1
    if ks > 1 and len(profile) > ks:
        r = ks // 2     # edge padding (np.pad mode="edge"), built directly: it runs per stream frame
        padded = np.concatenate((np.full(r, profile[0]), profile, np.full(r, profile[-1])))
        profile = np.convolve(padded, np.ones(ks, np.float32) / ks, mode="valid")
    top_level = float(profile[: max(1, len(profile) // 8)].min())
    high = float(percentile90(profile))
    if high - top_level < 8:        # no contrast: no gel band to skip
        return y
    level = top_level + 0.5 * (high - top_level)
    above = np.nonzero(profile >= level)[0]
    if len(above) == 0:
        return y
    return y + int(above[0]) * step


def skin_centred_square(fov_box: Box, skin_y: int, *, margin: float = SKIN_MARGIN) -> Box:
    """The skin-centred square crop box inside a field of view.

    Rule: the top edge sits `margin` x FOV height above the skin line (never above the FOV); the
    side is the largest that fits: min(FOV width, FOV bottom - top); the square is centred
    horizontally in the FOV. If the skin line lies so deep that the square would be smaller than
    half of min(FOV width, FOV height), the top falls back to the FOV top (skin line not trusted).
    """
    x, y, w, h = fov_box
    top = max(y, skin_y - int(round(margin * h)))
    side = min(w, y + h - top)
    if side < 0.5 * min(w, h):
        top = y
        side = min(w, h)
    side = max(1, side)
    left = x + (w - side) // 2
    return (left, top, side, side)

