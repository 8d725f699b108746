"""`usedge infer` and `usedge doctor` as a user runs them (subprocess: real exit codes and stderr)."""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from usedge.runtime.cpu import cpu_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def usedge(*args, timeout=120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usedge", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})})


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, runtime_images) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(runtime_images, root / "pngs")
    (root / "pngs" / "nested").mkdir()
    shutil.copy(sorted(runtime_images.glob("*.png"))[0], root / "pngs" / "nested" / "again.png")
    (root / "broken.png").write_bytes(b"\x89PNG cut short")
    shutil.copy(get_testdata_file("examples_ybr_color.dcm", download=False), root / "cine.dcm")   # 30 frames
    shutil.copy(get_testdata_file("examples_palette.dcm", download=False), root / "palette.dcm")
    return root


def test_infer_folder_jsonl_overlay_and_failed_exit_code(runtime_model, mixed_folder, tmp_path):
    out, overlays = tmp_path / "r.jsonl", tmp_path / "ov"
    res = usedge("infer", runtime_model, mixed_folder, "--out", out, "--overlay", overlays, "--cam", "--threads", "1")
    assert res.returncode == 1, res.stderr                      # one bad file: reported, skipped, exit != 0
    assert "broken.png" in res.stderr and "6/7 files, 35 frames" in res.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in records if "error" in r]
    assert len(errors) == 1 and errors[0]["source"].endswith("broken.png")
    ok = [r for r in records if "error" not in r]
    # the unreadable file's line names the run's model and engine too
    assert (errors[0]["model_sha256"], errors[0]["engine"]) == (ok[0]["model_sha256"], ok[0]["engine"])
    assert len(ok) == 35
    assert {"source", "frame", "label", "probs", "crop_box", "model_sha256", "latency_ms"} <= set(ok[0])
    assert len({r["model_sha256"] for r in ok}) == 1
    engines = {r["engine"] for r in ok}       # the backend --backend auto chose, as the printed line names it
    assert len(engines) == 1 and f" on {engines.pop()}" in res.stderr
    assert len(list(overlays.glob("*.png"))) == 35 and (overlays / "cine_f0029.png").is_file()
    # which scan each overlay is: same-named inputs in two folders get _2 names, the index says whose
    index = [json.loads(line) for line in (overlays / "overlays.jsonl").read_text().splitlines()]
    assert len(index) == 35 and {r["overlay"] for r in index} == {p.name for p in overlays.glob("*.png")}
    assert {(r["source"], r["frame"]) for r in index} == {(r["source"], r["frame"]) for r in ok}


def test_no_patient_data_in_any_output(runtime_model, mixed_folder, tmp_path):
    import pydicom

    marked = []
    for name in ("cine.dcm", "palette.dcm"):   # real scanner files, patient fields set to recognisable markers
        ds = pydicom.dcmread(mixed_folder / name)
        ds.PatientName, ds.PatientID = "Doe^Janeqx", "PID-84213-XYZ"
        ds.PatientBirthDate, ds.StudyDate, ds.InstitutionName = "19450203", "20231117", "St Examplewell Hospital"
        ds.save_as(tmp_path / name)
        marked.append(tmp_path / name)
    out, overlays = tmp_path / "r.csv", tmp_path / "ov"
    res = usedge("infer", runtime_model, *marked, "--format", "csv", "--out", out, "--overlay", overlays,
                 "--threads", "1")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 31 and rows[0]["label"]
    stream_out = tmp_path / "s.jsonl"
    res2 = usedge("infer", runtime_model, "--stream", marked[0], "--jsonl", stream_out, "--threads", "1")
    assert res2.returncode == 0, res2.stderr
    text = out.read_text() + stream_out.read_text() + res.stdout + res.stderr + res2.stdout + res2.stderr
    text += " ".join(p.name for p in overlays.iterdir())
    for marker in ("Doe", "Janeqx", "PID-84213", "19450203", "20231117", "Examplewell"):
        assert marker not in text, f"{marker} leaked"


def test_compressed_dicom_without_decoder_names_the_package(runtime_model):
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False)
    res = usedge("infer", runtime_model, path, "--any-modality")
    assert res.returncode == 1
    assert "pip install" in res.stderr and "JPEG-LS" in res.stderr


def test_user_errors_are_one_line(runtime_model, tmp_path):
    res = usedge("infer", tmp_path / "missing.onnx", tmp_path)
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0 and "model file not found" in res.stderr
    res = usedge("infer", runtime_model.parent, tmp_path)     # the export folder instead of one of its files
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0
    assert "is a folder" in res.stderr and runtime_model.name in res.stderr
    res = usedge("infer", runtime_model, "--stream", tmp_path / "nope.mp4")
    assert res.returncode == 1 and "source not found" in res.stderr.splitlines()[-1]
    res = usedge("infer", runtime_model, "--format", "xml", tmp_path)
    assert res.returncode == 1 and "--format" in res.stderr


def test_stream_cli_summary_jsonl_record(runtime_model, runtime_video, tmp_path):
    jsonl, rec, summary = tmp_path / "s.jsonl", tmp_path / "s.mp4", tmp_path / "summary.json"
    res = usedge("infer", runtime_model, "--stream", runtime_video, "--realtime", "--smooth", "--jsonl", jsonl,
                 "--record", rec, "--summary", summary, "--max-frames", "25", "--threads", "1")
    assert res.returncode == 0, res.stderr
    s = json.loads(summary.read_text())
    assert s["frames_read"] + s["late_skipped"] == 25
    assert s["processed"] + s["dropped"] + s["frozen_skipped"] == s["frames_read"]
    assert "capture_to_result" in s["latency_ms"] and "p99" in s["latency_ms"]["model"]
    assert f"{s['frames_read']} read" in res.stderr and "capture_to_result" in res.stderr
    assert len(jsonl.read_text().splitlines()) == s["processed"] + s["frozen_skipped"]
    assert rec.stat().st_size > 0


def test_ctrl_c_ends_a_stream_cleanly_with_a_summary(runtime_model, runtime_video, tmp_path):
    jsonl = tmp_path / "s.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "usedge", "infer", str(runtime_model), "--stream", str(runtime_video),
                             "--realtime", "--fps", "5", "--jsonl", str(jsonl), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (jsonl.exists() and jsonl.read_text().count("\n") >= 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "(interrupted)" in err
    lines = jsonl.read_text().splitlines()
    assert 2 <= len(lines) < 30 and all(json.loads(line) for line in lines)   # every line complete


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_does_not_cut_the_recording_short(runtime_model, runtime_video, tmp_path, sig):
    """Ctrl-C twice (or docker stop, then its retry) 10 ms apart: the second arrives while the outputs close.
    It is ignored: the recording is renamed into place and plays, the summary is written."""
    jsonl, rec, summary = tmp_path / "s.jsonl", tmp_path / "s.mp4", tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "usedge", "infer", str(runtime_model), "--stream", str(runtime_video),
                             "--realtime", "--fps", "10", "--jsonl", str(jsonl), "--record", str(rec), "--summary",
                             str(summary), "--threads", "1", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (jsonl.exists() and jsonl.read_text().count("\n") >= 3):
        time.sleep(0.05)
    proc.send_signal(sig)
    time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(summary.read_text())["ended_by"] == "interrupted"
    cap = cv2.VideoCapture(str(rec))
    ok, _ = cap.read()
    cap.release()
    assert ok, f"{rec} does not play; left: {sorted(p.name for p in tmp_path.iterdir())}"


def test_doctor_reports_backends_and_reasons():
    res = usedge("doctor", "--json")
    assert res.returncode == 0, res.stderr
    checks = {(c["section"], c["name"]): c for c in json.loads(res.stdout)}
    assert checks[("backends", "ort-cpu")]["ok"]
    for name in ("ort-cuda", "ort-trt", "tensorrt"):
        assert checks[("backends", name)]["detail"]
    assert ("packages", "onnxruntime") in checks and ("opencv", "--show window") in checks
    assert checks[("system", "cpu")]["detail"].count("; ") == 2
    flags = set(cpu_model()[1])
    if platform.machine() == "x86_64" and flags:       # what the CPU's flags mean for INT8 files
        detail = checks[("system", "int8 kernels")]["detail"]
        expected = "VNNI:" if {"avx512_vnni", "avx_vnni"} & flags else "AVX2 without VNNI" if "avx2" in flags else "no AVX2"
        assert detail.startswith(expected)
    res = usedge("doctor", env={"COLUMNS": "400"})
    assert res.returncode == 0 and "ort-cpu" in res.stdout
    hints = [c["detail"] for c in checks.values() if "usedge[" in c["detail"]]   # e.g. pip install 'usedge[rtx]'
    extras = {"usedge[" + h.split("usedge[")[1].split("]")[0] + "]" for h in hints}
    assert extras and all(e in res.stdout for e in extras), res.stdout       # not eaten as Rich markup
    assert "'usedge'" not in res.stdout


def test_doctor_model_shows_its_card_and_decoders_agree(runtime_model, tmp_path):
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.model_info import model_card_line

    res = usedge("doctor", runtime_model, "--json")
    assert res.returncode == 0, res.stderr
    checks = json.loads(res.stdout)
    rows = {(c["section"], c["name"]): c for c in checks}
    with Classifier.load(runtime_model, "ort-cpu") as clf:
        line = model_card_line(clf.info)
    assert rows[("model", "model.onnx")]["ok"] and rows[("model", "model card")]["detail"] == line
    sp = clf.spec          # what `usedge crop` needs to give this model's inputs
    assert rows[("model", "preprocessing")]["detail"].startswith(f"{sp.size} px, crop {sp.crop}, resize {sp.resize}, ")
    assert line.startswith("fp32 model ") and "trained on SYNTHETIC data" in line
    # each decoder is one row under one name: no "pylibjpeg ok" in one section and "no" in another
    names = [c["name"] for c in checks]
    assert names.count("pylibjpeg") == 1 and ("packages", "av") in rows
    missing = usedge("doctor", tmp_path / "nope.onnx", "--json")
    row = {(c["section"], c["name"]): c for c in json.loads(missing.stdout)}[("model", "nope.onnx")]
    assert not row["ok"] and "not found" in row["detail"]


def test_infer_video_file_classifies_every_frame(runtime_model, runtime_video, tmp_path):
    out = tmp_path / "v.csv"
    res = usedge("infer", runtime_model, runtime_video, "--out", out, "--threads", "1")   # .csv: CSV by default
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    assert [int(r["frame"]) for r in rows] == list(range(30)) and all(r["model_sha256"] for r in rows)
    assert len({r["engine"] for r in rows}) == 1 and f" on {rows[0]['engine']}" in res.stderr


def test_a_data_set_folder_classifies_its_scans_not_its_lesion_masks(runtime_model, tiny_cohort, tmp_path):
    out = tmp_path / "r.csv"
    res = usedge("infer", runtime_model, tiny_cohort, "--out", out, "--threads", "1")
    assert res.returncode == 0, res.stderr
    masks = {str(tiny_cohort / r["mask_path"]) for r in csv.DictReader((tiny_cohort / "manifest.csv").open())}
    sources = {r["source"] for r in csv.DictReader(out.open())}
    assert len(sources) == 24 and not sources & masks
    assert f"24 lesion masks listed in {tiny_cohort / 'manifest.csv'} left out" in res.stderr


def test_an_explicit_format_wins_over_the_out_suffix(runtime_model, runtime_images, tmp_path):
    image, out = sorted(runtime_images.glob("*.png"))[0], tmp_path / "r.csv"
    res = usedge("infer", runtime_model, image, "--format", "jsonl", "--out", out, "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text().splitlines()[0])["source"] == str(image)


def test_cli_vocabulary_help_order_and_old_spellings(runtime_model, runtime_images, tmp_path):
    from typer.testing import CliRunner

    from usedge.cli import app
    from usedge.cli.app import PIPELINE_ORDER

    runner = CliRunner()
    listed = [line.split()[1] for line in runner.invoke(app, ["--help"]).output.splitlines()
              if line.startswith("│ ") and len(line.split()) > 1 and line.split()[1] in PIPELINE_ORDER]
    assert listed == list(PIPELINE_ORDER)
    image = sorted(runtime_images.glob("*.png"))[0]
    res = usedge("infer", runtime_model, image, "-o", tmp_path / "r.jsonl", "--opt-level", "basic", "-q",
                 "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert "--opt-level is deprecated; use --ort-opt-level" in res.stderr and " on " not in res.stderr
    res = usedge("crop", image, "--out", tmp_path / "crops", "--overlay", "--size", "64", "-q")
    assert res.returncode == 0, res.stderr
    assert "--size is deprecated" in res.stderr and "--overlay (a switch) is deprecated" in res.stderr
    assert (tmp_path / "crops" / f"{image.stem}.overlay.png").is_file()
    res = usedge("crop", image, "--out", tmp_path / "c2", "--overlay", tmp_path / "ov", "--image-size", "64", "-q")
    assert res.returncode == 0 and (tmp_path / "ov" / f"{image.stem}.png").is_file() and not res.stderr


@pytest.mark.parametrize("option", [["--record", "rec.mp4"], ["--smooth"], ["--realtime"]])
def test_stream_options_with_files_are_errors(runtime_model, runtime_images, tmp_path, option):
    image = sorted(runtime_images.glob("*.png"))[0]
    res = usedge("infer", runtime_model, image, *option)
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1
    assert f"{option[0]} applies to --stream only" in lines[0] and "--stream VIDEO" in lines[0]
    assert not (tmp_path / "rec.mp4").exists()


def test_overlay_with_stream_is_an_error(runtime_model, runtime_video, tmp_path):
    res = usedge("infer", runtime_model, "--stream", runtime_video, "--overlay", tmp_path / "ov")
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1
    assert "--overlay" in lines[0] and "--record" in lines[0] and not (tmp_path / "ov").exists()


def test_stream_status_line_on_stderr(runtime_model, runtime_video, tmp_path):
    """--status forces the live line (fps, label, drops) even off a terminal; it is off by default there."""
    args = ["infer", runtime_model, "--stream", runtime_video, "--jsonl", tmp_path / "s.jsonl", "--threads", "1", "-q"]
    res = usedge(*args, "--status")
    assert res.returncode == 0, res.stderr
    first = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    assert "live " in res.stderr and " fps | " in res.stderr and f"| {first['label']} " in res.stderr
    assert " dropped" in res.stderr
    res = usedge(*args)
    assert res.returncode == 0 and "live " not in res.stderr       # not a terminal: no status line


def test_crop_accepts_video_every_nth_frame(runtime_video, tmp_path):
    """crop reads a video through the reader of `usedge infer FILES`: every frame, or every N-th."""
    res = usedge("crop", runtime_video, "--out", tmp_path / "all", "--image-size", "64", "-q")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in (tmp_path / "all" / "crops.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(30))
    assert (tmp_path / "all" / lines[3]["output"]).is_file() and lines[3]["output"].endswith("_f0003.png")
    res = usedge("crop", runtime_video, "--out", tmp_path / "some", "--every", "10", "--image-size", "64", "-q")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in (tmp_path / "some" / "crops.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 10, 20]


def test_train_help_shows_defaults():
    res = subprocess.run([sys.executable, "-m", "usedge", "train", "--help"], capture_output=True, text=True,
                         timeout=120, env={**ENV, "COLUMNS": "200"})
    epochs = next(line for line in res.stdout.splitlines() if "--epochs" in line)
    assert res.returncode == 0 and "[default: (30)]" in epochs


def test_crop_refuses_an_input_size_that_would_take_gigabytes(runtime_images, tmp_path):
    """`--image-size 100000` made one 10 GB crop per image (an outside tester's run reached 10 GB RSS):
    refused before any file is read, in one line; the library call too."""
    from usedge.errors import InputError
    from usedge.runtime.crop import prepare
    from usedge.runtime.preprocess import PreprocessSpec

    image = sorted(runtime_images.glob("*.png"))[0]
    res = usedge("crop", image, "--out", tmp_path / "c", "--image-size", "100000", "-q")
    assert res.returncode != 0 and "--image-size 100000 is too large" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "c").exists()
    with pytest.raises(InputError, match="too large"):
        prepare(np.zeros((64, 64), np.uint8), PreprocessSpec(size=4096))


def test_a_resize_typo_names_the_option_and_suggests_the_spelling(runtime_images, tmp_path):
    """`--resize color-halve-linear` was "unknown resize method (from a newer usedge?) ... upgrade usedge", the
    wording for a model's metadata (outside audit): the option is named, and the spelling suggested."""
    image = sorted(runtime_images.glob("*.png"))[0]
    res = usedge("crop", image, "--out", tmp_path / "c", "--resize", "color-halve-linear", "-q")
    assert res.returncode != 0 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "--resize 'color-halve-linear' is not a resize method" in res.stderr
    assert "did you mean colour-halve-linear?" in res.stderr and "newer usedge" not in res.stderr
    assert not (tmp_path / "c").exists()
    res = usedge("crop", image, "--out", tmp_path / "c", "--resize", "bicubic", "-q")
    assert res.returncode != 0 and "did you mean" not in res.stderr and "area, halve-linear, colour-halve-linear" in res.stderr


def test_threads_out_of_range_are_refused_before_anything_starts(runtime_model, runtime_images):
    """`--threads 100000` started 32000 threads and took the machine's process limit (outside audit);
    0 and negative counts were accepted silently. Both are usage errors now, before the model loads."""
    from usedge.runtime.threads import MAX_THREADS

    image = sorted(runtime_images.glob("*.png"))[0]
    for value, words in ((str(MAX_THREADS + 1), f"less than or equal to {MAX_THREADS}"), ("0", "greater than or equal to 1"),
                         ("-3", "greater than or equal to 1")):
        res = usedge("infer", runtime_model, image, "--threads", value)
        assert res.returncode == 2 and "--threads" in res.stderr and words in res.stderr, res.stderr
        assert not res.stdout


def test_cam_without_an_annotated_output_is_refused(runtime_model, runtime_images):
    """`--cam` alone did nothing, silently (outside audit): the heatmap needs --overlay, --record or --show."""
    image = sorted(runtime_images.glob("*.png"))[0]
    res = usedge("infer", runtime_model, image, "--cam")
    assert res.returncode != 0 and "--cam draws the heatmap on annotated images" in res.stderr and not res.stdout


def test_an_old_and_a_new_spelling_that_disagree_are_refused(runtime_images, tmp_path):
    """`crop --size 64 --image-size 32` printed --size's deprecation line and silently used 32 (outside audit)."""
    image = sorted(runtime_images.glob("*.png"))[0]
    res = usedge("crop", image, "--out", tmp_path / "c", "--size", "64", "--image-size", "32", "-q")
    assert res.returncode != 0 and "--size 64 and --image-size 32 disagree" in res.stderr, res.stderr
    assert not (tmp_path / "c").exists()

