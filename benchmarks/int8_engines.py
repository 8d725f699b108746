"""onnxruntime int8 against OpenVINO int8 on the CPU, with an AVX2-without-VNNI CPU emulated where an engine allows.

Issue 18 item 4: on a 2-core AVX2 machine without AVX-512/VNNI OpenVINO's int8 was faster than
onnxruntime's. This script measures the levers on one machine, each row as a ratio against
onnxruntime fp32 measured in the same process in interleaved rounds (a loaded machine slows both):

    quantisation   QDQ vs QOperator, per-channel vs per-tensor, u8 activations x s8 weights (7-bit,
                   usedge's export recipe), s8 x s8, u8 x u8 (onnxruntime's non-saturating AVX2 path)
    graph opt      onnxruntime ORT_ENABLE_ALL vs EXTENDED (no layout level: its NhwcTransformer runs the
                   quantised convolutions in NHWC) vs BASIC (no QDQ -> QLinear fusion) on the quantised graph
    engine         onnxruntime CPU EP vs OpenVINO CPU (latency hint)
    ISA            native vs ONEDNN_MAX_CPU_ISA=AVX2 (OpenVINO's oneDNN caps its JIT kernels at AVX2: no
                   AVX-512, no VNNI); the kernels actually chosen are read back from OpenVINO's runtime
                   graph (primitiveType of every convolution) so the emulation is checked, not assumed.
                   onnxruntime's MLAS picks kernels from CPUID with no documented switch to cap the ISA,
                   so its rows run on the machine's own ISA (stated in the results) unless
    --mask-cpuid   adds rows for both engines in a process that sees this CPU without AVX-512, VNNI and
                   AMX (benchmarks/cpuid_mask.c: CPUID faulting, on CPUs with the cpuid_fault flag): an
                   AVX2-only CPU's kernel choice for onnxruntime too, run natively, so timed; its
                   onnxruntime fp32 baseline runs masked as well. Each row records the CPU features its
                   process saw (numpy's CPUID probe), so the masking is checked, not assumed.

    nice -n 10 .venv/bin/python benchmarks/int8_engines.py --models /tmp/usedge-bench-stream/models224-halve-linear --threads 2

Writes benchmarks/results/int8_engines.json and .md (int8_engines_<tag>.* with --tag; CPU model and flags,
load average); `--caps AVX2,AVX512_CORE_VNNI` adds OpenVINO rows capped at each ISA. Each row
runs in its own process (the ISA cap is read by oneDNN once, at start; CPUID is read once by each engine).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name -> (format, activations, weights, per_channel, reduce_range)
VARIANTS = {
    "qdq_u8s8_pc_7bit": ("QDQ", "u8", "s8", True, True),       # usedge export's recipe
    "qdq_u8s8_pt_7bit": ("QDQ", "u8", "s8", False, True),
    "qdq_s8s8_pc": ("QDQ", "s8", "s8", True, False),
    "qdq_u8u8_pc": ("QDQ", "u8", "u8", True, False),
    "qop_u8s8_pc_7bit": ("QOperator", "u8", "s8", True, True),
}


def quantize(fp32: Path, out: Path, variant: str, calib: np.ndarray) -> Path:
    import contextlib
    import io
    import logging

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fmt, act, wt, per_channel, reduce_range = VARIANTS[variant]
    qt = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"image": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self._it, None)

    pre = out.with_suffix(".pre.onnx")
    logging.getLogger().setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        if not pre.is_file():
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        ops = sorted({n.op_type for n in onnx.load(str(pre)).graph.node} - {"Softmax", "Sigmoid"})
        quantize_static(str(pre), str(out), Reader(), op_types_to_quantize=ops,
                        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
                        activation_type=qt[act], weight_type=qt[wt], per_channel=per_channel,
                        reduce_range=reduce_range, calibration_providers=["CPUExecutionProvider"])
    return out


# -- one row, in its own process ------------------------------------------------------------------
def _ort_session(path: str, threads: int, level: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x}), f"onnxruntime {ort.__version__}"


def _ov_compiled(path: str, threads: int, fp32: bool):
    import openvino as ov

    from usedge.runtime.backends.openvino import core     # the process's one Core (see there)

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if fp32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core().compile_model(path, "CPU", config)
    request = compiled.create_infer_request()
    kernels = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            kernels[info["primitiveType"].astype(str)] += 1
    return (lambda x: request.infer({0: x})), f"openvino {ov.__version__}", dict(kernels)


def row_main(spec: dict) -> dict:
    """Time spec's engine on spec's model against onnxruntime fp32 (interleaved rounds)."""
    x = np.random.default_rng(0).standard_normal((1, 1, spec["size"], spec["size"])).astype(np.float32)
    base, _ = _ort_session(spec["fp32"], spec["threads"], "all")
    kernels = None
    try:
        if spec["engine"] == "onnxruntime":
            run, version = _ort_session(spec["model"], spec["threads"], spec["opt"])
        else:
            run, version, kernels = _ov_compiled(spec["model"], spec["threads"], spec["precision"] == "fp32")
    except Exception as exc:  # noqa: BLE001 - an engine that cannot run this variant is a result
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return {"error": f"{type(exc).__name__}: {(lines or [''])[-1][:200]}"}
    for _ in range(3):
        base(x), run(x)
    tb, tr = [], []
    for _ in range(spec["rounds"]):
        t = time.perf_counter(); base(x); tb.append(time.perf_counter() - t)
        t = time.perf_counter(); run(x); tr.append(time.perf_counter() - t)
    mb, mr = float(np.median(tb)) * 1e3, float(np.median(tr)) * 1e3
    from numpy._core._multiarray_umath import __cpu_features__

    seen = {k: bool(__cpu_features__.get(k, False)) for k in ("AVX2", "AVX512F", "AVX512VNNI", "AVX512_SPR")}
    return {"ms": round(mr, 2), "ort_fp32_ms": round(mb, 2), "ratio": round(mr / mb, 3), "version": version,
            "conv_kernels": kernels, "cpu_features_seen": seen}


# -- the driver --------------------------------------------------------------------------------------
def run_row(spec: dict, env: dict) -> dict:
    env = {**env, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True, text=True,
                         env=env, timeout=600)
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        return {"error": f"exit status {res.returncode}: {(lines or ['no message'])[-1][:200]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _load_words(result: dict) -> str:
    """'Quiet machine' when the 1-minute load stayed under the core count at both ends, else 'Loaded machine'."""
    cores = result["machine"]["cores"]
    busy = max(result["load_average_start"][0], result["load_average_end"][0]) >= cores
    return "**Loaded machine** (other jobs ran)" if busy else "Quiet machine"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# int8 on the CPU: onnxruntime against OpenVINO", "",
             f"CPU: {m['cpu']}, flags {', '.join(m['cpu_flags'])}; {m['cores']} cores; {result['threads']} threads; "
             f"224 px AG-ResNet18 (random init: latency does not depend on the weights); batch 1; median of "
             f"{result['rounds']} interleaved rounds per row.",
             f"{_load_words(result)}: load average {result['load_average_start']} at start, "
             f"{result['load_average_end']} at the end; the ratio column is measured against "
             "onnxruntime fp32 in the same process, round by round, and is the figure to read.", "",
             "ISA caps: `ONEDNN_MAX_CPU_ISA=<ISA column>` for OpenVINO (its oneDNN JIT kernels capped there, AVX2 "
             "emulating an AVX2-only CPU; the convolution kernels it chose are listed). onnxruntime has no switch "
             "to cap its ISA: its `native` rows use this CPU's own kernels (with VNNI when the flags list "
             "avx512_vnni). `CPUID-masked AVX2` rows ran in a process that saw this CPU without AVX-512, VNNI and "
             "AMX (`benchmarks/cpuid_mask.c`, CPUID faulting), so both engines and the ORT fp32 baseline chose an "
             "AVX2-only CPU's kernels, run natively on this core; the last column lists what that process saw.", "",
             "| variant | engine | ISA | ms | ORT fp32 ms, same process | ratio vs ORT fp32 | convolution kernels (OpenVINO) "
             "| CPU features the process saw |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['engine']} | {r['isa']} | – | – | – | failed: {r['error']} | |")
            continue
        k = ", ".join(f"{n} x{c}" for n, c in sorted((r.get("conv_kernels") or {}).items())) or "–"
        seen = r.get("cpu_features_seen") or {}
        saw = ", ".join(f"{n} {'yes' if v else 'no'}" for n, v in seen.items()) or "–"
        lines.append(f"| {r['variant']} | {r['engine']} | {r['isa']} | {r['ms']:.2f} | {r['ort_fp32_ms']:.2f} | "
                     f"{r['ratio']:.2f} | {k} | {saw} |")
    lines += ["", "Variants: " + "; ".join(f"`{n}` = {f} {a}x{w} {'per-channel' if pc else 'per-tensor'}"
                                           f"{', 7-bit weights' if rr else ''}"
                                           for n, (f, a, w, pc, rr) in VARIANTS.items()),
              "`ort opt extended`: the quantised graph without onnxruntime's layout level (its NhwcTransformer "
              "turns the fused QLinearConv nodes to NHWC); `ort opt basic`: without the extended level either (QDQ -> "
              "QLinear node fusion is part of it).", "", f"Reproduce: `{result['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--models", type=Path, default=Path("/tmp/usedge-bench-stream/models224-halve-linear"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--caps", default="AVX2", help="comma-separated ONEDNN_MAX_CPU_ISA values for OpenVINO rows "
                    "besides native (e.g. AVX2,AVX512_CORE_VNNI on an AMX CPU: without AMX)")
    ap.add_argument("--mask-cpuid", action="store_true", help="add rows for both engines with AVX-512, VNNI and AMX "
                    "hidden from CPUID (benchmarks/cpuid_mask.c; needs the cpuid_fault CPU flag and cc)")
    ap.add_argument("--only-masked", action="store_true", help="with --mask-cpuid: only those rows")
    ap.add_argument("--tag", default="", help="write int8_engines_<tag>.json/.md (another CPU)")
    args = ap.parse_args()
    if args.row:
        print(json.dumps(row_main(json.loads(args.row))))
        return

    from usedge.bench.machine import machine_info
    from usedge.bench.stats import load_average
    from usedge.fileio import write_json_atomic, write_text_atomic

    fp32 = args.models / "model.onnx"
    import onnxruntime as ort

    size = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[-1]
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="usedge-int8-engines-"))
    calib = np.random.default_rng(1).standard_normal((8, 1, size, size)).astype(np.float32)
    models = {"fp32": fp32}
    for name in VARIANTS:
        models[name] = quantize(fp32, work / f"{name}.onnx", name, calib)
        print(f"quantised {name}", flush=True)
    caps = [c for c in args.caps.split(",") if c]
    masked = "CPUID-masked AVX2"
    envs = {"native": dict(os.environ), **{c: {**os.environ, "ONEDNN_MAX_CPU_ISA": c} for c in caps}}
    plan = []
    if not args.only_masked:
        plan = [("fp32", "onnxruntime", "all", "native"), ("fp32", "openvino", None, "native"),
                *[("fp32", "openvino", None, c) for c in caps]]
        for name in VARIANTS:
            plan += [(name, "onnxruntime", "all", "native"), (name, "openvino", None, "native"),
                     *[(name, "openvino", None, c) for c in caps]]
        plan += [("qdq_u8s8_pc_7bit", "onnxruntime", "extended", "native"),
                 ("qdq_u8s8_pc_7bit", "onnxruntime", "basic", "native")]
    if args.mask_cpuid:
        from emulated_cpu import cpuid_mask_env

        envs[masked] = cpuid_mask_env(work)
        for name in ("fp32", *VARIANTS):
            plan += [(name, "onnxruntime", "all", masked), (name, "openvino", None, masked)]
    rows = []
    for variant, engine, opt, isa in plan:
        spec = {"fp32": str(fp32), "model": str(models[variant]), "engine": engine, "opt": opt or "all",
                "threads": args.threads, "rounds": args.rounds, "size": int(size),
                "precision": "fp32" if variant == "fp32" else "int8"}
        res = run_row(spec, envs[isa])
        row = {"variant": variant, "engine": engine + (f" (opt {opt})" if opt and opt != "all" else ""), "isa": isa,
               **res}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": machine, "threads": args.threads, "rounds": args.rounds, "size": int(size),
              "load_average_start": machine["load_average_start"], "load_average_end": load_average(),
              "rows": rows,
              "command": f"nice -n 10 .venv/bin/python benchmarks/int8_engines.py --models DIR --threads {args.threads} "
                         f"--rounds {args.rounds}" + (f" --caps {args.caps}" if caps != ["AVX2"] else "")
                         + (" --mask-cpuid" if args.mask_cpuid else "") + (" --only-masked" if args.only_masked else "")
                         + (f" --tag {args.tag}" if args.tag else "")}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"int8_engines_{args.tag}" if args.tag else "int8_engines"
    write_json_atomic(args.out / f"{stem}.json", result)
    md = markdown(result)
    write_text_atomic(args.out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
