"""Classifier: artifact -> Prediction, on the export fixture's real ONNX files (fp32, int8, fp16)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from usedge.errors import ModelError
from usedge.fileio import sha256_file
from usedge.runtime.classifier import Classifier, Prediction
from usedge.runtime.crop import prepare
from usedge.runtime.preprocess import normalise
from usedge.runtime.formats import read_image


@pytest.fixture(scope="module")
def frame(runtime_images):
    return read_image(sorted(runtime_images.glob("*.png"))[0])


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx", "model.fp16.onnx"])
def test_predict_every_artifact(tiny_onnx_dir, frame, name):
    path = tiny_onnx_dir / name
    with Classifier.load(path, backend="ort-cpu", threads=1) as clf:
        pred = clf.predict(frame, frame_index=3, source="x.png")
    assert isinstance(pred, Prediction)
    assert pred.label in clf.class_names and pred.label == max(pred.probs, key=pred.probs.get)
    assert abs(sum(pred.probs.values()) - 1.0) < 1e-3
    assert pred.model_sha256 == sha256_file(path)
    assert set(pred.latency_ms) == {"crop", "normalise", "model", "post", "total"}
    assert all(v >= 0 for v in pred.latency_ms.values())
    assert pred.cam is not None and pred.cam.ndim == 2
    x, y, w, h = pred.crop_box
    assert w > 0 and h > 0 and x + w <= frame.shape[1] and y + h <= frame.shape[0]
    record = pred.to_record()
    json.dumps(record)
    assert record["frame"] == 3 and record["source"] == "x.png" and "cam" not in record
    assert pred.engine == record["engine"] == "ort-cpu"      # results name the backend that ran the model


def test_model_input_is_the_one_preprocessing_bit_for_bit(runtime_model, frame):
    with Classifier.load(runtime_model, backend="ort-cpu", threads=1) as clf:
        image, info = clf.prepare(frame)
        assert np.array_equal(image, prepare(frame, clf.spec)[0])
        batch = clf.normalise(image)
        assert np.array_equal(batch, normalise(image, clf.spec))
        direct = clf.post(clf.run_model(batch), [info])[0]
        assert direct.probs == clf.predict(frame).probs      # predict is exactly these stages


def test_predict_batch_matches_predict(runtime_model, runtime_images):
    frames = [read_image(p) for p in sorted(runtime_images.glob("*.png"))]
    with Classifier.load(runtime_model, backend="ort-cpu", threads=1) as clf:
        single = [clf.predict(f) for f in frames]
        batch = clf.predict_batch(frames, first_index=10)
    assert [p.frame_index for p in batch] == [10, 11, 12]
    for a, b in zip(single, batch):
        assert a.label == b.label
        np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-5)


def test_missing_and_metadata_free_models_are_refused(tmp_path, runtime_model):
    import onnx

    with pytest.raises(ModelError, match="not found"):
        Classifier.load(tmp_path / "nope.onnx")
    model = onnx.load(str(runtime_model))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelError, match="no usedge metadata"):
        Classifier.load(bare, backend="ort-cpu")


def _flip_conv1_bit(src, dst):
    """Flip one bit in the first conv1 weight of an exported ONNX (metadata kept): what bit rot does."""
    import onnx

    model = onnx.load(str(src))
    weight = next(t for t in model.graph.initializer if "conv1" in t.name and len(t.dims) == 4)
    raw = bytearray(weight.raw_data)
    raw[3] ^= 0x40                     # a high exponent bit of the first float32
    weight.raw_data = bytes(raw)
    onnx.save(model, str(dst))
    return dst


def test_one_flipped_weight_bit_is_refused_and_no_verify_overrides(tmp_path, runtime_model, frame):
    damaged = _flip_conv1_bit(runtime_model, tmp_path / "damaged.onnx")
    with pytest.raises(ModelError, match="damaged or altered: weights digest") as err:
        Classifier.load(damaged, backend="ort-cpu", threads=1)
    assert "\n" not in err.value.one_line() and "--no-verify" in err.value.one_line()
    with Classifier.load(damaged, backend="ort-cpu", threads=1, verify=False) as clf:
        assert clf.predict(frame).label in clf.class_names
    with Classifier.load(runtime_model, backend="ort-cpu", threads=1) as clf:   # the intact file verifies
        assert clf.info.weights_sha256


def test_cli_no_verify(tmp_path, runtime_model, runtime_images):
    from typer.testing import CliRunner

    from usedge.cli import app

    damaged = _flip_conv1_bit(runtime_model, tmp_path / "damaged.onnx")
    image = str(sorted(runtime_images.glob("*.png"))[0])
    refused = CliRunner().invoke(app, ["infer", str(damaged), image, "--backend", "ort-cpu"])
    assert refused.exit_code != 0 and "weights digest" in str(refused.exception)
    allowed = CliRunner().invoke(app, ["infer", str(damaged), image, "--backend", "ort-cpu", "--no-verify"])
    assert allowed.exit_code == 0, allowed.output
    assert "usedge: model card: fp32 model " in allowed.output and "SYNTHETIC data" in allowed.output


def test_logits_are_an_error_not_guessed_into_probabilities(runtime_model):
    """`probs` must be probabilities: logits, or per-class sigmoids (each in 0..1, not summing to 1), give an
    `error` result with the reason; they were softmaxed by guessing, and logits that happened to look like
    probabilities passed as they were."""
    from usedge.runtime.crop import CropInfo

    clf = Classifier.load(runtime_model, backend="ort-cpu", threads=1)
    info = CropInfo(frame_shape=(64, 64), fov_box=(0, 0, 64, 64), crop_box=(0, 0, 64, 64))
    for row in ([2.0, -1.0, 0.5], [0.51, 0.525, 0.539]):
        (pred,) = clf.post({"probs": np.array([row], np.float32)}, [info])
        assert pred.state == "error" and not pred.has_label and "'probs' must be probabilities" in pred.reason
    (pred,) = clf.post({"probs": np.array([[0.2, 0.3, 0.5]], np.float32)}, [info])
    assert pred.state == "live" and pred.probs[pred.label] == pytest.approx(0.5)


def test_a_result_below_the_card_margin_is_uncertain_everywhere(runtime_model, tmp_path):
    """The model card's uncertain_margin qualifies every result the same way: `margin` and `uncertain` in
    the prediction JSON (infer's JSONL, serve), in the CSV, and the overlay says "uncertain (label?)"."""
    import csv

    from usedge.runtime.crop import CropInfo
    from usedge.runtime.overlay import draw_prediction
    from usedge.runtime.sinks import CsvSink

    clf = Classifier.load(runtime_model, backend="ort-cpu", threads=1)
    clf.uncertain_margin = 0.2
    info = CropInfo(frame_shape=(96, 96), fov_box=(0, 0, 96, 96), crop_box=(0, 0, 96, 96))
    close, clear = clf.post({"probs": np.array([[0.493, 0.462, 0.045], [0.1, 0.8, 0.1]], np.float32)}, [info, info])
    assert close.to_record()["margin"] == pytest.approx(0.031, abs=1e-6) and close.to_record()["uncertain"] is True
    assert clear.to_record()["margin"] == pytest.approx(0.7, abs=1e-6) and clear.to_record()["uncertain"] is False
    clf.uncertain_margin = None
    (unknown,) = clf.post({"probs": np.array([[0.493, 0.462, 0.045]], np.float32)}, [info])
    assert unknown.to_record()["uncertain"] is None and unknown.to_record()["margin"] == pytest.approx(0.031, abs=1e-6)
    with CsvSink(tmp_path / "r.csv", clf.class_names) as sink:
        sink.write(close)
        sink.write(clear)
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["uncertain"] for r in rows] == ["1", "0"] and float(rows[0]["margin"]) == pytest.approx(0.031, abs=1e-6)
    frame = np.full((96, 96), 90, np.uint8)
    assert not np.array_equal(draw_prediction(frame, close), draw_prediction(frame, unknown))   # the tag differs


def test_the_overlay_shows_the_pixels_that_were_classified():
    """A float image in [0, 1], a 12-bit one and a BGRA one are drawn as the crop read them (the float one
    was drawn black, the 12-bit one with other contrast); the caller's frame is never drawn on."""
    from usedge.runtime.overlay import to_bgr

    rng = np.random.default_rng(0)
    gray = rng.integers(30, 220, (64, 80), dtype=np.uint8)
    want = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    bgra = np.dstack([want, np.full((64, 80), 255, np.uint8)])
    for frame in (gray.astype(np.float32) / 255, gray.astype(np.uint16) << 4, bgra, want):
        before = frame.copy()
        out = to_bgr(frame)
        assert out.dtype == np.uint8 and np.array_equal(out, want)
        out[:] = 0
        assert np.array_equal(frame, before)
    nan = np.full((64, 80), np.nan, np.float32)         # a frame the crop refused still draws (black)
    assert to_bgr(nan).shape == (64, 80, 3)


def test_predict_runs_the_quality_gate_unless_told_not_to(runtime_model):
    """Classifier.predict, the README's API, labelled a lit empty screen (and thumbnails) that files,
    streams and uploads answer with no_image (outside audit of the library API)."""
    from usedge.errors import NoImage

    clf = Classifier.load(runtime_model, backend="ort-cpu", threads=1)
    rng = np.random.default_rng(1)
    empty = np.clip(128 + rng.normal(0, 3, (480, 640)), 0, 255).astype(np.uint8)
    with pytest.raises(NoImage, match="uniform"):
        clf.predict(empty)
    with pytest.raises(NoImage, match="uniform"):
        clf.predict_batch([empty])
    assert clf.predict(empty, quality=None).has_label      # the gate off: what the model says


def test_a_closed_classifier_and_bad_load_options_say_so(runtime_model, runtime_images):
    """A closed Classifier blamed the model file ("failed to run on this frame ... AttributeError");
    threads=1000 started 1000 threads, threads=0 gave onnxruntime's pinned default; run_files with one
    path as a str walked its characters (outside audit of the library API)."""
    from usedge.errors import ConfigError
    from usedge.runtime.pipeline import FramePipeline, run_files

    for threads in (0, -1, 1000, 2.5, "2", True):
        with pytest.raises(ConfigError, match="threads must be"):
            Classifier.load(runtime_model, backend="ort-cpu", threads=threads)
    clf = Classifier.load(runtime_model, backend="ort-cpu", threads=np.int64(1))      # a numpy int is a number
    assert clf.threads == 1 and type(clf.threads) is int
    one = str(sorted(Path(runtime_images).rglob("*.png"))[0])
    run = run_files(FramePipeline(clf), one)
    assert run.files == 1 and run.frames + run.no_image == 1 and not run.failed, run.line()
    run = run_files(FramePipeline(clf), (p for p in [one, one.encode()]))            # a generator, a bytes path
    assert run.files == 2 and not run.failed, run.line()
    clf.close()
    with pytest.raises(ModelError, match="was closed"):
        clf.predict(read_image(one))


def test_the_api_names_a_wrongly_formed_argument_in_one_line(runtime_model, frame):
    """Raw ValueError / TypeError / IndexError from the public entry points, or a frame's rows taken as a
    batch (outside audit of the library API): each is an InputError now, or is accepted as meant."""
    from usedge.errors import InputError, NoImage
    from usedge.runtime.formats import read_image_bytes

    clf = Classifier.load(runtime_model, backend="ort-cpu", threads=1)
    for regions, words in (([(1, 2, 3)],), "is not one"), ((10, 10, 200, 200), "one box"), \
            ([(float("nan"), 10, 200, 200)], "is not one"):
        with pytest.raises(InputError, match=words):
            clf.predict(frame, regions=regions)
    with pytest.raises(InputError, match="normalise takes"):
        clf.normalise(np.zeros((50, 50), np.uint8))
    with pytest.raises(InputError, match="one frame"):
        clf.predict_batch(frame)
    assert [p.label for p in clf.predict_batch(f for f in [frame, frame])] == [clf.predict(frame).label] * 2
    with pytest.raises(NoImage, match="frame 1 of the batch"):
        clf.predict_batch([frame, np.zeros_like(frame)])
    ok, png = cv2.imencode(".png", frame)
    assert read_image_bytes(memoryview(png.tobytes())).frame.shape[:2] == frame.shape[:2]
    assert read_image_bytes(png).frame.shape[:2] == frame.shape[:2]          # a numpy buffer
    from usedge.errors import ConfigError
    with pytest.raises(ConfigError, match="quality must be"):
        clf.predict(frame, quality=True)
    with pytest.raises(InputError, match="not bytes"):
        read_image_bytes("scan.png")
