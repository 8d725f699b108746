"""usedge bench: FLOP counting exact on a hand-built graph, trtexec-style statistics, and a --quick run on
the tiny exported models that writes valid JSON / Markdown / PNG (no wall-clock assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from usedge.bench.stats import latency_stats


def _hand_built_model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((3, 256)).astype(np.float32), "gw"),
             numpy_helper.from_array(np.zeros(3, np.float32), "gb"),
             numpy_helper.from_array(rng.standard_normal((3, 2)).astype(np.float32), "mw")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], transB=1),
             helper.make_node("MatMul", ["g", "mw"], ["y"])]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("batch", [1, 3])
def test_flops_exact_on_hand_built_graph(batch):
    from usedge.bench.flops import count_flops

    f = count_flops(_hand_built_model(), batch=batch)
    conv = 2 * 4 * 8 * 8 * (1 * 3 * 3)      # 2 x Cout x H x W x Cin x kh x kw
    gemm = 2 * 3 * 256                       # 2 x N x K per row
    matmul = 2 * 2 * 3
    assert f.gemm == batch * (conv + gemm + matmul)
    # conv bias + relu (1 per element of 4 x 8 x 8) + gemm bias (3)
    assert f.other == batch * (256 + 256 + 3)
    assert f.by_op["Conv"] == batch * (conv + 256) and f.by_op["MatMul"] == batch * matmul
    assert f.unresolved == []


def test_flops_of_a_file_and_bad_file(tmp_path):
    import onnx

    from usedge.bench.flops import count_flops
    from usedge.errors import ModelError

    path = tmp_path / "m.onnx"
    onnx.save(_hand_built_model(), str(path))
    assert count_flops(path).gemm == 2 * 4 * 64 * 9 + 2 * 3 * 256 + 12
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="bad.onnx"):
        count_flops(tmp_path / "bad.onnx")


def test_latency_stats_like_trtexec():
    s = latency_stats([float(v) for v in range(1, 101)])
    assert (s["min"], s["max"], s["n"]) == (1.0, 100.0, 100)
    assert s["mean"] == pytest.approx(50.5) and s["median"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert latency_stats([])["n"] == 0


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="/proc/stat is Linux's")
def test_cpu_steal_is_a_fraction_of_the_cpu_time_that_passed():
    from usedge.bench.stats import cpu_counters, steal_since

    start = cpu_counters()
    assert start is not None and 0 <= start[0] <= start[1]
    deadline = time.perf_counter() + 0.2
    while time.perf_counter() < deadline:     # let the counters move (100 ticks a second)
        pass
    steal = steal_since(start)
    assert steal is not None and 0.0 <= steal <= 1.0
    assert steal_since(None) is None and steal_since((0, 10 ** 18)) is None    # no start, or counters behind it


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory, tiny_onnx_dir):
    from usedge.bench import BenchOptions, run_bench

    out = tmp_path_factory.mktemp("bench_out")
    opts = BenchOptions(quick=True, threads=1, batches=(1, 2), rows=("torch-eager", "ort-cpu", "openvino", "ort-cuda"),
                        work_dir=out / "work")
    return run_bench(tiny_onnx_dir, opts, out / "res", progress=False), out / "res"


def test_quick_bench_writes_valid_json_md_png(quick_bench):
    import cv2

    result, out = quick_bench
    data = json.loads((out / "bench.json").read_text())
    assert data["model"]["input_size"] == 64 and data["machine"]["libraries"]["onnxruntime"]
    rows = {r["key"]: r for r in data["rows"]}
    for key in ("ort-cpu/fp32", "ort-cpu/int8", "torch-eager/fp32"):
        lat = rows[key]["latency_ms"]
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert set(rows[key]["throughput"]) == {"1", "2"}
    assert rows["ort-cpu/fp32"]["vs_ort_fp32"] == 1.0 and rows["torch-eager/fp32"]["vs_torch_eager"] == 1.0
    assert rows["ort-cuda/fp32"].get("skipped")                 # no GPU here: a reason, not numbers
    assert data["flops"]["gemm_flops"] > 0 and data["gemm"]["limit_gflops"] > 0
    assert 0 < rows["ort-cpu/fp32"]["gemm_efficiency_median"]
    stages = data["stages"]["models"]["model.onnx"]
    assert set(stages["per_stage"]["wall_ms"]) >= {"decode", "freeze", "crop", "normalise", "model", "post"}
    cpu = stages["per_stage"]["cpu_ms"]   # the loop's share: its own stages (not decode) against the model
    loop = sum(cpu[s] for s in ("freeze", "crop", "normalise", "post"))
    assert cpu["loop_outside_model_share"] == pytest.approx(loop / (loop + cpu["model"]), abs=1e-3)
    assert stages["stream"]["processed"] >= 1
    assert {t["target"].split(" (")[0] for t in data["targets"]} >= {"onnxruntime fp32 / torch eager"}
    # issue 18 items 1, 5, 6: the model in the stream against alone, and the paced stream targets, as rows
    targets = {t["target"]: t for t in data["targets"]}
    for name, fps in (("model.onnx", 15), ("model.int8.onnx", 30)):
        share = targets[f"outside-model share of the loop's own stages, {name} (per-stage wall medians)"]
        assert share["aim"] == 0.1 and share["value"] == data["stages"]["models"][name]["per_stage"]["wall_ms"][
            "loop_outside_model_share"]
        assert targets[f"model in the unpaced stream / model alone, {name} (p50 / batch-1 median)"]["aim"] == 1.1
        paced_ratio = targets[f"model in the stream at {fps} fps paced / model alone, {name} (p50 / batch-1 median)"]
        assert paced_ratio["aim"] == 1.1 and paced_ratio["value"] > 0
        dropped = targets[f"stream {name} at {fps} fps: frames dropped or skipped"]
        assert dropped["passed"] is (dropped["value"] == 0) and dropped["aim"] == 0
        assert targets[f"stream {name} at {fps} fps: capture-to-result p99 ms"]["aim"] == 40.0
        paced = data["stages"]["models"][name]["paced"]
        assert paced["fps"] == fps and paced["frames_read"] + paced["late_skipped"] >= 1
        assert paced["threads"]["model_threads"] == 1 and paced["threads"]["opencv_threads"] == 1
    md = (out / "bench.md").read_text()
    assert "| ort-cpu/int8 |" in md and "p99" in md and "Stage breakdown" in md
    steal = data["machine"]["cpu_steal"]      # every results file says how much of the run the VM host took
    if Path("/proc/stat").is_file():
        assert 0.0 <= steal <= 1.0 and f"CPU steal {steal:.1%}" in md
    try:
        import matplotlib  # noqa: F401  (the train extra)
    except ImportError:
        assert not (out / "latency.png").exists()   # plots are skipped, the rest still written
        return
    for png in ("latency.png", "stages.png"):
        image = cv2.imread(str(out / png))
        assert image is not None and image.shape[0] > 50


def test_torch_row_without_checkpoint_says_random_weights(quick_bench):
    result, _ = quick_bench
    torch_row = next(r for r in result["rows"] if r["key"] == "torch-eager/fp32")
    assert "random weights" in torch_row["engine"]   # tiny_onnx_dir has no checkpoint beside it


def _usedge(args, env=None):
    return subprocess.run([sys.executable, "-m", "usedge", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_quick_without_torch(tmp_path, tiny_onnx_dir):
    """The lean install: torch blocked, the torch row is skipped with the reason and the rest runs."""
    block = tmp_path / "no_torch"
    (block / "torch").mkdir(parents=True)
    (block / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed (blocked)')\n")
    env = {**os.environ, "PYTHONPATH": str(block), "OMP_NUM_THREADS": "1"}
    res = _usedge(["bench", str(tiny_onnx_dir), "--quick", "--threads", "1", "--no-stages", "--no-plots",
                   "--rows", "torch,ort-cpu/int8", "--batch", "1", "--iters", "3", "--out", str(tmp_path / "o"), "-q"], env)
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "o" / "bench.json").read_text())
    # --quick shrinks what was not given; an explicit option keeps its value (it was overridden: outside audit)
    assert data["options"]["iters"] == 3 and data["options"]["rounds"] == 2 and data["options"]["warmup"] == 2
    rows = {r["key"]: r for r in data["rows"]}
    assert "torch is not installed" in rows["torch-eager/fp32"]["skipped"]
    assert rows["ort-cpu/int8"]["latency_ms"]["n"] >= 1
    assert not (tmp_path / "o" / "latency.png").exists()


def test_cli_targets_are_information_not_errors(tmp_path, tiny_onnx_dir):
    """Issue 20 item 12: the targets are a table of measured / aim / met, never red 'missed' lines."""
    res = _usedge(["bench", str(tiny_onnx_dir), "--quick", "--threads", "1", "--no-stages", "--no-plots",
                   "--rows", "ort-cpu", "--batch", "1", "--out", str(tmp_path / "o")],
                  {**os.environ, "COLUMNS": "200", "TERM": "xterm-256color", "FORCE_COLOR": "1"})
    assert res.returncode == 0, res.stderr
    assert "project targets on this machine (information)" in res.stderr
    assert "missed" not in res.stderr and "\x1b[31m" not in res.stderr        # no red


def test_cli_bad_input_is_one_line(tmp_path):
    res = _usedge(["bench", str(tmp_path / "missing")])
    assert res.returncode == 1 and "model folder not found" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "empty").mkdir()
    res = _usedge(["bench", str(tmp_path / "empty")])
    assert res.returncode == 1 and "no model.onnx" in res.stderr
    res = _usedge(["bench", str(tmp_path / "empty"), "--batch", "1,x"])
    assert res.returncode == 1 and "--batch" in res.stderr


def test_cli_options_that_would_waste_or_lose_a_run_are_refused_before_measuring(tmp_path, tiny_onnx_dir):
    """A 10-million batch died in a 153 GiB allocation with a traceback; `--rows ort_cpu` (a typo) measured nothing and
    exited 0; -1 s limits were stored; an --out that is a file was found after the whole run, losing it (outside
    audit of backends)."""
    from usedge.bench import BenchOptions
    from usedge.errors import ConfigError

    for bad in ({"batches": (1, 10_000_000)}, {"max_cell_s": -1.0}, {"paced_seconds": -1.0}):
        with pytest.raises(ConfigError):
            BenchOptions(**bad)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for args, said in ((["--rows", "ort_cpu", "--out", str(tmp_path / "o")], "--rows ort_cpu names no row of this "
                        "model folder — the rows here: "),
                       (["--out", str(afile)], "--out is a file, not a folder")):
        res = _usedge(["bench", str(tiny_onnx_dir), "--quick", "--threads", "1", "--no-stages", "--no-plots", *args])
        assert res.returncode == 1 and said in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert afile.read_text() == "mine" and not (tmp_path / "o" / "bench.json").exists()


def test_import_bench_is_lean():
    code = "import sys, usedge.bench, usedge.cli.bench_cmd; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_emulated_cpu_worker_gives_onnxruntimes_probs(tmp_path, tiny_onnx_dir):
    """benchmarks/emulated_cpu.py's worker (what QEMU runs for export_int8.py --emulate-cpu), run natively:
    the probs of each file are onnxruntime's, and it reports the CPUID features it saw."""
    import onnxruntime as ort

    models = [tiny_onnx_dir / "model.onnx", tiny_onnx_dir / "model.int8.onnx"]
    side = ort.InferenceSession(str(models[0]), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[-1]
    x = np.random.default_rng(0).random((5, 1, side, side), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "emulated_cpu.py"
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "x.npy"), str(tmp_path / "out.npz"),
                          *map(str, models)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(seen) >= {"AVX2", "AVX512VNNI"} and all(isinstance(v, bool) for v in seen.values())
    out = np.load(tmp_path / "out.npz")
    for i, path in enumerate(models):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ref = session.run(["probs"], {session.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(out[f"m{i}"], ref, atol=1e-5)
