"""Draw a Prediction on its frame (crop box, label, probability bars, fps, optional CAM heatmap), or a
crop on its frame (`draw_crop`: fields of view and crop box, for `usedge crop --overlay`).

Works on a copy (the captured frame is never modified) and on the frame's own resolution, so a
recording looks like the scanner's screen with the answer on it.
"""

from __future__ import annotations

import cv2
import numpy as np

from usedge.errors import InputError
from usedge.runtime.classifier import Prediction
from usedge.runtime.pixels import as_uint8

# BGR, one per class (cycled): distinct on a gray B-mode image
CLASS_COLOURS = [(80, 200, 255), (120, 230, 120), (255, 160, 90), (200, 120, 255), (90, 90, 255)]


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """A BGR uint8 copy of a frame as the crop read it (never the frame itself: callers draw on it):
    as_uint8's conversion, so the picture shown with a result is the one classified (a float image in
    [0, 1] or a 12-bit one drawn as it was scaled, transparent pixels black). A frame the crop refused
    (NaN, too small, ...) is drawn with its values clipped to 0..255, as far as it has pixels."""
    try:
        vis = as_uint8(frame)
    except InputError:
        f = np.nan_to_num(np.asarray(frame, dtype=np.float32))
        f = f[:, :, :3] if f.ndim == 3 and f.shape[2] >= 3 else f[:, :, 0] if f.ndim == 3 else f
        vis = np.clip(f, 0, 255).astype(np.uint8) if f.ndim == 2 or f.ndim == 3 else np.zeros((8, 8), np.uint8)
    if vis.ndim == 2:
        return cv2.cvtColor(vis, cv2.COLOR_GRAY2BGR)
    return vis.copy() if np.may_share_memory(vis, frame) else vis


def blend_cam(image: np.ndarray, cam: np.ndarray, box: tuple[int, int, int, int], alpha: float = 0.4) -> None:
    """Blend a low-res CAM (any range) as a JET heatmap into `image` inside box (x, y, w, h), in place."""
    x, y, w, h = box
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, image.shape[1]), min(y + h, image.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    c = np.asarray(cam, dtype=np.float32)
    c = c - c.min()
    peak = float(c.max())
    c = (c * (255.0 / peak)).astype(np.uint8) if peak > 0 else np.zeros_like(c, dtype=np.uint8)
    heat = cv2.applyColorMap(cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_JET)
    heat = heat[y0 - y:y1 - y, x0 - x:x1 - x]
    roi = image[y0:y1, x0:x1]
    cv2.addWeighted(heat, alpha, roi, 1.0 - alpha, 0.0, dst=roi)


def draw_prediction(frame: np.ndarray, pred: Prediction, *, fps: float | None = None, cam: bool = True) -> np.ndarray:
    """A BGR uint8 copy of `frame` with the prediction drawn on it (no label: the state and its reason)."""
    out = to_bgr(frame)
    h, w = out.shape[:2]
    scale = max(0.4, min(w, h) / 900.0)            # text size follows the frame's resolution
    thick = max(1, int(round(2 * scale)))
    if not pred.has_label:
        _draw_no_label(out, pred, scale, thick)
        return out
    if cam and pred.cam is not None:
        blend_cam(out, pred.cam, pred.crop_box)
    colour = CLASS_COLOURS[pred.class_index % len(CLASS_COLOURS)]
    x, y, bw, bh = pred.crop_box
    cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), colour, thick)

    # panel: label, bars, fps; top-left, semi-transparent so the image stays visible
    line = int(28 * scale) + 6
    names = list(pred.probs)
    panel_w = int(360 * scale) + 20
    panel_h = line * (len(names) + 2) + 10
    panel = out[0:min(panel_h, h), 0:min(panel_w, w)]
    cv2.addWeighted(panel, 0.35, np.zeros_like(panel), 0.65, 0.0, dst=panel)
    tag = f"{pred.label} {pred.probs[pred.label]:.0%}"
    if pred.uncertain:       # below the model card's margin: not to be read as a diagnosis
        tag = f"uncertain ({pred.label}? {pred.probs[pred.label]:.0%})"
    if pred.frozen:
        tag += "  [FROZEN]"
    cv2.putText(out, tag, (8, line), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, colour, thick, cv2.LINE_AA)
    bar_max = int(200 * scale)
    for i, name in enumerate(names):
        yy = line * (i + 2)
        p = float(pred.probs[name])
        c = CLASS_COLOURS[i % len(CLASS_COLOURS)]
        cv2.rectangle(out, (8, yy - int(14 * scale)), (8 + int(bar_max * p), yy), c, -1)
        cv2.putText(out, f"{name[:16]} {p:.2f}", (16 + bar_max, yy), cv2.FONT_HERSHEY_SIMPLEX,
                    0.55 * scale, (255, 255, 255), max(1, thick - 1), cv2.LINE_AA)
    footer = f"{pred.latency_ms.get('total', 0.0):.1f} ms"
    if fps is not None:
        footer = f"{fps:.1f} fps  " + footer
    cv2.putText(out, footer, (8, line * (len(names) + 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.55 * scale,
                (255, 255, 255), max(1, thick - 1), cv2.LINE_AA)
    return out


NO_LABEL_TEXT = {"no_image": "NO IMAGE", "error": "NO RESULT (model error)"}


def _draw_no_label(out: np.ndarray, pred: Prediction, scale: float, thick: int) -> None:
    """The state in large letters and its reason: no label, no bars, nothing that reads as an answer."""
    line = int(28 * scale) + 6
    h, w = out.shape[:2]
    panel = out[0:min(2 * line + 10, h), 0:w]
    cv2.addWeighted(panel, 0.35, np.zeros_like(panel), 0.65, 0.0, dst=panel)
    cv2.putText(out, NO_LABEL_TEXT.get(pred.state, pred.state.upper()), (8, line), cv2.FONT_HERSHEY_SIMPLEX,
                0.8 * scale, (0, 200, 255), thick, cv2.LINE_AA)
    cv2.putText(out, pred.reason[:90], (8, 2 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
                (255, 255, 255), max(1, thick - 1), cv2.LINE_AA)


def draw_crop(frame: np.ndarray, info) -> np.ndarray:
    """A BGR uint8 copy of `frame` with every field of view in green and the crop box in magenta (CropInfo)."""
    vis = as_uint8(frame)      # scales 10-16-bit frames as the crop saw them
    vis = cv2.cvtColor(vis, cv2.COLOR_GRAY2BGR) if vis.ndim == 2 else vis.copy()
    t = max(1, round(max(vis.shape[:2]) / 500))
    for x, y, w, h in info.fov_boxes or [info.fov_box]:
        cv2.rectangle(vis, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), t)
    x, y, w, h = info.crop_box
    cv2.rectangle(vis, (x, y), (x + w - 1, y + h - 1), (255, 0, 255), t)
    return vis
