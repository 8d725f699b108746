"""TensorRT engine sidecar: naming, writing/reading, and the mismatch check (CPU only, no TensorRT)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from usedge.errors import EngineMismatch, ModelError
from usedge.runtime.engine_sidecar import (EngineSidecar, check_engine_compatible, engine_filename, gpu_slug,
                                           normalise_compute_capability, read_sidecar, sidecar_path, write_sidecar)


def _sidecar(**kw) -> EngineSidecar:
    base = dict(gpu_name="NVIDIA GeForce RTX 2080 Ti", compute_capability="7.5", trt_version="10.13.3.9",
                input_shapes={"min": [1, 1, 224, 224], "opt": [1, 1, 224, 224], "max": [8, 1, 224, 224]},
                outputs=["probs", "cam"], source_onnx="model.fp16.onnx", source_onnx_sha256="ab" * 32)
    base.update(kw)
    return EngineSidecar(**base)


def test_names_follow_gpu_cc_and_trt_version():
    assert gpu_slug("NVIDIA GeForce RTX 2080 Ti") == "rtx-2080-ti"
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert engine_filename("NVIDIA GeForce RTX 2080 Ti", (7, 5), "10.13.3.9") == "model.rtx-2080-ti.sm75.trt10.13.engine"
    for cc in ("8.6", "86", "sm_86", (8, 6), 8.6):
        assert normalise_compute_capability(cc) == "8.6"
    assert normalise_compute_capability("12.0") == "12.0"
    assert normalise_compute_capability("120") == "12.0"


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / engine_filename("NVIDIA GeForce RTX 2080 Ti", "7.5", "10.13.3.9")
    engine.write_bytes(b"plan")
    written = write_sidecar(engine, _sidecar())
    assert written == sidecar_path(engine) and written.name.endswith(".engine.json")
    back = read_sidecar(engine)
    assert back == _sidecar() and back.max_batch == 8
    assert json.loads(written.read_text())["format"] == "usedge-trt-engine"


def test_compatible_engine_passes(tmp_path):
    side = check_engine_compatible(_sidecar(), "NVIDIA GeForce RTX 2080 Ti", "7.5", "10.13.0")
    assert side.compute_capability == "7.5"   # same major.minor TensorRT: accepted


@pytest.mark.parametrize("gpu,cc,trt,expect", [
    ("NVIDIA GeForce RTX 4090", "8.9", "10.13.3.9", ["sm_75", "sm_89", "RTX 4090"]),
    ("NVIDIA GeForce RTX 2080 Ti", "7.5", "11.0.1", ["TensorRT 10.13.3.9", "11.0.1"]),
])
def test_mismatch_names_both_sides_and_the_fix(tmp_path, gpu, cc, trt, expect):
    engine = tmp_path / "model.rtx-2080-ti.sm75.trt10.13.engine"
    with pytest.raises(EngineMismatch) as err:
        check_engine_compatible(_sidecar(), gpu, cc, trt, engine_path=engine)
    line = err.value.one_line()
    assert "\n" not in line and str(engine) in line and "usedge export" in line
    for text in expect:
        assert text in line


def test_runtime_call_order_path_then_dict(tmp_path):
    """The native TensorRT backend calls check_engine_compatible(engine_path, sidecar_dict)."""
    engine = tmp_path / "x.engine"
    with pytest.raises(EngineMismatch):
        check_engine_compatible(engine, _sidecar().to_dict(), compute_capability="9.0", trt_version="10.13")


def test_missing_or_corrupt_sidecar_is_a_model_error(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ModelError, match="no sidecar"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps({"gpu_name": "x"}))
    with pytest.raises(ModelError, match="not a usedge engine sidecar"):
        read_sidecar(engine)


def test_sidecar_module_does_not_import_torch():
    code = ("import sys, usedge.runtime.engine_sidecar; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('usedge.train', 'usedge.export'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_verified_against_the_sha256_its_sidecar_records(tmp_path, runtime_model):
    """The TensorRT backend hands the sidecar's fields to the same reader as ONNX metadata
    (model_info_from_metadata(verify=True)): a changed engine byte is refused with one line."""
    import hashlib

    from usedge.export.onnx_export import read_model_info
    from usedge.runtime.model_info import model_info_from_metadata

    engine = tmp_path / "model.rtx-2080-ti.sm75.trt10.13.engine"
    plan = bytes(range(256)) * 64
    engine.write_bytes(plan)
    write_sidecar(engine, _sidecar(engine_sha256=hashlib.sha256(plan).hexdigest(),
                                   model_info=read_model_info(runtime_model).to_json()))
    metadata = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in read_sidecar(engine).to_dict().items()}
    assert model_info_from_metadata(metadata, engine, verify=True).class_names
    engine.write_bytes(plan[:100] + bytes([plan[100] ^ 1]) + plan[101:])
    with pytest.raises(ModelError, match="damaged or altered: engine sha256") as err:
        model_info_from_metadata(metadata, engine, verify=True)
    assert "\n" not in err.value.one_line()
    assert model_info_from_metadata(metadata, engine, verify=False).class_names
