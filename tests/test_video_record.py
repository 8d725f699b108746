"""The recorded video (`--record`, the demo's overlay.mp4) is H.264 that a browser plays.

Real parts: PyAV's libx264 writes the file, OpenCV decodes it back, Debian's Chromium (driven by
Playwright, no browser download) plays it in a <video> element from a local HTTP server.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from usedge.errors import OutputError
from usedge.runtime.sinks import VideoRecorderSink
from tests.fixtures.runtime import opencv_frames

av = pytest.importorskip("av", reason="H.264 recording needs PyAV (pip install av)")

CHROMIUM = os.environ.get("USEDGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FRAMES = 24


def _record(path: Path, shape=(121, 163, 3), fps: float = 24.0) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(40 + 8 * i, 30, shape), 0, 255).astype(np.uint8) for i in range(FRAMES)]
    with VideoRecorderSink(path, fps=fps) as sink:
        for frame in frames:
            sink.write(None, frame)
        assert not path.exists()                        # still the hidden partial file
        assert (path.parent / f".{path.stem}.partial{path.suffix}").exists()
    return frames


def test_mp4_is_h264_yuv420p_faststart_and_decodes_with_opencv(tmp_path):
    path = tmp_path / "rec.mp4"
    frames = _record(path)                              # odd sides: padded to even
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.mp4"]
    decoded = opencv_frames(path)
    assert len(decoded) == FRAMES
    assert decoded[0].shape == (122, 164, 3)
    # lossy, but each decoded frame is closer to its own source than to its neighbours
    for i in (0, FRAMES // 2, FRAMES - 1):
        mean = decoded[i][:121, :163].astype(float).mean()
        assert abs(mean - frames[i].mean()) < abs(frames[1].mean() - frames[0].mean()) * 3
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (164, 122)
    data = path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")   # faststart: the index comes first


def test_unknown_suffix_is_a_clear_error(tmp_path):
    with pytest.raises(OutputError, match=r"\.mov.*\.mp4"):
        VideoRecorderSink(tmp_path / "rec.mov")


def test_nothing_written_leaves_no_file(tmp_path):
    VideoRecorderSink(tmp_path / "empty.mp4").close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)),
                    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set USEDGE_CHROMIUM)")
def test_chromium_plays_the_recording(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="the browser test needs the 'playwright' pip package (dev extra)")
    from playwright.sync_api import sync_playwright

    _record(tmp_path / "rec.mp4", shape=(240, 320, 3))
    (tmp_path / "index.html").write_text('<video id="v" src="rec.mp4" muted playsinline></video>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
                assert page.evaluate("""() => document.createElement('video')
                                          .canPlayType('video/mp4; codecs="avc1.42E01E"')""") != ""
                state = page.evaluate("""() => new Promise(resolve => {
                    const v = document.getElementById('v');
                    const done = () => resolve({ready: v.readyState, error: v.error && v.error.code,
                                                width: v.videoWidth, time: v.currentTime});
                    v.addEventListener('error', done);
                    v.addEventListener('timeupdate', () => { if (v.currentTime > 0) done(); });
                    v.play().catch(() => {});
                    setTimeout(done, 20000);
                })""")
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert state["error"] is None, state
    assert state["ready"] >= 2 and state["width"] == 320 and state["time"] > 0, state


def test_without_pyav_one_line_and_an_mp4v_file(tmp_path):
    """PyAV missing (import blocked): one line on stderr says what was written and what to install."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['av'] = None\n"
            "import numpy as np\n"
            "from usedge.runtime.sinks import VideoRecorderSink\n"
            f"with VideoRecorderSink({str(tmp_path / 'rec.mp4')!r}, fps=10) as s:\n"
            "    [s.write(None, np.full((64, 80, 3), 9 * i, np.uint8)) for i in range(5)]\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "mp4v" in lines[0] and "browsers" in lines[0] and "pip install av" in lines[0]
    cap = cv2.VideoCapture(str(tmp_path / "rec.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 5
    cap.release()
    with av.open(str(tmp_path / "rec.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"      # MPEG-4 Part 2


def _frames_of(path: Path) -> int:
    return len(opencv_frames(path))


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_a_crash_mid_recording_leaves_a_playable_file_and_the_next_run_keeps_it(tmp_path, capfd, suffix):
    """The process dies without closing (kill -9, power cut): the hidden partial .mp4 is a fragmented MP4
    that plays up to its last fragment (a keyframe a second), the partial .avi is flushed per frame. The
    next recording to the same name keeps it as rec.unfinished.<suffix> instead of overwriting it."""
    import subprocess
    import sys

    fps, n = 10, 75
    code = ("import os, numpy as np\n"
            "from usedge.runtime.sinks import VideoRecorderSink\n"
            f"s = VideoRecorderSink({str(tmp_path / f'rec{suffix}')!r}, fps={fps})\n"
            f"for i in range({n}):\n"
            "    s.write(None, np.full((96, 128, 3), (7 * i) % 256, np.uint8))\n"
            "os._exit(9)\n")                                  # no close, no flush: as a crash
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 9, run.stderr
    partial = tmp_path / f".rec.partial{suffix}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [partial.name]
    survived = _frames_of(partial)
    assert n - 3 * fps <= survived <= n           # at most the last fragment(s) and the encoder's look-ahead are lost
    _record(tmp_path / f"rec{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"rec{suffix}", f"rec.unfinished{suffix}"])
    assert _frames_of(tmp_path / f"rec.unfinished{suffix}") == survived
    assert _frames_of(tmp_path / f"rec{suffix}") == FRAMES
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"rec.unfinished{suffix}" in err[0] and "did not finish" in err[0]


def test_when_the_faststart_rewrite_fails_the_fragmented_recording_is_kept(tmp_path, capfd):
    """The rewrite into an ordinary MP4 cannot write its file (here: a folder sits at its name): the
    recording is not lost; the fragmented file becomes rec.mp4 and one line says so."""
    (tmp_path / ".rec.partial.faststart.mp4").mkdir()
    _record(tmp_path / "rec.mp4")
    assert _frames_of(tmp_path / "rec.mp4") == FRAMES
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rec.mp4" in err[0] and "fragmented" in err[0]


def test_a_recording_keeps_the_videos_own_frame_rate(tmp_path, runtime_model):
    """`--stream clip.mp4 --record r.mp4` on a 15 fps clip: the recording is 15 fps (it was always 30, the
    video's rate not being known yet when the recorder was made: twice as fast as the scan)."""
    import os
    import subprocess
    import sys

    import av

    clip = tmp_path / "clip15.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(20):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (240, 320, 3), np.uint8), format="bgr24")))
        out.mux(stream.encode())
    rec = tmp_path / "r.mp4"
    res = subprocess.run([sys.executable, "-m", "usedge", "infer", str(runtime_model), "--stream", str(clip),
                          "--record", str(rec), "-q", "--no-freeze-detect"], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    with av.open(str(rec)) as got:
        video = got.streams.video[0]
        assert float(video.average_rate) == pytest.approx(15, abs=0.01)
        assert sum(1 for _ in got.decode(video)) == 20


def test_a_frame_of_another_size_is_fitted_not_stretched(tmp_path):
    """A source that changes resolution mid-recording (a scanner preset, a reconnect): a smaller frame is
    centred at its own size on black, a larger or wider one is scaled down with its aspect ratio kept."""
    from usedge.runtime.sinks import fit_into

    small = np.full((60, 80, 3), 200, np.uint8)
    out = fit_into(small, (160, 120))
    assert out.shape == (120, 160, 3) and (out[30:90, 40:120] == 200).all()
    assert out[:30].max() == 0 and out[:, :40].max() == 0                   # black around, not stretched
    wide = np.full((100, 400, 3), 200, np.uint8)                            # 4:1 into 4:3
    out = fit_into(wide, (160, 120))
    rows = np.nonzero(out[:, 80, 0])[0]
    assert out.shape == (120, 160, 3) and (out[:, :, 0] > 0).any(axis=0).all() and len(rows) == 40
    path = tmp_path / "rec.mp4"
    with VideoRecorderSink(path, fps=10) as sink:
        sink.write(None, np.full((120, 160, 3), 90, np.uint8))
        sink.write(None, small)
    cap = cv2.VideoCapture(str(path))
    frames = [cap.read()[1] for _ in range(2)]
    cap.release()
    second = frames[1].astype(int)
    assert second.shape == (120, 160, 3)
    assert abs(second[60, 80].mean() - 200) < 12 and second[5, 5].mean() < 12   # centred at its size, black border


def test_a_recording_that_gets_no_frame_leaves_an_earlier_runs_partial_file(tmp_path):
    """A run that recorded no frame (a watched folder where nothing arrived) deleted a killed run's
    unfinished recording at close, silently (regression round of 2026-12-02)."""
    from usedge.runtime.sinks import VideoRecorderSink

    dead = tmp_path / ".rec.partial.mp4"
    dead.write_bytes(b"frames a killed run recorded")
    VideoRecorderSink(tmp_path / "rec.mp4").close()
    assert dead.read_bytes() == b"frames a killed run recorded"


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_a_second_recording_into_the_same_file_is_refused_while_the_first_records(tmp_path, suffix):
    """Two runs with one --record name: the second took the first's live partial file for a dead run's, moved it
    to .unfinished, and at the end each renamed the other's frames into place (limit of the third audit)."""
    path = tmp_path / f"rec{suffix}"
    first = VideoRecorderSink(path, fps=10)
    first.write(None, np.full((96, 128, 3), 50, np.uint8))
    with pytest.raises(OutputError, match=rf"another usedge run is writing this recording now \(into "
                                          rf"\.rec\.partial{suffix}\)"):
        VideoRecorderSink(path, fps=10)
    late = VideoRecorderSink(tmp_path / "other.mp4")       # a name no one records to: set up fine
    late.tmp = first.tmp                                    # as if it had started before the first wrote a frame
    with pytest.raises(OutputError, match="another usedge run is writing this recording now"):
        late.write(None, np.zeros((96, 128, 3), np.uint8))
    for i in range(1, 5):
        first.write(None, np.full((96, 128, 3), 50 + 10 * i, np.uint8))
    first.close()
    assert _frames_of(path) == 5 and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    VideoRecorderSink(path, fps=10).close()                # the lock went with the first run
