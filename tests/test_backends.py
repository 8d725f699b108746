"""Backends behind one protocol: availability, auto choice, onnxruntime options; GPU paths where a GPU exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from usedge.errors import BackendUnavailable, ConfigError, ModelError
from usedge.runtime.backends import BACKENDS, availability, candidate_backends, create_backend


def test_every_backend_answers_available_with_a_reason():
    table = availability()
    assert set(table) == {"ort-cpu", "ort-cuda", "ort-trt", "ort-trt-rtx", "tensorrt", "openvino"}
    for name, (ok, why) in table.items():
        assert isinstance(ok, bool) and why, name
    assert table["ort-cpu"][0]


def test_auto_picks_a_working_backend_and_says_why(runtime_model):
    name, reason = candidate_backends(runtime_model, "auto")[0]
    assert BACKENDS[name].available()[0]
    assert "fastest available" in reason


def test_engine_needs_tensorrt_backend(tmp_path, runtime_model):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ConfigError, match="needs an .onnx"):
        candidate_backends(engine, "ort-cpu")
    with pytest.raises(ConfigError, match="needs a TensorRT"):
        candidate_backends(runtime_model, "tensorrt")
    with pytest.raises(ConfigError, match="needs an .onnx"):
        candidate_backends(engine, "openvino")
    with pytest.raises(ConfigError, match="unknown backend"):
        candidate_backends(runtime_model, "nonesuch")
    if not BACKENDS["tensorrt"].available()[0]:
        with pytest.raises(BackendUnavailable, match="TensorRT"):
            candidate_backends(engine, "auto")


def test_ort_cpu_matches_plain_onnxruntime(runtime_model):
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 1, 64, 64)).astype(np.float32)
    with create_backend("ort-cpu", threads=1, spinning=False, opt_level="basic").load(runtime_model) as b:
        out = b.infer(x)
        assert b.output_names == ["probs", "cam"] and b.providers == ["CPUExecutionProvider"]
        assert b.session.get_session_options().intra_op_num_threads == 1
    sess = ort.InferenceSession(str(runtime_model), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(out["probs"], ref[0], atol=1e-5)
    assert out["probs"].shape == (2, 3)


def test_bad_options_and_bad_model(tmp_path):
    with pytest.raises(ModelError, match="optimisation level"):
        create_backend("ort-cpu", opt_level="fast")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        create_backend("ort-cpu").load(bad)


@pytest.mark.gpu
def test_ort_cuda_io_binding_matches_cpu(runtime_model):
    ok, why = BACKENDS["ort-cuda"].available()
    if not ok:
        pytest.skip(f"ort-cuda unavailable here: {why}")
    x = np.random.default_rng(1).standard_normal((3, 1, 64, 64)).astype(np.float32)
    with create_backend("ort-cpu").load(runtime_model) as cpu, create_backend("ort-cuda").load(runtime_model) as gpu:
        a, b = cpu.infer(x), gpu.infer(x)
        b2 = gpu.infer(x)   # the reused device input buffer
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-3)
    np.testing.assert_allclose(b["probs"], b2["probs"], atol=1e-6)


@pytest.mark.gpu
def test_native_tensorrt_engine_matches_onnx(tmp_path, tiny_onnx_dir):
    ok, why = BACKENDS["tensorrt"].available()
    if not ok:
        pytest.skip(f"native TensorRT unavailable here: {why}")
    from usedge.export.tensorrt import build_engine  # noqa: F401  (export area builds the plan + sidecar)

    engine, _ = build_engine(Path(tiny_onnx_dir) / "model.fp16.onnx", tmp_path)
    x = np.random.default_rng(2).standard_normal((2, 1, 64, 64)).astype(np.float32)
    with create_backend("ort-cpu").load(Path(tiny_onnx_dir) / "model.onnx") as cpu, \
            create_backend("tensorrt").load(engine) as trt:
        a, b = cpu.infer(x), trt.infer(x)
    assert (a["probs"].argmax(1) == b["probs"].argmax(1)).all()
    np.testing.assert_allclose(a["probs"], b["probs"], atol=2e-2)


@pytest.mark.gpu
def test_engine_from_another_gpu_is_refused(tmp_path, tiny_onnx_dir):
    ok, why = BACKENDS["tensorrt"].available()
    if not ok:
        pytest.skip(f"native TensorRT unavailable here: {why}")
    import json

    from usedge.errors import EngineMismatch
    from usedge.export.tensorrt import build_engine

    engine, _ = build_engine(Path(tiny_onnx_dir) / "model.fp16.onnx", tmp_path)
    sidecar = engine.with_name(engine.name + ".json")
    data = json.loads(sidecar.read_text())
    data["compute_capability"], data["trt_version"] = "1.0", "9.0.0"
    sidecar.write_text(json.dumps(data))
    with pytest.raises(EngineMismatch, match="usedge export"):
        create_backend("tensorrt").load(engine)


def test_backend_declares_its_io_and_thread_safety(runtime_model):
    with create_backend("ort-cpu", threads=1).load(runtime_model) as b:
        (inp,) = b.inputs
        assert inp.dtype == "float32" and len(inp.shape) == 4 and inp.shape[1] == 1
        assert not isinstance(inp.shape[0], int)                 # the dynamic batch dimension stays symbolic
        assert [o.name for o in b.outputs] == b.output_names == ["probs", "cam"]
        assert b.thread_safe
    assert not BACKENDS["ort-cuda"]().thread_safe and not BACKENDS["tensorrt"]().thread_safe


def test_a_backend_never_closed_warns(runtime_model):
    import gc

    b = create_backend("ort-cpu", threads=1).load(runtime_model)
    with pytest.warns(ResourceWarning, match="never closed"):
        del b
        gc.collect()
    with create_backend("ort-cpu", threads=1).load(runtime_model) as closed:   # closed: no warning
        pass
    closed.close()


def test_a_device_as_model_and_a_relative_xdg_cache_home(monkeypatch, tmp_path):
    """`infer /dev/zero` said "model file not found" of a path that exists; a relative XDG_CACHE_HOME put the trial
    cache under whatever folder usedge ran from (the XDG spec says to ignore it) (outside audit of backends)."""
    from usedge.errors import ModelError
    from usedge.runtime.backends.trial import cache_path
    from usedge.runtime.classifier import Classifier

    with pytest.raises(ModelError, match="not a regular file"):
        Classifier.load("/dev/zero")
    monkeypatch.delenv("USEDGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert cache_path() == tmp_path / ".cache" / "usedge" / "backend_choice.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_path() == tmp_path / "xdg" / "usedge" / "backend_choice.json"
