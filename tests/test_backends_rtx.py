"""ort-trt-rtx: TensorRT for RTX as a plugin EP of the plain onnxruntime.

On a machine without the plugin or a supported GPU every path must refuse in one line that says why
and what to install; registration goes through onnxruntime's real register_execution_provider_library.
The real-GPU test runs where the plugin and an RTX-class GPU are present.
"""

import numpy as np
import pytest

from usedge.errors import BackendUnavailable, ModelError
from usedge.runtime.backends import BACKENDS, candidate_backends, create_backend
from usedge.runtime.backends import rtx

OK, WHY = rtx.availability()


def test_availability_says_why_in_one_line():
    ok, why = rtx.availability()
    assert isinstance(ok, bool) and why and "\n" not in why
    if not ok:
        assert any(k in why for k in ("not installed", "onnxruntime", "driver", "compute capability", "GPU"))
    assert BACKENDS["ort-trt-rtx"].available() == (ok, why)


@pytest.mark.skipif(OK, reason="the plugin works here")
def test_load_refuses_with_the_reason(runtime_model):
    with pytest.raises(BackendUnavailable) as err:
        create_backend("ort-trt-rtx").load(runtime_model)
    line = err.value.one_line()
    assert "ort-trt-rtx" in line and "\n" not in line and "doctor" in line


@pytest.mark.skipif(OK, reason="the plugin works here")
def test_auto_skips_it_and_names_it(runtime_model):
    names = [n for n, _ in candidate_backends(runtime_model, "auto")]
    assert "ort-trt-rtx" not in names and "ort-cpu" in names and set(names) - {"ort-trt", "ort-cuda"} <= {
        "ort-cpu", "openvino"}                     # the CPU backends come last; auto times them (trial.py)
    assert "ort-trt-rtx" in candidate_backends(runtime_model, "auto")[0][1]


def test_auto_prefers_it_first():
    from usedge.runtime.backends import CPU_BACKENDS, ONNX_PREFERENCE

    assert ONNX_PREFERENCE[0] == "ort-trt-rtx" and ONNX_PREFERENCE[-len(CPU_BACKENDS):] == CPU_BACKENDS


@pytest.mark.skipif(rtx.importlib.util.find_spec(rtx.PLUGIN_MODULE) is not None, reason="plugin installed")
def test_plugin_not_installed_names_the_package():
    with pytest.raises(BackendUnavailable, match="not installed") as err:
        rtx.plugin_library()
    assert "usedge[rtx]" in err.value.one_line()
    ok, why = rtx.availability()
    if "onnxruntime" not in why.split("—")[0]:   # onnxruntime >= 1.24: the plugin is what is missing
        assert not ok and "pip install 'usedge[rtx]'" in why


def test_a_file_that_is_not_a_library_is_refused_by_onnxruntime(tmp_path):
    fake = tmp_path / "libonnxruntime_providers_nv_tensorrt_rtx.so"
    fake.write_bytes(b"\x7fELF but not really a shared library")
    with pytest.raises(BackendUnavailable, match="could not load the TensorRT for RTX plugin") as err:
        rtx.register_plugin(fake)
    assert str(fake) in err.value.one_line() and "\n" not in err.value.one_line()


def test_a_missing_library_path_is_refused(tmp_path):
    with pytest.raises(BackendUnavailable, match="library not found"):
        rtx.register_plugin(tmp_path / "nowhere.so")


def test_versions_and_compute_capabilities():
    assert rtx.version_tuple("1.24.0") >= rtx.MIN_ORT > rtx.version_tuple("1.23.2")
    assert rtx.version_tuple("1.25.0.dev20261001") == (1, 25, 0)
    assert rtx.compute_capability_supported(8, 6) and rtx.compute_capability_supported(8, 9)
    assert rtx.compute_capability_supported(12, 0) and rtx.compute_capability_supported(12, 1)
    assert not rtx.compute_capability_supported(9, 0)      # H100/H200: use ort-cuda or native TensorRT
    assert not rtx.compute_capability_supported(8, 0) and not rtx.compute_capability_supported(7, 5)


def test_cache_beside_the_model_and_string_options(tmp_path):
    model = tmp_path / "m" / "model.fp16.onnx"
    model.parent.mkdir()
    cache = rtx.cache_folder(model)
    assert cache == model.parent / ".trt-rtx-cache" and cache.is_dir()
    opts = rtx.provider_options(cache, cuda_graph=True)
    assert opts == {"nv_runtime_cache_path": str(cache), "enable_cuda_graph": "1"}


@pytest.mark.skipif(OK, reason="the plugin works here")
def test_ep_context_export_refuses_in_one_line(tiny_onnx_dir):
    from usedge.export.rtx import write_ep_context

    with pytest.raises(BackendUnavailable, match="EP-context") as err:
        write_ep_context(tiny_onnx_dir / "model.fp16.onnx")
    assert "\n" not in err.value.one_line()
    with pytest.raises(ModelError, match="not found"):
        write_ep_context(tiny_onnx_dir / "missing.onnx")


@pytest.mark.gpu
@pytest.mark.skipif(not OK, reason=f"TensorRT for RTX unavailable here: {WHY}")
def test_rtx_runs_fp16_caches_and_writes_an_ep_context_model(tmp_path, tiny_onnx_dir):
    import shutil

    from usedge.export.rtx import write_ep_context

    for name in ("model.onnx", "model.fp16.onnx"):
        shutil.copy(tiny_onnx_dir / name, tmp_path / name)
    x = np.random.default_rng(3).standard_normal((2, 1, 64, 64)).astype(np.float32)
    with create_backend("ort-cpu").load(tmp_path / "model.onnx") as cpu:
        ref = cpu.infer(x)["probs"]
    with create_backend("ort-trt-rtx").load(tmp_path / "model.fp16.onnx") as gpu:
        assert "NvTensorRTRTXExecutionProvider" in gpu.providers
        got = gpu.infer(x)["probs"]
    assert (ref.argmax(1) == got.argmax(1)).all()
    np.testing.assert_allclose(got, ref, atol=2e-2)          # FP16 compute (NOTES: ~1e-3 plus top-1)
    assert any((tmp_path / ".trt-rtx-cache").iterdir())      # the runtime cache beside the model
    ctx = write_ep_context(tmp_path / "model.fp16.onnx")
    with create_backend("ort-trt-rtx").load(ctx) as again:
        np.testing.assert_allclose(again.infer(x)["probs"], got, atol=1e-3)
