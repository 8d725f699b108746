"""Model metadata (runtime/model_info.py): schema version, full validation, one-line refusals.

Each case edits the metadata of the real exported tiny model and loads it with Classifier.load, as a
user's damaged or future-version file would arrive."""

from __future__ import annotations

import json

import onnx
import pytest

from usedge.errors import ModelError
from usedge.runtime.classifier import Classifier
from usedge.runtime.model_info import METADATA_KEY, SCHEMA_VERSION, model_info_from_metadata


def _with_info(src, dst, edit) -> str:
    model = onnx.load(str(src))
    props = {p.key: p for p in model.metadata_props}
    d = json.loads(props[METADATA_KEY].value)
    edit(d)
    props[METADATA_KEY].value = json.dumps(d)
    onnx.save(model, str(dst))
    return dst


def _set(key, value, section=None):
    def edit(d):
        (d.setdefault(section, {}) if section else d)[key] = value
    return edit


CASES = [
    ("newer_major", _set("schema_version", "2.0"), "schema 2.0 is newer than this usedge reads"),
    ("size_list", _set("input_size", [64, 64]), "input_size must be an integer, got list"),
    ("size_string", _set("input_size", "64"), "input_size must be an integer, got str"),
    ("size_huge", _set("input_size", 100000), "input_size 100000 is outside 16..2048"),
    ("preprocess_size_huge", _set("size", 100000, "preprocess"), "preprocess.size 100000 is outside"),
    ("duplicate_classes", _set("class_names", ["lipoma", "lipoma", "pilomatricoma"]), "duplicate class name"),
    ("class_newline", _set("class_names", ["epidermal\ncyst", "lipoma", "pilomatricoma"]), "has a control character"),
    ("future_preprocess_field", _set("gamma_correction", 2.2, "preprocess"),
     "unknown preprocessing field.*gamma_correction"),
    ("future_field", _set("tokenizer", "x"), "unknown field.*tokenizer"),
    ("bad_precision", _set("precision", "int4"), "precision must be one of"),
    ("bad_mean", _set("mean", "0.5", "preprocess"), "preprocess.mean must be a number"),
    ("bad_outputs", _set("outputs", ["cam"]), "outputs must list 'probs'"),
    ("unknown_resize", _set("resize", "bicubic", "preprocess"), "unknown preprocess.resize \"bicubic\""),
    ("bad_crop", _set("crop", "garbage", "preprocess"), "preprocess.crop \"garbage\": bad crop"),
    ("bad_crop_box", _set("crop", "0,0,-5,0", "preprocess"), "preprocess.crop \"0,0,-5,0\": bad crop"),
    # the model card: read by doctor / infer / serve for the provenance line and the uncertainty margin
    ("card_checks_text", _set("checks", "oops", "model_card"), "model_card.checks must be a list"),
    ("card_checks_numbers", _set("checks", [1, 2], "model_card"), "model_card.checks must be a list of objects"),
    ("card_cv_list", _set("cross_validation", [1, 2], "model_card"), "model_card.cross_validation must be an object"),
    ("card_cv_rows", _set("cross_validation", {"rows": {"a": 1}}, "model_card"), "cross_validation.rows must be"),
    ("card_data_text", _set("training_data", "synthetic", "model_card"), "model_card.training_data must be an object"),
    ("card_margin_nan", _set("uncertain_margin", float("nan"), "model_card"), "uncertain_margin must be a number in 0..1"),
    ("card_margin_true", _set("uncertain_margin", True, "model_card"), "uncertain_margin must be a number in 0..1"),
    ("card_margin_negative", _set("uncertain_margin", -1, "model_card"), "uncertain_margin must be a number in 0..1"),
    ("card_margin_text", _set("uncertain_margin", "0.2", "model_card"), "uncertain_margin must be a number in 0..1"),
]


@pytest.mark.parametrize("name,edit,message", CASES, ids=[c[0] for c in CASES])
def test_bad_metadata_is_refused_with_one_line(tmp_path, runtime_model, name, edit, message):
    path = _with_info(runtime_model, tmp_path / f"{name}.onnx", edit)
    with pytest.raises(ModelError, match=message) as err:
        Classifier.load(path, backend="ort-cpu", threads=1)
    line = err.value.one_line()
    assert "\n" not in line and str(path) in line


def test_newer_major_names_both_versions_and_says_upgrade():
    d = {"class_names": ["a", "b"], "input_size": 64, "schema_version": "3.1", "preprocess": {"size": 64, "zoom": 2}}
    with pytest.raises(ModelError) as err:
        model_info_from_metadata({METADATA_KEY: json.dumps(d)}, "m.onnx")
    assert "3.1" in err.value.message and SCHEMA_VERSION in err.value.message and "upgrade" in err.value.hint


def test_unknown_resize_says_upgrade(tmp_path, runtime_model):
    path = _with_info(runtime_model, tmp_path / "resize.onnx", _set("resize", "bicubic", "preprocess"))
    with pytest.raises(ModelError) as err:
        Classifier.load(path, backend="ort-cpu", threads=1)
    assert "upgrade usedge" in err.value.hint and "area, halve-linear" in err.value.message


def test_resize_is_recorded_and_a_model_without_it_gets_area(tmp_path, runtime_model, tiny_export_checkpoint):
    """The export records the checkpoint's resize; a model exported before PreprocessSpec.resize existed
    prepares its pixels as it always did ("area")."""
    from usedge.export.onnx_export import read_model_info
    from usedge.runtime.model_info import ModelInfo
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.checkpoint import read_checkpoint

    info = read_model_info(runtime_model)
    assert info.preprocess.resize == read_checkpoint(tiny_export_checkpoint)["preprocess"]["resize"]
    assert info.metadata_props()["resize"] == info.preprocess.resize
    fast = ModelInfo(class_names=["a", "b"], input_size=224, preprocess=PreprocessSpec(resize="halve-linear"))
    assert ModelInfo.from_json(fast.to_json()).preprocess.resize == "halve-linear"
    old = _with_info(runtime_model, tmp_path / "old.onnx", lambda d: d["preprocess"].pop("resize"))
    assert Classifier.load(old, backend="ort-cpu", threads=1).spec.resize == "area"


def test_checkpoint_with_unknown_resize_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.checkpoint import read_checkpoint, save_checkpoint
    from usedge.train.model import build_model

    path = save_checkpoint(tmp_path / "best.pt", build_model("resnet18", num_classes=2), class_names=["a", "b"],
                           preprocess=PreprocessSpec(resize="halve-linear"))
    assert read_checkpoint(path)["preprocess"]["resize"] == "halve-linear"
    payload = torch.load(path, weights_only=True)
    payload["preprocess"]["resize"] = "bicubic"
    torch.save(payload, path)
    with pytest.raises(ModelError, match="resize method 'bicubic'") as err:
        read_checkpoint(path)
    assert str(path) in err.value.one_line() and "upgrade usedge" in err.value.hint


def test_exported_file_carries_schema_version_and_digest(runtime_model):
    from usedge.export.onnx_export import read_model_info
    from usedge.runtime.model_info import weights_digest

    info = read_model_info(runtime_model)
    assert info.schema_version == SCHEMA_VERSION
    assert info.weights_sha256 == weights_digest(runtime_model.read_bytes())
    import hashlib

    assert info.weights_sha256 == hashlib.sha256(onnx.load(str(runtime_model)).graph.SerializeToString()).hexdigest()


def test_a_user_preset_is_checked_when_used_not_at_load(tmp_path, runtime_model):
    """preset:NAME may name a preset of the user's own file (--presets): accepted at load."""
    path = _with_info(runtime_model, tmp_path / "preset.onnx", _set("crop", "preset:my_scanner", "preprocess"))
    assert Classifier.load(path, backend="ort-cpu", threads=1).spec.crop == "preset:my_scanner"


def test_a_fixed_batch_other_than_one_is_refused_at_load(tmp_path, runtime_model):
    """A graph whose input has a fixed batch of 4 loads in onnxruntime but fails on every frame: refused at
    load, in one line, with what usedge runs."""
    model = onnx.load(str(runtime_model))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 4
    onnx.save(model, str(tmp_path / "batch4.onnx"))
    with pytest.raises(ModelError, match="fixed batch of 4") as err:
        Classifier.load(tmp_path / "batch4.onnx", backend="ort-cpu", threads=1, verify=False)   # the graph is edited
    assert "batch 1 or dynamic" in err.value.one_line()


def test_files_onnxruntime_cannot_load_say_what_they_are(tmp_path, runtime_model):
    """A PyTorch checkpoint passed as the model says so and how to export it; an ONNX whose external
    weights file is missing names that file (the message was cut mid-sentence, with an fp16 hint)."""
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"PK\x03\x04" + bytes(200))                   # torch.save writes a zip archive
    with pytest.raises(ModelError, match="this is a PyTorch checkpoint, not an ONNX model") as err:
        Classifier.load(ckpt, backend="ort-cpu", threads=1)
    assert f"usedge export {ckpt}" in err.value.one_line() and "fp16" not in err.value.one_line()
    model = onnx.load(str(runtime_model))
    onnx.save(model, str(tmp_path / "split.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="split.onnx.data", size_threshold=0)
    (tmp_path / "split.onnx.data").unlink()
    with pytest.raises(ModelError, match=r"separate file that is missing \(split.onnx.data\)") as err:
        Classifier.load(tmp_path / "split.onnx", backend="ort-cpu", threads=1, verify=False)
    assert "fp16" not in err.value.one_line()


@pytest.mark.parametrize("card", [{"checks": None}, {"cross_validation": {"rows": {"overall accuracy": {"accuracy": "0.718"}}}},
                                  {"cross_validation": {"rows": {"overall accuracy": {"accuracy": ["0.7", "0.1"]}}}},
                                  {"training_data": {"sha256": 5, "images": None}}])
def test_an_odd_model_card_still_gives_one_provenance_line(tmp_path, runtime_model, card):
    """Card values of an unexpected kind (null checks, accuracies as text) load and give a provenance line
    with n/a, never a traceback in infer / doctor / serve."""
    from usedge.runtime.model_info import model_card_line

    def edit(d):
        d.setdefault("model_card", {}).update(card)
    path = _with_info(runtime_model, tmp_path / "card.onnx", edit)
    line = model_card_line(Classifier.load(path, backend="ort-cpu", threads=1).info)
    assert "\n" not in line and "uncertain below margin" in line
