"""Streams under fault: sources that stop, change frame size/type, stall, run faster or slower than
the model; sinks that cannot write (a real full tmpfs when mount works, else skipped, plus a failing
file object always). No deadlock, no queue, a clear one-line message, the JSONL up to the fault intact."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.badinput import scan_like
from usedge.errors import OutputError
from usedge.runtime.sinks import CallbackSink, JsonlSink
from usedge.runtime.sources import FrameReader

USEDGE = [sys.executable, "-m", "usedge"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def frames_cycle(n: int, h: int = 120, w: int = 160) -> list[np.ndarray]:
    """n frames, each different (fresh speckle): nothing looks frozen."""
    return [scan_like(h, w, seed=i) for i in range(n)]


class ScriptedReader(FrameReader):
    """A source driven by a list of actions: an array (deliver it), "raise" (driver failure), a float
    (stall that many seconds, interruptible by `release`), None (end)."""

    def __init__(self, script: list, *, live: bool = False, fps: float | None = None, name: str = "scripted") -> None:
        self.script, self.live, self.fps, self.name = list(script), live, fps, name
        self.i = 0
        self.release = threading.Event()
        self.opens = 0

    def open(self) -> None:
        self.opens += 1

    def read(self):
        while self.i < len(self.script):
            step = self.script[self.i]
            self.i += 1
            if isinstance(step, str) and step == "raise":
                raise RuntimeError("capture card lost its signal")
            if isinstance(step, float):
                self.release.wait(step)
                continue
            return step
        return None


def _jsonl_lines(path: Path) -> tuple[list[dict], str]:
    """Complete lines parsed (every one must parse) and the trailing partial line, if any."""
    text = path.read_bytes().decode("utf-8")
    *complete, tail = text.split("\n")
    return [json.loads(line) for line in complete], tail


def _run(clf, reader, sinks=(), **kw):
    runner = _runner(clf, reader, sinks, **kw)
    return runner, runner.run()


def _runner(clf, reader, sinks=(), *, freeze=True, **kw):
    from usedge.runtime.pipeline import FramePipeline
    from usedge.runtime.stream import StreamRunner

    return StreamRunner(FramePipeline(clf, sinks, stream=True, regions=reader.regions, freeze=freeze), reader, **kw)


def test_source_that_stops_mid_stream(clf, tmp_path, reliability_ledger):
    """A file-like source whose driver raises after 8 frames: 'source failed', the 8 lines intact."""
    out = tmp_path / "live.jsonl"
    reader = ScriptedReader([*frames_cycle(8), "raise", *frames_cycle(4)])
    with JsonlSink(out) as sink:
        _, summary = _run(clf, reader, [sink], freeze=False)
    assert summary.ended_by == "source failed" and "read failed" in summary.error
    lines, tail = _jsonl_lines(out)
    assert [r["frame"] for r in lines] == list(range(8)) and tail == ""
    reliability_ledger.add("stream.stops", faults_injected=1, outputs_checked=len(lines) + 1)


def test_live_source_reconnects_then_gives_up(clf, reliability_ledger):
    """A live source that fails is reopened (bounded by max_reconnects) and the run ends with a message."""
    reader = ScriptedReader([*frames_cycle(3), "raise", *frames_cycle(2), "raise"], live=True)
    _, summary = _run(clf, reader, freeze=False, max_reconnects=1)
    # a live source is never held back: frames the loop has not taken yet are dropped, not queued
    assert summary.frames_read == 5 and summary.processed + summary.dropped == 5 and summary.reconnects >= 1
    assert summary.ended_by == "source failed" and "gave up" in summary.error
    reliability_ledger.add("stream.reconnect", faults_injected=2, outputs_checked=2)


def test_frames_of_changing_size_and_type(clf, tmp_path, reliability_ledger):
    """Every frame gives a result or a counted error; the loop never dies."""
    base = scan_like(240, 320)
    nan = base.astype(np.float32)
    nan[3, 3] = np.nan
    frames = [
        base, np.dstack([base] * 3), cv_resize(base, (640, 480)), base.astype(np.uint16) * 257,
        base.astype(np.float32) / 255, np.dstack([base] * 3 + [np.full_like(base, 255)]), base[::2, ::3],
        np.full((1, 1), 9, np.uint8), nan, np.zeros((240, 320), np.uint8), base[:, :, None],
        np.dstack([base, base]), np.zeros((0, 5), np.uint8), base.astype(np.int32) * 100, base.astype(bool),
        np.dstack([base] * 3)[:, ::-1], scan_like(100, 900), scan_like(900, 100), base,
    ]
    out = tmp_path / "mixed.jsonl"
    with JsonlSink(out) as sink:
        runner, summary = _run(clf, ScriptedReader(frames), [sink], freeze=True)
    lines, _ = _jsonl_lines(out)
    assert summary.ended_by == "end of source", summary
    assert summary.processed + summary.frozen_skipped + summary.no_image + summary.errors == len(frames), summary
    assert summary.errors >= 3 and summary.no_image >= 1 and summary.processed >= 12, summary  # 1x1, NaN, empty; blank
    # no_image frames are written, and so is each frame that failed (an error line naming the frame)
    assert len(lines) == summary.processed + summary.frozen_skipped + summary.no_image + summary.errors
    assert sum("error" in line for line in lines) == summary.errors
    assert "\n" not in runner.last_error
    reliability_ledger.add("stream.mixed_frames", inputs_tried=len(frames), faults_injected=len(frames) - 1,
                           outputs_checked=len(lines))


def cv_resize(image, size):
    import cv2

    return cv2.resize(image, size)


def test_stalled_source_resumes_and_stop_does_not_hang(clf, reliability_ledger):
    """A live source stalls 1 s mid-stream: results resume after it. A second one stalls 'forever':
    stop() from another thread ends the run without waiting for the source."""
    reader = ScriptedReader([*frames_cycle(3), 1.0, *frames_cycle(3, 121, 160)])
    _, summary = _run(clf, reader, freeze=False)
    assert summary.processed == 6, summary

    stuck = ScriptedReader([*frames_cycle(2), 120.0, *frames_cycle(2)], live=True)
    runner = _runner(clf, stuck, [], freeze=False)
    thread = runner.start()
    assert runner.wait_result(timeout=30) is not None
    time.sleep(0.3)
    runner.stop(join=True, timeout=15)
    alive = thread.is_alive()
    stuck.release.set()           # let the stalled capture thread go (it is a daemon anyway)
    assert not alive, "the loop did not end while its source was stalled"
    assert runner.summary is not None and runner.summary.processed + runner.summary.dropped == 2
    reliability_ledger.add("stream.stall", faults_injected=2, outputs_checked=2)


def test_source_faster_than_the_model_drops_never_queues(clf, reliability_ledger):
    """A live source delivering as fast as it can into a slow consumer: frames are dropped in the
    one-frame slot (counted), never queued: processed + dropped + still-in-slot == read."""
    frames = frames_cycle(8)
    reader = ScriptedReader([frames[i % 8] for i in range(300)], live=True)
    slow = CallbackSink(lambda *a: time.sleep(0.01))
    runner, summary = _run(clf, reader, [slow], freeze=False, max_reconnects=0)
    assert summary.dropped > 0, summary
    assert summary.processed + summary.dropped + summary.errors in (summary.frames_read, summary.frames_read - 1)
    reliability_ledger.add("stream.fast_source", inputs_tried=300, faults_injected=1, outputs_checked=1)


def test_realtime_paced_source_slower_than_the_model(clf, reliability_ledger):
    """A file paced at 50 fps: every frame processed or dropped, counted; the run ends at its end."""
    reader = ScriptedReader(frames_cycle(15), fps=50.0)
    _, summary = _run(clf, reader, realtime=True, freeze=False)
    assert summary.ended_by == "end of source"
    assert summary.processed + summary.dropped + summary.late_skipped == 15, summary
    reliability_ledger.add("stream.slow_source", inputs_tried=15, outputs_checked=1)


class FullDiskFile(io.TextIOWrapper):
    """A real file that raises ENOSPC once `budget` bytes have gone to disk (a partial write first)."""

    def __init__(self, path: Path, budget: int) -> None:
        super().__init__(open(path, "wb"), encoding="utf-8", newline="")
        self.budget = budget

    def write(self, s: str) -> int:
        data = s.encode()
        if len(data) > self.budget:
            super().write(data[: self.budget].decode("utf-8", "ignore"))
            super().flush()
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(data)
        return super().write(s)


def test_sink_on_a_full_disk_failing_file_object(clf, tmp_path, reliability_ledger):
    """JsonlSink whose file fills up after ~5 lines: a one-line OutputError naming the file, the capture
    thread stopped, the complete lines intact."""
    out = tmp_path / "full.jsonl"
    sink = JsonlSink(out)
    sink.fh.close()
    sink.fh = FullDiskFile(out, budget=2500)
    runner = _runner(clf, ScriptedReader(frames_cycle(40)), [sink], freeze=False)
    with pytest.raises(OutputError) as info:
        runner.run()
    sink.close()
    line = info.value.one_line()
    assert str(out) in line and "No space left" in line and "\n" not in line
    assert not runner.capture.is_alive()
    assert runner.summary.ended_by == "output failed" and "No space left" in runner.summary.error
    lines, tail = _jsonl_lines(out)
    assert 1 <= len(lines) < 40 and [r["frame"] for r in lines] == list(range(len(lines)))
    reliability_ledger.add("stream.sink_full_fileobj", faults_injected=1, outputs_checked=len(lines) + 1)


def test_a_failing_output_is_dropped_and_the_stream_goes_on(clf, tmp_path, reliability_ledger):
    """Two outputs, one on a disk that fills after ~5 lines: that one stops with its one line (kept in the
    summary), the other gets every frame, and the stream runs to its end."""
    full, good = tmp_path / "full.jsonl", tmp_path / "good.jsonl"
    bad = JsonlSink(full)
    bad.fh.close()
    bad.fh = FullDiskFile(full, budget=2500)
    events = []
    with JsonlSink(good) as ok:
        from usedge.runtime.pipeline import FramePipeline
        from usedge.runtime.stream import StreamRunner

        reader = ScriptedReader(frames_cycle(40))
        pipeline = FramePipeline(clf, [bad, ok], stream=True, on_event=events.append)
        summary = StreamRunner(pipeline, reader).run()
    assert summary.ended_by == "end of source" and summary.processed == 40, summary
    assert len(summary.failed_outputs) == 1 and str(full) in summary.failed_outputs[0]
    assert "No space left" in summary.failed_outputs[0]
    assert any(line.startswith("  output stopped: ") for line in summary.lines())
    assert [e for e in events if e.startswith("output stopped, classification goes on: ")] == [
        f"output stopped, classification goes on: {summary.failed_outputs[0]}"]
    assert [r["frame"] for r in _jsonl_lines(good)[0]] == list(range(40))
    kept, _ = _jsonl_lines(full)
    assert 1 <= len(kept) < 40 and [r["frame"] for r in kept] == list(range(len(kept)))
    assert bad not in pipeline.sinks
    reliability_ledger.add("stream.one_output_full", faults_injected=1, outputs_checked=40 + len(kept) + 1)


@contextlib.contextmanager
def _tmpfs(mnt: Path, size: str):
    """A real tmpfs of `size` at `mnt` (needs root and mount); the test is skipped where mount is not allowed."""
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({type(exc).__name__}); the failing-file-object test covers it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 8 KB tmpfs."""
    with _tmpfs(tmp_path / "small", "8k") as mnt:
        yield mnt


def test_cli_stream_on_a_full_tmpfs(runtime_model, runtime_video, small_tmpfs, reliability_ledger):
    """`usedge infer --stream video --jsonl /small/live.jsonl` on a real 8 KB tmpfs: exit 1, one
    line naming the file, complete lines intact, no traceback."""
    out = small_tmpfs / "live.jsonl"
    proc = subprocess.run([*USEDGE, "infer", str(runtime_model), "--stream", str(runtime_video), "--jsonl", str(out),
                           "--no-freeze-detect", "--backend", "ort-cpu", "--threads", "1"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("usedge: ") and str(out) in last and "No space left" in last, proc.stderr
    lines, _ = _jsonl_lines(out)
    assert len(lines) >= 5 and [r["frame"] for r in lines] == list(range(len(lines)))
    reliability_ledger.add("stream.sink_full_tmpfs", faults_injected=1, processes_run=1,
                           outputs_checked=len(lines) + 1)


def test_cli_record_on_a_full_tmpfs_still_writes_the_summary(runtime_model, runtime_video, small_tmpfs, tmp_path):
    """--record onto a full disk ends the stream; the summary is still printed and written (elsewhere),
    and the last line says where the frames recorded so far are."""
    out, summary = small_tmpfs / "rec.mp4", tmp_path / "summary.json"
    proc = subprocess.run([*USEDGE, "infer", str(runtime_model), "--stream", str(runtime_video), "--record", str(out),
                           "--summary", str(summary), "--backend", "ort-cpu", "--threads", "1"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert str(out) in last and "No space left" in last and ".rec.partial.mp4" in last, proc.stderr
    record = json.loads(summary.read_text())
    assert record["ended_by"] == "output failed" and record["processed"] >= 1 and "No space left" in record["error"]


def test_cli_recording_on_a_full_tmpfs_stops_alone(runtime_model, runtime_video, small_tmpfs, tmp_path):
    """--record onto a full disk beside --jsonl elsewhere: the recording stops with one line, the stream
    goes on to the end of the video with every frame in the JSONL, and the exit code says something failed."""
    out, jsonl, summary = small_tmpfs / "rec.mp4", tmp_path / "live.jsonl", tmp_path / "summary.json"
    proc = subprocess.run([*USEDGE, "infer", str(runtime_model), "--stream", str(runtime_video), "--record", str(out),
                           "--jsonl", str(jsonl), "--summary", str(summary), "--no-freeze-detect",
                           "--backend", "ort-cpu", "--threads", "1"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "output stopped, classification goes on: " in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("usedge: ") and str(out) in last and "No space left" in last, proc.stderr
    record = json.loads(summary.read_text())
    assert record["ended_by"] == "end of source" and len(record["failed_outputs"]) == 1, record
    lines, _ = _jsonl_lines(jsonl)
    assert len(lines) == record["processed"] + record["frozen_skipped"] + record["no_image"] == record["frames_read"]
    assert not out.exists()      # never renamed into place: the partial file named in the line holds the frames
    assert (small_tmpfs / ".rec.partial.mp4").stat().st_size > 0 and ".rec.partial.mp4" in last    # ... and stays


def test_cli_files_on_a_full_tmpfs(runtime_model, runtime_video, small_tmpfs, reliability_ledger, tmp_path):
    """Files mode with --out on the full tmpfs: exit 1 with one line, never a traceback; the earlier complete
    results file stays as it was (the part was renamed over it, a torn last line included: outside audit of
    2026-12-02) and the complete lines stay in <out>.partial."""
    out = small_tmpfs / "results.csv"
    out.write_text("earlier complete results\n")
    videos = [shutil.copy(runtime_video, tmp_path / f"scan{i}.mp4") for i in range(3)]   # one file named 3 times is read once
    proc = subprocess.run([*USEDGE, "infer", str(runtime_model), *map(str, videos), "--format", "csv",
                           "--out", str(out), "--backend", "ort-cpu", "--threads", "1"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert str(out) in last and "results.csv.partial" in last and "left as it was" in last, last
    assert out.read_text() == "earlier complete results\n"
    text = (small_tmpfs / "results.csv.partial").read_text()
    rows = list(csv.reader(io.StringIO(text)))
    assert text.endswith("\n") and rows[0][:4] == ["source", "frame", "time_s", "label"] and len(rows) >= 5
    assert {len(r) for r in rows} == {len(rows[0])}                  # no torn last line
    reliability_ledger.add("stream.files_full_tmpfs", faults_injected=1, processes_run=1, outputs_checked=1)


def test_cli_overlays_on_a_full_tmpfs_keep_the_earlier_results(runtime_model, runtime_images, small_tmpfs, tmp_path):
    """--overlay onto a full disk: a 55-line traceback, and the earlier results file replaced by the part
    (outside audit of 2026-12-02). Now one line naming the overlay and where the results so far are."""
    out = tmp_path / "r.jsonl"
    out.write_text('{"earlier": 1}\n')
    proc = subprocess.run([*USEDGE, "infer", str(runtime_model), str(runtime_images), "--out", str(out),
                           "--overlay", str(small_tmpfs / "ov"), "--backend", "ort-cpu", "--threads", "1"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "cannot write an overlay" in last and "r.jsonl.partial" in last, last
    assert out.read_text() == '{"earlier": 1}\n'


def test_a_second_run_into_the_same_results_file_is_refused_while_the_first_writes(tmp_path):
    """Two batches into one --out: the second took the first's live <out>.partial for a dead run's, moved it
    away, and the first reported success with the second's results in its file. The file is locked while
    written; a dead run's (no lock) is still kept as .unfinished."""
    from usedge.errors import OutputError
    from usedge.runtime.sinks import JsonlSink

    out = tmp_path / "r.jsonl"
    first = JsonlSink(out, atomic=True)
    first.write_record({"a": 1})
    with pytest.raises(OutputError, match="another usedge run is writing this results file"):
        JsonlSink(out, atomic=True)
    first.close()
    assert out.read_text() == '{"a":1}\n'
    dead = tmp_path / "r.jsonl.partial"
    dead.write_text('{"b":2}\n')                       # left by a killed run: nobody holds it
    JsonlSink(out, atomic=True).close()
    assert (tmp_path / "r.unfinished.jsonl").read_text() == '{"b":2}\n'
    # a stream writing the file directly (its --jsonl), and a batch or another stream after it: refused both
    # ways (the second truncated the first's lines, or renamed its results over them: regression round)
    stream = JsonlSink(out)
    stream.write_record({"s": 1})
    for atomic in (False, True):
        with pytest.raises(OutputError, match="another usedge run is writing this results file"):
            JsonlSink(out, atomic=atomic)
    stream.close()
    batch = JsonlSink(out, atomic=True)
    with pytest.raises(OutputError, match="another usedge run is writing this results file"):
        JsonlSink(out)
    batch.close()


def test_a_stream_keeps_an_earlier_runs_results_file_instead_of_emptying_it(runtime_model, runtime_video, tmp_path):
    """A stream writes its --jsonl/--out in place from its start: yesterday's session's file at that name was
    emptied the moment the next stream began (limit of the third audit). It is kept as <stem>.earlier[N]<suffix>."""
    from usedge.runtime.sinks import CsvSink, JsonlSink

    out = tmp_path / "r.jsonl"
    out.write_text('{"yesterday": 1}\n')
    with JsonlSink(out, earlier=True) as sink:
        sink.write_record({"today": 1})
    assert (tmp_path / "r.earlier.jsonl").read_text() == '{"yesterday": 1}\n' and out.read_text() == '{"today":1}\n'
    CsvSink(out, ["a", "b"], earlier=True).close()          # and again: the one kept before stays too
    assert (tmp_path / "r.earlier2.jsonl").read_text() == '{"today":1}\n'
    empty = tmp_path / "e.jsonl"
    empty.touch()
    JsonlSink(empty, earlier=True).close()                  # nothing to keep in an empty file
    assert not (tmp_path / "e.earlier.jsonl").exists()
    jsonl, csv_out = tmp_path / "live.jsonl", tmp_path / "live.csv"
    for path in (jsonl, csv_out):
        path.write_text("earlier session\n")
    proc = subprocess.run([*USEDGE, "infer", str(runtime_model), "--stream", str(runtime_video), "--jsonl", str(jsonl),
                           "--out", str(csv_out), "--format", "csv", "--max-frames", "3", "-q"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in (jsonl, csv_out):
        kept = path.with_name(f"live.earlier{path.suffix}")
        assert kept.read_text() == "earlier session\n"
        assert f"usedge: kept the earlier {path.name} as {kept.name}" in proc.stderr
    assert len(jsonl.read_text().splitlines()) == 3


def test_a_watched_folder_does_not_read_the_results_written_into_it(runtime_model, runtime_images, runtime_video, tmp_path):
    """`--stream watch:wd --jsonl wd/live.jsonl`: each error line changed live.jsonl, so it was read again as
    "not a supported image type", forever (432 lines in 11 minutes; --idle-timeout never fired: outside audit
    of 2026-12-02). The stream's own outputs are never read, and a file of another type is reported once."""
    wd = tmp_path / "wd"
    wd.mkdir()
    # a killed run's recording, which this run keeps as rec.unfinished.mp4 in the folder: not read either
    shutil.copy(runtime_video, wd / ".rec.partial.mp4")
    proc = subprocess.Popen([*USEDGE, "infer", str(runtime_model), "--stream", f"watch:{wd}", "--jsonl",
                             str(wd / "live.jsonl"), "--record", str(wd / "rec.mp4"), "--idle-timeout", "4",
                             "--backend", "ort-cpu", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(3)
    shutil.copy(sorted(runtime_images.glob("*.png"))[0], wd / "scan.png")
    (wd / "notes.txt").write_text("a scanner's log\n")
    time.sleep(2)
    with open(wd / "notes.txt", "a") as fh:          # the log grows: it is not read (nor reported) again
        fh.write("another line\n")
    _, err = proc.communicate(timeout=120)
    records = [json.loads(x) for x in (wd / "live.jsonl").read_text().splitlines()]
    sources = sorted(Path(r["source"]).name for r in records)
    assert sources == ["notes.txt", "scan.png"], (sources, err[-2000:])
    assert (wd / "rec.unfinished.mp4").stat().st_size > 0 and "kept it as rec.unfinished.mp4" in err
    assert "Traceback" not in err and "live.jsonl" not in " ".join(r.get("error", "") for r in records)


def test_crop_on_a_full_disk_is_one_line_and_its_list_matches_the_folder(runtime_images, tmp_path):
    """`usedge crop` onto a full disk: three chained tracebacks, new crops unlisted and the old list naming
    crops already deleted (outside audit of 2026-12-02). Now one line, and crops.jsonl lists exactly the PNGs
    in the folder."""
    with _tmpfs(tmp_path / "small", "64k") as mnt:
        many = tmp_path / "many"
        many.mkdir()
        for i, src in enumerate(sorted(runtime_images.glob("*.png")) * 20):
            shutil.copy(src, many / f"s{i:03d}.png")
        out = mnt / "c"
        first = subprocess.run([*USEDGE, "crop", *map(str, sorted(runtime_images.glob("*.png"))[:2]), "--out", str(out),
                                "--image-size", "96", "-q"], capture_output=True, text=True, env=ENV, timeout=120)
        assert first.returncode == 0, first.stderr
        proc = subprocess.run([*USEDGE, "crop", str(many), "--out", str(out), "--image-size", "96", "-q"],
                              capture_output=True, text=True, env=ENV, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert "No space left" in last and "crops.jsonl" in last, last
        listed = {json.loads(x)["output"] for x in (out / "crops.jsonl").read_text().splitlines()
                  if '"output"' in x}
        assert listed == {p.name for p in out.glob("*.png")} and listed


def test_crop_stopped_by_sigterm_lists_its_crops_and_a_killed_ones_are_removed_by_the_next_run(runtime_images, tmp_path):
    """SIGTERM (docker stop) ended `usedge crop` with no line and no crops.jsonl; after SIGKILL the next run
    into the folder kept the dead run's 66 crops beside its own, unlisted (outside audit). crops.jsonl is now
    appended per crop, and SIGTERM ends the run as Ctrl-C does."""
    import signal

    many = tmp_path / "many"
    many.mkdir()
    for i, src in enumerate(sorted(runtime_images.glob("*.png")) * 60):
        shutil.copy(src, many / f"s{i:03d}.png")
    out = tmp_path / "c"
    for sig, code in ((signal.SIGTERM, 130), (signal.SIGKILL, -9)):
        proc = subprocess.Popen([*USEDGE, "crop", str(many), "--out", str(out), "--image-size", "64", "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("*.png"))) < 5:
            time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code and "Traceback" not in err, err[-2000:]
        lines = [json.loads(x) for x in (out / "crops.jsonl").read_text().splitlines()]
        written = {p.name for p in out.glob("*.png")}
        assert written and written <= {x["output"] for x in lines if "output" in x}     # every crop is listed
        if sig == signal.SIGTERM:
            assert "interrupted" in err.strip().splitlines()[-1]
    rerun = subprocess.run([*USEDGE, "crop", *map(str, sorted(many.glob("*.png"))[:2]), "--out", str(out),
                            "--image-size", "64", "-q"], capture_output=True, text=True, env=ENV, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert {p.name for p in out.glob("*.png")} == {"s000.png", "s001.png"}          # the killed run's crops are gone


def test_a_batch_runs_when_stderr_cannot_be_written(runtime_model, runtime_images, tmp_path):
    """`usedge infer ... 2>/dev/full` (a full log disk) or with stderr closed: the run died on its first
    information line and classified nothing (outside audit of 2026-12-02). Its lines are lost, not the run."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    out = tmp_path / "r.jsonl"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([*USEDGE, "infer", str(runtime_model), str(runtime_images), "--out", str(out),
                               "--backend", "ort-cpu", "--threads", "1"], stdout=subprocess.PIPE, stderr=full,
                              env=ENV, timeout=120)
    assert proc.returncode == 0
    assert len(out.read_text().splitlines()) == len(list(runtime_images.glob("*.png")))


def test_a_summary_on_a_full_disk_is_one_line(runtime_model, runtime_video, small_tmpfs, tmp_path):
    """--summary onto a full disk gave two chained tracebacks (outside audit); the JSONL elsewhere is whole."""
    (small_tmpfs / "filler").write_bytes(b"x" * 7000)
    proc = subprocess.run([*USEDGE, "infer", str(runtime_model), "--stream", str(runtime_video), "--jsonl",
                           str(tmp_path / "s.jsonl"), "--summary", str(small_tmpfs / "sum.json"), "--backend", "ort-cpu",
                           "--threads", "1"], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "cannot write the summary" in last and "No space left" in last and "sum.json" in last, last
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) > 5


def test_a_named_pipe_is_read_as_a_live_source(tmp_path):
    """`ffmpeg ... -f mpegts PIPE` then `usedge infer --stream PIPE`: the FIFO was refused as an empty file (third
    audit's limit). It is a live source: frames as the writer sends them; its writer closing ends the read."""
    av = pytest.importorskip("av")
    from usedge.runtime.sources import PipeReader, open_source

    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 20 * i, np.uint8), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    pipe = tmp_path / "scanner.pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes(buf.getvalue()), daemon=True)
    writer.start()                        # blocks in open() until the reader opens the pipe
    reader = open_source(str(pipe))
    assert isinstance(reader, PipeReader) and reader.name == str(pipe)
    reader.open()
    levels = []
    while (frame := reader.read()) is not None:
        levels.append(int(np.median(frame)))
    writer.join(timeout=30)
    assert reader.live and len(levels) == 12
    assert all(b > a for a, b in zip(levels, levels[1:])), levels      # in order, each frame once


def test_results_into_a_named_pipe_a_consumer_reads_are_written_there(tmp_path):
    """`mkfifo live; cat live & usedge infer ... --jsonl live` hung for ever: the check for another run's lock
    opened the pipe for reading. And a batch's `-o /dev/null` renamed its `.partial` over /dev/null (as root: the
    device was gone). A pipe or a device is written directly: nothing to lock, keep or rename over."""
    from usedge.fileio import write_json_atomic

    fifo = tmp_path / "live"
    os.mkfifo(fifo)
    for atomic in (False, True):            # a stream, and a batch of files
        got = []
        reader = threading.Thread(target=lambda: got.extend(open(fifo).read().splitlines()), daemon=True)
        reader.start()
        with JsonlSink(fifo, atomic=atomic, earlier=True) as sink:
            sink.write_record({"frame": 0})
            sink.write_record({"frame": 1})
        reader.join(timeout=30)
        assert got == ['{"frame":0}', '{"frame":1}'] and fifo.is_fifo(), atomic
        assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()), daemon=True)
    reader.start()
    write_json_atomic(fifo, {"summary": 1})     # `--summary PIPE`: the same
    reader.join(timeout=30)
    assert '"summary": 1' in got[0] and fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["live"]
