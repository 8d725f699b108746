"""Issue 20 items 6 and 7: the page's live view (/v1/frame: one result's frame and that result as one
response, margin and uncertainty from the model card, CAM only on request) and its bandwidth cap,
measured over a real stream served by real uvicorn on 127.0.0.1 (bytes received, bounded by the cap's
arithmetic: views per second x bytes per view)."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="usedge serve needs the 'serve' extra (fastapi, uvicorn, ...)")
httpx = pytest.importorskip("httpx")

from tests.fixtures.serve import run_uvicorn  # noqa: E402
from usedge.serve.live import ViewSettings, encode_view  # noqa: E402

# a tight cap, so that the synthetic clip (640 x 360, 15 fps) must be scaled, re-encoded and paced
CAP = ViewSettings(max_width=320, quality=90, fps=5.0, mbps=0.25)
MEASURE_S = 3.0
PART_HEADERS = 200      # multipart boundary and part headers per MJPEG frame, bytes (generous)


@pytest.fixture(scope="module")
def view_server(serve_classifier, serve_video):
    from usedge.serve.app import create_app
    from usedge.serve.live import start_stream

    runner = start_stream(serve_classifier, str(serve_video), replay=True, smooth_window=3)
    try:
        with run_uvicorn(create_app(serve_classifier, runner, view=CAP)) as base:
            yield base
    finally:
        runner.stop()


def _bound(elapsed_s: float, per_frame: int) -> float:
    # at most fps views a second (+1 at the start, +1 for a view made as the clock started), each within budget
    return (elapsed_s * CAP.fps + 2) * per_frame


def test_default_cap_is_at_most_5_mbit():
    v = ViewSettings()
    assert v.mbps <= 5.0 and v.frame_budget * v.fps * 8 <= 5e6


def test_encode_view_fits_width_and_budget():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)      # the worst case for JPEG
    jpeg = encode_view(noise, CAP)
    assert len(jpeg) <= CAP.frame_budget
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] <= CAP.max_width


def test_frame_is_one_unit_with_margin(view_server, serve_classifier):
    base = view_server
    seen = -1
    for _ in range(3):
        r = httpx.get(f"{base}/v1/frame", params={"after": seen}, timeout=30)
        while r.status_code == 204:
            r = httpx.get(f"{base}/v1/frame", params={"after": seen}, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        result = json.loads(r.headers["x-usedge-result"])
        assert result["seq"] > seen
        seen = result["seq"]
        img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[1] <= CAP.max_width
        p = result["prediction"]
        assert result["image"] == p["state"] and result["cam"] is False
        if p["label"] is not None:
            top = sorted(p["probs"].values(), reverse=True)
            assert result["margin"] == pytest.approx(top[0] - top[1], abs=2e-6)
            margin = serve_classifier.info.model_card["uncertain_margin"]
            assert result["uncertain_margin"] == margin
            assert result["uncertain"] == (result["margin"] < margin)
    r = httpx.get(f"{base}/v1/frame", params={"after": -1, "cam": "true"}, timeout=30)
    assert r.status_code == 200 and json.loads(r.headers["x-usedge-result"])["cam"] is True


def test_frame_loop_stays_within_the_cap(view_server):
    """The page's loop (ask for the next view after the one shown), as fast as it can, for MEASURE_S."""
    base = view_server
    seen, total, frames = -1, 0, 0
    with httpx.Client(timeout=30) as c:
        t0 = time.monotonic()
        while time.monotonic() - t0 < MEASURE_S:
            r = c.get(f"{base}/v1/frame", params={"after": seen})
            if r.status_code == 200:
                seen = json.loads(r.headers["x-usedge-result"])["seq"]
                assert len(r.content) <= CAP.frame_budget
                total += len(r.content)
                frames += 1
        elapsed = time.monotonic() - t0
    assert frames >= 1
    assert frames <= elapsed * CAP.fps + 2
    assert total <= _bound(elapsed, CAP.frame_budget)


def test_mjpeg_stays_within_the_cap(view_server):
    base = view_server
    total = 0
    with httpx.stream("GET", f"{base}/v1/live", timeout=30) as r:
        assert r.status_code == 200
        t0 = time.monotonic()
        for chunk in r.iter_bytes():
            total += len(chunk)
            if time.monotonic() - t0 >= MEASURE_S:
                break
        elapsed = time.monotonic() - t0
    assert total > 0
    assert total <= _bound(elapsed, CAP.frame_budget + PART_HEADERS)


def test_info_carries_the_model_card_and_the_cap(view_server, serve_classifier):
    info = httpx.get(f"{view_server}/v1/info", timeout=10).json()
    card = info["model_card"]
    assert card["synthetic"] is True and "SYNTHETIC" in card["line"]
    assert card["uncertain_margin"] == serve_classifier.info.model_card["uncertain_margin"]
    assert card["localisation"] is None              # the test model's card measured none
    assert info["view"] == {"max_width": 320, "quality": 90, "fps": 5.0, "mbps": 0.25}


def test_upload_overlay_draws_the_cam_only_when_asked(view_server, serve_images, serve_classifier):
    import base64

    assert serve_classifier.has_cam
    data = serve_images[0].read_bytes()
    pngs = {}
    for cam in ("true", "false"):
        r = httpx.post(f"{view_server}/v1/predict", params={"overlay": "true", "cam": cam}, content=data, timeout=30)
        assert r.status_code == 200
        body = r.json()
        assert body["margin"] is not None and body["uncertain"] == (body["margin"] < body["uncertain_margin"])
        pngs[cam] = cv2.imdecode(np.frombuffer(base64.b64decode(body["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
    x, y, w, h = body["crop_box"]
    inside = (slice(y + h // 4, y + 3 * h // 4), slice(x + w // 4, x + 3 * w // 4))
    assert not np.array_equal(pngs["true"][inside], pngs["false"][inside])   # the heatmap is blended in


def test_card_localisation_and_no_card(serve_classifier):
    import copy
    import dataclasses
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from usedge.serve.app import create_app

    def info_with(card: dict) -> dict:
        clf = copy.copy(serve_classifier)            # the same session, another ModelInfo
        clf.info = dataclasses.replace(serve_classifier.info, model_card=card)
        with TestClient(create_app(clf)) as c:
            return c.get("/v1/info").json()["model_card"]

    card = dict(serve_classifier.info.model_card, localisation={"summary": "pointing game 0.41 by patient"})
    assert info_with(card)["localisation"] == "pointing game 0.41 by patient"
    none = info_with({})
    assert none["present"] is False and none["synthetic"] is None and none["uncertain_margin"] is None
    assert "no model card" in none["line"]
