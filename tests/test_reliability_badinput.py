"""Bad input, tried systematically: a generated corpus of broken images, DICOMs, videos, models and
checkpoints. Each must end in one usedge error line naming the file (never a traceback), with a
non-zero exit status, while the rest of the batch is still classified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from usedge.errors import EngineMismatch, ModelError, UsedgeError

USEDGE = [sys.executable, "-m", "usedge"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _one_line_error(exc: UsedgeError) -> str:
    line = exc.one_line()
    assert "\n" not in line and line.strip(), repr(line)
    assert exc.hint, f"no hint (what to do) in: {line}"
    return line


def test_frame_corpus_through_the_classifier(bad_frames, bad_frames_dir, runtime_model, reliability_ledger):
    """Every corpus file through the same path as `usedge infer`: read every frame, crop, model."""
    from usedge.runtime.classifier import Classifier
    from usedge.runtime.sources import iter_file_frames

    clf = Classifier.load(runtime_model, "ort-cpu", threads=1)
    outcomes = {}
    for item in bad_frames:
        path = bad_frames_dir / item.name
        try:
            n = 0
            for index, frame, regions, _ in iter_file_frames(path):
                pred = clf.predict(frame, frame_index=index, source=str(path), regions=regions)
                assert abs(sum(pred.probs.values()) - 1) < 1e-3
                n += 1
            outcomes[item.name] = ("ok", n)
        except UsedgeError as exc:
            outcomes[item.name] = ("error", _one_line_error(exc))
        # anything else (ValueError, cv2.error, MemoryError ...) fails the test right here
        if item.expect != "either":
            assert outcomes[item.name][0] == item.expect, f"{item.name} ({item.what}): {outcomes[item.name]}"
    clf.close()
    reliability_ledger.add("badinput.frames", inputs_tried=len(bad_frames),
                           errors_checked=sum(o[0] == "error" for o in outcomes.values()),
                           results_checked=sum(o[1] for o in outcomes.values() if o[0] == "ok"))


def test_cli_batch_goes_on_past_every_bad_file(bad_frames, bad_frames_dir, runtime_model, tmp_path, reliability_ledger):
    """`usedge infer model corpus/`: exit 1, one error line per bad file naming it, good files classified."""
    out = tmp_path / "results.jsonl"
    proc = subprocess.run([*USEDGE, "infer", str(runtime_model), str(bad_frames_dir), "--out", str(out),
                           "--backend", "ort-cpu", "--threads", "1"], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_source: dict[str, list[dict]] = {}
    for r in records:
        by_source.setdefault(Path(r["source"]).name, []).append(r)
    skipped = [ln for ln in proc.stderr.splitlines() if ln.startswith("usedge: failed: ")]
    for item in bad_frames:
        recs = by_source.get(item.name)
        assert recs, f"{item.name}: no JSONL line at all"
        errors = [r for r in recs if "error" in r]
        if item.expect == "error":
            assert len(errors) == 1 and item.name in errors[0]["error"], (item.name, recs)
            assert sum(item.name in ln for ln in skipped) == 1, (item.name, skipped)
        elif item.expect == "ok":
            assert not errors and all(r["label"] for r in recs), (item.name, recs)
    n_err = sum("error" in r for r in records)
    assert len(skipped) == n_err
    summary = proc.stderr.strip().splitlines()[-1]
    assert f"{n_err} failed" in summary, summary
    reliability_ledger.add("badinput.cli_batch", inputs_tried=len(bad_frames), processes_run=1,
                           outputs_checked=len(records) + len(skipped))


def test_model_corpus_is_refused_with_one_line(bad_models, bad_models_dir, reliability_ledger):
    """Broken/mismatched ONNX files and engines: ModelError/BackendUnavailable naming the file, at load."""
    from usedge.runtime.classifier import Classifier

    tried = 0
    for item in bad_models:
        if item.kind not in ("onnx", "engine"):
            continue
        path = bad_models_dir / item.name
        with pytest.raises(UsedgeError) as info:
            Classifier.load(path, "auto", threads=1)
        line = _one_line_error(info.value)
        assert str(path) in line, line
        if item.name.startswith("external"):
            assert "escapes" in line or "Absolute path" in line, line
        tried += 1
    reliability_ledger.add("badinput.models", inputs_tried=tried, errors_checked=tried)


def test_engine_sidecar_mismatch_names_both_targets(bad_models_dir, reliability_ledger):
    """A sidecar that does not match this GPU/TensorRT (target given, as on a GPU machine) is refused."""
    from usedge.runtime.engine_sidecar import check_engine_compatible

    with pytest.raises(EngineMismatch) as info:
        check_engine_compatible(bad_models_dir / "model.engine", "NVIDIA H100 80GB HBM3", "9.0", "10.9.0")
    line = _one_line_error(info.value)
    assert "sm_50" in line and "sm_90" in line and "8.6" in line and "10.9" in line, line
    for name in ("nosidecar.engine", "badjson.engine"):
        with pytest.raises(ModelError) as info:
            check_engine_compatible(bad_models_dir / name, "NVIDIA H100 80GB HBM3", "9.0", "10.9.0")
        _one_line_error(info.value)
    reliability_ledger.add("badinput.engine_sidecar", inputs_tried=3, errors_checked=3)


CLI_MODELS = ("truncated.onnx", "wrong_classes.onnx", "external_escape.onnx", "model.engine")


def test_cli_refuses_bad_models(bad_models, bad_models_dir, bad_frames_dir, reliability_ledger):
    """`usedge infer BAD.onnx image` for one model of each failure family (the library test above covers
    every one), in parallel: exit 1, one line naming the file, nothing on stdout."""
    image = bad_frames_dir / "good_a.png"
    models = [it for it in bad_models if it.name in CLI_MODELS]
    procs = [(it, subprocess.Popen([*USEDGE, "infer", str(bad_models_dir / it.name), str(image)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV))
             for it in models]
    for it, proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode != 0, (it.name, err)
        lines = [ln for ln in err.splitlines() if ln.startswith("usedge:")]
        assert len(lines) == 1 and it.name in lines[0], (it.name, err)
        assert "Traceback" not in err and not out.strip(), (it.name, err)
    reliability_ledger.add("badinput.cli_models", inputs_tried=len(models), processes_run=len(models),
                           outputs_checked=len(models))


def test_checkpoints_never_run_code(bad_models, bad_models_dir, tiny_export_checkpoint, tmp_path, reliability_ledger):
    """Non-usedge, truncated, future and code-carrying checkpoints: ModelError; the planted code never runs."""
    from usedge.train.checkpoint import read_checkpoint

    data = Path(tiny_export_checkpoint).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    paths = [bad_models_dir / it.name for it in bad_models if it.kind == "checkpoint"] + [truncated]
    for path in paths:
        with pytest.raises(ModelError) as info:
            read_checkpoint(path)
        assert str(path) in _one_line_error(info.value)
    assert not (bad_models_dir / "PWNED").exists(), "unpickling ran code from a checkpoint"
    reliability_ledger.add("badinput.checkpoints", inputs_tried=len(paths), errors_checked=len(paths),
                           code_execution_checks=1)


def test_cli_export_refuses_untrusted_checkpoints(bad_models_dir, tmp_path, reliability_ledger):
    """`usedge export evil.pt`: exit non-zero, one line, nothing written, no code run."""
    names = ("evil.pt",)
    procs = [(n, subprocess.Popen([*USEDGE, "export", str(bad_models_dir / n), "--out", str(tmp_path / n)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)) for n in names]
    for name, proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode != 0, err
        lines = [ln for ln in err.splitlines() if ln.startswith("usedge:")]
        assert len(lines) == 1 and name in lines[0] and "Traceback" not in err, err
        assert not (tmp_path / name / "model.onnx").exists()
    assert not (bad_models_dir / "PWNED").exists()
    reliability_ledger.add("badinput.cli_export", inputs_tried=len(names), processes_run=len(names),
                           code_execution_checks=1)
