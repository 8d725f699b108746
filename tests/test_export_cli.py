"""`usedge export` end to end through the command line (in-process)."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from usedge.cli import app


def test_export_command_writes_model_and_report(tmp_path, tiny_export_checkpoint, tiny_cohort, tiny_onnx_dir):
    out = tmp_path / "models"
    out.mkdir()
    # left by an earlier export of the same checkpoint WITH the cam output: no longer this model
    shutil.copy(tiny_onnx_dir / "model.int8.onnx", out / "model.int8.onnx")
    (out / "model.old-gpu.sm75.trt10.13.engine").write_bytes(b"plan without sidecar")
    result = CliRunner().invoke(app, ["export", str(tiny_export_checkpoint), "--out", str(out), "--no-fp16",
                                      "--no-int8", "--data", str(tiny_cohort), "--parity-count", "3",
                                      "--reference-count", "0", "--quiet", "--strict"])
    assert result.exit_code == 0, result.output
    assert "torch vs onnxruntime" in result.output and "model.onnx" in result.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and list(report["artifacts"]) == ["model.onnx"]
    assert report["data"]["held_out"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "export_report.md", "model.onnx"]
    assert sorted(report["removed_stale"]) == ["model.int8.onnx", "model.old-gpu.sm75.trt10.13.engine"]
