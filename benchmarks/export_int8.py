"""Exported precisions on the CPU: agreement and accuracy vs FP32, and latency ratios (onnxruntime).

    nice -n 10 .venv/bin/python benchmarks/export_int8.py CHECKPOINT --data DATA [--size 224]

From one checkpoint, exports model.onnx (FP32), model.fp16.onnx, model.int8.onnx (QDQ, UNSIGNED
activations / signed per-channel 7-bit weights, the shipped recipe: saturation-free on AVX2 without
VNNI), the previous recipe (8-bit weights, which can saturate VPMADDUBSW's int16 pair sums on
AVX2-only CPUs) and a signed/signed INT8 variant, all with usedge.export. Then on the held-out half
of DATA (split by patient; the other half calibrates INT8):
  accuracy / top-1 agreement / max |dp| of each file vs FP32
  latency: onnxruntime CPU, batch 1, 2 intra-op threads; models interleaved round by round
           (the machine is shared), median per model and median of per-round ratios vs FP32, and
           the shipped recipe's speed relative to the previous recipe (same rounds)
The results name the CPU and its SIMD flags: on a VNNI CPU the previous recipe does not saturate,
so its accuracy there is not what an AVX2-only CPU gets.
--size overrides the input side (the network is fully convolutional): train small, time at 224.
--emulate-cpu MODEL (e.g. Haswell-v4: AVX2 without AVX-512 or VNNI) also runs every file under QEMU
user-mode emulation of that CPU (benchmarks/emulated_cpu.py; needs qemu-x86_64) and reports agreement
and accuracy there: onnxruntime picks its int8 kernels from CPUID, so this is what an AVX2-only CPU
computes, the saturation of the previous recipe included (numbers only, no timing).
--emulate-cpu avx2-mask does the same natively: this CPU with AVX-512, VNNI and AMX hidden from CPUID
(benchmarks/cpuid_mask.c; needs the cpuid_fault CPU flag and a C compiler).
Writes benchmarks/results/export_int8[_<size>][_<tag>].json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402

from usedge.export import images as image_data  # noqa: E402
from usedge.export.fp16 import convert_fp16  # noqa: E402
from usedge.bench.machine import machine_info  # noqa: E402
from usedge.bench.stats import load_average  # noqa: E402
from usedge.export.int8 import max_abs_weight, quantize_int8  # noqa: E402
from usedge.export.onnx_export import export_onnx  # noqa: E402
from usedge.export.parity import compare, ort_outputs, torch_outputs  # noqa: E402
from usedge.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from usedge.runtime.model_info import ModelInfo  # noqa: E402
from usedge.runtime.preprocess import PreprocessSpec  # noqa: E402
from usedge.train.checkpoint import load_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED = "int8 (u8 act, s8 7-bit w; shipped)"
PREVIOUS = "int8 (u8 act, s8 8-bit w; previous)"


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # no spin-waiting, so process CPU time counts work, not waiting for the other thread
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def time_models(paths: dict[str, Path], x: np.ndarray, rounds: int, runs: int, threads: int) -> dict:
    """Interleaved timing: each round runs every model `runs` times.

    Per model: median wall ms and median process-CPU ms per inference (all threads; robust when other
    work shares the cores), and the median over rounds of the per-round ratio fp32 / model for both.
    """
    sessions = {k: _session(p, threads) for k, p in paths.items()}
    feed = {"image": np.ascontiguousarray(x[:1])}
    for s in sessions.values():                       # warm-up
        for _ in range(5):
            s.run(None, feed)
    wall: dict[str, list[list[float]]] = {k: [] for k in sessions}
    cpu: dict[str, list[list[float]]] = {k: [] for k in sessions}
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for k in order:
            w, c = [], []
            for _ in range(runs):
                t0, c0 = time.perf_counter(), time.process_time()
                sessions[k].run(None, feed)
                w.append((time.perf_counter() - t0) * 1e3)
                c.append((time.process_time() - c0) * 1e3)
            wall[k].append(w)
            cpu[k].append(c)

    def ratio(series, k, base="fp32"):
        return float(np.median([np.median(b) / np.median(m) for b, m in zip(series[base], series[k])]))

    out = {k: {"median_ms": float(np.median(np.concatenate(wall[k]))),
               "min_ms": float(np.min(np.concatenate(wall[k]))),
               "cpu_ms": float(np.median(np.concatenate(cpu[k]))),
               "speedup_vs_fp32": ratio(wall, k), "cpu_speedup_vs_fp32": ratio(cpu, k)}
           for k in sessions}
    if SHIPPED in sessions and PREVIOUS in sessions:
        out[SHIPPED]["speed_vs_previous_recipe"] = ratio(wall, SHIPPED, PREVIOUS)
        out[SHIPPED]["cpu_speed_vs_previous_recipe"] = ratio(cpu, SHIPPED, PREVIOUS)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--size", type=int, default=0, help="input side in pixels (default: the checkpoint's)")
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--calib-method", default="minmax")
    ap.add_argument("--eval-count", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="results file suffix (export_int8[_<size>][_<tag>])")
    ap.add_argument("--emulate-cpu", default="", help="also run every file under qemu-x86_64 -cpu MODEL "
                                                     "(e.g. Haswell-v4: AVX2, no AVX-512/VNNI), or avx2-mask: "
                                                     "natively with AVX-512/VNNI/AMX hidden from CPUID; numbers only")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    load_start = load_average() or [float("nan")]
    model, meta = load_checkpoint(args.checkpoint)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    trained_size = spec.size
    if args.size:
        spec = PreprocessSpec.from_dict({**spec.to_dict(), "size": args.size})
    ds = image_data.open_dataset(args.data, meta["class_names"])
    split = image_data.split_from_run(ds.samples, ds.root, args.checkpoint)
    calib_s, held_s = split or image_data.split_by_patient(ds.samples)
    calib = image_data.load_images(image_data.spread(calib_s, args.calib_count), spec)
    held = image_data.load_images(image_data.spread(held_s, args.eval_count), spec)
    info = ModelInfo(class_names=meta["class_names"], input_size=spec.size, preprocess=spec, arch=meta["arch"],
                     checkpoint_sha256=meta["sha256"])
    with tempfile.TemporaryDirectory(prefix="usedge-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = {"fp32": export_onnx(model, tmp / "model.onnx", info)}
        export_s = time.perf_counter() - t0
        paths["fp16"] = convert_fp16(paths["fp32"], tmp / "model.fp16.onnx")
        t0 = time.perf_counter()
        paths[SHIPPED] = quantize_int8(paths["fp32"], tmp / "model.int8.onnx", calib.x,
                                       method=args.calib_method, activations="uint8")
        int8_s = time.perf_counter() - t0
        paths[PREVIOUS] = quantize_int8(paths["fp32"], tmp / "model.int8old.onnx", calib.x,
                                        method=args.calib_method, activations="uint8", reduce_range=False)
        paths["int8 (s8 act, s8 7-bit w)"] = quantize_int8(paths["fp32"], tmp / "model.int8s.onnx", calib.x,
                                                           method=args.calib_method, activations="int8")
        import onnx

        weights = {k: max_abs_weight(onnx.load(str(p))) for k, p in paths.items() if k.startswith("int8")}
        ref = torch_outputs(model, held.x)["probs"]
        outs = {k: ort_outputs(p, held.x, threads=args.threads)["probs"] for k, p in paths.items()}
        quality = {"torch": compare(ref, ref, held.labels).to_dict()}
        quality["fp32 vs torch"] = compare(ref, outs["fp32"], held.labels).to_dict()
        for k in paths:
            if k != "fp32":
                quality[k] = compare(outs["fp32"], outs[k], held.labels).to_dict()
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        emulated = None
        if args.emulate_cpu:
            from emulated_cpu import emulated_probs

            emu, seen = emulated_probs(args.emulate_cpu, {k: p for k, p in paths.items() if k != "fp16"}, held.x, tmp)
            emulated = {"cpu": args.emulate_cpu, "features_seen": seen,
                        "fp32 emulated vs fp32 native": compare(outs["fp32"], emu["fp32"], held.labels).to_dict(),
                        "quality_vs_fp32": {k: compare(emu["fp32"], emu[k], held.labels).to_dict()
                                            for k in emu if k != "fp32"}}
        timing = time_models({k: p for k, p in paths.items() if k != "fp16"}, held.x, args.rounds, args.runs,
                             args.threads)
        # torch eager, same input, for scale (not interleaved: one block after the others)
        x1 = torch.from_numpy(held.x[:1])
        with torch.no_grad():
            for _ in range(3):
                model(x1)
            t = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                model(x1)
                t.append((time.perf_counter() - t0) * 1e3)
        timing["torch eager (fp32)"] = {"median_ms": float(np.median(t))}

    result = {
        "checkpoint": str(args.checkpoint), "checkpoint_sha256": meta["sha256"], "trained_size": trained_size,
        "size": spec.size, "data": str(args.data), "split": "fold train/test (folds.csv)" if split else "patient hash", "calibration_images": len(calib), "held_out_images": len(held),
        "calib_method": args.calib_method, "threads": args.threads, "batch": 1,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
                   f"{load_start[0]:.1f} at the start, {(load_average() or [float('nan')])[0]:.1f} at the end",
        "machine_info": machine_info(), "max_abs_int8_weight": weights,
        "export_s": round(export_s, 1), "int8_quantise_s": round(int8_s, 1),
        "bytes": sizes, "quality_vs_fp32": quality, "latency": timing, "emulated": emulated,
    }
    suffix = (f"_{spec.size}" if args.size else "") + (f"_{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"export_int8{suffix}.json", result)
    lines = [f"# Exported precisions on the CPU ({spec.size} px, batch 1, {args.threads} threads)", "",
             f"checkpoint `{args.checkpoint}` (trained at {trained_size} px); held-out {len(held)} images "
             f"({result['split']}), "
             f"INT8 calibrated on {len(calib)} ({args.calib_method}). {result['machine']}.", "",
             f"CPU: {result['machine_info']['cpu']}; flags: {', '.join(result['machine_info']['cpu_flags'])}"
             + (" (VNNI: the previous recipe's int16 saturation cannot show here)"
                if any('vnni' in f for f in result['machine_info']['cpu_flags']) else " (no VNNI)") + ".", "",
             "| model | accuracy | top-1 agreement vs fp32 | max abs dp vs fp32 | MB | median ms (min) | "
             "speed-up vs fp32 (wall; median of per-round ratios) | CPU ms | speed-up vs fp32 (CPU time; same) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k in paths:
        q = quality["fp32 vs torch"] if k == "fp32" else quality[k]
        acc = q["accuracy_b"]
        lat = timing.get(k, {})
        nan = float("nan")
        lines.append(f"| {k} | {acc:.3f} | {q['top1_agreement']:.3f} | {q['max_abs_diff']:.2e} | "
                     f"{sizes[k] / 1e6:.1f} | {lat.get('median_ms', nan):.1f} ({lat.get('min_ms', nan):.1f}) | "
                     f"{lat.get('speedup_vs_fp32', nan):.2f} | {lat.get('cpu_ms', nan):.1f} | "
                     f"{lat.get('cpu_speedup_vs_fp32', nan):.2f} |")
    lines.append(f"| torch eager | {quality['torch']['accuracy_a']:.3f} | | | | "
                 f"{timing['torch eager (fp32)']['median_ms']:.1f} | | | |")
    shipped = timing.get(SHIPPED, {})
    lines += ["", "| int8 file | max abs quantised weight | largest VPMADDUBSW pair (2 x 255 x w) | fits int16 |",
              "|---|---:|---:|---|"]
    lines += [f"| {k} | {w} | {2 * 255 * w} | {'yes' if 2 * 255 * w <= 32767 else 'NO: saturates on AVX2 without VNNI'} |"
              for k, w in weights.items()]
    lines += ["", f"Shipped vs previous recipe, same rounds: speed ratio {shipped.get('speed_vs_previous_recipe', float('nan')):.2f} "
              f"(wall), {shipped.get('cpu_speed_vs_previous_recipe', float('nan')):.2f} (CPU time); > 1 = shipped faster."]
    lines += ["", "fp32 vs torch: max abs dp "
              f"{quality['fp32 vs torch']['max_abs_diff']:.2e}, top-1 {quality['fp32 vs torch']['top1_agreement']:.3f}. "
              "FP16 is timed on GPUs only (onnxruntime's CPU runs FP16 by casting).",
              "", f"Reproduce: `nice -n 10 .venv/bin/python benchmarks/export_int8.py {args.checkpoint} --data {args.data}"
              + (f" --size {args.size}" if args.size else "") + (f" --tag {args.tag}" if args.tag else "")
              + (f" --emulate-cpu {args.emulate_cpu}" if args.emulate_cpu else "") + "`"]
    if emulated:
        seen = ", ".join(k for k, v in emulated["features_seen"].items() if v) or "none of " + ", ".join(
            emulated["features_seen"])
        native = emulated["fp32 emulated vs fp32 native"]
        masked = emulated["cpu"] == "avx2-mask"
        how = ("this CPU with AVX-512, VNNI and AMX hidden from CPUID (`benchmarks/cpuid_mask.c`, CPUID faulting; "
               "the AVX2 kernels run natively)" if masked else f"`qemu-x86_64 -cpu {emulated['cpu']}`")
        lines += ["", f"## On an {'' if masked else 'emulated '}AVX2-class CPU: {how}", "",
                  f"CPU features the program saw (CPUID, numpy's probe): {seen}; absent: "
                  + ", ".join(k for k, v in emulated["features_seen"].items() if not v) + ". onnxruntime picks its "
                  "kernels from CPUID, so these are the numbers such a CPU computes (1 thread; "
                  + ("numbers only here: benchmarks/int8_engines.py times them" if masked else "emulated, so no timing")
                  + f"). fp32 there vs fp32 here: max abs dp {native['max_abs_diff']:.2e}, top-1 "
                  f"{native['top1_agreement']:.3f}.", "",
                  f"| model | accuracy | top-1 agreement vs fp32 ({'masked' if masked else 'emulated'}) | "
                  f"max abs dp vs fp32 ({'masked' if masked else 'emulated'}) |",
                  "|---|---:|---:|---:|"]
        lines.append(f"| fp32 | {native['accuracy_b']:.3f} | | |")
        for k, q in emulated["quality_vs_fp32"].items():
            lines.append(f"| {k} | {q['accuracy_b']:.3f} | {q['top1_agreement']:.3f} | {q['max_abs_diff']:.2e} |")
    write_text_atomic(RESULTS / f"export_int8{suffix}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
