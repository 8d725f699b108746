"""Scanner screens: the truth boxes must be exactly the B-mode pixels on screen."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from usedge.errors import ConfigError
from usedge.synth.scanner import render_scanner_frame


@pytest.fixture(scope="module")
def bmode():
    rng = np.random.default_rng(5)
    img = cv2.GaussianBlur(rng.integers(30, 230, (256, 320)).astype(np.uint8), (0, 0), 2)
    return np.clip(img.astype(int) * 3 - 200, 20, 255).astype(np.uint8)  # never as dark as the screen


def test_linear_fov_box_is_exactly_the_image(bmode):
    frame, truth = render_scanner_frame(bmode, np.random.default_rng(0), size=(1920, 1080))
    assert frame.shape == (1080, 1920, 3) and frame.dtype == np.uint8
    assert truth["frame_size"] == [1920, 1080] and truth["probe"] == "linear"
    x, y, w, h = truth["fov_box"]
    expected = cv2.resize(bmode, (w, h), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(frame[y:y + h, x:x + w, 0], expected)
    assert np.array_equal(frame[y:y + h, x:x + w, 2], expected)
    assert truth["fov_mask"].sum() == w * h and truth["fov_mask"][y:y + h, x:x + w].all()
    # one pixel outside the box on every side is screen, not image
    ring = np.concatenate([frame[y - 1, x:x + w], frame[y + h, x:x + w], frame[y:y + h, x - 1], frame[y:y + h, x + w]])
    assert (ring.astype(int).sum(axis=1) < 3 * 20).mean() > 0.9
    # annotations exist outside the field of view
    outside = frame[~truth["fov_mask"]]
    assert (outside.max(axis=1) > 150).sum() > 1000
    assert truth["doppler_box"] is None and truth["doppler_mask"] is None


def test_random_size_stays_in_range(bmode):
    for seed in range(6):
        frame, truth = render_scanner_frame(bmode, np.random.default_rng(seed))
        w, h = truth["frame_size"]
        assert 1280 <= w <= 1920 and 720 <= h <= 1080 and frame.shape[:2] == (h, w)


def test_doppler_pixels_are_coloured_and_inside_the_box(bmode):
    frame, truth = render_scanner_frame(bmode, np.random.default_rng(3), size=(1280, 720), doppler=True)
    dm, om = truth["doppler_mask"], truth["overlay_mask"]
    assert dm.shape == (720, 1280) and dm.dtype == bool and dm.sum() > 100
    bx, by, bw, bh = truth["doppler_box"]
    box = np.zeros_like(dm)
    box[by:by + bh, bx:bx + bw] = True
    assert not (dm & ~box).any() and not (dm & ~truth["fov_mask"]).any() and not (dm & ~om).any()
    px = frame[dm].astype(int)
    assert (np.abs(px[:, 0] - px[:, 2]) > 60).all()  # red or blue, never gray
    # every other field-of-view pixel is still the B-mode image
    x, y, w, h = truth["fov_box"]
    expected = cv2.resize(bmode, (w, h), interpolation=cv2.INTER_LINEAR)
    keep = ~om[y:y + h, x:x + w]
    assert np.array_equal(frame[y:y + h, x:x + w, 1][keep], expected[keep])


def test_curved_probe_has_a_fan_shaped_view(bmode):
    frame, truth = render_scanner_frame(bmode, np.random.default_rng(1), size=(1600, 900), probe="curved")
    fm = truth["fov_mask"]
    x, y, w, h = truth["fov_box"]
    ys, xs = np.nonzero(fm)
    assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert 0.5 < fm.sum() / (w * h) < 0.9          # a fan, not a rectangle
    assert not fm[y, x] and not fm[y, x + w - 1]    # top corners lie outside the fan
    assert frame[fm].mean() > 3 * frame[~fm].mean()


def test_dual_shows_two_views(bmode):
    frame, truth = render_scanner_frame(bmode, np.random.default_rng(2), size=(1920, 1080), dual=True)
    (x1, y1, w1, h1), (x2, y2, w2, h2) = truth["fov_boxes"]
    assert truth["fov_box"] == [x1, y1, w1, h1] and (w1, h1) == (w2, h2) and x1 + w1 < x2
    right = frame[y2:y2 + h2, x2:x2 + w2, 0]
    assert np.array_equal(right, cv2.resize(np.ascontiguousarray(bmode[:, ::-1]), (w2, h2)))


def test_bad_inputs_are_user_errors(bmode):
    with pytest.raises(ConfigError):
        render_scanner_frame(bmode, np.random.default_rng(0), probe="phased")
    with pytest.raises(ConfigError):
        render_scanner_frame(bmode.astype(np.float32), np.random.default_rng(0))
