"""The OpenVINO backend against onnxruntime on a real exported model, and `--backend auto`'s cached CPU trial."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from usedge.runtime.backends import BACKENDS, create_backend
from usedge.runtime.backends.trial import cache_path, read_cache
from usedge.runtime.classifier import Classifier

pytest.importorskip("openvino")

# fp32 kernels: both engines compute the same fp32 graph with different summation orders / conv algorithms
# (Winograd, blocked layouts); the softmax outputs then differ by a few float32 ulps of the logits' scale.
# 1e-4 absolute on a probability is far above that and far below any difference that changes a decision.
PROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def frames(runtime_images):
    return [cv2.imread(str(p)) for p in sorted(runtime_images.glob("*.png"))]


def test_openvino_declares_the_same_model_as_onnxruntime(runtime_model):
    with create_backend("openvino", threads=1).load(runtime_model) as ov, \
            create_backend("ort-cpu", threads=1).load(runtime_model) as ort:
        assert ov.metadata == ort.metadata                       # usedge metadata and weights digest, byte for byte
        assert [(s.name, s.dtype) for s in ov.inputs] == [(s.name, s.dtype) for s in ort.inputs]
        assert [(s.name, s.dtype) for s in ov.outputs] == [(s.name, s.dtype) for s in ort.outputs]
        assert ov.inputs[0].shape[1:] == tuple(ort.inputs[0].shape[1:])
        assert ov.inputs[0].shape[0] is None                     # dynamic batch
        assert ov.thread_safe and BACKENDS["openvino"].artifact == "onnx"


def test_openvino_gives_onnxruntimes_answers(runtime_model, frames):
    with Classifier.load(runtime_model, "openvino", threads=1) as ov, \
            Classifier.load(runtime_model, "ort-cpu", threads=1) as ort:
        assert ov.backend.name == "openvino" and ov.backend_reason == "asked for"
        for frame in frames:
            a, b = ov.predict(frame), ort.predict(frame)
            assert a.label == b.label
            assert np.allclose(list(a.probs.values()), list(b.probs.values()), atol=PROB_ATOL, rtol=0)
            assert a.cam is not None and a.cam.shape == b.cam.shape
        batch = ort.normalise([ort.prepare(f)[0] for f in frames])
        out_a, out_b = ov.run_model(batch), ort.run_model(batch)
        assert np.allclose(out_a["probs"], out_b["probs"], atol=PROB_ATOL, rtol=0)


def test_openvino_is_thread_safe_as_declared(runtime_model, frames):
    with Classifier.load(runtime_model, "openvino", threads=1) as clf:
        assert clf.for_another_thread() is clf
        want = [clf.predict(f).probs for f in frames]
        got, errors = {}, []

        def work(k):
            try:
                got[k] = [clf.predict(f).probs for f in frames]
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors and all(got[k] == want for k in range(3))


def test_auto_chooses_by_a_trial_and_caches_it(runtime_model, tmp_path, monkeypatch):
    monkeypatch.setenv("USEDGE_CACHE_DIR", str(tmp_path))
    with Classifier.load(runtime_model, "auto", threads=1) as first:
        chosen = first.backend.name
        assert chosen in ("ort-cpu", "openvino")
        assert "trial" in first.backend_reason and "cached" not in first.backend_reason
    entries = read_cache()
    assert cache_path() == tmp_path / "backend_choice.json" and len(entries) == 1
    (key, entry), = entries.items()
    assert entry["backend"] == chosen and set(entry["medians_ms"]) == {"ort-cpu", "openvino"}
    assert first.model_sha256 in key and "cores" in key

    with Classifier.load(runtime_model, "auto", threads=1) as second:          # read from the cache, no trial
        assert second.backend.name == chosen and "cached trial" in second.backend_reason

    other = "openvino" if chosen == "ort-cpu" else "ort-cpu"                   # the cache decides, not the order
    data = json.loads(cache_path().read_text())
    data["entries"][key]["backend"] = other
    cache_path().write_text(json.dumps(data))
    with Classifier.load(runtime_model, "auto", threads=1) as third:
        assert third.backend.name == other

    with Classifier.load(runtime_model, "ort-cpu", threads=1) as forced:       # --backend overrides
        assert forced.backend.name == "ort-cpu" and forced.backend_reason == "asked for"


def test_a_damaged_cache_means_a_new_trial(runtime_model, tmp_path, monkeypatch):
    monkeypatch.setenv("USEDGE_CACHE_DIR", str(tmp_path))
    cache_path().write_text("{not json")
    with Classifier.load(runtime_model, "auto", threads=1) as clf:
        assert "cached" not in clf.backend_reason
    assert len(read_cache()) == 1


def test_doctor_reports_the_cached_choice(runtime_model, tmp_path, monkeypatch):
    from usedge.runtime.doctor import run_checks

    monkeypatch.setenv("USEDGE_CACHE_DIR", str(tmp_path))
    with Classifier.load(runtime_model, "auto", threads=1) as clf:
        chosen, digest = clf.backend.name, clf.model_sha256
    rows = [c for c in run_checks() if c.section == "auto backend"]
    assert any(c.name == f"model {digest[:12]}" and c.detail.startswith(chosen) for c in rows)


def test_ctrl_c_after_openvino_models_released_out_of_order_is_an_interrupt(runtime_model):
    # OpenVINO's CPU plugin swaps the loading thread's signal stack per Core; two Cores released out of
    # order left the main thread on an unmapped stack (AMX CPUs), and Ctrl-C then crashed the process
    code = f"""
import signal, threading, time
from usedge.runtime.backends import create_backend
from usedge.runtime.interrupts import interrupt_between_frames
a = create_backend("openvino", threads=1).load({str(runtime_model)!r})
b = create_backend("openvino", threads=1).load({str(runtime_model)!r})
a.close(); b.close()
try:
    with interrupt_between_frames():
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(5)
except KeyboardInterrupt:
    print("interrupted")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "interrupted", (p.returncode, p.stderr[-2000:])


def test_the_trial_cache_keeps_the_newest_trials_and_doctor_shows_a_few(tmp_path, monkeypatch):
    """The cache grew by one entry per model file for ever, and `doctor` listed every one (about 1000
    lines on a busy machine; outside audit): it keeps the newest MAX_ENTRIES, doctor the newest few."""
    from usedge.runtime.backends import trial
    from usedge.runtime.cpu import machine_key
    from usedge.runtime.doctor import SHOW_TRIALS, trial_checks

    monkeypatch.setenv("USEDGE_CACHE_DIR", str(tmp_path))
    here = machine_key()
    for i in range(trial.MAX_ENTRIES + 10):
        trial._write_cache(f"m{i:03d} | {here} | threads 1 | x", {"backend": "ort-cpu", "medians_ms": {"ort-cpu": 1.0},
                                                                 "model_sha256": f"m{i:03d}", "when": str(i)})
    entries = read_cache()
    assert len(entries) == trial.MAX_ENTRIES and next(iter(entries)).startswith("m010")   # the oldest went
    trial._write_cache(f"m020 | {here} | threads 1 | x", {"backend": "openvino", "medians_ms": {"openvino": 1.0},
                                                         "model_sha256": "m020", "when": "again"})
    assert list(read_cache())[-1].startswith("m020")                                       # a re-trial is newest
    checks = trial_checks()
    assert len(checks) == SHOW_TRIALS + 1 and f"{trial.MAX_ENTRIES} trials on this machine" in checks[0].detail
    assert checks[-1].name == "model m020"


def test_an_fp16_model_runs_on_openvino_under_its_own_output_names(runtime_model, frames):
    """OpenVINO named the FP16 export's output `node_softmax_output_cast_0` (a second name compiling gave it): auto
    timed it fastest, cached it, and every later load failed with "expected 'probs'" (outside audit of backends)."""
    fp16 = runtime_model.with_name("model.fp16.onnx")
    with Classifier.load(fp16, "openvino", threads=1) as ov, Classifier.load(fp16, "ort-cpu", threads=1) as ort:
        assert ov.backend.output_names == ort.backend.output_names == ["probs", "cam"]
        # (how close the two engines' FP16 answers are depends on the CPU: OpenVINO may run bf16 where it has it)
        pred = ov.predict(frames[0])
        assert pred.state == "live" and pred.label in ov.class_names     # the classifier checks the distribution


def _damaged_copy(runtime_model, folder):
    """The model with one weight changed: its recorded weights digest no longer matches."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(runtime_model))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_auto_checks_the_model_before_timing_it_and_caches_nothing_for_a_refused_one(runtime_model, tmp_path,
                                                                                      monkeypatch):
    """A damaged model was run 25 times on each engine and its choice cached before the digest check refused it;
    doctor then listed that choice as ok. (A model declaring a 100000 x 100000 input died in the trial's input
    allocation with a traceback: the same order.)"""
    from usedge.errors import ModelError
    from usedge.runtime.backends import trial

    monkeypatch.setenv("USEDGE_CACHE_DIR", str(tmp_path))
    timed = []
    monkeypatch.setattr(trial, "_trial_input", lambda engine: timed.append(engine) or np.zeros((1, 1, 64, 64), np.float32))
    bad = _damaged_copy(runtime_model, tmp_path)
    with pytest.raises(ModelError, match="weights digest .* does not match"):
        Classifier.load(bad, "auto", threads=1)
    assert timed == [] and read_cache() == {}
    with Classifier.load(bad, "auto", threads=1, verify=False) as clf:      # told not to verify: runs, is timed
        assert "timed trial" in clf.backend_reason and len(timed) == 1


def test_the_trial_cache_is_keyed_by_the_options_that_change_speed_and_ignores_malformed_entries(runtime_model, tmp_path,
                                                                                                  monkeypatch):
    """`--ort-opt-level disable` reused the default level's cached choice and printed its timings; a cached median
    that was text or null crashed infer and doctor with a traceback on every run (outside audit of backends)."""
    from usedge.runtime.doctor import trial_checks

    monkeypatch.setenv("USEDGE_CACHE_DIR", str(tmp_path))
    with Classifier.load(runtime_model, "auto", threads=1):
        pass
    with Classifier.load(runtime_model, "auto", threads=1, opt_level="disable") as other:
        assert "cached" not in other.backend_reason
    with Classifier.load(runtime_model, "auto", threads=1, spinning=False) as asleep:     # spinning is on by default
        assert "cached" not in asleep.backend_reason
    keys = list(read_cache())
    assert len(keys) == 3 and any("opt disable" in k for k in keys) and any("spinning False" in k for k in keys)
    data = json.loads(cache_path().read_text())
    for k, medians in zip(keys, ({"ort-cpu": "fast", "openvino": 2}, None, {"ort-cpu": -1.0, "openvino": 1.0})):
        data["entries"][k]["medians_ms"] = medians
    cache_path().write_text(json.dumps(data))
    assert trial_checks()[0].detail.startswith("3 cached trial(s) for this machine are malformed: measured again")
    with Classifier.load(runtime_model, "auto", threads=1) as again:
        assert "timed trial" in again.backend_reason                           # measured afresh, rewritten
    assert any(c.name.startswith("model ") for c in trial_checks())
    # trials of one model with other load options are told apart (outside audit: two rows looked alike)
    assert any("threads 1, spinning True, opt all; " in c.detail for c in trial_checks() if c.name.startswith("model "))
    cache_path().write_text("garbage{")
    assert "cannot be read" in trial_checks()[0].detail
