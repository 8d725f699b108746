"""Soak: 20,000 frames through the ONE stream loop (StreamRunner) with a JSONL sink; resident memory
growth after warm-up and latency drift (p99 of the first vs the last 1,000 frames).

    python benchmarks/soak_stream.py                      # 20,000 frames, 64 px random-init model
    python benchmarks/soak_stream.py --frames 2000 --size 224 --model path/to/model.onnx

Frames: a pool of 64 different scanner-like 640x480 BGR screens (speckled sector, moving dark
lesion, text bar); every 2,000 frames the screen switches to 800x600 and back (the layout is
detected again), so the loop's caches are exercised. Every frame is processed (a file-like source
handed over frame by frame, nothing dropped), freeze detection on. RSS from /proc/self/status
(MB = 2^20 bytes), sampled every 250 frames. Writes benchmarks/results/soak_stream.json and .md.
Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def build_model(work: Path, size: int) -> Path:
    """model.onnx at `size` px from a random-init AGResNet18 (latency does not depend on the weights)."""
    out = work / f"soak_model_{size}"
    if (out / "model.onnx").is_file():
        return out / "model.onnx"
    import torch

    from usedge import CLASS_NAMES
    from usedge.export.pipeline import ExportOptions, run_export
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.checkpoint import save_checkpoint
    from usedge.train.model import build_model as build

    torch.manual_seed(0)
    model = build("ag_resnet18", num_classes=len(CLASS_NAMES)).eval()
    ckpt = save_checkpoint(work / f"soak_{size}.pt", model, class_names=list(CLASS_NAMES),
                           preprocess=PreprocessSpec(size=size), metrics={"note": "random init, soak benchmark"})
    run_export(ckpt, out, ExportOptions(fp16=False, int8=False, cam=False, parity_count=2, reference_count=0))
    return out / "model.onnx"


def screen(h: int, w: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """A scanner-like BGR screen: dark frame, speckled sector, a lesion that moves with t, a text bar."""
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    cx = w // 2
    sector = (yy > h * 0.12) & (yy < h * 0.92) & (np.abs(xx - cx) < (yy - h * 0.05) * 0.7)
    speck = rng.gamma(2.0, 35.0, sector.sum()).clip(0, 255).astype(np.uint8)
    for c in range(3):
        img[..., c][sector] = speck
    ly, lx = int(h * 0.5 + 20 * np.sin(t / 7)), int(cx + 30 * np.cos(t / 11))
    lesion = ((yy - ly) ** 2 + (xx - lx) ** 2) < (h // 10) ** 2
    img[lesion & sector] //= 5
    img[: h // 20, :] = 90                      # the scanner's header bar
    return img


class PoolReader:
    """FrameReader over a pool of frames, `n` frames long; a file-like source (nothing dropped)."""

    live = False
    fps = None
    regions = None

    def __init__(self, pools: dict[tuple[int, int], list[np.ndarray]], n: int, switch_every: int) -> None:
        self.pools, self.n, self.switch_every = pools, n, switch_every
        self.keys = list(pools)
        self.name = f"soak:{n}"
        self.i = 0

    def open(self) -> None:
        self.i = 0

    def read(self):
        if self.i >= self.n:
            return None
        key = self.keys[(self.i // self.switch_every) % len(self.keys)] if self.switch_every else self.keys[0]
        pool = self.pools[key]
        frame = pool[self.i % len(pool)]
        self.i += 1
        return frame

    def skip(self) -> bool:
        self.i += 1
        return self.i <= self.n

    def close(self) -> None:
        pass


def pct(values, q) -> float:
    return round(float(np.percentile(np.asarray(values, np.float64), q)), 3) if len(values) else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=64, help="model input side in pixels (when --model is not given)")
    ap.add_argument("--model", type=Path, default=None, help="an exported .onnx (default: build a random-init one)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--warmup", type=int, default=1000, help="frames before the memory baseline")
    ap.add_argument("--window", type=int, default=1000, help="frames in the first/last latency windows")
    ap.add_argument("--switch-every", type=int, default=2000, help="frames between screen-size switches (0: never)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "usedge_soak")
    ap.add_argument("--name", default="soak_stream", help="results file stem under benchmarks/results/")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        print(build_model(args.work, args.size))
        return 0
    model = args.model
    if model is None:   # built in a child process: the soaked process must not carry torch (lean runtime)
        import subprocess

        model = Path(subprocess.run([sys.executable, __file__, "--build-only", "--size", str(args.size), "--work",
                                     str(args.work)], check=True, capture_output=True, text=True).stdout.split()[-1])

    from usedge.runtime.classifier import Classifier
    from usedge.runtime.sinks import JsonlSink
    from usedge.runtime.pipeline import FramePipeline
    from usedge.runtime.stream import StreamRunner

    rng = np.random.default_rng(0)
    pools = {(480, 640): [screen(480, 640, t, rng) for t in range(64)],
             (600, 800): [screen(600, 800, t, rng) for t in range(64)]}
    clf = Classifier.load(model, "ort-cpu", threads=args.threads)
    reader = PoolReader(pools, args.frames, args.switch_every)
    jsonl_path = args.work / "soak.jsonl"
    sink = JsonlSink(jsonl_path)

    lat_c2r: list[float] = []
    lat_model: list[float] = []
    rss: list[tuple[int, float]] = [(0, rss_mb())]
    state = {"n": 0, "t_warm": None}
    bar = None
    try:
        from rich.progress import Progress

        bar = Progress(transient=True)
    except ImportError:
        pass

    def on_result(pred, frame, overlay) -> None:
        state["n"] += 1
        n = state["n"]
        lat_c2r.append(pred.latency_ms.get("capture_to_result", float("nan")))
        lat_model.append(pred.latency_ms.get("model", float("nan")))
        if n % 250 == 0 or n == args.warmup:
            rss.append((n, rss_mb()))
        if n == args.warmup:
            state["t_warm"] = time.perf_counter()
        if bar is not None and n % 100 == 0:
            bar.update(task, completed=n)

    runner = StreamRunner(FramePipeline(clf, [sink], stream=True, regions=reader.regions, freeze=True), reader)
    runner.subscribe(on_result)
    t0 = time.perf_counter()
    if bar is not None:
        with bar:
            task = bar.add_task("soak", total=args.frames)
            summary = runner.run()
    else:
        summary = runner.run()
    wall = time.perf_counter() - t0
    sink.close()
    rss.append((state["n"], rss_mb()))
    clf.close()

    lines_written = sum(1 for _ in open(jsonl_path))
    base = next((m for n, m in rss if n >= args.warmup), rss[-1][1])
    post = [m for n, m in rss if n >= args.warmup]
    w = args.window
    first_c2r, last_c2r = lat_c2r[:w], lat_c2r[-w:]
    first_model, last_model = [v for v in lat_model[:w] if v == v], [v for v in lat_model[-w:] if v == v]
    result = {
        "frames": args.frames, "results": state["n"], "jsonl_lines": lines_written,
        "processed": summary.processed, "frozen_skipped": summary.frozen_skipped, "errors": summary.errors,
        "dropped": summary.dropped, "layout_detections": summary.layout_detections, "ended_by": summary.ended_by,
        "wall_s": round(wall, 1), "results_per_s": round(state["n"] / wall, 1),
        "model": str(model), "model_size_px": clf.spec.size, "threads": args.threads,
        "torch_loaded": "torch" in sys.modules,
        "rss_mb": {"start": round(rss[0][1], 1), "after_warmup": round(base, 1), "end": round(rss[-1][1], 1),
                   "max_after_warmup": round(max(post), 1) if post else float("nan"),
                   "growth_after_warmup": round(rss[-1][1] - base, 1),
                   "samples": [(n, round(m, 1)) for n, m in rss]},
        "latency_ms": {
            "capture_to_result": {"first_p50": pct(first_c2r, 50), "first_p99": pct(first_c2r, 99),
                                  "last_p50": pct(last_c2r, 50), "last_p99": pct(last_c2r, 99)},
            "model": {"first_p50": pct(first_model, 50), "first_p99": pct(first_model, 99),
                      "last_p50": pct(last_model, 50), "last_p99": pct(last_model, 99)},
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "shared 2-core machine; other engineers' jobs ran concurrently, so absolute latencies are noisy",
    }
    c = result["latency_ms"]["capture_to_result"]
    result["p99_drift_ratio"] = round(c["last_p99"] / c["first_p99"], 3) if c["first_p99"] else float("nan")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Soak: {args.frames} frames through StreamRunner", "",
          f"`python benchmarks/soak_stream.py --frames {args.frames} --size {clf.spec.size} --threads {args.threads}`", "",
          "| measure | value |", "|---|---|",
          f"| results (processed + frozen-skipped), JSONL lines | {state['n']}, {lines_written} |",
          f"| errors, dropped, layout detections | {summary.errors}, {summary.dropped}, {summary.layout_detections} |",
          f"| wall time, results/s | {result['wall_s']} s, {result['results_per_s']} |",
          f"| RSS start / after {args.warmup} frames / end | {result['rss_mb']['start']} / {result['rss_mb']['after_warmup']}"
          f" / {result['rss_mb']['end']} MB |",
          f"| RSS growth after warm-up (aim < 50 MB) | {result['rss_mb']['growth_after_warmup']} MB |",
          f"| capture-to-result p50, p99: first {w} | {c['first_p50']}, {c['first_p99']} ms |",
          f"| capture-to-result p50, p99: last {w} | {c['last_p50']}, {c['last_p99']} ms |",
          f"| p99 drift (last / first) | {result['p99_drift_ratio']} |",
          f"| model p99 first / last {w} | {result['latency_ms']['model']['first_p99']} / "
          f"{result['latency_ms']['model']['last_p99']} ms |", "",
          result["note"] + "."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
