"""Does the data loader keep up with the model? Images/s of each, measured in the same run, 1 thread.

    .venv/bin/python benchmarks/train_throughput.py [--sizes 64,224] [--batches 3]

Loader = the training DataLoader over cached prepared uint8 images (index, normalise, collate);
model = one AG-ResNet18 training step (forward, focal loss, backward, Adam). Both are timed in CPU
seconds of this process (robust to other jobs on a shared machine) and in wall seconds. Reading and
preparing a file (`prepare_file`: decode, crop, Doppler, resize) happens once per image before training;
it is timed too. Writes benchmarks/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,224")
    ap.add_argument("--batches", type=int, default=3, help="timed training batches of 16 per size")
    args = ap.parse_args()

    import numpy as np
    import torch

    from usedge.dataset import Sample
    from usedge.fileio import write_json_atomic, write_text_atomic
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.data import TumorDataset, load_images, make_loader
    from usedge.train.loss import build_loss
    from usedge.train.model import build_model

    torch.set_num_threads(1)
    rows = []
    tmp = Path("/tmp/usedge-train-throughput")
    tmp.mkdir(exist_ok=True)
    import cv2

    rng = np.random.default_rng(0)
    files = []
    for i in range(32):  # scanner-sized B-mode-like frames on disk, like the synthetic cohort (~320 x 256)
        path = tmp / f"img{i}.png"
        cv2.imwrite(str(path), (rng.random((256, 320)) * 255).astype(np.uint8))
        files.append(Sample(path=path, label=i % 3, patient_id=str(i)))
    for size in [int(s) for s in args.sizes.split(",")]:
        spec = PreprocessSpec(size=size)
        load_images(files[:2], spec, progress=False)  # warm-up (lazy imports, OpenCV init)
        _, _, read_cpu = timed(lambda: load_images(files, spec, progress=False))
        images = (rng.random((512, size, size)) * 255).astype(np.uint8)
        samples = [Sample(path=Path(f"x{i}"), label=i % 3, patient_id=str(i)) for i in range(512)]
        loader = make_loader(TumorDataset(samples, spec, images=images), 16, train=True, seed=0)
        n, lw, lc = timed(lambda: sum(len(y) for _, y in loader))
        model, loss_fn = build_model("ag_resnet18"), build_loss("focal")
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        batches = [b for b, _ in zip(loader, range(args.batches + 1))]

        def step(x, y):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(*batches[0])  # warm-up
        _, mw, mc = timed(lambda: [step(x, y) for x, y in batches[1:]])
        m = 16 * args.batches
        rows.append({"size": size, "read_prepare_images_per_cpu_s": len(files) / read_cpu,
                     "loader_images_per_cpu_s": n / lc, "loader_images_per_wall_s": n / lw,
                     "model_train_images_per_cpu_s": m / mc, "model_train_images_per_wall_s": m / mw,
                     "loader_over_model_cpu": (n / lc) / (m / mc)})
        print(json.dumps(rows[-1]), flush=True)
    doc = {"rows": rows, "threads": 1, "machine": f"{os.cpu_count()} CPU cores shared with other jobs",
           "torch": torch.__version__, "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "train_throughput.json", doc)
    lines = ["# Training data loader vs model (1 thread, batch 16, AG-ResNet18)", "",
             "| size px | read+prepare img/CPU-s (once) | loader img/CPU-s | model train img/CPU-s | loader / model |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['read_prepare_images_per_cpu_s']:.0f} | {r['loader_images_per_cpu_s']:.0f} | "
                     f"{r['model_train_images_per_cpu_s']:.1f} | {r['loader_over_model_cpu']:.0f}x |")
    lines += ["", "CPU seconds of this process; other engineers' jobs shared the 2 cores (wall figures in the JSON).",
              f"Command: `{doc['command']}`", ""]
    write_text_atomic(RESULTS / "train_throughput.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
