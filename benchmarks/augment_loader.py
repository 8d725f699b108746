"""Does augmentation slow training? Images/s of the augmenting loader against the model's training images/s.

Measured in one run on the same machine, single process, 1 torch thread (DataLoader num_workers=0, the
default), in images per CPU-second of this process (robust to other jobs sharing the cores; wall
figures are in the JSON):
    ops        CPU-ms per call of every operation at magnitude 0.5 on a 224 x 224 uint8 image
    loader     images/s of TumorDataset -> DataLoader(batch 16) without a transform, with a random
               20-sub-policy policy (all ops), and with --policy if given (random mode)
    model      images/s of one training step of ag_resnet18 at 224 px, batch 16 (forward + backward + Adam)
The ratio loader / model says how many times faster the loader is than the model can consume.

    nice -n 10 .venv/bin/python benchmarks/augment_loader.py [--policy policy.json]

Writes benchmarks/results/augment_loader.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def per_op_ms(image: np.ndarray, reps: int) -> dict[str, float]:
    from usedge.train.augment import OPS, apply_op

    out = {}
    for name in OPS:
        rng = np.random.default_rng(0)
        apply_op(name, image, 0.5, rng)
        t = time.process_time()
        for _ in range(reps):
            apply_op(name, image, 0.5, rng)
        out[name] = (time.process_time() - t) / reps * 1e3
    return out


def loader_rate(images: np.ndarray, transform, batches: int, batch: int = 16) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second)."""
    import torch

    from usedge.dataset import Sample
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.data import TumorDataset, make_loader

    n = len(images)
    samples = [Sample(path=Path(f"{i}.png"), label=i % 3, patient_id=str(i)) for i in range(n)]
    ds = TumorDataset(samples, PreprocessSpec(size=images.shape[-1]), transform=transform, images=images)
    loader = make_loader(ds, batch, train=True, seed=0)
    seen, t, c = 0, time.perf_counter(), time.process_time()
    while seen < batches * batch:
        for x, _ in loader:
            seen += len(x)
            if seen >= batches * batch:
                break
    del torch
    return seen / (time.process_time() - c), seen / (time.perf_counter() - t)


def model_rate(size: int, steps: int, arch: str, batch: int = 16) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second) of training steps."""
    import torch

    from usedge.train.loss import build_loss
    from usedge.train.model import build_model

    torch.manual_seed(0)
    model = build_model(arch).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = build_loss("focal", 3, 3.0, [0.75, 0.75, 0.25])
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 3, (batch,))
    for i in range(steps + 1):
        if i == 1:
            t, c = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch / (time.process_time() - c), steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, default=None)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arch", default="ag_resnet18")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=50, help="calls per op")
    ap.add_argument("--batches", type=int, default=40, help="loader batches of 16")
    ap.add_argument("--steps", type=int, default=4, help="model training steps of 16")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from usedge.dataset import load_dataset
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.synth.cohort import make_cohort
    from usedge.train.augment import Policy, RandomSubPolicy, random_policy
    from usedge.train.data import load_images

    with tempfile.TemporaryDirectory() as tmp:
        make_cohort(tmp, seed=0, patients=(4, 4, 4), images=24, progress=False)
        images = load_images(load_dataset(tmp).samples, PreprocessSpec(size=args.size, crop="none"), progress=False)

    ops = per_op_ms(images[0], args.reps)
    rates = {"no augmentation": loader_rate(images, None, args.batches),
             "random policy (20 sub-policies, all ops)": loader_rate(images, RandomSubPolicy(random_policy(20, seed=1)),
                                                                     args.batches)}
    if args.policy:
        rates[f"policy {args.policy.name}"] = loader_rate(images, RandomSubPolicy(Policy.load(args.policy)), args.batches)
    model = model_rate(args.size, args.steps, args.arch)
    result = {
        "what": "augmenting loader images/s vs model training images/s (one process, num_workers=0)",
        "command": "nice -n 10 .venv/bin/python benchmarks/augment_loader.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {args.threads}; shared with "
                   "other engineers' work (rates per CPU-second of this process; wall rates in the JSON)",
        "size": args.size, "arch": args.arch,
        "op_ms": {k: round(v, 3) for k, v in ops.items()},
        "loader_images_per_cpu_s": {k: round(v[0], 1) for k, v in rates.items()},
        "loader_images_per_wall_s": {k: round(v[1], 1) for k, v in rates.items()},
        "model_train_images_per_cpu_s": round(model[0], 2),
        "model_train_images_per_wall_s": round(model[1], 2),
        "loader_over_model": {k: round(v[0] / model[0], 1) for k, v in rates.items()},
    }
    from usedge.fileio import write_json_atomic, write_text_atomic

    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "augment_loader.json", result)
    lines = [f"# Augmenting loader vs model ({args.size} px, {args.arch})", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}", "",
             f"Model training: **{result['model_train_images_per_cpu_s']} images per CPU-second** "
             "(batch 16, forward + backward + Adam)", "",
             "| loader (uint8 cache -> augment -> normalise -> batch) | images per CPU-s | x model |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {result['loader_over_model'][k]} |" for k, v in result["loader_images_per_cpu_s"].items()]
    lines += ["", "| op (m = 0.5) | CPU-ms / image |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["op_ms"].items()]
    text = "\n".join(lines) + "\n"
    write_text_atomic(args.results / "augment_loader.md", text)
    print(text)


if __name__ == "__main__":
    main()
