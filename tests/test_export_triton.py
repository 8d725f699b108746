"""Triton model repository: config.pbtxt parsed with Triton's own model_config.proto (tritonclient)."""

from __future__ import annotations

import json

import pytest

from usedge.errors import ConfigError
from usedge.export.triton import TritonSettings, config_text, write_model_repository
from usedge.fileio import sha256_file
from usedge.runtime.model_info import METADATA_KEY, ModelInfo

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="needs tritonclient[grpc] (dev extra) for Triton's model_config.proto")
text_format = pytest.importorskip("google.protobuf.text_format")


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_onnx_repository_parses_as_triton_model_config(tmp_path, tiny_onnx_dir):
    settings = TritonSettings(name="skin_tumor", max_batch_size=16, preferred_batch_sizes=[4, 8, 16],
                              max_queue_delay_us=500, instance_kind="KIND_GPU", instance_count=2)
    config_path = write_model_repository(tmp_path / "repo", tiny_onnx_dir / "model.onnx", settings)
    assert config_path == tmp_path / "repo" / "skin_tumor" / "config.pbtxt"
    model_file = tmp_path / "repo" / "skin_tumor" / "1" / "model.onnx"
    assert sha256_file(model_file) == sha256_file(tiny_onnx_dir / "model.onnx")
    cfg = _parse(config_path)
    assert cfg.name == "skin_tumor" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("image", model_config_pb2.TYPE_FP32, [1, 64, 64])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("probs", [3]), ("cam", [3, 8, 8])]
    assert cfg.output[0].label_filename == "labels.txt"
    assert cfg.HasField("dynamic_batching")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cfg.instance_group[0].count == 2
    info = ModelInfo.from_json(cfg.parameters[METADATA_KEY].string_value)
    assert info.class_names == ["epidermal_cyst", "lipoma", "pilomatricoma"]
    labels = (tmp_path / "repo" / "skin_tumor" / "labels.txt").read_text().split()
    assert labels == info.class_names


def test_plan_repository_and_batch_limit(tmp_path, tiny_onnx_dir):
    plan = tmp_path / "model.h100.sm90.trt10.13.engine"
    plan.write_bytes(b"not a real plan: only copied")
    settings = TritonSettings(max_batch_size=8)
    config_path = write_model_repository(tmp_path / "repo", plan, settings, engine_max_batch=8,
                                         onnx_for_io=tiny_onnx_dir / "model.fp16.onnx")
    cfg = _parse(config_path)
    assert cfg.platform == "tensorrt_plan"
    assert (tmp_path / "repo" / "usedge" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    with pytest.raises(ConfigError, match="exceeds the engine"):
        write_model_repository(tmp_path / "repo2", plan, TritonSettings(max_batch_size=16), engine_max_batch=8,
                               onnx_for_io=tiny_onnx_dir / "model.fp16.onnx")


def test_strings_with_quotes_and_unicode_survive(tmp_path):
    info = ModelInfo.from_json(json.dumps({"class_names": ['cyst "A"', "lipôma\\b"], "input_size": 64,
                                           "preprocess": {"size": 64}}))
    text = config_text(TritonSettings(name="m"), "onnxruntime_onnx", [("image", [1, 64, 64])], [("probs", [2])], info)
    (tmp_path / "config.pbtxt").write_text(text)
    cfg = _parse(tmp_path / "config.pbtxt")
    assert ModelInfo.from_json(cfg.parameters[METADATA_KEY].string_value).class_names == ['cyst "A"', "lipôma\\b"]


def test_export_with_triton_flag(bare_export):
    report, _, triton = bare_export
    cfg = _parse(triton / "usedge" / "config.pbtxt")
    assert cfg.max_batch_size == 4 and cfg.platform == "onnxruntime_onnx"
    assert [o.name for o in cfg.output] == ["probs"]
    assert any(c.name.startswith("config.pbtxt parses") and c.passed for c in report.checks)
