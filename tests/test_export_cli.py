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
    args = ["export", str(tiny_export_checkpoint), "--out", str(out), "--no-fp16", "--no-int8", "--data",
            str(tiny_cohort), "--parity-count", "3", "--reference-count", "0", "--strict"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "already holds an export (model.int8.onnx)" in str(refused.exception)
    assert "--overwrite" in str(refused.exception)
    result = CliRunner().invoke(app, args + ["--overwrite"])
    assert result.exit_code == 0, result.output
    assert "torch vs onnxruntime" in result.output and "model.onnx" in result.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and list(report["artifacts"]) == ["model.onnx"]
    assert report["data"]["held_out"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "export_report.json", "export_report.md", "model.onnx"]
    assert "model card: fp32 model " in result.output
    assert sorted(report["removed_stale"]) == ["model.int8.onnx", "model.old-gpu.sm75.trt10.13.engine"]


def test_export_cam_weighting_quiet_and_deprecated_opt_level(tmp_path, tiny_export_checkpoint, tiny_onnx_dir):
    """--cam-weighting paper is recorded and differs from the default exact map; --quiet prints only
    the final line; the old --opt-level still works with one deprecation line (it is --trt-opt-level)."""
    import numpy as np
    import onnxruntime as ort

    from usedge.export.onnx_export import read_model_info

    out = tmp_path / "paper"
    result = CliRunner().invoke(app, ["export", str(tiny_export_checkpoint), "-o", str(out), "--no-fp16", "--no-int8",
                                      "--cam", "--cam-weighting", "paper", "--parity-count", "2",
                                      "--reference-count", "0", "--opt-level", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert "usedge: --opt-level is deprecated; use --trt-opt-level" in result.output
    assert [line for line in result.stdout.splitlines() if line] == [f"report: {out / 'export_report.md'}"]
    report = json.loads((out / "export_report.json").read_text())
    assert report["settings"]["optimization_level"] == 2 and report["passed"]
    assert read_model_info(out / "model.onnx").export["cam_weighting"] == "paper"
    assert read_model_info(tiny_onnx_dir / "model.onnx").export["cam_weighting"] == "exact"   # the default
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 64, 64)).astype(np.float32)
    cams = [ort.InferenceSession(str(p / "model.onnx"), providers=["CPUExecutionProvider"]).run(["cam"], {"image": x})[0]
            for p in (out, tiny_onnx_dir)]
    assert not np.allclose(cams[0], cams[1])
    # an int8 file of the same checkpoint and outputs but the other CAM weighting (an earlier export) must
    # not stay beside the new fp32 one: `infer model.int8.onnx --cam` would draw the other map (outside audit)
    shutil.copy(tiny_onnx_dir / "model.int8.onnx", out / "model.int8.onnx")
    again = CliRunner().invoke(app, ["export", str(tiny_export_checkpoint), "-o", str(out), "--no-fp16", "--no-int8",
                                     "--cam", "--cam-weighting", "paper", "--parity-count", "2",
                                     "--reference-count", "0", "--overwrite", "-q"])
    assert again.exit_code == 0, again.output
    assert not (out / "model.int8.onnx").exists()
    assert json.loads((out / "export_report.json").read_text())["removed_stale"] == ["model.int8.onnx"]


def test_export_rtx_refused_in_one_line_without_a_supported_gpu(tmp_path, tiny_export_checkpoint):
    """`--rtx` needs TensorRT for RTX on a supported GPU: here it refuses before exporting anything,
    in one line that says why (usedge.runtime.backends.rtx.availability) and exits non-zero."""
    import os
    import subprocess
    import sys

    import pytest

    from usedge.runtime.backends.rtx import availability

    ok, why = availability()
    if ok:
        pytest.skip(f"TensorRT for RTX runs here ({why}): the refusal path does not apply")
    out = tmp_path / "models"
    run = subprocess.run([sys.executable, "-m", "usedge", "export", str(tiny_export_checkpoint), "--out", str(out),
                          "--rtx"], capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("usedge: --rtx: TensorRT for RTX cannot run here: ") and why in lines[0]
    assert not out.exists()


def test_strict_fails_when_int8_cannot_be_built_and_quiet_says_why(tmp_path, tiny_export_checkpoint):
    """No calibration images (the run's data folder moved): model.int8.onnx is not built. --quiet used to print
    nothing about it and --strict exited 0, while parity had run on noise."""
    import torch

    payload = torch.load(tiny_export_checkpoint, map_location="cpu", weights_only=True)
    payload["extra"] = {"data": str(tmp_path / "moved_away")}
    torch.save(payload, tmp_path / "moved.pt")
    args = ["export", str(tmp_path / "moved.pt"), "--out", str(tmp_path / "out"), "--no-fp16", "--parity-count", "2",
            "--reference-count", "0", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "model.int8.onnx not built" in result.output and "moved_away" in result.output
    strict = CliRunner().invoke(app, args + ["--strict", "--overwrite"])
    assert strict.exit_code == 2 and "model.int8.onnx not built" in strict.output


def test_export_refusals_leave_nothing_behind(tmp_path, tiny_export_checkpoint):
    """Outside audit: a failed export left an empty --out folder; a folder given as the checkpoint was "not
    found"; --max-batch 0 without --triton and --trt-opt-level 9 passed; opset 22 blamed the dynamo exporter's
    floor; the Triton message named a --triton-max-batch that does not exist; --triton replaced another model."""
    def run(*args):
        res = CliRunner().invoke(app, ["export", *map(str, args)])
        return res.exit_code, str(res.exception) if res.exception else res.output

    code, msg = run(tmp_path / "missing.pt", "--out", tmp_path / "o1")
    assert code != 0 and "checkpoint not found" in msg and not (tmp_path / "o1").exists()
    code, msg = run(tiny_export_checkpoint.parent, "--out", tmp_path / "o2")
    assert code != 0 and "is a folder, not a checkpoint" in msg and str(tiny_export_checkpoint) in msg
    assert not (tmp_path / "o2").exists()
    for args, words in ((["--max-batch", "0"], "--max-batch 0 is below 1"),
                        (["--trt-opt-level", "9"], "--trt-opt-level 9 is outside 0..5"),
                        (["--opset", "22"], "opsets above 21 are not tested")):
        code, msg = run(tiny_export_checkpoint, "--out", tmp_path / "o3", *args)
        assert code != 0 and words in msg, msg
        assert not (tmp_path / "o3").exists()
    (tmp_path / "tri" / "usedge").mkdir(parents=True)
    (tmp_path / "tri" / "usedge" / "config.pbtxt").write_text('name: "usedge"\n')
    code, msg = run(tiny_export_checkpoint, "--out", tmp_path / "o4", "--triton", tmp_path / "tri")
    assert code != 0 and "already holds a model named 'usedge'" in msg and "--overwrite" in msg
    assert (tmp_path / "tri" / "usedge" / "config.pbtxt").read_text() == 'name: "usedge"\n'
