"""Roofline of the classifier in FP16 on RTX-class and Jetson GPUs: what latency to expect before measuring.

    python benchmarks/roofline.py [--size 224] [--out benchmarks/results]

Measured from the exported ONNX graph (224 px AGResNet18, `usedge.export.onnx_export`), per batch 1/8/32:
  FLOPs        usedge.bench.flops.count_flops (1 multiply-add = 2 FLOPs; GEMM part exact)
  weights      bytes of every initializer in FP16 (2 bytes per value)
  activations  bytes of every tensor a GEMM node (Conv/Gemm/MatMul) writes, in FP16: what is left to
               write and read back once TensorRT has fused BatchNorm, activations and residual adds into
               the convolutions; `all_tensors` is every intermediate tensor (nothing fused, the worst case)
  kernels      GEMM nodes plus the ops TensorRT cannot fold into them (pooling, resize, concat, reductions)
Floors per GPU, from published peak figures (GPUS below, each with its source):
  compute floor = FLOPs / FP16 tensor peak;  memory floor = (weights + input + output + 2 x activations) / bandwidth
  launch overhead = kernels x per-launch CPU cost — an assumption (LAUNCH_US, not a measurement), the
  quantity benchmarks/gpu/check.sh measures as eager minus CUDA-graph latency.
Writes OUT/roofline.json and OUT/roofline.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from math import prod
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Published peak figures. FP16 tensor throughput is the dense rate with FP32 accumulation (the
# conservative one: GeForce Ada runs FP16 accumulation at twice this rate).
GPUS = {
    "RTX 4060": {"fp16_tflops": 30.2, "bandwidth_gbs": 272.0,
                 "source": "NVIDIA RTX 4060 product page: 242 AI TOPS (FP8, sparse) -> 60.5 TFLOPS FP16 dense with "
                           "FP16 accumulate, half with FP32 accumulate (the GeForce Ada ratio of the Ada whitepaper); "
                           "128-bit 17 Gbps GDDR6 = 272 GB/s"},
    "RTX 4090": {"fp16_tflops": 165.2, "bandwidth_gbs": 1008.0,
                 "source": "NVIDIA Ada GPU architecture whitepaper, RTX 4090: peak FP16 tensor 165.2 TFLOPS with FP32 "
                           "accumulate (330.3 with FP16 accumulate), 1008 GB/s GDDR6X"},
    "Jetson AGX Orin 64GB": {"fp16_tflops": 42.5, "bandwidth_gbs": 204.8,
                             "source": "NVIDIA Jetson AGX Orin technical brief: GPU 170 INT8 TOPS sparse -> 85 dense "
                                       "-> 42.5 TFLOPS FP16 dense (Ampere tensor cores: FP16 at half the INT8 rate); "
                                       "LPDDR5 204.8 GB/s shared with the CPU"},
}
LAUNCH_US = (2.0, 5.0)   # assumed CPU cost per kernel launch, µs (eager frameworks); CUDA graphs/TensorRT: less
GEMM_OPS = {"Conv", "Gemm", "MatMul"}
UNFUSED_OPS = {"MaxPool", "GlobalAveragePool", "AveragePool", "ReduceMean", "Resize", "Concat", "Softmax"}


def export_model(size: int, work: Path) -> Path:
    import torch

    from usedge import CLASS_NAMES
    from usedge.export.onnx_export import export_onnx
    from usedge.runtime.model_info import ModelInfo
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.model import build_model

    torch.manual_seed(0)
    model = build_model("ag_resnet18", num_classes=len(CLASS_NAMES), gate_norm="sigmoid").eval()
    spec = PreprocessSpec(size=size)
    info = ModelInfo(class_names=list(CLASS_NAMES), input_size=size, preprocess=spec)
    return export_onnx(model, work / "model.onnx", info)


def tensor_bytes(path: Path, batch: int) -> dict:
    """FP16 bytes of weights, GEMM outputs and all intermediate tensors at `batch`; kernel counts."""
    import onnx

    from usedge.bench.flops import _dims, _fix_batch

    model = onnx.load(str(path))
    weights = sum(prod(init.dims) for init in model.graph.initializer) * 2
    _fix_batch(model, batch)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {vi.name: _dims(vi) for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    io = sum(prod(shapes[v.name]) * 2 for v in [*inferred.graph.input, *inferred.graph.output] if shapes.get(v.name))
    gemm_out = all_out = 0
    kernels = unresolved = 0
    for node in inferred.graph.node:
        size = sum(prod(shapes[o]) for o in node.output if shapes.get(o)) * 2
        if not any(shapes.get(o) for o in node.output):
            unresolved += 1
        all_out += size
        if node.op_type in GEMM_OPS:
            gemm_out += size
            kernels += 1
        elif node.op_type in UNFUSED_OPS:
            kernels += 1
    return {"weights_bytes": weights, "io_bytes": io, "activation_bytes": gemm_out, "all_tensor_bytes": all_out,
            "kernels": kernels, "onnx_nodes": len(inferred.graph.node), "unresolved_nodes": unresolved}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    from usedge.bench.flops import count_flops
    from usedge.fileio import write_json_atomic, write_text_atomic

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_model(args.size, Path(tmp))
        rows = []
        for b in map(int, args.batches.split(",")):
            flops = count_flops(onnx_path, batch=b)
            t = tensor_bytes(onnx_path, b)
            row = {"batch": b, "gflops": round(flops.total / 1e9, 3), "gemm_gflops": round(flops.gemm / 1e9, 3), **t,
                   "gpus": {}}
            traffic = t["weights_bytes"] + t["io_bytes"] + 2 * t["activation_bytes"]
            for name, g in GPUS.items():
                compute = flops.total / (g["fp16_tflops"] * 1e12) * 1e3
                memory = traffic / (g["bandwidth_gbs"] * 1e9) * 1e3
                memory_unfused = (t["weights_bytes"] + t["io_bytes"] + 2 * t["all_tensor_bytes"]) / (g["bandwidth_gbs"] * 1e9) * 1e3
                row["gpus"][name] = {"compute_floor_ms": round(compute, 4), "memory_floor_ms": round(memory, 4),
                                     "memory_floor_unfused_ms": round(memory_unfused, 4),
                                     "floor_ms": round(max(compute, memory), 4),
                                     "bound": "memory" if memory > compute else "compute"}
            row["launch_overhead_ms"] = [round(t["kernels"] * us / 1e3, 3) for us in LAUNCH_US]
            rows.append(row)
    result = {"model": f"ag_resnet18 (sigmoid gates), {args.size} px, 1 channel, 3 classes, FP16",
              "gpus": GPUS, "launch_us_assumed": LAUNCH_US, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "roofline.json", result)
    lines = [f"# Roofline: {result['model']}", "", "Written by benchmarks/roofline.py. Peak figures are published specs "
             "(sources in roofline.json); the launch cost per kernel is an assumption "
             f"({LAUNCH_US[0]:g}-{LAUNCH_US[1]:g} µs), not a measurement.", "",
             "| batch | GFLOP | weights MB | activations MB (fused / all) | kernels | GPU | compute floor ms | "
             "memory floor ms (fused / unfused) | bound | launch ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, g in r["gpus"].items():
            lines.append(f"| {r['batch']} | {r['gflops']:.2f} | {r['weights_bytes'] / 1e6:.1f} | "
                         f"{r['activation_bytes'] / 1e6:.1f} / {r['all_tensor_bytes'] / 1e6:.1f} | {r['kernels']} | {name} | "
                         f"{g['compute_floor_ms']:.3f} | {g['memory_floor_ms']:.3f} / {g['memory_floor_unfused_ms']:.3f} | "
                         f"{g['bound']} | {r['launch_overhead_ms'][0]:.2f}-{r['launch_overhead_ms'][1]:.2f} |")
    write_text_atomic(args.out / "roofline.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
