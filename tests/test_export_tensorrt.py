"""TensorRT engine build: a clear refusal without TensorRT/GPU; the real build where both exist."""

from __future__ import annotations

import pytest

from usedge.errors import BackendUnavailable, ConfigError
from usedge.export.tensorrt import build_engine, tensorrt_available

HAVE_TRT, WHY = tensorrt_available()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT and a GPU are present: the real build test runs instead")
def test_without_tensorrt_one_clear_line(tmp_path, tiny_onnx_dir):
    with pytest.raises(BackendUnavailable) as err:
        build_engine(tiny_onnx_dir / "model.fp16.onnx", tmp_path)
    line = err.value.one_line()
    assert "\n" not in line and "--engine" in line and "GPU machine" in line
    assert not list(tmp_path.iterdir())


def test_bad_profile_is_refused_before_anything_else(tmp_path, tiny_onnx_dir):
    with pytest.raises(ConfigError, match="not ordered"):
        build_engine(tiny_onnx_dir / "model.fp16.onnx", tmp_path, max_batch=2, opt_batch=4)
    with pytest.raises(ConfigError, match="0..5"):
        build_engine(tiny_onnx_dir / "model.fp16.onnx", tmp_path, optimization_level=7)


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT present")
def test_export_engine_flag_is_skipped_with_reason(bare_export):
    report, out, _ = bare_export
    assert "engine" in report.skipped and "usedge export" in report.skipped["engine"]
    assert (out / "model.fp16.onnx").is_file()   # the engine's input is written even with --no-fp16
    assert not list(out.glob("*.engine"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason=f"needs an NVIDIA GPU with TensorRT: {WHY}")
def test_build_engine_writes_plan_sidecar_and_runs(tmp_path, tiny_onnx_dir):
    import numpy as np

    from usedge.runtime.engine_sidecar import check_engine_compatible, read_sidecar

    cache = tmp_path / "timing.cache"
    engine, sidecar = build_engine(tiny_onnx_dir / "model.fp16.onnx", tmp_path, max_batch=4, timing_cache=cache,
                                   optimization_level=1, workspace_mib=512)
    assert engine.is_file() and cache.is_file() and engine.name.endswith(".engine")
    assert read_sidecar(engine) == sidecar and sidecar.input_shapes["max"][0] == 4
    check_engine_compatible(engine, sidecar.to_dict())
    from usedge.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend().load(engine)
    try:
        x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 64, 64)).astype(np.float32)
        probs = backend.infer(x)["probs"]
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-2)
    finally:
        backend.close()
