"""A B-mode image placed inside a scanner screen, with the true field-of-view box.

    frame, truth = render_scanner_frame(bmode, rng, size=(1920, 1080), doppler=True)

The screen: dark background, a title bar and a settings panel of text, a depth ruler with cm
labels, a gray bar, a focus marker, probe/preset labels, a body-marker pictogram, and optionally a
colour Doppler box with red/blue flow over part of the image. probe="curved" shows a fan-shaped
(sector) field of view; dual=True shows two views side by side.

Truth (all pixel coordinates of the screen frame; boxes are x, y, w, h):
    fov_box        the B-mode pixels of the first/only view: exactly the rectangle the image was
                   pasted into (linear), or the bounding box of the fan (curved)
    fov_boxes      one box per view
    fov_mask       bool H x W, True on B-mode pixels (all views; the fan shape for curved)
    doppler_box    colour box x, y, w, h, or None
    doppler_mask   bool H x W, True on coloured flow pixels, or None
    overlay_mask   bool H x W, every non-B-mode pixel drawn inside the field of view (flow and the
                   colour-box outline), or None
    probe, frame_size (W, H), scale (screen pixels per B-mode pixel), depth_mm, dual
"""

from __future__ import annotations

import datetime as _dt

import cv2
import numpy as np

from usedge.errors import ConfigError

SCREEN_SIZES = ((1280, 720), (1366, 768), (1440, 810), (1600, 900), (1920, 1080))
PROBES = {"linear": ("L18-5", "L15-7io", "L12-4", "ML6-15", "14L5"),
          "curved": ("C5-1", "C1-6", "C9-2", "6C1")}
PRESETS = ("MSK Superficial", "Small Parts", "Skin", "Soft Tissue", "Breast", "Thyroid")
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img, s, org, scale, colour, thick=1):
    cv2.putText(img, s, (int(org[0]), int(org[1])), FONT, scale, colour, thick, cv2.LINE_AA)


def _bbox(mask: np.ndarray) -> list[int]:
    x, y, w, h = cv2.boundingRect(cv2.findNonZero(mask.astype(np.uint8)))
    return [int(x), int(y), int(w), int(h)]


class ScannerScreen:
    """A fixed screen layout: static UI pixels + where each B-mode view goes. Reuse it per video frame."""

    def __init__(self, rng: np.random.Generator, bmode_shape: tuple[int, int], *, size=None,
                 probe: str = "linear", dual: bool = False, doppler: bool = False,
                 depth_mm: float | None = None, fill: float | None = None):
        if probe not in PROBES:
            raise ConfigError(f"unknown probe {probe!r}", hint=f"use one of {', '.join(PROBES)}")
        if size is None:
            size = SCREEN_SIZES[int(rng.integers(len(SCREEN_SIZES)))]
        W, H = int(size[0]), int(size[1])
        if not (320 <= W <= 3840 and 240 <= H <= 2160):
            raise ConfigError(f"screen size {W}x{H} out of range", hint="use e.g. 1280x720 .. 1920x1080")
        self.size, self.probe, self.dual = (W, H), probe, dual
        self.depth_mm = float(depth_mm) if depth_mm else float(rng.uniform(15, 30))
        bh, bw = bmode_shape
        self.bmode_shape = (bh, bw)
        u = H / 720.0  # UI unit: text and ruler scale with the screen height

        # areas: title bar on top, settings panel on the left, ruler/gray bar on the right
        top = int(H * rng.uniform(0.07, 0.1))
        left = int(W * rng.uniform(0.14, 0.2))
        right = int(W * rng.uniform(0.1, 0.14))
        bottom = int(H * rng.uniform(0.03, 0.08))
        avail_w = (W - left - right) // (2 if dual else 1) - (int(10 * u) if dual else 0)
        avail_h = H - top - bottom
        fill = float(fill) if fill else float(rng.uniform(0.82, 0.98))

        bg = np.empty((H, W, 3), np.uint8)
        bg[:] = np.array([rng.integers(0, 14), rng.integers(0, 12), rng.integers(0, 10)], np.uint8)
        self.background = bg
        self.fov_boxes: list[list[int]] = []
        self.fov_mask = np.zeros((H, W), bool)
        self._placements = []  # per view: ("linear", x, y, w, h) or ("curved", x, y, map_x, map_y, mask)

        if probe == "linear":
            self.scale = min(avail_w / bw, avail_h / bh) * fill
            vw, vh = int(round(bw * self.scale)), int(round(bh * self.scale))
        else:
            theta = np.deg2rad(rng.uniform(50, 70))
            r0_rel = rng.uniform(0.5, 1.0)  # radius of curvature / image depth
            # fan box size for depth D: width 2 (R0 + D) sin(theta/2), height R0 + D - R0 cos(theta/2)
            fw = 2 * (r0_rel + 1) * np.sin(theta / 2)
            fh = (r0_rel + 1) - r0_rel * np.cos(theta / 2)
            D = min(avail_w / fw, avail_h / fh) * fill
            self.scale = D / bh
            vw, vh = int(np.ceil(fw * D)), int(np.ceil(fh * D))
            R0 = r0_rel * D
            yy, xx = np.mgrid[0:vh, 0:vw].astype(np.float32)
            ay = -R0 * np.cos(theta / 2)
            dx, dy = xx + 0.5 - vw / 2, yy + 0.5 - ay
            r = np.sqrt(dx * dx + dy * dy)
            th = np.arctan2(dx, dy)
            fan = (r >= R0) & (r < R0 + D) & (np.abs(th) < theta / 2)
            map_x = ((th / theta + 0.5) * bw - 0.5).astype(np.float32)
            map_y = ((r - R0) / D * bh - 0.5).astype(np.float32)
            curved = (map_x, map_y, fan)
        y0 = top + (avail_h - vh) // 2 + int(rng.integers(-(avail_h - vh) // 4 - 1, (avail_h - vh) // 4 + 1))
        y0 = int(np.clip(y0, top, H - bottom - vh))
        for v in range(2 if dual else 1):
            x0 = left + v * (avail_w + int(20 * u)) + (avail_w - vw) // 2
            if probe == "linear":
                self._placements.append(("linear", x0, y0, vw, vh))
                self.fov_boxes.append([x0, y0, vw, vh])
                self.fov_mask[y0:y0 + vh, x0:x0 + vw] = True
            else:
                self._placements.append(("curved", x0, y0, *curved))
                self.fov_mask[y0:y0 + vh, x0:x0 + vw] |= curved[2]
                bx, by, bw2, bh2 = _bbox(curved[2])
                self.fov_boxes.append([x0 + bx, y0 + by, bw2, bh2])
        self.fov_box = self.fov_boxes[0]
        self._draw_ui(rng, u, top, left, bottom, doppler)
        self.doppler_box = None
        self._flow = None
        if doppler:
            self._make_doppler(rng, u)

    # ---------------------------------------------------------------- static UI
    def _draw_ui(self, rng, u, top, left, bottom, doppler):
        bg, (W, H) = self.background, self.size
        white = (230, 230, 230)
        grey = (150, 150, 150)
        cv2.rectangle(bg, (0, 0), (W - 1, top - int(4 * u)), (40, 34, 30), -1)
        when = _dt.datetime(2026, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 300)),
                                                        seconds=int(rng.integers(0, 86400)))
        _text(bg, "USEDGE PHANTOM  Dermatology US", (10 * u, top * 0.62), 0.55 * u, white)
        _text(bg, when.strftime("%d/%m/%Y %H:%M:%S"), (W * 0.45, top * 0.62), 0.55 * u, white)
        _text(bg, f"MI {rng.uniform(0.3, 1.2):.1f}  TIs {rng.uniform(0.0, 0.6):.1f}", (W * 0.78, top * 0.62),
              0.55 * u, white)
        probe_name = PROBES[self.probe][int(rng.integers(len(PROBES[self.probe])))]
        self.probe_label = probe_name
        freq = rng.uniform(10, 22) if self.probe == "linear" else rng.uniform(2, 6)
        lines = [probe_name, str(PRESETS[int(rng.integers(len(PRESETS)))]), "",
                 "B-mode", f"Frq {freq:.1f} MHz", f"Gn {int(rng.integers(40, 80))}",
                 f"DR {int(rng.integers(50, 75))}", f"D {self.depth_mm / 10:.1f} cm",
                 f"FR {int(rng.integers(18, 60))} Hz", f"Map {'ABCDEFG'[int(rng.integers(7))]}"]
        if doppler:
            lines += ["", "Colour", f"PRF {rng.uniform(0.5, 3.0):.1f} kHz", f"WF {int(rng.integers(30, 120))} Hz",
                      f"Gn {int(rng.integers(30, 70))}"]
        y = top + 30 * u
        for s in lines:
            if s:
                _text(bg, s, (12 * u, y), 0.5 * u, white if s == probe_name else grey)
            y += 22 * u
        # body marker: a small torso outline with a probe bar
        bx, by = int(20 * u), int(H - bottom - 80 * u)
        cv2.ellipse(bg, (bx + int(30 * u), by + int(30 * u)), (int(22 * u), int(30 * u)), 0, 0, 360, grey, 1)
        cv2.line(bg, (bx + int(20 * u), by + int(25 * u)), (bx + int(42 * u), by + int(20 * u)), (0, 200, 255), 2)
        # depth ruler right of the (first/last) view, ticks every 5 mm, cm labels
        p = self._placements[-1]
        x_r = p[1] + (p[3] if p[0] == "linear" else p[5].shape[1]) + int(8 * u)
        px_per_mm = self.scale * self.bmode_shape[0] / self.depth_mm
        if p[0] == "linear":
            y_top = p[2]
        else:  # the fan's centre line starts at the skin
            y_top = p[2] + int(np.nonzero(p[5][:, p[5].shape[1] // 2])[0].min())
        for mm in range(0, int(self.depth_mm) + 1):
            yy = int(round(y_top + mm * px_per_mm))
            if yy >= H:
                break
            if mm % 5 == 0:
                cv2.line(bg, (x_r, yy), (x_r + int(10 * u), yy), white, 1)
                if mm % 10 == 0:
                    _text(bg, str(mm // 10), (x_r + 14 * u, yy + 5 * u), 0.45 * u, white)
            else:
                cv2.line(bg, (x_r, yy), (x_r + int(4 * u), yy), grey, 1)
        focus = int(y_top + rng.uniform(0.2, 0.6) * self.depth_mm * px_per_mm)
        tri = np.array([[x_r + int(12 * u), focus], [x_r + int(20 * u), focus - int(5 * u)],
                        [x_r + int(20 * u), focus + int(5 * u)]], np.int32)
        cv2.fillPoly(bg, [tri], (0, 220, 255))
        # gray bar: the 256 display levels, right of the ruler
        gx, gy = min(W - int(30 * u), x_r + int(40 * u)), top + int(20 * u)
        gh, gw = int(H * 0.22), int(10 * u)
        ramp = np.linspace(255, 0, gh).astype(np.uint8)[:, None]
        bg[gy:gy + gh, gx:gx + gw] = np.repeat(ramp, gw, axis=1)[:, :, None]
        if doppler:  # colour bar: red (towards) over blue (away)
            cy = gy + gh + int(20 * u)
            half = gh // 2
            t = np.linspace(1, 0, half)[:, None]
            red = np.stack([np.zeros_like(t), 120 * np.clip(t - 0.6, 0, 1) * 2.5, 110 + 145 * t], -1)
            blue = np.stack([110 + 145 * t[::-1], 160 * np.clip(t[::-1] - 0.6, 0, 1) * 2.5, np.zeros_like(t)], -1)
            bar = np.concatenate([red, blue]).astype(np.uint8)
            bg[cy:cy + 2 * half, gx:gx + gw] = np.repeat(bar, gw, axis=1)
            _text(bg, f"+{rng.uniform(5, 20):.1f}", (gx - 10 * u, cy - 4 * u), 0.4 * u, white)
            _text(bg, "cm/s", (gx - 10 * u, cy + 2 * half + 14 * u), 0.4 * u, white)
        _text(bg, "1/1" if not self.dual else "L   R", (left, H - bottom * 0.3), 0.45 * u, grey)

    # ---------------------------------------------------------------- colour Doppler
    def _make_doppler(self, rng, u):
        W, H = self.size
        x, y, w, h = self.fov_box
        bw_, bh_ = int(w * rng.uniform(0.35, 0.65)), int(h * rng.uniform(0.3, 0.6))
        bx = x + int(rng.integers(0, max(1, w - bw_)))
        by = y + int(rng.integers(0, max(1, h - bh_)))
        inside = np.zeros((H, W), bool)
        inside[by:by + bh_, bx:bx + bw_] = True
        inside &= self.fov_mask
        roi = np.zeros((bh_, bw_), np.float32)  # velocity inside the box, -1..1 (red > 0 towards the probe)
        sign = float(rng.choice([-1.0, 1.0]))
        for _ in range(int(rng.integers(1, 4))):  # vessels: smooth tubes with a parabolic velocity profile
            n = 24
            xs = np.linspace(-0.1 * bw_, 1.1 * bw_, n)
            ys = bh_ * (rng.uniform(0.2, 0.8) + np.cumsum(rng.normal(0, 0.015, n)) + rng.uniform(-0.3, 0.3) * np.linspace(0, 1, n))
            width = rng.uniform(3, 10) * u
            dist = np.full((bh_, bw_), 255, np.uint8)
            cv2.polylines(dist, [np.stack([xs, ys], -1).astype(np.int32)], False, 0, 1)
            d = cv2.distanceTransform(dist, cv2.DIST_L2, 3)
            roi += sign * float(rng.uniform(0.5, 1.0)) * np.clip(1 - (d / width) ** 2, 0, None)
            sign = -sign  # artery beside vein: the next vessel flows the other way
        flash = rng.random((bh_, bw_)) < 0.003  # colour noise flashes
        roi += np.where(flash, rng.uniform(-0.6, 0.6, (bh_, bw_)), 0).astype(np.float32)
        flow = inside[by:by + bh_, bx:bx + bw_] & (np.abs(roi) > 0.12)
        outline = np.zeros((bh_, bw_), np.uint8)
        cv2.rectangle(outline, (0, 0), (bw_ - 1, bh_ - 1), 1, max(1, int(u)))
        outline = outline.astype(bool) & inside[by:by + bh_, bx:bx + bw_] & ~flow
        self.doppler_box = [bx, by, bw_, bh_]
        self._flow = (np.clip(roi, -1, 1)[flow], flow, outline)

    def _full(self, roi_mask: np.ndarray) -> np.ndarray:
        x, y, w, h = self.doppler_box
        out = np.zeros(self.size[::-1], bool)
        out[y:y + h, x:x + w] = roi_mask
        return out

    @property
    def doppler_mask(self) -> np.ndarray | None:
        """bool H x W: the coloured flow pixels."""
        return None if self._flow is None else self._full(self._flow[1])

    @property
    def overlay_mask(self) -> np.ndarray | None:
        """bool H x W: flow pixels and the colour-box outline."""
        return None if self._flow is None else self._full(self._flow[1] | self._flow[2])

    def paint_doppler(self, frame: np.ndarray, phase: float = 0.0) -> None:
        """Draw the colour box outline and flow (pulsating with `phase`, radians) into `frame`."""
        if self._flow is None:
            return
        vel, flow, outline = self._flow
        x, y, w, h = self.doppler_box
        roi = frame[y:y + h, x:x + w]
        v = vel * np.float32(0.75 + 0.25 * np.cos(phase))
        a = np.abs(v)
        pos = v > 0
        col = np.empty((v.size, 3), np.uint8)
        col[:, 0] = np.where(pos, 0, 110 + 145 * a)                          # B
        col[:, 1] = np.clip((a - 0.6) * 2.5, 0, 1) * np.where(pos, 120, 160)  # G: yellow/cyan tips
        col[:, 2] = np.where(pos, 110 + 145 * a, 0)                          # R
        roi[flow] = col
        roi[outline] = (130, 220, 130)

    # ---------------------------------------------------------------- B-mode views
    def place(self, frame: np.ndarray, bmode: np.ndarray, view: int = 0) -> None:
        """Write a gray B-mode image (any size; it is resized to the view) into the frame, in place."""
        p = self._placements[view]
        if p[0] == "linear":
            _, x0, y0, vw, vh = p
            img = cv2.resize(bmode, (vw, vh), interpolation=cv2.INTER_LINEAR)
            frame[y0:y0 + vh, x0:x0 + vw] = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if frame.shape[2] == 3 else img[:, :, None]
        else:
            _, x0, y0, mx, my, fan = p
            bh, bw = self.bmode_shape
            sx, sy = bmode.shape[1] / bw, bmode.shape[0] / bh
            img = cv2.remap(bmode, mx * sx + (sx - 1) / 2, my * sy + (sy - 1) / 2, cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
            roi = frame[y0:y0 + fan.shape[0], x0:x0 + fan.shape[1]]
            roi[fan] = img[fan][:, None]

    def map_mask(self, mask: np.ndarray, view: int = 0) -> np.ndarray:
        """A B-mode-sized mask (nonzero = inside) -> bool mask of the screen."""
        out = np.zeros(self.size[::-1], np.uint8)
        self.place(out[:, :, None], (mask > 0).astype(np.uint8) * 255, view)
        return (out > 127) & self.fov_mask

    def truth(self) -> dict:
        return {"fov_box": list(self.fov_box), "fov_boxes": [list(b) for b in self.fov_boxes],
                "fov_mask": self.fov_mask.copy(), "doppler_box": self.doppler_box,
                "probe": self.probe, "probe_label": self.probe_label, "frame_size": list(self.size),
                "scale": float(self.scale), "depth_mm": self.depth_mm, "dual": self.dual}


def render_scanner_frame(bmode, rng: np.random.Generator, *, size=None, doppler: bool = False,
                         probe: str = "linear", dual: bool = False,
                         depth_mm: float | None = None) -> tuple[np.ndarray, dict]:
    """Place a B-mode image (uint8 gray; for dual a pair or one image shown twice) in a scanner screen.

    Returns (BGR uint8 H x W x 3 frame, truth dict; see the module docstring). size=(W, H) pixels,
    random between 1280x720 and 1920x1080 when None.
    """
    views = list(bmode) if isinstance(bmode, (list, tuple)) else [bmode]
    if dual and len(views) == 1:
        views.append(np.ascontiguousarray(views[0][:, ::-1]))  # second view: the probe turned round
    views = [np.asarray(v) for v in views]
    for v in views:
        if v.ndim != 2 or v.dtype != np.uint8:
            raise ConfigError(f"B-mode image must be 2-D uint8, got {v.dtype} {v.shape}", hint="pass a gray image")
    screen = ScannerScreen(rng, views[0].shape, size=size, probe=probe, dual=dual, doppler=doppler,
                           depth_mm=depth_mm)
    frame = screen.background.copy()
    for i in range(2 if dual else 1):
        screen.place(frame, views[i], i)
    truth = screen.truth()
    truth["doppler_mask"] = truth["overlay_mask"] = None
    if doppler:
        screen.paint_doppler(frame, float(rng.uniform(0, 2 * np.pi)))
        truth["doppler_mask"] = screen.doppler_mask
        truth["overlay_mask"] = screen.overlay_mask
    return frame, truth
