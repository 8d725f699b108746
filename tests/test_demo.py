"""`usedge demo` on a tiny budget: reuse only what matches, rerun after an interruption, surface a failed
check, score the stream against the video's truth. Real training, export, video and onnxruntime."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from usedge.cli import app  # noqa: E402
from usedge.demo import Demo, DemoConfig, score_stream  # noqa: E402
from usedge.errors import OutputError  # noqa: E402
from usedge.fileio import write_json_atomic  # noqa: E402

# 24 images of 12 patients, 64 px, 1 epoch, 2 folds, half a second of video, one thread (a shared 2-core box)
TINY = DemoConfig(images=24, image_size=64, epochs=1, folds=2, video_seconds=0.5, threads=1,
                  progress=False)
TINY_ARGS = ["--images", "24", "--image-size", "64", "--epochs", "1", "--folds", "2", "--video-seconds", "0.5",
             "--threads", "1"]
ALL = ["cohort", "train", "explain", "export", "video", "stream_fp32", "stream_int8", "overlay_video", "overlay_frame"]
pytestmark = pytest.mark.slow


def run_demo(out: Path, **changes) -> Demo:
    demo = Demo(replace(TINY, out=out, **changes), log=lambda _m: None)
    demo.run()
    return demo


def ran(demo: Demo) -> list[str]:
    return [s.key for s in demo.steps if not s.reused]


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    """A complete tiny demo folder (about a minute on 2 busy cores)."""
    out = tmp_path_factory.mktemp("demo") / "first"
    assert ran(run_demo(out)) == ALL
    return out


@pytest.fixture
def copy(first, tmp_path) -> Path:
    """A copy of `first` to change (hard links: every step replaces its files, never writes into them)."""
    out = tmp_path / "demo"
    shutil.copytree(first, out, copy_function=os.link)
    return out


def test_report_scores_the_stream_against_the_truth(first):
    info = json.loads((first / "report" / "demo.json").read_text())
    assert isinstance(info["checks_failed"], int)
    for tag in ("fp32", "int8"):
        score = info["stream"][tag]
        assert score["truth_label"] in ("epidermal_cyst", "lipoma", "pilomatricoma")
        assert score["frames_scored"] > 0 and 0.0 <= score["accuracy"] <= 1.0
        assert score["changes_per_minute"] >= 0
    assert set(info["cv"]) == {"balanced_accuracy", "overall_accuracy", "macro_roc_auc"}
    text = (first / "report" / "README.md").read_text()
    assert "label changes / min" in text and "64 px input, 1 epochs" in text


def test_plain_rerun_reuses_every_step_and_keeps_its_timings(first, copy):
    before = {s["key"]: s["seconds"] for s in json.loads((first / "report" / "demo.json").read_text())["steps"]}
    demo = run_demo(copy)
    assert ran(demo) == []
    assert {s.key: s.seconds for s in demo.steps} == before
    assert all(v > 0 for v in before.values())


def test_changed_training_parameter_reruns_training_and_everything_after(copy):
    demo = run_demo(copy, lr=3e-3)
    assert ran(demo) == ["train", "explain", "export", "stream_fp32", "stream_int8", "overlay_video", "overlay_frame"]
    assert next(s for s in demo.steps if s.key == "train").why == "changed: lr"
    assert json.loads((copy / "steps" / "train.json").read_text())["params"]["lr"] == 3e-3
    assert "Adam 0.003" in (copy / "report" / "README.md").read_text()
    assert ran(run_demo(copy, lr=3e-3)) == []


def test_changed_video_length_reruns_only_the_video_and_its_streams(copy):
    demo = run_demo(copy, video_seconds=0.3)
    assert ran(demo) == ["video", "stream_fp32", "stream_int8", "overlay_video", "overlay_frame"]
    truth = json.loads((copy / "video" / "scanner_1080p.json").read_text())
    assert truth["frames"] == 9


def test_failed_int8_check_is_printed_reported_and_not_used_for_the_overlay(copy):
    # the export's int8 check misses its aim: recorded the way the export records a miss
    path = copy / "model" / "export_report.json"
    report = json.loads(path.read_text())
    int8 = [c for c in report["checks"] if c["artifact"] == "model.int8.onnx"]
    assert int8
    for c in int8:
        c["passed"] = False
    write_json_atomic(path, report)

    res = CliRunner().invoke(app, ["demo", "--out", str(copy), *TINY_ARGS])
    assert res.exit_code == 0, res.output
    after_tables = res.output.rsplit("└", 1)[1].splitlines()   # printed at the very end of the run
    assert any("check failed" in line and "model.int8.onnx" in line for line in after_tables), res.output
    assert "CV balanced accuracy" in res.output and "frames right" in res.output

    info = json.loads((copy / "report" / "demo.json").read_text())
    assert info["checks_failed"] == len(int8) and info["overlay_model"] == "fp32"
    steps = {s["key"]: s for s in info["steps"]}
    assert steps["export"]["reused"] and steps["stream_fp32"]["reused"] and steps["stream_int8"]["reused"]
    assert steps["overlay_video"]["params"]["model"] == steps["overlay_frame"]["params"]["model"] == "model.onnx"
    assert not steps["overlay_video"]["reused"]     # the timed streams never record: only the overlay reruns
    assert (copy / "report" / "overlay.mp4").is_file()
    top = (copy / "report" / "README.md").read_text().split("**Synthetic data.**")[0]
    assert "A check failed" in top and "model.int8.onnx" in top and "fp32 model" in top


def test_killed_training_resumes_and_reruns_what_follows(copy):
    # killed while training the all-data model: the record says "started", the folds are done
    record = json.loads((copy / "steps" / "train.json").read_text())
    write_json_atomic(copy / "steps" / "train.json",
                      {k: record[k] for k in ("step", "title", "params", "usedge_version", "inputs")}
                      | {"status": "started"})
    for name in ("model.pt", "metrics.json", "report.md"):
        (copy / "run" / name).unlink()
    demo = run_demo(copy)
    assert ran(demo) == ["train", "explain", "export", "stream_fp32", "stream_int8", "overlay_video", "overlay_frame"]
    train = next(s for s in demo.steps if s.key == "train")
    assert train.why == "interrupted" and train.result == {"resumed": True}
    assert (copy / "run" / "model.pt").is_file()


def test_killed_make_demo_reruns_cleanly(tmp_path):
    """A real kill of `usedge demo` half-way through a step, then a plain rerun."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "usedge", "demo", "--out", str(out), *TINY_ARGS, "-q"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # kill as soon as the cohort has written some images, while its record still says "started"
        while proc.poll() is None and not any((out / "data").rglob("*.png")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    interrupted = [k for k in ALL if (out / "steps" / f"{k}.json").is_file()
                   and json.loads((out / "steps" / f"{k}.json").read_text())["status"] == "started"]
    assert interrupted, "the kill came after the run had finished"
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "report" / "demo.json").read_text())
    steps = {s["key"]: s for s in info["steps"]}
    assert steps[interrupted[0]]["why"] == "interrupted"
    assert all(json.loads((out / "steps" / f"{k}.json").read_text())["status"] == "done" for k in ALL)


def test_overwrite_has_a_deprecated_force_spelling(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    res = CliRunner().invoke(app, ["demo", "--force", "--out", str(target), *TINY_ARGS])
    assert isinstance(res.exception, OutputError) and str(target) in str(res.exception)
    assert "--force is deprecated; use --overwrite" in res.output
    assert "--overwrite" in CliRunner().invoke(app, ["demo", "--help"]).output


def test_score_stream_counts_right_frames_and_label_changes(tmp_path):
    frames = [{"frame": i, "label": "lipoma", "lesion_visible": 0.0 if i < 10 else 0.5} for i in range(60)]
    truth = tmp_path / "video.json"
    truth.write_text(json.dumps({"frames": 60, "fps": 30.0, "label": "lipoma", "frames_truth": frames}))
    labels = {5: "lipoma", 20: "lipoma", 30: "epidermal_cyst", 40: "lipoma"}   # frames 0-4 etc. dropped
    jsonl = tmp_path / "stream.jsonl"
    jsonl.write_text("".join(json.dumps({"frame": f, "label": lab}) + "\n" for f, lab in labels.items())
                     + json.dumps({"source": "x", "error": "unreadable"}) + "\n")
    score = score_stream(jsonl, truth)
    assert score["frames_scored"] == 4 and score["accuracy"] == 0.75
    assert score["frames_in_view"] == 3 and score["accuracy_in_view"] == pytest.approx(2 / 3)
    assert score["label_changes"] == 2 and score["changes_per_minute"] == pytest.approx(60.0)  # 2 in 2 s
    assert score["labels"] == {"epidermal_cyst": 1, "lipoma": 3}

