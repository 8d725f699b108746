"""Ablation: no augmentation vs a random policy vs the Fast-AutoAugment-searched policy (reduced budget).

Three synthetic cohorts (usedge.synth.cohort.make_cohort), disjoint patients:
    train       the training cohort (search and training; the checkpoint is chosen on an inner
                validation split of it, by patient)
    same        held-out patients of the same distribution
    shifted     other acquisition: lower probe frequency (coarser speckle), narrower dynamic range,
                larger gain spread, TGC errors, harder lesions
For every condition x mode x seed a fresh model is trained with usedge.train.trainer.fit and tested on
`same` and `shifted`. The search's wall time is the search cost.

    nice -n 10 .venv/bin/python benchmarks/augment_ablation.py            # reduced budget: ~12 min wall, ~3 CPU-min here

Writes benchmarks/results/augment_ablation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

SHIFT = dict(difficulty=0.7, freq_mhz=(8.0, 11.0), dynamic_range_db=(40.0, 46.0), gain_std_db=6.0,
             tgc_error_std=0.3)


def cohorts(work: Path, patients: tuple[int, int, int], images: int) -> dict[str, Path]:
    from usedge.synth.cohort import make_cohort

    spec = {"train": dict(seed=101), "same": dict(seed=202), "shifted": dict(seed=303, **SHIFT)}
    out = {}
    for name, kw in spec.items():
        folder = work / name
        if not (folder / "manifest.csv").is_file():
            kw = dict(kw)
            make_cohort(folder, patients=patients, images=images, difficulty=kw.pop("difficulty", 0.5),
                        progress=False, overwrite=True, **kw)
        out[name] = folder
    return out


def train_and_test(train_ds, tests: dict, policy, mode: str, seed: int, args) -> dict:
    import torch

    from usedge.train.augment import make_train_augmenter
    from usedge.train.config import load_config
    from usedge.train.cv import final_split
    from usedge.train.data import TumorDataset, load_images, make_loader
    from usedge.train.loss import build_loss
    from usedge.train.metrics import classification_metrics
    from usedge.train.model import build_model
    from usedge.train.trainer import evaluate, fit, probs_loss, seed_everything

    cfg = load_config(None, {"model.arch": args.arch, "data.image_size": args.size, "optim.epochs": args.epochs,
                             "optim.lr": args.lr, "optim.step_size": args.step_size, "run.seed": seed,
                             "run.device": "cpu", "cv.final_model": False})
    spec = cfg.preprocess_spec()
    key = ("train", args.size)
    if key not in _CACHE:
        _CACHE[key] = load_images(train_ds.samples, spec, progress=False)
    images = _CACHE[key]
    split = final_split(train_ds, 0.2, seed)
    sub = lambda idx: TumorDataset([train_ds.samples[i] for i in idx], spec, images=images[idx])  # noqa: E731
    train_set = sub(split.train)
    if policy is not None:
        train_set = make_train_augmenter(policy, mode)(train_set)
    seed_everything(seed)
    model = build_model(cfg.model.arch, num_classes=len(train_ds.class_names))
    t0 = time.perf_counter()
    res = fit(model, train_set, sub(split.val), cfg, torch.device("cpu"), class_names=train_ds.class_names, seed=seed)
    train_seconds = time.perf_counter() - t0
    loss_fn = build_loss(cfg.loss.name, len(train_ds.class_names), cfg.loss.gamma, cfg.loss.alpha)
    out = {"best_epoch": res.best_epoch, "train_items_per_epoch": len(train_set), "train_seconds": round(train_seconds, 1),
           "images_per_second": round(float(np.mean([h["images_per_second"] for h in res.history])), 1)}
    for name, ds in tests.items():
        tkey = (name, args.size)
        if tkey not in _CACHE:
            _CACHE[tkey] = load_images(ds.samples, spec, progress=False)
        test = TumorDataset(ds.samples, spec, images=_CACHE[tkey])
        probs, labels = evaluate(model, make_loader(test, 64, train=False), torch.device("cpu"))
        m = classification_metrics(labels, probs, ds.class_names)
        out[name] = {"accuracy": m["overall_accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                     "macro_auc": m["macro"]["roc_auc"], "loss": probs_loss(loss_fn, probs, labels)}
    return out


_CACHE: dict = {}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for test in ("same", "shifted"):
        for metric in ("accuracy", "balanced_accuracy", "macro_auc", "loss"):
            v = np.array([r[test][metric] for r in runs], dtype=float)
            out[f"{test}_{metric}"] = {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0}
    out["train_seconds"] = float(np.mean([r["train_seconds"] for r in runs]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/usedge-augment-ablation"))
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--patients", default="30,15,8", help="patients per class in each cohort")
    ap.add_argument("--images", type=int, default=120, help="images per cohort")
    ap.add_argument("--arch", default="ag_resnet18")
    ap.add_argument("--size", type=int, default=64, help="model input side, pixels")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--step-size", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-offset", type=int, default=0, help="first training seed")
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    ap.add_argument("--modes", default="random", help="comma list of expand,random")
    ap.add_argument("--expand-epochs", type=int, default=0, help="epochs for expand runs (0 = --epochs)")
    ap.add_argument("--inner-splits", type=int, default=2)
    ap.add_argument("--trials", type=int, default=25)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--child-epochs", type=int, default=8)
    ap.add_argument("--ops", default="all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pool", type=Path, nargs="+", default=None,
                    help="only merge the runs of these result JSONs (same settings, other seeds) into "
                         "augment_ablation_pooled.{json,md}")
    args = ap.parse_args()
    if args.pool:
        return pool(args.pool, args.results)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from usedge.fileio import write_json_atomic
    from usedge.dataset import load_dataset
    from usedge.train.augment import random_policy
    from usedge.train.search import ChildConfig, SearchConfig, search

    t_all, c_all = time.perf_counter(), time.process_time()
    args.work.mkdir(parents=True, exist_ok=True)
    patients = tuple(int(p) for p in args.patients.split(","))
    t0 = time.perf_counter()
    folders = cohorts(args.work, patients, args.images)
    cohort_seconds = time.perf_counter() - t0
    train_ds = load_dataset(folders["train"])
    tests = {"same": load_dataset(folders["same"]), "shifted": load_dataset(folders["shifted"])}

    cfg = SearchConfig(inner_splits=args.inner_splits, trials=args.trials, top=args.top, ops=args.ops, folds=0,
                       child=ChildConfig(arch=args.arch, image_size=args.size, epochs=args.child_epochs,
                                         lr=args.lr, threads=args.threads, device="cpu"))
    t0, c0 = time.perf_counter(), time.process_time()
    searched = search(train_ds, cfg, storage=None, show_progress=sys.stderr.isatty())
    search_minutes = (time.perf_counter() - t0) / 60
    search_cpu = time.process_time() - c0
    args.results.mkdir(parents=True, exist_ok=True)
    searched.save(args.results / f"augment_ablation{args.tag}_policy.json")
    print(f"search: {search_minutes:.2f} min, {len(searched)} sub-policies", flush=True)
    policies = {"none": None, "random_policy": random_policy(len(searched), args.ops, seed=7), "searched": searched}

    runs: dict[str, list[dict]] = {}
    for mode in args.modes.split(","):
        for name, pol in policies.items():
            label = name if pol is None else f"{name}/{mode}"
            if label in runs:
                continue
            saved = args.epochs
            if mode == "expand" and pol is not None and args.expand_epochs:
                args.epochs = args.expand_epochs
            runs[label] = []
            for seed in range(args.seed_offset, args.seed_offset + args.seeds):
                r = train_and_test(train_ds, tests, pol, mode, seed, args)
                runs[label].append(r)
                print(f"{label:24s} seed {seed}: same acc {r['same']['accuracy']:.3f} shifted acc "
                      f"{r['shifted']['accuracy']:.3f} ({r['train_seconds']:.0f} s)", flush=True)
                write_json_atomic(args.results / f"augment_ablation{args.tag}.partial.json",
                                  {"search_minutes": search_minutes, "runs": runs})
            args.epochs = saved

    summary = {k: summarise(v) for k, v in runs.items()}
    result = {
        "what": "augmentation ablation on synthetic cohorts (reduced budget)",
        "command": "nice -n 10 .venv/bin/python benchmarks/augment_ablation.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads {args.threads}; "
                   "shared with other engineers' work (timings are indicative)",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cohorts": {"patients_per_class": patients, "images": args.images, "shifted": {k: v for k, v in SHIFT.items()}},
        "cohort_minutes": round(cohort_seconds / 60, 2),
        "search_minutes": round(search_minutes, 2),
        "search_splits": searched.meta["splits"],
        "policy": [s.describe() for s in searched.sub_policies],
        "summary": summary,
        "runs": runs,
        "total_minutes": round((time.perf_counter() - t_all) / 60, 2),
        "cpu_minutes": round((time.process_time() - c_all) / 60, 2),
        "search_cpu_minutes": round(search_cpu / 60, 2),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    from usedge.fileio import write_text_atomic

    write_json_atomic(args.results / f"augment_ablation{args.tag}.json", result)
    (args.results / f"augment_ablation{args.tag}.partial.json").unlink(missing_ok=True)
    write_text_atomic(args.results / f"augment_ablation{args.tag}.md", markdown(result))
    print(markdown(result))


def pool(paths: list[Path], results: Path) -> None:
    """Merge runs (per condition) of several ablation JSONs and re-summarise."""
    from usedge.fileio import write_json_atomic, write_text_atomic

    parts = [json.loads(p.read_text()) for p in paths]
    runs: dict[str, list[dict]] = {}
    for part in parts:
        for label, rs in part["runs"].items():
            runs.setdefault(label, []).extend(rs)
    base = dict(parts[0])
    base.update(command=" ; ".join(p["command"] for p in parts) + " ; .venv/bin/python benchmarks/augment_ablation.py --pool "
                + " ".join(str(p) for p in paths),
                runs=runs, summary={k: summarise(v) for k, v in runs.items()},
                total_minutes=round(sum(p["total_minutes"] for p in parts), 2),
                cpu_minutes=round(sum(p.get("cpu_minutes", 0) for p in parts), 2),
                pooled_from=[str(p) for p in paths])
    base["args"] = dict(base["args"], seeds=f"{min(len(v) for v in runs.values())}-{max(len(v) for v in runs.values())}")
    write_json_atomic(results / "augment_ablation_pooled.json", base)
    write_text_atomic(results / "augment_ablation_pooled.md", markdown(base))
    print(markdown(base))


def markdown(r: dict) -> str:
    def f(d):
        return f"{d['mean']:.3f} ± {d['sd']:.3f}"

    n = {k: len(v) for k, v in r["runs"].items()}
    lines = [f"# Augmentation ablation ({r['args']['seeds']} seeds, {r['args']['arch']} at {r['args']['size']} px, "
             f"{r['args']['epochs']} epochs)", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Search: {r['args']['inner_splits']} inner splits x {r['args']['trials']} trials, top {r['args']['top']} "
             f"-> {len(r['policy'])} sub-policies, child {r['args']['child_epochs']} epochs: "
             f"**{r['search_minutes']} min wall, {r['search_cpu_minutes']} CPU-min**; whole ablation "
             f"{r['total_minutes']} min wall, {r['cpu_minutes']} CPU-min.", "",
             (f"`expand` runs: {r['args']['expand_epochs']} epochs over (1 + N) x the images (about the image "
              f"budget of the others); `random` runs: {r['args']['epochs']} epochs." if r['args'].get('expand_epochs')
              else ""), "",
             "| condition (seeds) | same: accuracy | same: bal. acc. | same: macro AUC | shifted: accuracy | "
             "shifted: bal. acc. | shifted: macro AUC | train s/run |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in r["summary"].items():
        lines.append(f"| {name} ({n[name]}) | {f(s['same_accuracy'])} | {f(s['same_balanced_accuracy'])} | {f(s['same_macro_auc'])} | "
                     f"{f(s['shifted_accuracy'])} | {f(s['shifted_balanced_accuracy'])} | {f(s['shifted_macro_auc'])} | "
                     f"{s['train_seconds']:.0f} |")
    lines += ["", "Searched policy (best first per inner split):", ""] + [f"- {p}" for p in r["policy"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
