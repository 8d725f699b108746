"""The one frame pipeline: files through run_frame/run_files, smoothing without mutation, the quality seam."""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest

from usedge.runtime.pipeline import FramePipeline, run_files
from usedge.runtime.interrupts import _on_signal, interrupt_between_frames, whole_frame
from usedge.runtime.sinks import JsonlSink, OverlayFolderSink, Sink
from usedge.runtime.formats import read_image


def test_files_go_through_run_frame_into_every_sink(clf, runtime_images, tmp_path):
    files = sorted(runtime_images.glob("*.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    errors = []
    with JsonlSink(tmp_path / "out.jsonl") as sink:
        pipeline = FramePipeline(clf, [sink, OverlayFolderSink(tmp_path / "ov")])
        run = run_files(pipeline, [*files, bad], on_error=errors.append)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert run.frames == len(files) and len(run.failed) == 1 == len(errors)
    assert [r["source"] for r in records] == [str(p) for p in files] + [str(bad)] and "error" in records[-1]
    assert {"label", "class_index", "probs", "latency_ms"} <= set(records[0])
    assert sorted(p.name for p in (tmp_path / "ov").glob("*.png")) == sorted(p.name for p in files)


def test_smoothing_returns_a_new_prediction(clf, runtime_images):
    frames = [read_image(p) for p in sorted(runtime_images.glob("*.png"))]
    plain = [FramePipeline(clf).process(f) for f in frames]
    smooth = FramePipeline(clf, smooth=len(frames))
    got = [smooth.process(f) for f in frames]
    assert not got[0].smoothed and all(p.smoothed for p in got[1:]) and not any(p.smoothed for p in plain)
    # the first result (nothing yet to average with) is the frame's own answer, not marked smoothed
    mean = np.mean([[p.probs[n] for n in clf.class_names] for p in plain], axis=0)
    np.testing.assert_allclose([got[-1].probs[n] for n in clf.class_names], mean, atol=1e-5)
    assert got[-1].label == clf.class_names[int(np.argmax(mean))]


def test_quality_gate_seam_refuses_a_frame_and_resets(clf, runtime_images):
    frame = read_image(sorted(runtime_images.glob("*.png"))[0])
    pipeline = FramePipeline(clf, freeze=True, smooth=3, quality=lambda crop: "dim" if crop.mean() < 128 else None)
    dim = pipeline.process(frame // 2 + 1)      # the gate sees the crop
    assert dim.state == "no_image" and dim.label is None and not dim.probs and "no usable image: dim" in dim.reason
    pipeline.process(frame | 128)
    blank = pipeline.process(np.zeros_like(frame))
    assert blank.state == "no_image" and blank.label is None and "frame is blank" in blank.reason
    assert pipeline.last is None
    assert not pipeline.process(frame | 128).frozen     # no stale repeat across the gap


def _signal_main_thread(sig: int) -> None:
    """`sig` to the main thread only (as a terminal's Ctrl-C reaches Python), handled before this returns.
    Not os.kill: a process-wide signal can land on any library thread (torch, onnxruntime, OpenCV)."""
    signal.pthread_kill(threading.main_thread().ident, sig)
    time.sleep(0.01)        # Python runs its handler between bytecodes: at the latest here


class _Recorder(Sink):
    """Keeps the frames it got; `kill` sends that signal to this process from inside its write."""

    def __init__(self, kill: int | None = None) -> None:
        self.got, self.kill = [], kill

    def write(self, pred, frame=None, overlay=None) -> None:
        if self.kill is not None:
            _signal_main_thread(self.kill)       # mid-frame
        self.got.append(pred.frame_index)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_mid_frame_ends_the_run_after_every_sink_wrote_it(clf, runtime_images, sig):
    # Ctrl-C / docker stop between two sinks used to leave a frame in the JSONL but not in the recording
    files = sorted(runtime_images.glob("*.png"))
    first, second = _Recorder(), _Recorder()
    pipeline = FramePipeline(clf, [first, _Recorder(kill=sig), second])
    with interrupt_between_frames(signal.SIGINT, signal.SIGTERM):
        run = run_files(pipeline, files)
    assert run.interrupted and run.done == 0
    assert first.got == second.got == [0]          # the frame reached the sink after the signal too
    assert signal.getsignal(sig) is not _on_signal  # the old handlers are back


def test_outside_a_frame_an_interrupt_is_raised_at_once():
    with pytest.raises(KeyboardInterrupt), interrupt_between_frames():
        _signal_main_thread(signal.SIGINT)
    with whole_frame():                             # no handler installed: a plain block
        pass


def test_the_result_rate_restarts_after_a_stall():
    """After a source's outage the rate counts only the results since it came back (it averaged over the
    last 60 results, outage included, and read 4 fps for a 10 fps source for a while)."""
    import collections

    from usedge.runtime.pipeline import FramePipeline

    pipeline = FramePipeline.__new__(FramePipeline)       # the rate alone: no model needed
    pipeline._result_times = collections.deque(maxlen=60)
    for k in range(30):                       # 10 fps, then 5 s of nothing, then 10 fps again
        pipeline._result_times.append(k * 0.1)
    for k in range(11):
        pipeline._result_times.append(8.0 + k * 0.1)
    assert pipeline.fps(now=9.0) == pytest.approx(10.0, rel=0.01)
    assert pipeline.fps(now=12.0) < 3.0        # stalled again: it falls toward 0


def test_a_blank_frame_has_no_views_and_no_boxes(clf):
    """A blank frame is refused before any image region is looked for: it said `views` 1 (outside audit)."""
    pred = FramePipeline(clf).process(np.zeros((120, 160), np.uint8))
    assert pred.state == "no_image" and pred.views == 0 and pred.crop_box == (0, 0, 0, 0)
    assert pred.to_record()["views"] == 0 and pred.crop_method == "none"
