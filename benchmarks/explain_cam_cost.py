"""What a map costs per image: the bedside CAM as a second ONNX output vs the plain model, and the torch maps.

    nice -n 10 .venv/bin/python benchmarks/explain_cam_cost.py [--size 224] [--repeats 40] [--threads 2]

ONNX (onnxruntime CPU, batch 1): the same AGResNet18 exported twice with the dynamo exporter (opset 18),
outputs `probs` vs `probs` + `cam`; runs alternate so both see the same machine load. Torch (batch 1):
forward only, forward + multi-branch CAM, forward + attention maps, Grad-CAM (forward + backward).
Reported as medians in ms and as ratios to the plain forward of the same engine, measured in the same run.
Writes benchmarks/results/explain_cam_cost.{json,md}. Random weights: cost does not depend on training.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from usedge.fileio import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import onnxruntime as ort
    import torch

    from usedge.train.cam import CamHead, attention_maps, full_resolution_cam, grad_cam, multi_branch_cam
    from usedge.train.model import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("ag_resnet18").eval()
    x = torch.randn(1, 1, args.size, args.size)

    class ProbsOnly(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return torch.softmax(self.m(x), dim=1)

    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, outs in (("probs", ProbsOnly(model), ["probs"]),
                                   ("probs+cam", CamHead(model), list(CamHead.output_names))):
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(module.eval(), (x,), dynamo=True, opset_version=18, input_names=["image"],
                              output_names=outs).save(str(path))
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    for s in sessions.values():  # warm-up
        for _ in range(3):
            s.run(None, feed)
    ort_ms = {k: [] for k in sessions}
    for _ in range(args.repeats):  # alternate so both see the same load
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            ort_ms[k].append((time.perf_counter() - t0) * 1e3)
    ort_med = {k: statistics.median(v) for k, v in ort_ms.items()}
    cam_onnx = sessions["probs+cam"].run(None, feed)[1]

    def fwd():
        with torch.no_grad():
            return model.forward_head(model.forward_features(x))

    def fwd_cam():
        with torch.no_grad():
            f = model.forward_features(x)
            model.forward_head(f)
            return full_resolution_cam(model, x, f)

    def fwd_att():
        with torch.no_grad():
            f = model.forward_features(x)
            model.forward_head(f)
            return attention_maps(f, (args.size, args.size))

    def gcam():
        return grad_cam(model, x)

    for fn in (fwd, fwd_cam, fwd_att, gcam):
        fn()
    torch_med = {}
    reps = max(args.repeats // 2, 5)
    order = {"forward": fwd, "forward+cam": fwd_cam, "forward+attention": fwd_att, "grad-cam": gcam}
    samples = {k: [] for k in order}
    for _ in range(reps):
        for k, fn in order.items():
            samples[k].append(_median_ms(fn, 1))
    torch_med = {k: statistics.median(v) for k, v in samples.items()}
    with torch.no_grad():
        cam_torch = multi_branch_cam(model, model.forward_features(x)).numpy()

    result = {
        "benchmark": "explain_cam_cost",
        "command": "nice -n 10 .venv/bin/python benchmarks/explain_cam_cost.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, onnxruntime "
                   f"{ort.__version__}, torch {torch.__version__}, {args.threads} threads; other engineers' jobs "
                   "ran concurrently on the same cores",
        "input": f"1 x 1 x {args.size} x {args.size}",
        "cam_output_shape": list(cam_onnx.shape),
        "cam_onnx_vs_torch_max_abs_diff": float(np.abs(cam_onnx - cam_torch).max()),
        "onnxruntime_median_ms": ort_med,
        "onnxruntime_ratio_cam_vs_plain": ort_med["probs+cam"] / ort_med["probs"],
        "torch_median_ms": torch_med,
        "torch_ratio_vs_forward": {k: v / torch_med["forward"] for k, v in torch_med.items()},
        "repeats": args.repeats,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "explain_cam_cost.json", result)
    lines = ["# Explain benchmark: what a map costs per image", "",
             f"Command: `{result['command']}`", f"Machine: {result['machine']}.", f"Input {result['input']}, batch 1, "
             f"medians of {args.repeats} alternating runs (onnxruntime) / {reps} (torch).", "",
             "| engine | variant | median ms | ratio to plain forward |", "|---|---|---|---|"]
    for k, v in ort_med.items():
        lines.append(f"| onnxruntime CPU | {k} | {v:.2f} | {v / ort_med['probs']:.3f} |")
    for k, v in torch_med.items():
        lines.append(f"| torch CPU | {k} | {v:.2f} | {v / torch_med['forward']:.3f} |")
    lines += ["", f"ONNX `cam` output {result['cam_output_shape']}, max |ONNX - torch| = "
              f"{result['cam_onnx_vs_torch_max_abs_diff']:.2e}.", ""]
    write_text_atomic(RESULTS / "explain_cam_cost.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
