"""What verifying a model's weights digest costs at load (`Classifier.load(verify=True)`, the default).

    nice -n 10 .venv/bin/python benchmarks/model_verify_cost.py [--size 224] [--rounds 10]

Exports a random-init AG-ResNet18 at --size (the weights, and so the file, do not depend on the
size: ~45 MB FP32; the INT8 file is quantised from it on random calibration inputs), then per
file and round, interleaved: Classifier.load with verify=False and verify=True (onnxruntime CPU,
1 thread), and `verify_weights` alone. Reports medians and the ratio verify/no-verify measured in
the same rounds (the machine is shared: ratios, not absolute times, are the result).
Writes benchmarks/results/model_verify_cost.json and .md, with the CPU and its flags.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from usedge.bench.machine import machine_info
from usedge.fileio import write_json_atomic, write_text_atomic
from usedge.runtime.classifier import Classifier
from usedge.runtime.model_info import verify_weights

RESULTS = Path(__file__).resolve().parent / "results"


def _export(tmp: Path, size: int) -> dict[str, Path]:
    import torch

    from usedge import CLASS_NAMES
    from usedge.export.int8 import quantize_int8
    from usedge.export.onnx_export import export_onnx
    from usedge.runtime.model_info import ModelInfo
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.model import build_model

    torch.manual_seed(0)
    model = build_model("ag_resnet18", num_classes=len(CLASS_NAMES)).eval()
    spec = PreprocessSpec(size=size)
    info = ModelInfo(class_names=list(CLASS_NAMES), input_size=size, preprocess=spec)
    fp32 = export_onnx(model, tmp / "model.onnx", info)
    calib = np.random.default_rng(0).uniform(-1, 1, (4, 1, size, size)).astype(np.float32)
    return {"fp32": fp32, "int8": quantize_int8(fp32, tmp / "model.int8.onnx", calib)}


def _load_ms(path: Path, verify: bool) -> float:
    t0 = time.perf_counter()
    Classifier.load(path, backend="ort-cpu", threads=1, verify=verify).close()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="usedge-verify-") as tmp:
        paths = _export(Path(tmp), args.size)
        for name, path in paths.items():
            clf = Classifier.load(path, backend="ort-cpu", threads=1)
            info, metadata = clf.info, dict(clf.backend.metadata)
            clf.close()
            _load_ms(path, True), _load_ms(path, False)               # warm the page cache
            off, on, alone, ratios = [], [], [], []
            for r in range(args.rounds):
                pair = [(False, off), (True, on)] if r % 2 == 0 else [(True, on), (False, off)]
                for verify, sink in pair:
                    sink.append(_load_ms(path, verify))
                ratios.append(on[-1] / off[-1])
                t0 = time.perf_counter()
                verify_weights(path, metadata, info)
                alone.append((time.perf_counter() - t0) * 1e3)
            rows[name] = {"bytes": path.stat().st_size, "load_ms_no_verify": float(np.median(off)),
                          "load_ms_verify": float(np.median(on)), "verify_alone_ms": float(np.median(alone)),
                          "ratio_verify_vs_no_verify": float(np.median(ratios))}
    result = {"size": args.size, "rounds": args.rounds, "machine": machine_info(), "files": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "model_verify_cost.json", result)
    m = result["machine"]
    lines = [f"# Load-time cost of the weights-digest check ({args.size} px AG-ResNet18, onnxruntime CPU, 1 thread)", "",
             f"CPU: {m['cpu']}; flags: {', '.join(m['cpu_flags'])}; {m['cores']} cores, shared with other work "
             f"(load average at start {m['load_average_start']}). Medians over {args.rounds} interleaved rounds.", "",
             "| file | MB | load, no verify (ms) | load, verify (ms) | verify alone (ms) | ratio verify / no verify (per round, median) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['bytes'] / 1e6:.1f} | {r['load_ms_no_verify']:.0f} | {r['load_ms_verify']:.0f} | "
                     f"{r['verify_alone_ms']:.0f} | {r['ratio_verify_vs_no_verify']:.2f} |")
    lines += ["", f"Reproduce: `nice -n 10 .venv/bin/python benchmarks/model_verify_cost.py --size {args.size} "
              f"--rounds {args.rounds}`"]
    write_text_atomic(RESULTS / "model_verify_cost.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
