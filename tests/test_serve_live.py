"""/v1/latest and /v1/live fed by the ONE stream loop, served by real uvicorn on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="usedge serve needs the 'serve' extra (fastapi, uvicorn, ...)")
httpx = pytest.importorskip("httpx")

from tests.fixtures.serve import run_uvicorn  # noqa: E402


@pytest.fixture(scope="module")
def live_server(serve_classifier, serve_video):
    from usedge.serve.app import create_app
    from usedge.serve.live import start_stream

    runner = start_stream(serve_classifier, str(serve_video), replay=True, smooth_window=3)
    try:
        with run_uvicorn(create_app(serve_classifier, runner)) as base:
            yield base, runner
    finally:
        runner.stop()


def _wait_latest(base: str, after_seq: int, timeout_s: float = 20.0) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        d = httpx.get(f"{base}/v1/latest", timeout=5).json()
        if d["prediction"] is not None and d["seq"] > after_seq:
            return d
        time.sleep(0.05)
    raise AssertionError(f"no live result after seq {after_seq} within {timeout_s} s")


def test_latest_follows_the_stream(live_server, serve_classifier):
    base, runner = live_server
    first = _wait_latest(base, -1)
    second = _wait_latest(base, first["seq"])
    assert second["seq"] > first["seq"]
    for _ in range(10):         # the first result after a reset (start, an image-less frame) is not averaged yet
        if second["prediction"]["smoothed"]:
            break
        second = _wait_latest(base, second["seq"])
    pred = second["prediction"]
    assert pred["label"] in serve_classifier.class_names
    assert pred["smoothed"] is True
    assert abs(sum(pred["probs"].values()) - 1) < 1e-3
    assert pred["model_sha256"] == serve_classifier.model_sha256
    assert "source" not in pred  # a source can be a path or URL: not sent to the page
    assert second["state"] == "running" and second["stats"]["frames"] >= 1
    assert httpx.get(f"{base}/healthz").json()["stream"] == "running"


def test_one_loop_feeds_everything(live_server):
    base, runner = live_server
    _wait_latest(base, -1)
    names = [t.name for t in threading.enumerate()]
    assert names.count("usedge-stream") == 1 and names.count("usedge-capture") == 1
    before = runner.stats()["frames"]
    d = _wait_latest(base, -1)
    assert d["stats"]["frames"] >= before  # /v1/latest reports the runner's own counters


def test_live_mjpeg_sends_new_overlay_frames(live_server):
    base, _ = live_server
    _wait_latest(base, -1)
    parts: list[tuple[int, np.ndarray]] = []
    with httpx.stream("GET", f"{base}/v1/live", timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=")
        buf = b""
        for chunk in r.iter_bytes():
            buf += chunk
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    break
                head = buf[:head_end].decode("latin-1")
                fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
                length = int(fields["Content-Length"])
                if len(buf) < head_end + 4 + length + 2:
                    break
                jpeg = buf[head_end + 4: head_end + 4 + length]
                buf = buf[head_end + 4 + length + 2:]
                parts.append((int(fields["X-Frame-Seq"]), cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)))
            if len(parts) >= 3:
                break
    seqs = [s for s, _ in parts]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(img is not None and img.shape == (360, 640, 3) for _, img in parts)


def test_upload_beside_the_live_loop(live_server, serve_classifier, serve_images):
    base, _ = live_server
    image = cv2.imread(str(serve_images[0]), cv2.IMREAD_UNCHANGED)
    r = httpx.post(f"{base}/v1/predict", files={"file": ("a.png", serve_images[0].read_bytes(), "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    direct = serve_classifier.predict(image)
    assert r.json()["label"] == direct.label
    np.testing.assert_allclose(list(r.json()["probs"].values()), list(direct.probs.values()), atol=1e-5)


def test_metrics_count_stream_frames(live_server):
    from prometheus_client.parser import text_string_to_metric_families

    base, _ = live_server
    _wait_latest(base, -1)
    text = httpx.get(f"{base}/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("usedge_stream_frames_total", ())] >= 1
    assert ("usedge_stream_dropped_frames_total", ()) in samples
    assert samples[("usedge_stage_latency_seconds_count", (("source", "live"), ("stage", "model")))] >= 1


def test_replay_restarts_a_file(serve_video):
    from usedge.runtime.sources import open_source
    from usedge.serve.replay import ReplayReader

    reader = ReplayReader(open_source(str(serve_video)))
    reader.open()
    try:
        frames = [reader.read() for _ in range(50)]  # the clip has 45
    finally:
        reader.close()
    assert all(f is not None for f in frames) and reader.replays == 1


def test_a_replayed_cine_keeps_its_own_frame_numbers_and_times_and_passes_over_a_damaged_frame(serve_classifier, tmp_path):
    """`usedge serve --stream cine.dcm` replays the cine: its results were numbered by a running count (30,
    31, ... on the second pass) and a damaged frame ended the stream. Now each pass numbers the cine's own
    frames (0..29, with their frame times) and the damaged one is an error result, as `usedge infer` gives."""
    import json

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    from usedge.runtime.pipeline import FramePipeline
    from usedge.runtime.sinks import JsonlSink
    from usedge.runtime.sources import open_source
    from usedge.runtime.stream import StreamRunner
    from usedge.serve.replay import ReplayReader

    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm", download=False))
    n = int(ds.NumberOfFrames)
    frames = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=n)]
    frames[3] = b"\x00" * 100
    ds.PixelData = encapsulate(frames)
    ds.save_as(tmp_path / "cine.dcm")
    reader = ReplayReader(open_source(str(tmp_path / "cine.dcm")))
    period = 1.0 / reader.fps
    with JsonlSink(tmp_path / "s.jsonl") as sink:
        summary = StreamRunner(FramePipeline(serve_classifier, [sink], stream=True, freeze=False), reader,
                               realtime=False, max_frames=n + 10).run()
    records = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert summary.ended_by == "end of source" and reader.replays == 1
    # the error line for frame 3 may come just before frame 2's result (the loop reports the source's failures
    # when it takes a frame): compared without order
    assert sorted(r["frame"] for r in records) == sorted([*range(n), *range(10)])
    assert [r["frame"] for r in records if "error" in r] == [3, 3]
    assert all(r["time_s"] == pytest.approx(r["frame"] * period, abs=1e-6) for r in records if "error" not in r)


def test_a_source_that_stops_sending_is_stalled_not_live(serve_classifier, serve_images, tmp_path):
    """A watched folder gets one scan, then nothing (like a cable pulled while the reader waits): after
    STALLED_AFTER_S the stream state is "stalled", the result's age grows and the result rate falls toward 0,
    so the page never shows the old answer as live."""
    import shutil

    from tests.fixtures.serve import run_uvicorn
    from usedge.serve.app import create_app
    from usedge.serve.live import STALLED_AFTER_S, start_stream

    watched = tmp_path / "incoming"
    watched.mkdir()
    runner = start_stream(serve_classifier, f"watch:{watched}", replay=False, smooth_window=1)
    try:
        with run_uvicorn(create_app(serve_classifier, runner)) as base:
            shutil.copy(serve_images[0], watched / "scan.png")
            first = _wait_latest(base, -1)
            assert first["state"] == "running" and first["age_s"] < STALLED_AFTER_S
            time.sleep(STALLED_AFTER_S + 1.5)
            later = httpx.get(f"{base}/v1/latest", timeout=5).json()
            assert later["seq"] == first["seq"] and later["state"] == "stalled"
            assert later["age_s"] > STALLED_AFTER_S
            assert httpx.get(f"{base}/healthz").json()["stream"] == "stalled"
            frame = httpx.get(f"{base}/v1/frame", params={"after": later["seq"]}, timeout=10)
            assert frame.status_code == 204 and '"state": "stalled"' in frame.headers["X-Usedge-Result"]
    finally:
        runner.stop()


def test_a_stream_that_ends_says_why(serve_classifier, serve_video, tmp_path, caplog):
    """serve --stream without replay: the end is one log line with how and why, and /v1/latest carries the
    error; a source from which no frame was read is 'failed', not 'ended' (it logged nothing and /healthz
    said ok)."""
    import logging

    from usedge.serve.live import LiveFeed, start_stream

    caplog.set_level(logging.WARNING, logger="usedge.serve")
    runner = start_stream(serve_classifier, str(serve_video), replay=False, smooth_window=1)
    runner._thread.join(60)
    assert runner.summary is not None and runner.summary.ended_by == "end of source"
    assert any("stream ended (end of source" in r.getMessage() for r in caplog.records), caplog.text
    feed = LiveFeed(runner)
    assert feed.state() == "ended" and feed.latest_json()["error"] is None
    empty = tmp_path / "empty.avi"                       # opens, holds no frame
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    writer.release()
    try:
        runner = start_stream(serve_classifier, str(empty), replay=False, smooth_window=1)
    except Exception:                                    # refused at open: also a clear failure
        return
    runner._thread.join(60)
    assert LiveFeed(runner).state() == "failed"
