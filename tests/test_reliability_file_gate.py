"""Issue 16 item 1 for files and uploads: the frame-quality gate (usedge/runtime/quality.py) runs on
`usedge infer FILES` and on serve's uploads as on streams, and DICOM pixels are scaled by their bit
depth (BitsStored) so that real images are not judged blank. Real CLI subprocesses, real DICOM files
written with pydicom, the real app through FastAPI's TestClient, a real onnxruntime model.

Evidence that these fail on the code before the change: a MONOCHROME1 DICOM holding 12-bit values in
a file that says BitsStored = 16 was inverted within 16 bits and read as a near-white frame (`frame
!= screen` below; its crop had a contrast of 6 levels); in file mode and for uploads only an all-equal
frame was refused (an error, exit 1), so the lit empty screen and the probe-in-air screen were
classified with a label and probabilities (200 from serve).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.fixtures.badinput import make_dicom

H, W = 360, 640


def _empty_screens() -> dict[str, np.ndarray]:
    """Screens without a usable image (the quality gate's cases; none is all one value)."""
    air = np.zeros((H, W, 3), np.uint8)
    air[40:330, 120:520] = 6                       # a dark field of view, reverberation lines near the skin
    air[44:48, 120:520] = 140
    air[60:62, 120:520] = 90
    gray = (90 + np.random.default_rng(0).integers(0, 12, (H, W))).astype(np.uint8)   # lit, empty
    return {"air.png": air, "gray.png": gray, "blank.png": np.full((H, W), 30, np.uint8)}


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> list[np.ndarray]:
    """Two of usedge's synthetic scanner screens, gray (the DICOM tests store one channel)."""
    from usedge.synth.frames import write_scanner_frames

    folder = tmp_path_factory.mktemp("gate_screens")
    write_scanner_frames(folder, count=2, seed=4)
    paths = [p for p in sorted(folder.rglob("frame_*.png")) if p.stem.count("_") == 1]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2GRAY) for p in paths[:2]]


def _write_depth_dicom(path: Path, screen: np.ndarray, *, stored: int, declared: int, mono1: bool,
                       junk_high_bits: bool = False) -> Path:
    """`screen` (8 bit) stored at `stored` bits in a file whose header says BitsStored = `declared`."""
    values = screen.astype(np.uint32) << (stored - 8)
    if mono1:
        values = (1 << stored) - 1 - values
    if declared == 8:
        make_dicom(path, values.astype(np.uint8), photometric="MONOCHROME1" if mono1 else "MONOCHROME2", patient=False)
        return path
    if junk_high_bits:
        values |= 0xF000                            # bits above BitsStored (legacy overlay planes): not pixels
    make_dicom(path, values.astype(np.uint16), photometric="MONOCHROME1" if mono1 else "MONOCHROME2", patient=False)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = declared, declared - 1
    ds.save_as(path)
    return path


DEPTHS = [  # (bits the values use, BitsStored the header says, MONOCHROME1, junk above BitsStored)
    (8, 8, False, False), (8, 8, True, False),
    (10, 10, False, False), (10, 10, True, False),
    (12, 12, False, False), (12, 12, True, False), (12, 12, False, True),
    (16, 16, False, False), (16, 16, True, False),
    (12, 16, False, False), (12, 16, True, False),     # 12-bit values in a file that says 16
]


def test_dicom_bit_depths_read_as_the_screen(screens, tmp_path, reliability_ledger):
    """A scanner screen stored at 8, 10, 12 and 16 bits (MONOCHROME2 and 1, junk above BitsStored, 12-bit
    values under BitsStored = 16) reads back as the 8-bit screen exactly, and the gate passes it."""
    from usedge.runtime.crop import prepare
    from usedge.runtime.formats import read_file
    from usedge.runtime.pixels import as_uint8
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.runtime.quality import no_image_reason

    tried = 0
    for i, screen in enumerate(screens):
        for stored, declared, mono1, junk in DEPTHS:
            path = _write_depth_dicom(tmp_path / f"s{i}_{stored}_{declared}_{int(mono1)}{int(junk)}.dcm", screen,
                                      stored=stored, declared=declared, mono1=mono1, junk_high_bits=junk)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame = read_file(path).frame
            shown = as_uint8(frame)                   # what the cropper sees
            assert np.array_equal(shown, screen), (path.name, int(shown.min()), int(shown.max()))
            for size in (64, 224):
                crop, _ = prepare(frame, PreprocessSpec(size=size))
                assert no_image_reason(crop) is None, (path.name, size)
            tried += 1
    # a dark 12-bit image is shown dark, as its header says (not stretched as if it were 10-bit)
    dark = (screens[0].astype(np.uint16) << 2)        # values up to 1020 of 4095
    make_dicom(tmp_path / "dark12.dcm", dark, patient=False)
    import pydicom

    ds = pydicom.dcmread(tmp_path / "dark12.dcm")
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(tmp_path / "dark12.dcm")
    assert np.array_equal(as_uint8(read_file(tmp_path / "dark12.dcm").frame), (dark >> 4).astype(np.uint8))
    reliability_ledger.add("gate_dicom_depths", inputs_tried=tried + 1, outputs_checked=3 * tried + 1)


def _usedge(*args, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "usedge", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture()
def batch(tmp_path, runtime_images, screens) -> tuple[Path, list[str], list[str]]:
    """A folder: the 3 test images, 2 scanner screens, a 12-bit MONOCHROME1 DICOM of a screen that says 16
    bits, and 3 screens without an image (probe in air, lit and empty, blank)."""
    folder = tmp_path / "batch"
    folder.mkdir()
    good = []
    for p in sorted(runtime_images.glob("*.png")):
        (folder / p.name).write_bytes(p.read_bytes())
        good.append(p.name)
    for i, s in enumerate(screens):
        cv2.imwrite(str(folder / f"screen{i}.png"), s)
        good.append(f"screen{i}.png")
    _write_depth_dicom(folder / "mono1_12in16.dcm", screens[0], stored=12, declared=16, mono1=True)
    good.append("mono1_12in16.dcm")
    empty = []
    for name, image in _empty_screens().items():
        cv2.imwrite(str(folder / name), image)
        empty.append(name)
    return folder, good, empty


def test_infer_files_gives_no_image_results(batch, runtime_model, tmp_path, reliability_ledger):
    """`usedge infer FOLDER`: each screen without an image is a `no_image` line (no label, no probabilities,
    a reason), one `usedge: no image:` line on stderr, counted in the last line; every other file is
    classified; not a failure (exit 0). CSV the same, with empty cells."""
    folder, good, empty = batch
    out, table = tmp_path / "r.jsonl", tmp_path / "r.csv"
    p = _usedge("infer", runtime_model, folder, "--out", out)
    assert p.returncode == 0, p.stderr
    rows = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == set(good) | set(empty)
    for name in good:
        assert rows[name]["state"] == "live" and rows[name]["label"] and rows[name]["probs"], rows[name]
    for name in empty:
        r = rows[name]
        assert r["state"] == "no_image" and r["label"] is None and r["probs"] is None and r["class_index"] is None
        assert r["reason"] and "error" not in r
    assert "frame is blank" in rows["blank.png"]["reason"]
    assert "no usable image" in rows["gray.png"]["reason"] and "no usable image" in rows["air.png"]["reason"]
    no_image_lines = [line for line in p.stderr.splitlines() if line.startswith("usedge: no image: ")]
    assert sorted(Path(line.split(": ")[2]).name for line in no_image_lines) == sorted(empty), p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert f"{len(good) + len(empty)}/{len(good) + len(empty)} files, {len(good)} frames classified, " \
           f"{len(empty)} no image" in last and "failed" not in last, last
    p = _usedge("infer", runtime_model, folder, "--format", "csv", "--out", table)
    assert p.returncode == 0, p.stderr
    with open(table, newline="") as fh:
        cells = {Path(r["source"]).name: r for r in csv.DictReader(fh)}
    for name in empty:
        assert cells[name]["state"] == "no_image" and cells[name]["label"] == ""
        assert all(v == "" for k, v in cells[name].items() if k.startswith("p_"))
        assert cells[name]["ms_model"] == "" and cells[name]["ms_total"] != ""   # the model did not run (was 0.000)
    reliability_ledger.add("gate_infer_files", inputs_tried=2 * len(rows), processes_run=2,
                           outputs_checked=len(rows) + len(cells) + len(no_image_lines) + 1)


def test_no_quality_gate_classifies_files_anyway(batch, runtime_model, tmp_path, reliability_ledger):
    """`--no-quality-gate`: the lit empty screen and the probe in air get labels; a blank frame is still
    a `no_image` result (nothing to classify)."""
    folder, good, empty = batch
    out = tmp_path / "r.jsonl"
    p = _usedge("infer", runtime_model, folder, "--out", out, "--no-quality-gate")
    assert p.returncode == 0, p.stderr
    rows = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    for name in ("air.png", "gray.png", *good):
        assert rows[name]["state"] == "live" and rows[name]["label"], rows[name]
    assert rows["blank.png"]["state"] == "no_image" and rows["blank.png"]["label"] is None
    assert "1 no image" in p.stderr.strip().splitlines()[-1]
    reliability_ledger.add("gate_infer_files_off", inputs_tried=len(rows), processes_run=1, outputs_checked=len(rows))


def test_serve_upload_without_an_image(serve_classifier, serve_images, reliability_ledger):
    """An upload without an image: 422 with `state: no_image`, no label, no probabilities, the reason;
    counted in /metrics; the next real upload is classified. With quality_gate=False it is classified."""
    pytest.importorskip("fastapi", reason="usedge serve needs the 'serve' extra")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from usedge.serve.app import create_app

    empty = _empty_screens()
    answers = 0
    with TestClient(create_app(serve_classifier)) as client:
        for name, image in empty.items():
            r = client.post("/v1/predict", files={"file": (name, cv2.imencode(".png", image)[1].tobytes(), "image/png")})
            d = r.json()
            assert r.status_code == 422 and d["state"] == "no_image", (name, r.text)
            assert d["label"] is None and d["probs"] is None and d["reason"] and d["error"].startswith("upload: ")
            # as infer's no_image lines: which model and engine answered
            assert d["engine"] == serve_classifier.backend.name and d["model_sha256"] == serve_classifier.model_sha256
            answers += 1
        metrics = client.get("/metrics").text
        assert 'kind="no_image"} 3.0' in metrics, [m for m in metrics.splitlines() if "no_image" in m]
        r = client.post("/v1/predict", content=serve_images[0].read_bytes())
        assert r.status_code == 200 and r.json()["state"] == "live" and r.json()["label"]
    with TestClient(create_app(serve_classifier, quality_gate=False)) as client:
        r = client.post("/v1/predict", content=cv2.imencode(".png", empty["gray.png"])[1].tobytes())
        assert r.status_code == 200 and r.json()["label"], r.text
    reliability_ledger.add("gate_serve_uploads", inputs_tried=5, outputs_checked=answers + 3)


def test_a_thumbnail_is_too_small_to_classify(runtime_model, runtime_images, monkeypatch):
    """A crop upscaled more than MAX_UPSCALE times to the model input (a 16 x 12 thumbnail for a 224 px
    model) is `no_image` with the reason, not a confident label from a few pixels; --no-quality-gate
    classifies it anyway."""
    from usedge.runtime import quality
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.formats import read_image
    from usedge.runtime.pipeline import FramePipeline

    assert quality.too_small_reason(16, 12, 224) is not None and "16x12 px, upscaled 19x" in quality.too_small_reason(16, 12, 224)
    assert quality.too_small_reason(28, 40, 224) is None and quality.too_small_reason(12, 12, 96) is None
    assert quality.too_small_reason(11, 11, 96) is not None
    image = read_image(sorted(runtime_images.glob("*.png"))[0])
    with Classifier.load(runtime_model, threads=1) as clf:
        size = clf.spec.size
        monkeypatch.setattr(quality, "MAX_UPSCALE", 2)        # the test model is small (64 px): scale the rule
        small = cv2.resize(image, (size // 2 - 4, size // 2 - 4), interpolation=cv2.INTER_AREA)
        ok = cv2.resize(image, (size // 2 + 8, size // 2 + 8), interpolation=cv2.INTER_AREA)
        refused = FramePipeline(clf).process(small)
        assert refused.state == "no_image" and refused.label is None and "upscaled" in refused.reason
        assert refused.crop_box[2] > 0 and refused.fov_box[2] > 0          # the boxes the reason speaks of
        assert FramePipeline(clf).process(ok).state == "live"
        assert FramePipeline(clf, quality_gate=False).process(small).state == "live"
