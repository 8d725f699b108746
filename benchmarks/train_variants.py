"""5-fold patient-grouped CV of AG(paper), AG(softmax), AG(sigmoid) and plain ResNet18, focal vs CE,
on the synthetic default cohort, at a reduced budget that fits a shared 2-core CPU.

    .venv/bin/python benchmarks/train_variants.py [--data COHORT] [--size 48 --epochs 3 --workers 3]

Writes benchmarks/results/train_variants.{json,md}: per variant the pooled/mean±sd metrics,
seconds per epoch, and the data loader's images/s against the model's training images/s.
The images are read and prepared once (prepare_file) and shared by every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = [  # (name, arch, gate_norm, loss): focal first, so a cut-short run still compares the models
    ("ag-paper-focal", "ag_resnet18", "paper", "focal"),
    ("ag-softmax-focal", "ag_resnet18", "softmax", "focal"),
    ("ag-sigmoid-focal", "ag_resnet18", "sigmoid", "focal"),
    ("resnet18-focal", "resnet18", "paper", "focal"),
    ("ag-paper-ce", "ag_resnet18", "paper", "ce"),
    ("ag-softmax-ce", "ag_resnet18", "softmax", "ce"),
    ("ag-sigmoid-ce", "ag_resnet18", "sigmoid", "ce"),
    ("resnet18-ce", "resnet18", "paper", "ce"),
]


def budget(args) -> dict:
    return {"data.image_size": args.size, "optim.epochs": args.epochs, "optim.lr": args.lr,
            "optim.step_size": args.step_size, "optim.batch_size": 16, "cv.folds": 5,
            "cv.final_model": False, "run.threads": 1, "run.device": "cpu", "run.seed": args.seed}


def run_variants(args, names: list[str]) -> None:
    """Worker: run the named variants on the cached images, one result JSON per variant."""
    import numpy as np

    from usedge.dataset import load_dataset
    from usedge.train.config import load_config
    from usedge.train.trainer import cross_validate

    ds = load_dataset(args.data)
    images = np.load(args.cache)
    for name, arch, norm, loss in VARIANTS:
        if name not in names:
            continue
        out = Path(args.runs) / name
        if (out / "metrics.json").is_file():
            continue
        cfg = load_config(overrides={**budget(args), "model.arch": arch, "model.gate_norm": norm, "loss.name": loss})
        t0, c0 = time.perf_counter(), time.process_time()
        cross_validate(ds, cfg, out, resume=out.exists(), progress=False, images=images,
                       log=lambda m, n=name: print(f"[{n}] {m}", flush=True))
        timing = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        (out / "timing.json").write_text(json.dumps(timing))


def loader_vs_model(args, images, ds) -> dict:
    """Images/s of the training DataLoader alone (index, normalise, collate) vs the model's training step."""
    import torch

    from usedge.train.config import load_config
    from usedge.train.data import TumorDataset, make_loader
    from usedge.train.loss import build_loss
    from usedge.train.model import build_model

    torch.set_num_threads(1)
    cfg = load_config(overrides=budget(args))
    spec = cfg.preprocess_spec()
    tds = TumorDataset(ds.samples, spec, images=images)
    loader = make_loader(tds, 16, train=True, seed=0)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    loader_ips = n / (time.perf_counter() - t0)
    model = build_model("ag_resnet18")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = build_loss("focal")
    batches = [b for b, _ in zip(loader, range(6))]
    t0, seen = None, 0
    for i, (x, y) in enumerate(batches):
        if i == 1:
            t0, seen = time.perf_counter(), 0
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    model_ips = seen / (time.perf_counter() - t0)
    return {"loader_images_per_s": loader_ips, "model_train_images_per_s": model_ips,
            "ratio_loader_over_model": loader_ips / model_ips}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/usedge-bench/cohort"),
                    help="synthetic default cohort (generated here if missing)")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/usedge-bench/train_runs"))
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--step-size", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=3, help="variant worker processes (1 torch thread each)")
    ap.add_argument("--only", default="", help="comma-separated variant names (default all)")
    ap.add_argument("--collect", action="store_true", help="only rebuild the tables from finished runs")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_variants(args, args.worker.split(","))
        return

    import numpy as np

    from usedge.dataset import load_dataset
    from usedge.train.config import load_config
    from usedge.train.data import load_images

    if not (args.data / "manifest.csv").is_file():
        from usedge.synth.cohort import make_cohort

        print(f"generating the default synthetic cohort in {args.data}", flush=True)
        make_cohort(args.data, seed=0)
    names = [v[0] for v in VARIANTS if not args.only or v[0] in args.only.split(",")]
    if args.collect:
        saved = json.loads((args.runs / "throughput.json").read_text())
        collect(args, names, saved["throughput"], saved["read"], saved.get("wall_s", float("nan")), [])
        return
    ds = load_dataset(args.data)
    spec = load_config(overrides=budget(args)).preprocess_spec()
    args.runs.mkdir(parents=True, exist_ok=True)
    cache = args.runs / f"images_{spec.size}.npy"
    t0, c0 = time.perf_counter(), time.process_time()
    if cache.is_file():
        images = np.load(cache)
        read = None
    else:
        images = load_images(ds.samples, spec)
        read = {"images": len(ds), "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        np.save(cache, images)
    throughput = loader_vs_model(args, images, ds)
    if read:
        throughput["read_prepare_images_per_s_cpu"] = read["images"] / read["cpu_s"]
    print(json.dumps(throughput), flush=True)
    (args.runs / "throughput.json").write_text(json.dumps({"throughput": throughput, "read": read}))
    shards = [names[i::args.workers] for i in range(args.workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--data", str(args.data), "--runs", str(args.runs),
                               "--size", str(args.size), "--epochs", str(args.epochs), "--lr", str(args.lr),
                               "--step-size", str(args.step_size), "--seed", str(args.seed),
                               "--worker", ",".join(shard), "--cache", str(cache)], env=env)
             for shard in shards if shard]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    saved = json.loads((args.runs / "throughput.json").read_text())
    (args.runs / "throughput.json").write_text(json.dumps({**saved, "wall_s": wall}))
    collect(args, names, throughput, read, wall, codes)


def collect(args, names, throughput, read, wall, codes) -> None:
    from usedge.fileio import write_json_atomic, write_text_atomic

    rows = []
    for name in names:
        out = args.runs / name
        if not (out / "metrics.json").is_file():
            rows.append({"variant": name, "done": False})
            continue
        m = json.loads((out / "metrics.json").read_text())
        agg = m["aggregate"]
        timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {}
        epochs = [h for f in m["folds"] for h in f["history"]]
        rows.append({
            "variant": name, "done": True,
            "overall_accuracy": agg["overall_accuracy"],
            "macro": {k: agg["macro"][k] for k in ("sensitivity", "specificity", "f1", "roc_auc")},
            "per_class_sensitivity": {c: agg["per_class"][c]["sensitivity"] for c in m["class_names"]},
            "confusion_matrix_pooled": agg["confusion_matrix_pooled"],
            "seconds_per_epoch_median": m["seconds_per_epoch_median"],
            "train_images_per_s_median": sorted(h["images_per_second"] for h in epochs)[len(epochs) // 2],
            "best_epochs": [f["best_epoch"] for f in m["folds"]],
            "cpu_s_per_epoch": timing["cpu_s"] / max(len(epochs), 1) if timing else None,
            "fold_accuracy": [f["metrics"]["overall_accuracy"] for f in m["folds"]],
            **timing,
        })
    doc = {"budget": budget(args), "data": str(args.data), "workers": args.workers, "wall_s": wall,
           "exit_codes": codes, "throughput": throughput, "read": read, "variants": rows,
           "machine": f"{os.cpu_count()} CPU cores, shared with other engineers' jobs (load varies)",
           "command": " ".join(["python benchmarks/train_variants.py"] + [a for a in sys.argv[1:] if a != "--collect"])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "train_variants.json", doc)
    lines = ["# Train variants: 5-fold CV by patient on the synthetic default cohort", "",
             f"Budget: {args.size} px, {args.epochs} epochs, Adam lr {args.lr:g}, StepLR {args.step_size}/0.1, batch 16, "
             f"1 torch thread per run, {args.workers} runs in parallel, seed {args.seed}; the paper's budget is "
             "224 px, 30 epochs, lr 1e-4. Other engineers' jobs ran on the same 2 cores.", "",
             "Percent: mean ± sd over 5 folds (pooled over all test images in brackets).", "",
             "| variant | overall acc | macro sens | macro spec | macro F1 | macro AUC | wall s/epoch (median) | CPU s/epoch | train img/s (wall) |",
             "|---|---|---|---|---|---|---|---|---|"]

    def ms(d):
        return f"{100 * d['mean']:.1f} ± {100 * d['sd']:.1f} ({100 * d['pooled']:.1f})" if d["mean"] is not None else "–"

    for r in rows:
        if not r["done"]:
            lines.append(f"| {r['variant']} | not run | | | | | | | |")
            continue
        mac = r["macro"]
        lines.append(f"| {r['variant']} | {ms(r['overall_accuracy'])} | {ms(mac['sensitivity'])} | "
                     f"{ms(mac['specificity'])} | {ms(mac['f1'])} | {ms(mac['roc_auc'])} | "
                     f"{r['seconds_per_epoch_median']:.1f} | {r['cpu_s_per_epoch'] or float('nan'):.1f} | "
                     f"{r['train_images_per_s_median']:.1f} |")
    base = next((r for r in rows if r["variant"] == "ag-paper-focal" and r["done"]), None)
    if base:
        import numpy as np

        lines += ["", "Paired by fold (same patient splits): overall accuracy minus ag-paper-focal's, mean ± sd over "
                  "the 5 folds, percentage points:", ""]
        for r in rows:
            if r["done"] and r is not base:
                d = 100 * (np.asarray(r["fold_accuracy"]) - np.asarray(base["fold_accuracy"]))
                r["paired_accuracy_delta_pp"] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)),
                                                 "folds_better": int((d > 0).sum()), "folds_worse": int((d < 0).sum())}
                lines.append(f"- {r['variant']}: {d.mean():+.1f} ± {d.std(ddof=1):.1f} "
                             f"(better in {(d > 0).sum()}, worse in {(d < 0).sum()} of 5 folds)")
        write_json_atomic(RESULTS / "train_variants.json", doc)
    t = throughput
    lines += ["", f"Data loader alone: {t['loader_images_per_s']:.0f} images/s; AG-ResNet18 training step: "
              f"{t['model_train_images_per_s']:.1f} images/s (1 thread, {args.size} px) -> the loader is "
              f"{t['ratio_loader_over_model']:.0f}x faster than the model."]
    if read:
        lines.append(f"Reading + preparing (prepare_file: crop, Doppler, resize) {read['images']} images once: "
                     f"{read['cpu_s']:.1f} s CPU ({t['read_prepare_images_per_s_cpu']:.0f} images/s), then cached in memory.")
    lines += ["", f"Command: `{doc['command']}`; wall {wall:.0f} s.", ""]
    write_text_atomic(RESULTS / "train_variants.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
