"""The thread budget (usedge.runtime.threads): the rule, and that a stream runs with it (no timing)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from usedge.runtime.classifier import Classifier
from usedge.runtime.cpu import usable_cores
from usedge.runtime.pipeline import FramePipeline
from usedge.runtime.sources import VideoFileReader
from usedge.runtime.stream import StreamRunner
from usedge.runtime.threads import SPIN_US, ThreadBudget, thread_budget


@pytest.mark.parametrize("cores, capture, model", [(1, 1, 1), (2, 1, 2), (2, 0, 2), (3, 1, 2), (8, 1, 7), (8, 0, 8)])
def test_model_gets_every_core_it_can_use(cores, capture, model):
    b = thread_budget(cores, capture)
    assert (b.model_threads, b.opencv_threads, b.decode_threads) == (model, 1, 1)


def test_explicit_threads_and_bounded_spinning_by_default():
    assert thread_budget(2, 1, model_threads=1).model_threads == 1
    assert thread_budget(2, 1).spinning and thread_budget(8, 0).spinning    # bounded: on, spare core or not
    assert not thread_budget(2, 1, spinning=False).spinning               # --no-spinning
    assert thread_budget(8, 1, model_threads=6, spinning=True).spinning
    assert thread_budget(None).cores == usable_cores()
    assert f"spinning <= {SPIN_US / 1000:g} ms" in thread_budget(2, 1).line()


def test_stream_runs_under_its_budget(runtime_model, runtime_video):
    """The model stage's session has the budget's intra-op threads, OpenCV and the decoder theirs, and the
    summary reports the budget."""
    budget = thread_budget(capture_threads=1)
    seen = []
    with Classifier.load(runtime_model, backend="ort-cpu", threads=budget.model_threads) as clf:
        reader = VideoFileReader(runtime_video)
        runner = StreamRunner(FramePipeline(clf, stream=True), reader, budget=budget)
        runner.subscribe(lambda pred, frame, overlay: seen.append((cv2.getNumThreads(), reader.threads_in_use)))
        summary = runner.run()
        opts = clf.backend.session.get_session_options()
    assert opts.intra_op_num_threads == budget.model_threads
    assert opts.inter_op_num_threads == 1
    # spinning by default, bounded: the workers sleep SPIN_US after a run, not through the idle frame period
    assert budget.spinning and opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert opts.get_session_config_entry("session.intra_op.spin_duration_us") == str(SPIN_US)
    with Classifier.load(runtime_model, backend="ort-cpu", threads=1, spinning=False) as quiet:     # --no-spinning
        assert quiet.backend.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning") == "0"
    assert seen and seen[0] == (budget.opencv_threads, budget.decode_threads)
    assert summary.threads == budget.to_dict()
    assert any(line.strip().startswith("threads: model") for line in summary.lines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_capture_thread_yields_a_shared_core_to_the_model(runtime_model, runtime_video):
    """Where the capture thread shares a core with the model's threads it runs at the budget's nice
    increment (and the loop thread, which runs the model, does not); with a core of its own it does not."""
    import os
    import threading

    shared, spare = thread_budget(2, 1), thread_budget(8, 1, model_threads=2)
    assert shared.decode_nice > 0 and spare.decode_nice == 0
    assert "capture at nice +" in shared.line() and "nice" not in spare.line()
    for budget in (shared, spare):
        seen = []
        with Classifier.load(runtime_model, backend="ort-cpu", threads=1) as clf:
            runner = StreamRunner(FramePipeline(clf, stream=True), VideoFileReader(runtime_video), budget=budget)
            runner.subscribe(lambda *_: seen.append(
                (os.getpriority(os.PRIO_PROCESS, runner.capture.native_id) if runner.capture.is_alive() else None,
                 os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))))
            runner.run()
        base = os.getpriority(os.PRIO_PROCESS, 0)
        capture, loop = next(s for s in seen if s[0] is not None)
        assert runner.capture.niced == (budget.decode_nice > 0)
        assert capture == min(19, base + budget.decode_nice) and loop == base


def test_default_load_sets_threads_explicitly(runtime_model):
    """threads=None is the budget's model threads, set explicitly (onnxruntime's 0 would pin its pool)."""
    with Classifier.load(runtime_model, backend="ort-cpu") as clf:
        assert clf.backend.session.get_session_options().intra_op_num_threads == thread_budget().model_threads
        runner = StreamRunner(FramePipeline(clf, stream=True), VideoFileReader("unused.mp4"))
        assert runner.budget == thread_budget(capture_threads=1, model_threads=clf.threads)


def test_cli_stream_summary_reports_the_budget(runtime_model, runtime_video, tmp_path):
    out = tmp_path / "summary.json"
    res = subprocess.run([sys.executable, "-m", "usedge", "infer", str(runtime_model), "--stream", str(runtime_video),
                          "--max-frames", "5", "--summary", str(out), "--quiet"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    threads = json.loads(out.read_text())["threads"]
    assert ThreadBudget(**threads) == thread_budget(capture_threads=1)


def test_the_summary_reports_spinning_as_the_engine_runs_it(runtime_model, runtime_video):
    """OpenVINO has no spinning option, and a classifier loaded with spinning=False does not spin: the stream
    summary says so, whatever the budget asked for (outside audit: it said `spinning <= 5 ms` on OpenVINO)."""
    from usedge.runtime.backends.openvino import OpenVINOBackend

    engines = [("ort-cpu", False)] + ([("openvino", None)] if OpenVINOBackend.available()[0] else [])
    for backend, spinning in engines:
        with Classifier.load(runtime_model, backend=backend, threads=1, spinning=spinning) as clf:
            runner = StreamRunner(FramePipeline(clf, stream=True), VideoFileReader(runtime_video),
                                  budget=thread_budget(capture_threads=1), max_frames=3)
            summary = runner.run()
        assert summary.threads["spinning"] is False, backend
        assert not any("spinning" in line for line in summary.lines()), backend
