"""Measured localisation of CAM, Grad-CAM and attention maps on the synthetic cohort, with a trained model.

    nice -n 10 .venv/bin/python benchmarks/explain_localisation.py [--work runs/explain_bench] [--size 96 --epochs 12]

1. generates a training cohort (seed 1) and a separate test cohort (seed 2, other patients) with lesion masks
   (usedge.synth.cohort.make_cohort);
2. trains an AGResNet18 with `usedge train`'s defaults except the budget flags (--size, --epochs, --lr)
   with `usedge.train.trainer.fit` (inner validation split by patient chooses the epoch), every
   scheduled epoch run, and saves the checkpoint;
3. runs `usedge explain` (usedge.train.explain.run_explain) on every test image, once per CAM weighting
   (paper: every map; exact: the CAM only);
4. writes benchmarks/results/explain_localisation.{json,md}; nothing in them is written by hand.
Steps whose outputs exist in --work are reused (delete the folder to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from usedge.fileio import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def make_cohorts(work: Path, train_patients, train_images, test_patients, test_images) -> tuple[Path, Path]:
    from usedge.synth.cohort import make_cohort

    train_dir, test_dir = work / "cohort_train", work / "cohort_test"
    if not (train_dir / "manifest.csv").is_file():
        make_cohort(train_dir, seed=1, patients=train_patients, images=train_images)
    if not (test_dir / "manifest.csv").is_file():
        make_cohort(test_dir, seed=2, patients=test_patients, images=test_images)
    return train_dir, test_dir


def train_model(work: Path, train_dir: Path, args) -> tuple[Path, dict]:
    """Reduced-budget training with usedge.train.trainer.fit; returns (checkpoint, training summary)."""
    ckpt = work / "model" / "best.pt"
    summary_path = work / "model" / "summary.json"
    if ckpt.is_file() and summary_path.is_file():
        return ckpt, json.loads(summary_path.read_text())
    import numpy as np
    import torch
    from rich.progress import Progress

    from usedge.dataset import load_dataset
    from usedge.train.config import load_config
    from usedge.train.data import TumorDataset, load_images
    from usedge.train.model import build_model
    from usedge.train.trainer import fit, resolve_device, seed_everything

    # the config the results file records (usedge's defaults when it ran): StepLR and the paper's focal alpha
    # by class; pinned here so that a rerun trains the same model under today's defaults (cosine, balanced)
    cfg = load_config(None, {"data.image_size": args.size, "optim.epochs": args.epochs, "optim.lr": args.lr,
                             "optim.schedule": "step", "optim.step_size": max(args.epochs * 2 // 3, 1),
                             "loss.alpha": "epidermal_cyst=0.75,lipoma=0.75,pilomatricoma=0.25",
                             "optim.batch_size": 16, "run.seed": 0, "run.threads": args.threads})
    seed_everything(0)
    ds = load_dataset(train_dir)
    # inner validation: 20% of the patients (the test cohort is separate patients altogether)
    rng = np.random.default_rng(0)
    patients = sorted(set(ds.groups))
    val_patients = set(rng.choice(patients, size=max(1, len(patients) // 5), replace=False).tolist())
    tr = [i for i, s in enumerate(ds.samples) if s.patient_id not in val_patients]
    va = [i for i, s in enumerate(ds.samples) if s.patient_id in val_patients]
    spec = cfg.preprocess_spec()
    images = load_images(ds.samples, spec)
    train_set = TumorDataset([ds.samples[i] for i in tr], spec, images=images[tr])
    val_set = TumorDataset([ds.samples[i] for i in va], spec, images=images[va])
    torch.manual_seed(0)
    model = build_model("ag_resnet18", num_classes=len(ds.class_names), gate_norm=cfg.model.gate_norm)
    t0 = time.perf_counter()
    with Progress() as bar:
        res = fit(model, train_set, val_set, cfg, resolve_device("cpu"), class_names=ds.class_names,
                  out_dir=work / "model", progress=bar, label="train")
    summary = {"seconds": round(time.perf_counter() - t0, 1), "best_epoch": res.best_epoch,
               "inner_val": res.best_val, "train_images": len(tr), "val_images": len(va),
               "config": cfg.to_dict(), "history": res.history}
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2))
    return ckpt, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "explain_bench")
    ap.add_argument("--size", type=int, default=96, help="model input side, pixels (usedge default: 224)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-patients", default="50,40,30")
    ap.add_argument("--train-images", type=int, default=300)
    ap.add_argument("--test-patients", default="40,30,20")
    ap.add_argument("--test-images", type=int, default=180)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from usedge.train.explain import ExplainConfig, run_explain

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_dir, test_dir = make_cohorts(work, tuple(int(v) for v in args.train_patients.split(",")), args.train_images,
                                       tuple(int(v) for v in args.test_patients.split(",")), args.test_images)
    ckpt, training = train_model(work, train_dir, args)
    summary = run_explain(ckpt, test_dir, work / "explain", ExplainConfig(threads=args.threads, sheet_rows=8))
    exact = run_explain(ckpt, test_dir, work / "explain_exact",
                        ExplainConfig(maps=("cam",), weighting="exact", overlays="none", threads=args.threads))
    from usedge.bench.machine import machine_info

    result = {
        "benchmark": "explain_localisation",
        "command": "nice -n 10 .venv/bin/python benchmarks/explain_localisation.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "machine_note": f"{args.threads} torch threads; other jobs ran concurrently on the same cores",
        "training": {k: v for k, v in training.items() if k != "history"},
        "training_history": training.get("history", []),
        "explain": summary,
        "explain_exact_cam": exact,
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "explain_localisation.json", result)
    cfg = training["config"]
    header = ["# Explain benchmark: localisation on the synthetic cohort", "",
              f"Command: `{result['command']}`",
              f"Machine: {result['machine']['cpu']} ({', '.join(result['machine']['cpu_flags'])}), "
              f"{result['machine']['cores']} cores; {result['machine_note']}.", "",
              f"Training (usedge.train.trainer.fit; `usedge train` defaults except {cfg['data']['image_size']} px, "
              f"{cfg['optim']['epochs']} epochs, lr {cfg['optim']['lr']}, StepLR step {cfg['optim']['step_size']}): "
              f"gates {cfg['model']['gate_norm']}, crop {cfg['data']['crop']}, {training['train_images']} train / "
              f"{training['val_images']} inner-validation images (seed-1 cohort), {len(training['history'])} epochs run, "
              f"best epoch {training['best_epoch']}, inner-val accuracy {training['inner_val']['accuracy']:.3f}, "
              f"{training['seconds']} s of training.",
              f"Test: the seed-2 cohort (other patients), {summary['data']['n_images']} images, "
              f"{summary['data']['n_patients_with_lesion']} patients.", ""]
    body = (work / "explain" / "explain.md").read_text().split("\n", 1)[1]
    exact_body = (work / "explain_exact" / "explain.md").read_text().split("## Localisation", 1)[1]
    exact_body = exact_body.split("## Cost per image", 1)[0]
    text = "\n".join(header) + body + "\n## CAM with the exact weighting (separate Holm family)\n" + exact_body
    write_text_atomic(RESULTS / "explain_localisation.md", text)
    print(text)


if __name__ == "__main__":
    main()
