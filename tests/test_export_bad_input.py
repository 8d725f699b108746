"""Bad inputs to `usedge export`: clear one-line errors and no half-written artifact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from usedge.errors import DataError, ModelError, OutputError
from usedge.export.pipeline import ExportOptions, run_export

FAST = ExportOptions(fp16=False, int8=False, parity_count=2, reference_count=0)


def _edited(src: Path, dst: Path, **changes) -> Path:
    payload = torch.load(src, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if key == "num_classes":
            payload["arch_kwargs"]["num_classes"] = value
        else:
            payload[key] = value
    torch.save(payload, dst)
    return dst


def test_truncated_checkpoint(tmp_path, tiny_export_checkpoint):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(tiny_export_checkpoint.read_bytes()[:5000])
    with pytest.raises(ModelError, match="not a loadable checkpoint") as err:
        run_export(bad, tmp_path / "out", FAST)
    assert str(bad) in err.value.one_line()
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(os.urandom(2048))
    with pytest.raises(ModelError):
        run_export(bad, tmp_path / "out", FAST)


def test_other_architecture(tmp_path, tiny_export_checkpoint):
    wrong = _edited(tiny_export_checkpoint, tmp_path / "resnet.pt", arch="resnet18")
    with pytest.raises(ModelError, match="do not fit architecture resnet18"):
        run_export(wrong, tmp_path / "out", FAST)
    unknown = _edited(tiny_export_checkpoint, tmp_path / "vit.pt", arch="vit_b16")
    with pytest.raises(ModelError, match="vit_b16"):
        run_export(unknown, tmp_path / "out", FAST)


def test_other_class_count(tmp_path, tiny_export_checkpoint):
    wrong = _edited(tiny_export_checkpoint, tmp_path / "four.pt", num_classes=4)
    with pytest.raises(ModelError, match="class count"):
        run_export(wrong, tmp_path / "out", FAST)


def test_data_with_other_classes(tmp_path, tiny_export_checkpoint, tiny_cohort):
    import shutil

    data = tmp_path / "two_classes"
    for name in ("lipoma", "pilomatricoma"):
        shutil.copytree(Path(tiny_cohort) / name, data / name)
    with pytest.raises(DataError, match="classes"):
        run_export(tiny_export_checkpoint, tmp_path / "out", ExportOptions(**{**FAST.__dict__, "data": data}))


def test_output_folder_not_writable(tmp_path, tiny_export_checkpoint):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="not writable"):
        run_export(tiny_export_checkpoint, blocker / "out", FAST)


def test_interrupted_export_keeps_previous_set(tmp_path, tiny_export_checkpoint, monkeypatch):
    """Interrupted half-way through writing model.onnx: the previous set stays, nothing new appears."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous valid export")

    def interrupted_mid_write(model, path, info, **kwargs):
        from usedge.fileio import atomic_write

        with atomic_write(path) as fh:
            fh.write(b"half an onnx file")
            raise KeyboardInterrupt

    import usedge.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "export_onnx", interrupted_mid_write)
    with pytest.raises(KeyboardInterrupt):
        run_export(tiny_export_checkpoint, out, FAST)
    assert (out / "model.onnx").read_bytes() == b"previous valid export"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]   # no staging folder, no report


def test_cli_prints_one_line_and_fails(tmp_path, tiny_export_checkpoint):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = subprocess.run([sys.executable, "-m", "usedge", "export", str(tiny_export_checkpoint),
                           "--out", str(blocker / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("usedge: ") and str(blocker) in lines[0], done.stderr


def test_no_data_exports_with_noise_parity_and_skips_int8(bare_export):
    report, out, _ = bare_export
    assert report.data["source"] == "random" and "model.int8.onnx" in report.skipped
    assert (out / "model.onnx").is_file() and not (out / "model.int8.onnx").exists()
    assert not report.failed


def test_staging_left_by_a_killed_export_is_removed_by_the_next(tmp_path, tiny_export_checkpoint):
    """A SIGKILLed export leaves `.usedge-export-<pid>-*` (71 MB once); the next export removes it,
    but never the staging folder of an export that is still running."""
    out = tmp_path / "out"
    killed = out / ".usedge-export-999999999-x1y2"        # no such process
    legacy = out / ".usedge-export-abcd1234"               # named before the pid was recorded
    running = out / f".usedge-export-{os.getppid()}-live"  # a live process (pytest's parent)
    for folder in (killed, legacy, running):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half")
    report = run_export(tiny_export_checkpoint, out, FAST)
    assert not killed.exists() and not legacy.exists() and running.exists()
    assert sorted(report.removed_stale) == sorted([killed.name, legacy.name])
    assert (out / "model.onnx").is_file()
