"""Issue 16: the bedside answer under faults. Real CLI subprocesses, real OpenCV video files, real
onnxruntime sessions (a model that outputs NaN is built with onnx.helper), real pydicom test files.

    blank screens      no_image state (no label, no probabilities) everywhere; no stale frozen repeats
    non-finite output  an error result per frame, valid JSON, overlays and recordings continue
    SIGTERM            like Ctrl-C: recording finalised, summary printed and written
    overwriting inputs refused with one line
    streams            every frame failing exits 1; a truncated AVI "ended early"; a model that fails at
                       run time gives one line per file; Ctrl-C in file mode "interrupted after N of M"
    threads            a shared Classifier gives each thread its own image's answer
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from usedge.runtime.classifier import Classifier
from usedge.runtime.crop import prepare
from usedge.runtime.pipeline import FramePipeline
from usedge.runtime.preprocess import PreprocessSpec
from usedge.runtime.quality import no_image_reason
from tests.fixtures.runtime import opencv_frames

SCAN, BLACK = 30, 60                        # 30 scan frames, 60 black, the same 30 scan frames again
PYDICOM_US = ["examples_jpeg2k.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm", "examples_palette.dcm"]


def usedge(*args, timeout=240, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "usedge", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def strict_json(line: str) -> dict:
    """json.loads that refuses NaN / Infinity, as strict parsers do."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(line, parse_constant=refuse)


def scan_frames(tmp: Path) -> list[np.ndarray]:
    """30 frames of the synthetic scanner video generator (no freezes), as decoded from its file."""
    from usedge.synth.video import write_scanner_video

    src = tmp / "scan_src.avi"
    write_scanner_video(src, frames=SCAN, fps=30.0, size=(640, 360), seed=5, freeze=False, progress=False)
    frames = opencv_frames(src)
    assert len(frames) == SCAN
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture(scope="module")
def blank_video(tmp_path_factory) -> Path:
    """scan (30) -> black (60) -> the same scan (30): a real MJPG .avi written with OpenCV."""
    tmp = tmp_path_factory.mktemp("blank_video")
    scan = scan_frames(tmp)
    black = np.zeros_like(scan[0])
    return write_video(tmp / "blank_gap.avi", scan + [black] * BLACK + scan)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, runtime_model) -> Path:
    """The exported fixture model with its 'probs' multiplied by NaN (metadata kept): loads, then outputs NaN."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(runtime_model))
    g = model.graph
    for node in g.node:
        node.output[:] = ["probs_raw" if o == "probs" else o for o in node.output]
    g.initializer.append(helper.make_tensor("nan_factor", TensorProto.FLOAT, [], [float("nan")]))
    g.node.append(helper.make_node("Mul", ["probs_raw", "nan_factor"], ["probs"]))
    return save_restamped(model, tmp_path_factory.mktemp("nan_model") / "model.onnx")


@pytest.fixture(scope="module")
def failing_model(tmp_path_factory, runtime_model) -> Path:
    """A foreign graph that passes the load checks (metadata, I/O shapes) and fails at run time:
    its 'probs' is reshaped to a fixed shape that the input's element count cannot fill."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(runtime_model))
    g = model.graph
    for node in g.node:
        node.output[:] = ["probs_raw" if o == "probs" else o for o in node.output]
    g.initializer.append(helper.make_tensor("bad_shape", TensorProto.INT64, [2], [7, -1]))
    g.node.append(helper.make_node("Reshape", ["probs_raw", "bad_shape"], ["probs"]))
    return save_restamped(model, tmp_path_factory.mktemp("failing_model") / "model.onnx")


def save_restamped(model, path: Path) -> Path:
    """Save an edited ONNX with its weights digest recomputed: a model that `usedge export` could have
    written (e.g. one whose FP16 arithmetic overflows), not one that fails the integrity check."""
    import onnx

    from usedge.runtime.model_info import METADATA_KEY, weights_digest

    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            meta["weights_sha256"] = weights_digest(model.SerializeToString())
            prop.value = json.dumps(meta)
    onnx.save(model, str(path))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [strict_json(line) for line in path.read_text().splitlines()]


def video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


# ------------------------------------------------------------------------------- 1. blank screens
def test_quality_gate_passes_real_screens_and_refuses_no_image(tmp_path, reliability_ledger):
    """No real screen is refused: usedge's synthetic scanner screens and pydicom's ultrasound files at
    64 and 224 px; a uniform gray, a dark "probe in air" screen and a text-only screen are."""
    from pydicom.data import get_testdata_file

    from usedge.runtime.formats import read_file
    from usedge.synth.frames import write_scanner_frames

    write_scanner_frames(tmp_path / "screens", count=6, seed=2)
    screens = [cv2.imread(str(p)) for p in sorted((tmp_path / "screens").rglob("frame_*.png"))
               if p.stem.count("_") == 1]         # the screens, not their _doppler/_fov truth masks
    assert len(screens) == 6
    real = [(f"synth{i}", s, None) for i, s in enumerate(screens)]
    for name in PYDICOM_US:
        d = read_file(get_testdata_file(name, download=False))
        real.append((name, d.frame, d.regions))
    for size in (64, 224):
        for name, frame, regions in real:
            crop, _ = prepare(frame, PreprocessSpec(size=size), regions=regions)
            assert no_image_reason(crop) is None, (name, size, no_image_reason(crop))
    h, w = 360, 640
    air = np.zeros((h, w, 3), np.uint8)
    air[40:330, 120:520] = 6                       # a dark field of view, reverberation lines near the skin
    air[44:48, 120:520] = 140
    air[60:62, 120:520] = 90
    text = np.zeros((h, w, 3), np.uint8)
    cv2.putText(text, "FROZEN  GAIN 50  DEPTH 4cm", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    noisy_gray = (90 + np.random.default_rng(0).integers(0, 12, (h, w))).astype(np.uint8)   # a lit, empty screen
    form = np.full((h, w, 3), 40, np.uint8)        # a patient form / lit menu: boxes and text on one grey
    for k in range(4):
        cv2.rectangle(form, (220, 30 + k * 80), (600, 70 + k * 80), (200, 200, 200), -1)
        cv2.putText(form, "Field", (20, 60 + k * 80), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    refused = {"gray": noisy_gray, "air": air,
               "text": text, "form": form}
    for name, frame in refused.items():
        crop, _ = prepare(frame, PreprocessSpec(size=64))
        assert no_image_reason(crop), name
    reliability_ledger.add("faults_quality_gate", inputs_tried=2 * len(real) + len(refused), outputs_checked=2 * len(real) + len(refused))


def test_blank_screen_stream_cli(runtime_model, blank_video, tmp_path, reliability_ledger):
    """`usedge infer --stream`: every black frame no_image (no label, no probs) in JSONL, CSV, the
    recording and the summary; the same scan after the gap gets the same live answers; no frozen repeat."""
    jsonl, csv_out, rec, summary = (tmp_path / n for n in ("r.jsonl", "r.csv", "rec.avi", "s.json"))
    p = usedge("infer", runtime_model, "--stream", blank_video, "--jsonl", jsonl, "--out", csv_out,
               "--format", "csv", "--record", rec, "--summary", summary)
    assert p.returncode == 0, p.stderr
    rows = read_jsonl(jsonl)
    assert [r["frame"] for r in rows] == list(range(2 * SCAN + BLACK))
    for r in rows[SCAN:SCAN + BLACK]:
        assert r["state"] == "no_image" and r["label"] is None and r["probs"] is None and r["class_index"] is None
        assert not r["frozen"] and "blank" in r["reason"]
    before, after = rows[:SCAN], rows[SCAN + BLACK:]
    assert all(r["state"] in ("live", "frozen") and r["label"] for r in before + after)
    assert after[0]["state"] == "live"             # the first frame after the gap is classified, not repeated
    assert [r["label"] for r in after] == [r["label"] for r in before]
    import csv

    with open(csv_out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows)
    for row in table[SCAN:SCAN + BLACK]:
        assert row["state"] == "no_image" and row["label"] == ""
        assert all(v == "" for k, v in row.items() if k.startswith("p_"))
    s = json.loads(summary.read_text())
    assert s["no_image"] == BLACK and s["processed"] + s["frozen_skipped"] == 2 * SCAN and s["errors"] == 0
    # every result, no_image included, names the engine the stream ran (the summary's backend)
    engines = {r["engine"] for r in rows} | {row["engine"] for row in table}
    assert len(engines) == 1 and s["backend"].startswith(engines.pop())
    assert f"{BLACK} no image" in p.stderr
    assert video_frames(rec) == 2 * SCAN + BLACK
    reliability_ledger.add("faults_blank_screen_cli", inputs_tried=len(rows), processes_run=1,
                           outputs_checked=len(rows) + len(table) + 2)


def test_blank_screen_serve(runtime_model, blank_video, reliability_ledger):
    """The same video through `usedge serve --stream` (the server's runner, real uvicorn): every black
    result is no_image in /v1/latest with no label, and the live label after the gap is the one the
    stream gives those frames."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from tests.fixtures.serve import run_uvicorn
    from usedge.serve.app import create_app
    from usedge.serve.live import start_stream

    clf = Classifier.load(runtime_model, threads=1)
    expected = {}
    ref = FramePipeline(clf, stream=True, freeze=True)
    cap = cv2.VideoCapture(str(blank_video))
    for i in range(SCAN):
        expected[i] = ref.process(cap.read()[1]).label
    cap.release()
    seen: list[dict] = []
    runner = start_stream(clf, str(blank_video), replay=False, smooth_window=1)
    try:
        with run_uvicorn(create_app(clf, runner)) as base:
            end = time.monotonic() + 120
            while runner.running and time.monotonic() < end:
                runner.wait_result(timeout=1.0)
                d = httpx.get(f"{base}/v1/latest", timeout=5).json()
                if d["prediction"] is not None:
                    seen.append(d)
            stats = runner.stats()
    finally:
        runner.stop()
        clf.close()
    black = [d for d in seen if SCAN <= d["prediction"]["frame"] < SCAN + BLACK]
    after = [d for d in seen if d["prediction"]["frame"] >= SCAN + BLACK]
    assert black and after, [d["prediction"]["frame"] for d in seen]
    for d in black:
        assert d["image"] == "no_image" and d["prediction"]["label"] is None and d["prediction"]["probs"] is None
    for d in after:
        assert d["image"] in ("live", "frozen")
        assert d["prediction"]["label"] == expected[d["prediction"]["frame"] - SCAN - BLACK]
    assert stats["no_image"] > 0 and stats["errors"] == 0
    reliability_ledger.add("faults_blank_screen_serve", inputs_tried=2 * SCAN + BLACK, outputs_checked=len(seen))


def test_frozen_repeats_only_a_classified_frame(runtime_model, blank_video, reliability_ledger):
    """A frame that is a repeat of a blank frame is never a frozen repeat of the last diagnosis, and
    smoothing starts again after the gap."""
    clf = Classifier.load(runtime_model, threads=1)
    pipe = FramePipeline(clf, stream=True, freeze=True, smooth=5)
    frames = opencv_frames(blank_video)
    states = [pipe.process(f) for f in frames]
    clf.close()
    assert all(p.state == "no_image" and not p.frozen for p in states[SCAN:SCAN + BLACK])
    first_after = states[SCAN + BLACK]
    with Classifier.load(runtime_model, threads=1) as clf:
        fresh = FramePipeline(clf, stream=True, freeze=True, smooth=5)
        assert first_after.probs == fresh.process(frames[SCAN + BLACK]).probs   # the average: post-gap frames only
    reliability_ledger.add("faults_freeze_reference", inputs_tried=len(states), outputs_checked=len(states))


# ------------------------------------------------------------------------------- 2. non-finite output
def test_nan_model_files_give_error_results(nan_model, runtime_images, tmp_path, reliability_ledger):
    out, overlays = tmp_path / "r.jsonl", tmp_path / "overlays"
    p = usedge("infer", nan_model, runtime_images, "--out", out, "--overlay", overlays)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    rows = read_jsonl(out)                          # strict: no NaN constants
    n = len(list(runtime_images.glob("*.png")))
    assert len(rows) == n
    for r in rows:
        assert r["state"] == "error" and r["label"] is None and r["probs"] is None
        assert "not finite" in r["reason"]
    assert len(list(overlays.glob("*.png"))) == n   # overlays continue (drawn without a label)
    assert sum("not finite" in line for line in p.stderr.splitlines()) == n
    reliability_ledger.add("faults_nan_output_files", inputs_tried=n, faults_injected=n, processes_run=1, outputs_checked=2 * n + 1)


def test_nan_model_stream_records_and_exits_nonzero(nan_model, runtime_video, tmp_path, reliability_ledger):
    """Every frame fails: the recording is complete, JSONL valid, exit 1 with one line."""
    jsonl, rec, summary = tmp_path / "r.jsonl", tmp_path / "rec.avi", tmp_path / "s.json"
    p = usedge("infer", nan_model, "--stream", runtime_video, "--jsonl", jsonl, "--record", rec,
               "--summary", summary, "--no-freeze-detect")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    rows = read_jsonl(jsonl)
    assert rows and all(r["state"] == "error" and r["label"] is None for r in rows)
    assert video_frames(rec) == len(rows)
    s = json.loads(summary.read_text())
    assert s["errors"] == len(rows) and s["processed"] == 0
    assert p.stderr.strip().splitlines()[-1].startswith("usedge: every frame failed")
    reliability_ledger.add("faults_nan_output_stream", inputs_tried=len(rows), faults_injected=len(rows), processes_run=1,
                           outputs_checked=len(rows) + 3)


def test_nan_model_serve_answers_json_error(nan_model, runtime_images, reliability_ledger):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from usedge.serve.app import create_app

    clf = Classifier.load(nan_model, threads=1)
    try:
        client = TestClient(create_app(clf))
        png = sorted(runtime_images.glob("*.png"))[0].read_bytes()
        for overlay in ("false", "true"):
            r = client.post(f"/v1/predict?overlay={overlay}", files={"file": ("a.png", png, "image/png")})
            assert r.status_code == 500
            body = strict_json(r.text)
            assert "not finite" in body["error"] and body["status"] == 500
    finally:
        clf.close()
    reliability_ledger.add("faults_nan_output_serve", inputs_tried=2, faults_injected=2, outputs_checked=2)


# ------------------------------------------------------------------------------- 4. SIGTERM
def test_sigterm_during_record_finalises(runtime_model, blank_video, tmp_path, reliability_ledger):
    jsonl, rec, summary = tmp_path / "r.jsonl", tmp_path / "rec.mp4", tmp_path / "s.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "usedge", "infer", str(runtime_model), "--stream", str(blank_video),
                             "--realtime", "--jsonl", str(jsonl), "--record", str(rec), "--summary", str(summary)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    end = time.monotonic() + 120
    while time.monotonic() < end and proc.poll() is None:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 5:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    s = json.loads(summary.read_text())
    assert s["ended_by"] == "interrupted" and "(interrupted)" in err
    n = video_frames(rec)
    assert n >= 5 and n == len(jsonl.read_text().splitlines())
    assert not list(tmp_path.glob(".*partial*"))
    reliability_ledger.add("faults_sigterm_record", processes_run=1, faults_injected=1, outputs_checked=3)


# ------------------------------------------------------------------------------- 5. overwriting inputs
def test_outputs_never_overwrite_inputs(runtime_model, runtime_images, tmp_path, reliability_ledger):
    import shutil

    scans = tmp_path / "scans"
    shutil.copytree(runtime_images, scans)
    first = sorted(scans.glob("*.png"))[0]
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in scans.iterdir()}
    runs = [usedge("infer", runtime_model, scans, "--overlay", scans),
            usedge("infer", runtime_model, first, "--out", first),
            usedge("crop", scans, "--out", scans),
            usedge("crop", scans, "--out", tmp_path / "crops", "--overlay", scans)]
    for p in runs:
        lines = p.stderr.strip().splitlines()     # (infer names its model on the line before)
        assert p.returncode == 1 and "would overwrite the input" in lines[-1], p.stderr
        assert sum("overwrite" in line for line in lines) == 1 and "Traceback" not in p.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in scans.iterdir()} == digest
    reliability_ledger.add("faults_overwrite_inputs", processes_run=len(runs), inputs_tried=len(digest),
                           errors_checked=len(runs), outputs_checked=len(digest))


# ------------------------------------------------------------------------------- 9. streams and batches
def test_truncated_avi_ended_early(blank_video, runtime_model, tmp_path, reliability_ledger):
    from usedge.runtime.sources import open_source
    from usedge.runtime.stream import StreamRunner

    data = blank_video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    clf = Classifier.load(runtime_model, threads=1)
    try:
        runner = StreamRunner(FramePipeline(clf, stream=True, freeze=True), open_source(str(cut)))
        summary = runner.run()
    finally:
        clf.close()
    assert summary.ended_by == "ended early", summary
    assert "ended early" in summary.error and f"of the {2 * SCAN + BLACK} frames" in summary.error
    with Classifier.load(runtime_model, threads=1) as clf:
        whole = StreamRunner(FramePipeline(clf, stream=True), open_source(str(blank_video))).run()
    assert whole.ended_by == "end of source"
    reliability_ledger.add("faults_truncated_avi", inputs_tried=2, faults_injected=1, outputs_checked=2)


def test_runtime_failure_one_line_per_file(failing_model, runtime_images, reliability_ledger):
    p = usedge("infer", failing_model, runtime_images)
    n = len(list(runtime_images.glob("*.png")))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.splitlines() if "failed to run" in line]
    assert len(lines) == n and all(".png" in line for line in lines)
    assert len(p.stdout.strip().splitlines()) == n          # one error record per file
    reliability_ledger.add("faults_runtime_failure", inputs_tried=n, faults_injected=n, processes_run=1, errors_checked=n)


def test_ctrl_c_in_file_mode(runtime_model, tmp_path, blank_video, reliability_ledger):
    """SIGINT during a batch of files: "interrupted after N of M", exit 130, the lines before intact in
    <name>.partial; an earlier complete results file is not replaced by the part (outside audit: a routine
    Ctrl-C used to put 43 lines in place of yesterday's 250)."""
    import shutil

    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(6):
        shutil.copy(blank_video, folder / f"v{i}.avi")
    out = tmp_path / "r.jsonl"
    out.write_text('{"yesterday": 1}\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "usedge", "infer", str(runtime_model), str(folder), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    end = time.monotonic() + 120
    partial = tmp_path / "r.jsonl.partial"     # a batch writes here and renames at the end
    while time.monotonic() < end and proc.poll() is None:
        if partial.exists() and len(partial.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert any("interrupted after" in line and "of 6 files" in line for line in err.splitlines()), err
    assert f"the results so far are in {partial}; {out} is the earlier run's, unchanged" in err, err
    assert out.read_text() == '{"yesterday": 1}\n' and len(read_jsonl(partial)) >= 3
    reliability_ledger.add("faults_ctrl_c_files", processes_run=1, faults_injected=1, outputs_checked=2)


# ------------------------------------------------------------------------------- 10. threads
def test_shared_classifier_many_threads(runtime_model, runtime_images, reliability_ledger):
    """16 threads x 20 predictions on one Classifier: each result equals the single-threaded result for
    its own image (the old shared input buffer mixed images between threads)."""
    from usedge.runtime.formats import read_image

    images = [read_image(p) for p in sorted(runtime_images.glob("*.png"))]
    clf = Classifier.load(runtime_model, threads=1)
    try:
        want = [clf.predict(im).probs for im in images]
        wrong: list = []

        def work(t: int) -> None:
            for j in range(20):
                k = (t + j) % len(images)
                if clf.predict(images[k]).probs != want[k]:
                    wrong.append((t, j))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not wrong

        # a backend not declared thread_safe: the model stage runs one call at a time
        clf.backend.thread_safe = False
        inner, active, peak = clf.backend.infer, [0], [0]
        lock = threading.Lock()

        def counting_infer(batch):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            try:
                time.sleep(0.002)
                return inner(batch)
            finally:
                with lock:
                    active[0] -= 1

        clf.backend.infer = counting_infer
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not wrong and peak[0] == 1
    finally:
        clf.close()
    reliability_ledger.add("faults_threads", inputs_tried=16 * 20 + 8 * 20, outputs_checked=16 * 20 + 8 * 20)
