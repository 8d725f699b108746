"""Issue 16 item 9: a video whose resolution changes mid-stream. A real MPEG transport stream is built
with PyAV from usedge's synthetic scanner frames: 6 frames at 640x480, then 6 at 800x600 (two
encoded segments, concatenated byte for byte, as a recorder that restarts its encoder after the
scanner switches presets writes it).

Evidence that this fails on the code before the change: OpenCV's FFmpeg backend (the old
VideoFileReader) hands over every frame at the first segment's 640x480, the 800x600 frames squeezed
into it (`test_opencv_alone_squeezes_the_new_size` records it), so the reader test and the stream
test below fail there; the one-row-shorter frame of the pipeline test was a `frozen` repeat of the
previous answer with the old crop box (its freeze sample had the same shape).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from usedge.runtime.classifier import Classifier
from usedge.runtime.crop import prepare
from usedge.runtime.pipeline import FramePipeline
from usedge.runtime.sources import VideoFileReader
from tests.fixtures.runtime import opencv_frames

SIZES = ((640, 480), (800, 600))     # (width, height) of the two segments
PER_SEGMENT = 6


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def two_size_ts(tmp_path_factory) -> tuple[Path, dict]:
    """both.ts (640x480 then 800x600, MPEG-2 in MPEG-TS, 10 fps) and the source frames of each size."""
    av = pytest.importorskip("av")
    from usedge.synth.video import write_scanner_video

    tmp = tmp_path_factory.mktemp("resolution")
    sources, parts = {}, []
    for i, (w, h) in enumerate(SIZES):
        src = tmp / f"src{i}.avi"
        write_scanner_video(src, frames=PER_SEGMENT, fps=10.0, size=(w, h), seed=3 + i, freeze=False, progress=False)
        frames = opencv_frames(src)
        assert len(frames) == PER_SEGMENT
        sources[(h, w)] = frames
        seg = tmp / f"seg{i}.ts"
        with av.open(str(seg), "w", format="mpegts") as out:
            stream = out.add_stream("mpeg2video", rate=10)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.codec_context.max_b_frames = 0
            stream.codec_context.bit_rate = 4_000_000
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        parts.append(seg.read_bytes())
    both = tmp / "both.ts"
    both.write_bytes(b"".join(parts))
    return both, sources


@pytest.fixture(scope="module")
def auto_crop_model(tmp_path_factory, runtime_model) -> Path:
    """The fixture model with crop `auto` in its metadata (the fixture's is `none`): layout detection runs."""
    import onnx

    from tests.test_reliability_faults import save_restamped
    from usedge.runtime.model_info import METADATA_KEY

    model = onnx.load(str(runtime_model))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            meta["preprocess"]["crop"] = "auto"
            prop.value = json.dumps(meta)
    return save_restamped(model, tmp_path_factory.mktemp("auto_crop") / "model.onnx")


def _read_all(reader: VideoFileReader) -> list[np.ndarray]:
    reader.open()
    try:
        frames = []
        while (f := reader.read()) is not None:
            frames.append(f)
        return frames
    finally:
        reader.close()


def test_reader_returns_each_frame_at_its_own_size(two_size_ts, reliability_ledger):
    """PyAV hands over the 640x480 frames, then the 800x600 frames, each matching its source frame
    (not a rescaled copy); skip() passes over frames without converting them."""
    path, sources = two_size_ts
    reader = VideoFileReader(path)
    frames = _read_all(reader)
    shapes = [f.shape[:2] for f in frames]
    first, second = (SIZES[0][1], SIZES[0][0]), (SIZES[1][1], SIZES[1][0])
    # one frame may be lost where the segments meet (the first encoder's last frame): FFmpeg's behaviour
    assert shapes == [first] * shapes.count(first) + [second] * shapes.count(second), shapes
    assert shapes.count(first) >= PER_SEGMENT - 1 and shapes.count(second) == PER_SEGMENT
    assert reader.backend == "pyav" and reader.fps == pytest.approx(10.0)
    for got, src in zip(frames[-PER_SEGMENT:], sources[second]):
        assert _psnr(got, src) > 30          # the frame as encoded (MPEG-2 at 4 Mbit/s), not a squeezed one
    for got, src in zip(frames[:shapes.count(first)], sources[first]):
        assert _psnr(got, src) > 30
    skipper = VideoFileReader(path)
    skipper.open()
    try:
        assert skipper.skip() and skipper.skip() and skipper.position == 2
        assert skipper.read().shape[:2] == first
    finally:
        skipper.close()
    reliability_ledger.add("resolution_reader", inputs_tried=1, outputs_checked=len(frames) + 1)


def test_opencv_alone_squeezes_the_new_size(two_size_ts, reliability_ledger):
    """What the old reader (OpenCV's FFmpeg backend) did with this file: every frame at 640x480."""
    path, _ = two_size_ts
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    shapes = []
    while (got := cap.read())[0]:
        shapes.append(got[1].shape[:2])
    cap.release()
    assert len(shapes) >= 2 * PER_SEGMENT - 1
    assert set(shapes) == {(SIZES[0][1], SIZES[0][0])}, set(shapes)
    reliability_ledger.add("resolution_opencv_squeezes", inputs_tried=1, outputs_checked=len(shapes))


def test_stream_cli_redetects_the_layout(two_size_ts, auto_crop_model, tmp_path, reliability_ledger):
    """`usedge infer --stream both.ts`: every frame labelled; after the change the crop and field of
    view are those a fresh detection finds on the 800x600 frame, inside it; one stderr line and the
    summary say that the resolution changed and the layout was re-detected."""
    path, _ = two_size_ts
    jsonl, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "usedge", "infer", str(auto_crop_model), "--stream", str(path),
                        "--jsonl", str(jsonl), "--summary", str(summary)], capture_output=True, text=True,
                       timeout=240, env=env)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    frames = _read_all(VideoFileReader(path))
    assert len(rows) == len(frames)
    assert all(r["state"] in ("live", "frozen") and r["label"] and r["probs"] for r in rows)
    change = next(i for i, f in enumerate(frames) if f.shape != frames[0].shape)
    with Classifier.load(auto_crop_model, threads=1) as clf:
        spec = clf.spec
    assert spec.crop == "auto"
    for r, f in zip(rows, frames):
        h, w = f.shape[:2]
        x, y, bw, bh = r["crop_box"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h, (r["frame"], r["crop_box"], f.shape)
    _, fresh = prepare(frames[change], spec)
    assert rows[change]["fov_box"] == list(fresh.fov_box) and rows[change]["crop_box"] == list(fresh.crop_box)
    assert all(r["crop_method"] == "detection" for r in rows), [r["crop_method"] for r in rows]
    assert rows[change]["fov_box"] != rows[change - 1]["fov_box"]
    fx, fy, fw, fh = rows[change]["fov_box"]
    assert fx + fw > SIZES[0][0] or fy + fh > SIZES[0][1]     # the field of view reaches past the old frame
    assert rows[change]["state"] == "live"            # a new screen is classified, never a frozen repeat
    (w0, h0), (w1, h1) = SIZES
    lines = [line for line in p.stderr.splitlines() if "resolution changed" in line]
    assert any(f"frame {change}: resolution changed {w0}x{h0} -> {w1}x{h1}; layout re-detected" in line
               and line.startswith("usedge: ") for line in lines), p.stderr
    s = json.loads(summary.read_text())
    assert s["resolution_changes"] == 1 and s["layout_detections"] >= 2 and s["errors"] == 0
    assert s["notes"] == [f"frame {change}: resolution changed {w0}x{h0} -> {w1}x{h1}; layout re-detected"]
    reliability_ledger.add("resolution_stream_cli", inputs_tried=len(frames), processes_run=1,
                           outputs_checked=len(rows) + len(lines) + 1)


def test_a_new_size_is_never_a_frozen_repeat(auto_crop_model, runtime_images, reliability_ledger):
    """A frame one row shorter than the one before (its freeze sample has the same shape: 480 and 479
    rows both sample to 240) is a new screen: classified afresh, its crop inside the new frame."""
    from usedge.runtime.formats import read_image

    frame = cv2.resize(read_image(sorted(runtime_images.glob("*.png"))[0]), (640, 480))
    with Classifier.load(auto_crop_model, threads=1) as clf:
        pipeline = FramePipeline(clf, stream=True, freeze=True)
        first = pipeline.process(frame, index=0)
        again = pipeline.process(frame.copy(), index=1)
        shorter = pipeline.process(np.ascontiguousarray(frame[:479]), index=2)
    assert first.state == "live" and again.state == "frozen"      # the freeze detector works on equal sizes
    assert shorter.state == "live" and not shorter.frozen
    x, y, w, h = shorter.crop_box
    assert y + h <= 479 and x + w <= 640
    assert pipeline.resolution_changes == 1
    assert pipeline.notes == ["frame 2: resolution changed 640x480 -> 640x479; layout re-detected"]
    assert pipeline.layout_detections == 2
    reliability_ledger.add("resolution_freeze", inputs_tried=3, outputs_checked=3)


def test_a_new_file_of_a_watched_folder_is_not_a_resolution_change(auto_crop_model, runtime_images):
    """In a watched folder every file is a new image, its layout detected afresh: a size that differs from
    the file before is no news (2000 exports of varying sizes gave 397 such lines, all "frame 0", which
    hid real messages; outside audit). A change within one file is still said."""
    from usedge.runtime.formats import read_image

    frame = cv2.resize(read_image(sorted(runtime_images.glob("*.png"))[0]), (640, 480))
    with Classifier.load(auto_crop_model, threads=1) as clf:
        pipeline = FramePipeline(clf, stream=True)
        pipeline.process(frame, index=0, source="watch/a.png")
        pipeline.process(np.ascontiguousarray(frame[:400]), index=0, source="watch/b.png")
        pipeline.process(np.ascontiguousarray(frame[:300]), index=1, source="watch/b.png")
    assert pipeline.notes == ["frame 1: resolution changed 640x400 -> 640x300; layout re-detected"]
    assert pipeline.resolution_changes == 1


def test_infer_says_when_it_classified_one_of_two_views_or_the_whole_frame(auto_crop_model, tmp_path):
    """A dual-view screen classified its largest view and a screen without an image region was classified
    whole, with nothing in the output saying so (outside audit): `views` in every record, and one note per file
    (a fallback crop is noted the same way, by pipeline.crop_note)."""
    from tests.fixtures.crop import bmode_image

    view = bmode_image(seed=3)
    h, w = view.shape[:2]
    dual = np.zeros((h + 80, 2 * w + 160, 3), np.uint8)
    dual[40:40 + h, 40:40 + w] = view if view.ndim == 3 else view[..., None]
    dual[40:40 + h, 120 + w:120 + 2 * w] = view if view.ndim == 3 else view[..., None]
    cv2.imwrite(str(tmp_path / "dual.png"), dual)
    out = tmp_path / "r.jsonl"
    res = subprocess.run([sys.executable, "-m", "usedge", "infer", str(auto_crop_model), str(tmp_path / "dual.png"),
                          "--out", str(out), "-q"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    record = json.loads(out.read_text().splitlines()[0])
    assert record["views"] == 2 and record["state"] == "live"
    assert "dual.png: 2 image regions (dual view): the largest was classified" in res.stderr
