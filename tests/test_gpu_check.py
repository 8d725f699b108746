"""benchmarks/gpu/check.sh --dry-run: the GPU check's own code, on the CPU at tiny sizes, so it cannot rot
between the rare runs on a lent GPU machine. Checks the output folder (at most 8 files) and every field
the results file promises; measures nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "pytest", "data", "parity", "train", "augment", "export", "latency")


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_field(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--dry-run", str(out)], env=env,
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"dry-run-cpu.json", "dry-run-cpu.md", "log.txt", "pytest.txt"} <= set(files)
    res = json.loads((out / "dry-run-cpu.json").read_text())
    assert res["dry_run"] and res["env"]["device"] == "cpu"
    assert [s for s in STEPS if res["steps"].get(s, {}).get("status") != "ok"] == []
    steps = res["steps"]
    assert steps["ddp"]["status"] == "skipped" and "2 CUDA GPUs" in steps["ddp"]["reason"]
    assert steps["pytest"]["files"] and "collected" in steps["pytest"]["summary"]
    parity = steps["parity"]
    assert parity["within_tolerance"] and parity["forward_tol"] == pytest.approx(20 * 2 ** -11)
    train = steps["train"]
    assert len(train["train_loss_device"]) == len(train["train_loss_cpu"]) == 2 and train["within_band"]
    assert steps["export"]["artifacts"] == ["model.fp16.onnx", "model.onnx"]
    rows = res["latency"]
    engines = {r["engine"] for r in rows}
    assert {"torch eager", "torch CUDA graph", "torch.compile", "ort-cpu", "ort-cuda", "ort-trt-rtx", "tensorrt"} <= engines
    for r in rows:
        assert ("median_ms" in r and r["median_ms"] > 0 and r["batch"] in (1, 2)) or r["skipped"]
    assert any(r["engine"] == "torch.compile" and "median_ms" in r for r in rows)
    md = (out / "dry-run-cpu.md").read_text()
    assert "Dry run" in md and "| latency | ok |" in md and "ort-trt-rtx" in md
