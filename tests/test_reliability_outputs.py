"""What usedge writes never destroys what was there: the model, scans beside the outputs, an earlier results
file; odd names and bad output places get one line; a file that is only partly readable is a failure."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from usedge.runtime.sinks import OUTPUT_MARK, results_sink

ROOT = Path(__file__).resolve().parents[1]


def usedge(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "usedge", *map(str, args)], capture_output=True, text=True,
                          timeout=180, env=env, cwd=cwd)


def mjpg_avi(path: Path, frames: int = 60) -> Path:
    """An MJPG AVI of random 320x240 frames (one JPEG per packet: easy to cut or damage)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (240, 320, 3), np.uint8))
    writer.release()
    return path


def no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr, res.stderr


def test_out_never_overwrites_the_model(runtime_model, runtime_images, tmp_path):
    model = shutil.copy(runtime_model, tmp_path / "v.onnx")
    before = Path(model).read_bytes()
    res = usedge("infer", model, runtime_images, "--out", model, "-q")
    assert res.returncode == 1 and "would overwrite the input v.onnx" in res.stderr, res.stderr
    no_traceback(res)
    assert Path(model).read_bytes() == before


def test_output_folders_never_replace_scans_usedge_did_not_write(runtime_model, runtime_images, tmp_path):
    """`crop -o` / `--overlay` into a folder that holds the user's own scans (outputs are named after inputs,
    so today/p1.png would replace scans/p1.png) is refused; a folder usedge wrote into may be reused."""
    scans = tmp_path / "scans"
    (scans / "today").mkdir(parents=True)
    for p in sorted(runtime_images.glob("*.png")):
        shutil.copy(p, scans / "today" / p.name)
        shutil.copy(p, scans / p.name)
    original = {p.name: p.read_bytes() for p in scans.glob("*.png")}
    for args in (("crop", scans / "today", "-o", scans),
                 ("crop", scans / "today", "-o", tmp_path / "c", "--overlay", scans),
                 ("infer", runtime_model, scans / "today", "--overlay", scans, "-q")):
        res = usedge(*args)
        assert res.returncode == 1 and "already holds 3 images or videos that usedge did not write" in res.stderr, \
            (args, res.stderr)
        no_traceback(res)
    assert {p.name: p.read_bytes() for p in scans.glob("*.png")} == original
    for _ in range(2):         # a folder usedge made is marked: the second run replaces its own PNGs
        res = usedge("crop", scans / "today", "-o", tmp_path / "crops")
        assert res.returncode == 0, res.stderr
        res = usedge("infer", runtime_model, scans / "today", "--overlay", tmp_path / "overlays", "-q")
        assert res.returncode == 0, res.stderr
    assert (tmp_path / "crops" / OUTPUT_MARK).is_file() and len(list((tmp_path / "overlays").glob("*.png"))) == 3


def test_bad_output_places_are_one_line(runtime_images, tmp_path):
    (tmp_path / "f").write_text("x")
    res = usedge("crop", runtime_images, "-o", tmp_path / "f")
    assert res.returncode == 1 and "--out is a file, not a folder" in res.stderr, res.stderr
    no_traceback(res)
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
        res = usedge("crop", runtime_images, "-o", tmp_path / "ro" / "x")
        assert res.returncode == 1 and "cannot write into --out" in res.stderr, res.stderr
        no_traceback(res)


def test_crop_errors_name_the_file_and_crops_jsonl_lists_what_was_written(runtime_images, tmp_path):
    data = tmp_path / "in"
    shutil.copytree(runtime_images, data)
    cv2.imwrite(str(data / "blank.png"), np.full((300, 300), 90, np.uint8))
    res = usedge("crop", data, "-o", tmp_path / "out")
    assert res.returncode == 1
    assert any("blank.png" in line and "blank" in line.split("blank.png", 1)[1] for line in res.stderr.splitlines()), \
        res.stderr
    lines = [json.loads(x) for x in (tmp_path / "out" / "crops.jsonl").read_text().splitlines()]
    assert sum("error" in x for x in lines) == 1 and sum("output" in x for x in lines) == 3


def test_a_crop_rerun_leaves_no_earlier_crops_and_an_interrupted_one_lists_what_it_wrote(runtime_images, tmp_path):
    """A rerun into the same --out replaced crops.jsonl but left the earlier run's PNGs beside the new ones;
    a Ctrl-C could leave a PNG crops.jsonl did not list (outside audit)."""
    from usedge.runtime.batch import crop_files
    from usedge.runtime.preprocess import PreprocessSpec

    files = sorted(runtime_images.glob("*.png"))
    out, ovl = tmp_path / "crops", tmp_path / "ovl"
    crop_files(files, PreprocessSpec(size=64), out, overlay_dir=ovl)
    assert len(list(out.glob("*.png"))) == len(files) == len(list(ovl.glob("*.png")))
    crop_files(files[:1], PreprocessSpec(size=64), out, overlay_dir=ovl)          # the rerun, on one file
    listed = {json.loads(x)["output"] for x in (out / "crops.jsonl").read_text().splitlines()}
    assert {p.name for p in out.glob("*.png")} == listed == {files[0].name} and len(list(ovl.glob("*.png"))) == 1

    def stop():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        crop_files(files, PreprocessSpec(size=64), out, on_file=stop)
    listed = {json.loads(x)["output"] for x in (out / "crops.jsonl").read_text().splitlines()}
    assert {p.name for p in out.glob("*.png")} == listed == {files[0].name}


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_csv_results_with_a_file_name_that_is_not_utf8(runtime_model, runtime_images, tmp_path):
    """A name from an old Windows share (Latin-1 bytes) is written with a backslash escape; the batch goes on."""
    data = tmp_path / "in"
    data.mkdir()
    src = sorted(runtime_images.glob("*.png"))[0]
    shutil.copy(src, os.path.join(os.fsencode(data), b"caf\xe9.png"))
    shutil.copy(src, data / "z.png")
    res = usedge("infer", runtime_model, data, "--out", tmp_path / "r.csv", "-q")
    no_traceback(res)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8")))
    assert [r["state"] for r in rows] == ["live", "live"]
    assert rows[0]["source"].endswith("caf\\udce9.png") and rows[1]["source"].endswith("z.png")


def test_an_error_row_names_the_runs_model_and_engine(tmp_path):
    """A file that could not be classified: its JSONL line and CSV row carry model_sha256 and engine (outside audit:
    they were missing, so a results file's error rows could not be traced to the run's engine)."""
    import csv

    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"r.{fmt}"
        with results_sink(out, fmt, ["a", "b"]) as sink:
            sink.write_error("x.png", "x.png: unreadable", model_sha256="ab" * 32, engine="openvino")
        row = json.loads(out.read_text()) if fmt == "jsonl" else next(csv.DictReader(out.open(newline="")))
        assert (row["source"], row["model_sha256"], row["engine"]) == ("x.png", "ab" * 32, "openvino")
        assert row["error"] == "x.png: unreadable"


def test_results_file_is_replaced_only_when_the_batch_ends(tmp_path):
    """An earlier results file stays whole while a batch runs (lines go to <name>.partial, flushed), so a run
    that dies leaves it intact; at the end the new file replaces it."""
    out = tmp_path / "results.jsonl"
    out.write_text('{"yesterday": 1}\n')
    sink = results_sink(out, "jsonl", ["a", "b"], atomic=True)
    sink.write_error("x.png", "x.png: unreadable")
    partial = tmp_path / "results.jsonl.partial"
    assert out.read_text() == '{"yesterday": 1}\n'
    assert json.loads(partial.read_text())["source"] == "x.png"       # flushed: a crash keeps it
    sink.close()
    assert not partial.exists() and json.loads(out.read_text())["source"] == "x.png"
    with pytest.raises(Exception, match="is a folder"):
        results_sink(tmp_path, "csv", ["a"], atomic=True)


def test_a_killed_batchs_partial_results_are_kept_by_the_next_run(tmp_path, capfd):
    """A run killed mid-batch leaves its lines in <name>.partial; the next run used to overwrite them
    without a word (outside audit). They are kept as <stem>.unfinished<suffix>, said in one line."""
    out = tmp_path / "r.csv"
    sink = results_sink(out, "csv", ["a", "b"], atomic=True)
    sink.write_error("x.png", "x.png: unreadable")           # then the process dies: no close
    sink.fh.close()
    left = (tmp_path / "r.csv.partial").read_text()
    again = results_sink(out, "csv", ["a", "b"], atomic=True)
    again.close()
    assert (tmp_path / "r.unfinished.csv").read_text() == left and "x.png" in left
    assert "an earlier run did not finish its results file; kept it as r.unfinished.csv" in capfd.readouterr().err
    interrupted = results_sink(out, "csv", ["a", "b"], atomic=True)
    interrupted.keep_partial = True                           # Ctrl-C: the part stays beside the complete file
    interrupted.close()
    assert (tmp_path / "r.csv.partial").exists() and out.exists()


def test_truncated_video_is_a_failed_file_after_its_readable_frames(runtime_model, tmp_path):
    """`usedge infer FILE` on a video cut short: the frames before are classified, then the file is a failure
    (exit 1) with the line `--stream` gives, not a success."""
    path = mjpg_avi(tmp_path / "cine.avi")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    res = usedge("infer", runtime_model, path, "--out", tmp_path / "r.jsonl", "-q")
    assert res.returncode == 1 and "video ended early, after" in res.stderr and "1 failed" in res.stderr, res.stderr
    records = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len([r for r in records if "frame" in r]) >= 10 and "ended early" in records[-1]["error"]


def test_doctor_exits_1_when_the_model_does_not_load(runtime_model, tmp_path):
    bad = tmp_path / "zero.onnx"
    bad.write_bytes(b"")
    res = usedge("doctor", bad, "-q")
    assert res.returncode == 1 and "zero.onnx" in res.stdout, res.stdout + res.stderr
    res = usedge("doctor", runtime_model, "--json")
    assert res.returncode == 0, res.stderr


def test_stream_outputs_never_replace_the_streamed_file(runtime_model, runtime_video, tmp_path):
    video = shutil.copy(runtime_video, tmp_path / "scan1.mp4")
    before = Path(video).read_bytes()
    for option in ("--out", "--jsonl", "--record", "--summary"):
        res = usedge("infer", runtime_model, "--stream", video, option, video, "-q")
        assert res.returncode == 1 and "would overwrite the input scan1.mp4" in res.stderr, (option, res.stderr)
        no_traceback(res)
    assert Path(video).read_bytes() == before
    res = usedge("infer", runtime_model, "--stream", video, "--summary", "/proc/usedge/s.json", "-q")
    assert res.returncode == 1 and "cannot write into the folder of --summary" in res.stderr, res.stderr
    assert "read" not in res.stderr          # refused before the stream ran (no summary line)


def test_stream_frames_that_fail_are_written_and_a_bad_fps_is_one_line(runtime_model, tmp_path):
    """Frames too small for an ultrasound image fail one by one: each is a line in --jsonl, as in file mode."""
    path = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (6, 6))
    for _ in range(10):
        writer.write(np.full((6, 6, 3), 128, np.uint8))
    writer.release()
    res = usedge("infer", runtime_model, "--stream", path, "--jsonl", tmp_path / "t.jsonl", "-q")
    no_traceback(res)
    records = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all("too small" in r["error"] for r in records), records[:2]
    assert records[3]["source"].endswith("tiny.avi") and records[3]["frame"] == 3      # the frame as its own key
    for bad in ("nan", "inf", "0", "-5", "1e-9"):      # 1e-9: a frame every 31 years
        res = usedge("infer", runtime_model, "--stream", path, "--realtime", "--fps", bad, "-q")
        assert res.returncode != 0 and f"--fps {float(bad)} is not a frame rate" in res.stderr, (bad, res.stderr)
        no_traceback(res)


def test_a_damaged_packet_mid_video_is_passed_over(runtime_model, tmp_path):
    """One MJPG frame zeroed in the middle of a 60-frame AVI: the 59 others are classified (decoding goes on
    past the damaged packet), and the file is still reported as damaged (exit 1)."""
    pytest.importorskip("av", reason="packet-by-packet decoding is PyAV's")
    path = mjpg_avi(tmp_path / "cine.avi")
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[30]:starts[30] + 4000] = bytes(4000)
    path.write_bytes(bytes(data))
    res = usedge("infer", runtime_model, path, "--out", tmp_path / "r.jsonl", "-q")
    no_traceback(res)
    assert res.returncode == 1 and "1 damaged packet(s) could not be decoded" in res.stderr, res.stderr
    records = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len([r for r in records if "frame" in r]) == 59


def test_two_outputs_naming_one_file_are_refused_before_the_run(runtime_model, runtime_video, tmp_path):
    """--record and --jsonl (or --jsonl and --summary) naming one file: the last to write wiped the other."""
    for a, b, name in (("--jsonl", "--record", "same.mp4"), ("--jsonl", "--summary", "s.json")):
        res = usedge("infer", runtime_model, "--stream", runtime_video, a, tmp_path / name, b, tmp_path / name,
                     "--max-frames", "5", "-q")
        assert res.returncode == 1 and not (tmp_path / name).exists()
        no_traceback(res)
        assert res.stderr.strip().splitlines() == [f"usedge: {a} and {b} both name {tmp_path / name}: one would "
                                                   "overwrite the other — give each output its own file name"]


def test_record_into_a_folder_is_refused_before_the_run(runtime_model, runtime_video, tmp_path):
    (tmp_path / "isdir.mp4").mkdir()
    res = usedge("infer", runtime_model, "--stream", runtime_video, "--record", tmp_path / "isdir.mp4",
                 "--jsonl", tmp_path / "r.jsonl", "--max-frames", "5")
    assert res.returncode == 1 and not (tmp_path / "r.jsonl").exists()
    no_traceback(res)
    assert res.stderr.strip().splitlines() == [f"usedge: --record {tmp_path / 'isdir.mp4'} is a folder, not a file "
                                               "— give --record a file name"]


def test_a_closed_pipe_is_not_blamed_on_the_disk(runtime_model, runtime_video, tmp_path):
    """`usedge infer ... | head -1`: the reader closed the pipe; the line said "free disk space"."""
    videos = [str(shutil.copy(runtime_video, tmp_path / f"v{i}.mp4")) for i in range(8)]   # far more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "usedge", "infer", str(runtime_model), *videos],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.readline()
    proc.stdout.close()                       # as `head -1` does
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "closed the pipe" in err.strip().splitlines()[-1] and "disk" not in err.strip().splitlines()[-1]


def test_the_csv_has_every_field_of_the_json_record(runtime_model, runtime_images, tmp_path):
    """docs/runtime.md: "The CSV has the same fields flattened" — it lacked class_index and smoothed
    (outside audit). Every JSON key is a column (probs, boxes and latencies flattened), values alike."""
    import csv

    image = sorted(runtime_images.glob("*.png"))[0]
    for fmt, out in (("jsonl", tmp_path / "r.jsonl"), ("csv", tmp_path / "r.csv")):
        res = usedge("infer", runtime_model, image, "--format", fmt, "--out", out, "-q")
        assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    with open(tmp_path / "r.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    flattened = {"probs": "p_", "crop_box": "crop_", "fov_box": "fov_", "latency_ms": "ms_", "frame": "frame",
                 "reason": "error"}
    for key in record:
        prefix = flattened.get(key)
        assert (key in row) if prefix is None else any(c.startswith(prefix) for c in row), key
    assert int(row["class_index"]) == record["class_index"] and row["smoothed"] == str(int(record["smoothed"]))
