"""Classifier: artifact -> Prediction, on the export fixture's real ONNX files (fp32, int8, fp16)."""

from __future__ import annotations

import json

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


def test_looks_like_probs_is_allclose_written_out():
    """The per-frame logits-or-probabilities test gives numpy.allclose's answer, at its tolerance edges too."""
    from usedge.runtime.classifier import looks_like_probs

    def reference(p):
        return bool(np.all(p >= -1e-4) and np.all(p <= 1 + 1e-4) and np.allclose(p.sum(axis=-1), 1.0, atol=1e-2))

    rng = np.random.default_rng(3)
    cases = [np.array([[0.5, 0.5 + d]], np.float32) for d in np.linspace(-0.0102, 0.0102, 409, dtype=np.float32)]
    cases += [rng.dirichlet(np.ones(3), 2).astype(np.float32) * np.float32(s) for s in (1, 0.99, 1.0099, 1.02)]
    cases += [np.array([[-1e-4, 0.5, 0.5]], np.float32), np.array([[-2e-4, 0.5, 0.5]], np.float32),
              np.array([[np.nan, 0.5, 0.5]], np.float32), (rng.normal(size=(2, 3)) * 3).astype(np.float32)]
    for p in cases:
        assert looks_like_probs(p) == reference(p), p
