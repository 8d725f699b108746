"""No data lost: real processes killed with SIGKILL while they write a checkpoint, an ONNX export and
a training run's last.pt. The artifact is then either the old valid file or absent, never a half
file, and training resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usedge.fileio import sha256_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
pytestmark = pytest.mark.slow


def kill_mid_write(proc: subprocess.Popen, target: Path, *, after_complete: int = 0, timeout: float = 240.0) -> bool:
    """SIGKILL `proc` as soon as its temporary file for `target` (fileio.atomic_write's hidden
    `.name.*.tmp`, beside `target` or in a staging folder below its folder) has bytes in it, once
    `target` has been completed `after_complete` times (counted by its mtime changing). True when
    the kill landed mid-write; False if the process ended first."""
    folder, pattern = target.parent, f".{target.name}."
    seen_mtime, completed = None, 0
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if target.exists():
            m = target.stat().st_mtime_ns
            if m != seen_mtime:
                seen_mtime, completed = m, completed + 1
        if completed >= after_complete and folder.is_dir():
            for tmp in folder.rglob(f"{pattern}*.tmp"):   # beside it, or in a staging folder below it
                try:
                    if tmp.stat().st_size > 0:   # bytes written, not yet renamed
                        proc.send_signal(signal.SIGKILL)
                        proc.wait(30)
                        return True
                except FileNotFoundError:
                    pass
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)
    return False


# The child is the real CLI; only os.fsync is made to linger 2 s, so the kill reliably lands after the
# temporary file has its bytes and before the rename, on a loaded 2-core machine too.
SLOW_FSYNC_CLI = """
import os, sys, time
_fsync = os.fsync
os.fsync = lambda fd: (time.sleep(2.0), _fsync(fd))[1]
from usedge.cli import main
sys.argv = ["usedge", *sys.argv[1:]]
main()
"""


def usedge_slow_fsync(*args: str) -> list[str]:
    return [sys.executable, "-c", SLOW_FSYNC_CLI, *args]


def test_export_killed_mid_write_keeps_the_old_model(tiny_export_checkpoint, tiny_onnx_dir, tmp_path,
                                                     reliability_ledger):
    """`usedge export` over an existing model.onnx, SIGKILLed while it writes the new one."""
    out = tmp_path / "export"
    out.mkdir()
    old = out / "model.onnx"
    shutil.copy(Path(tiny_onnx_dir) / "model.onnx", old)
    old_sha = sha256_file(old)
    os.utime(old, (1, 1))
    proc = subprocess.Popen(usedge_slow_fsync("export", str(tiny_export_checkpoint), "--out", str(out), "--no-fp16",
                                              "--no-int8", "--overwrite"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = kill_mid_write(proc, old, after_complete=1)   # the pre-placed file counts as the one completed
    assert killed, f"export ended before the kill: {proc.stderr.read().decode()[-800:]}"
    assert sha256_file(old) == old_sha, "model.onnx changed although the export was killed mid-write"
    import onnxruntime as ort

    ort.InferenceSession(str(old), providers=["CPUExecutionProvider"])   # still a loadable model
    reliability_ledger.add("writes.export", faults_injected=1, processes_killed=1, outputs_checked=2)


def test_training_killed_mid_checkpoint_resumes(tiny_cohort, tmp_path, reliability_ledger):
    """`usedge train` killed while writing last.pt after epoch 2: last.pt is epoch 1's, complete;
    `--resume` (in this process) finishes the run from there."""
    import torch
    from typer.testing import CliRunner

    from usedge.cli import app
    from usedge.train.checkpoint import read_checkpoint

    run = tmp_path / "run"
    args = ["train", str(tiny_cohort), "--out", str(run), "--image-size", "32", "--epochs", "2", "--folds", "3",
            "--max-folds", "1", "--no-final-model", "--batch-size", "8", "--threads", "1", "--quiet"]
    proc = subprocess.Popen(usedge_slow_fsync(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "fold0" / "last.pt"
    killed = kill_mid_write(proc, last, after_complete=1)
    assert killed, f"training ended before the kill: {proc.stderr.read().decode()[-800:]}"
    state = read_checkpoint(last)                      # complete and valid, not half of epoch 2's
    assert state["extra"]["epoch"] == 1
    threads = torch.get_num_threads()
    try:
        resumed = CliRunner().invoke(app, args + ["--resume"])
    finally:
        torch.set_num_threads(threads)
    assert resumed.exit_code == 0, resumed.output
    metrics = json.loads((run / "metrics.json").read_text())
    history = metrics["folds"][0]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert read_checkpoint(last)["extra"]["epoch"] == 2
    reliability_ledger.add("writes.train_resume", faults_injected=1, processes_killed=1, processes_run=2,
                           outputs_checked=3)
