"""The demo's learning rate: Adam lr arms at the demo's budget, 5 folds x each seed, paired by fold.

    .venv/bin/python benchmarks/demo_lr.py [--lrs 3e-4,1e-3,3e-3] [--seeds 0,1] [--workers 2]
    .venv/bin/python benchmarks/demo_lr.py --seeds 0,1,2,3  # the committed results (resumes 0,1)
    .venv/bin/python benchmarks/demo_lr.py --summarise      # tables from whatever folds have finished

Budget (usedge.demo.DemoConfig): 96 px, 6 epochs, batch 16, 5 folds by patient (the splits depend on
the seed), no all-data model, the usedge defaults otherwise (warm-up + cosine), 1 torch thread per
run, CPU, on the default synthetic cohort (`make_cohort(seed=0)`, the demo's). Every arm of one seed
uses the same splits, so each arm is compared with the first lr fold by fold (mean difference, 95 %
t-interval over the pairs, pairs better/worse).

Writes benchmarks/results/demo_lr.{json,md} with per-class sensitivity and the CPU flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_recipe import _pct, make_cohorts, paired, paired_cell, run_parallel, write_results  # noqa: E402
from train_ablation import KEYS, arm_summary, machine_line, pairs, partial_lines  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def budget() -> dict:
    from usedge.demo import DemoConfig

    c = DemoConfig()
    return {"data.image_size": c.image_size, "optim.epochs": c.epochs, "optim.batch_size": 16, "cv.folds": c.folds,
            "cv.final_model": False, "run.threads": 1, "run.device": "cpu"}


def arm(lr: float) -> str:
    return f"lr{lr:g}"


def run_one(root: Path, lr: float, seed: int) -> None:
    """One 5-fold cross-validation (resumable: finished folds are kept)."""
    from usedge.dataset import load_dataset
    from usedge.train.config import load_config
    from usedge.train.trainer import cross_validate

    out = root / "runs" / f"seed{seed}" / arm(lr)
    cfg = load_config(overrides={**budget(), "optim.lr": lr, "run.seed": seed})
    cross_validate(load_dataset(root / "cohorts" / "default"), cfg, out, resume=out.exists(), progress=False,
                   log=lambda m: print(f"[seed{seed}/{arm(lr)}] {m}", flush=True))


def summarise(root: Path, lrs: list[float], seeds: list[int], argv: list[str]) -> dict:
    from usedge.bench.machine import machine_info

    doc = {"budget": budget(), "lrs": lrs, "seeds": seeds, "cohort": {"seed": 0},
           "command": "python benchmarks/demo_lr.py " + " ".join(argv), "runs": str(root),
           "machine": machine_info(), "results": {}}
    runs = {arm(lr): pairs(root, arm(lr), seeds) for lr in lrs}
    base = arm(lrs[0])
    names = next((list(f[0]["sensitivity"]) for f in runs.values() if f), [])
    for name, folds in runs.items():
        entry = arm_summary(folds, names)
        if name != base:
            entry["minus_first"] = {k: paired(runs[base], folds, k) for k in KEYS}
        doc["results"][name] = entry
    return doc


def markdown(doc: dict) -> str:
    m, b = doc["machine"], doc["budget"]
    n_pairs = b["cv.folds"] * len(doc["seeds"])
    base = arm(doc["lrs"][0])
    lines = ["# The demo's learning rate (Adam) at the demo's budget", "",
             f"Command: `{doc['command']}` (runs in `{doc['runs']}`). Budget: {b['data.image_size']} px, "
             f"{b['optim.epochs']} epochs, batch {b['optim.batch_size']}, {b['cv.folds']} folds by patient x seeds "
             f"{doc['seeds']} ({n_pairs} paired folds), no all-data model, usedge defaults otherwise, 1 torch thread "
             "per run, CPU; default synthetic cohort (`make_cohort(seed=0)`).", "",
             machine_line(m), ""]
    res = doc["results"]
    lines += partial_lines(res, n_pairs)
    names = next((list(e["sensitivity"]) for e in res.values() if e["sensitivity"]), [])
    header = ["lr", "folds", "balanced accuracy", "macro AUC", "overall accuracy"] + [f"sens. {n}" for n in names] \
        + ["best epoch"]
    lines += ["Mean ± sd over the folds of every seed, %:", "", "| " + " | ".join(header) + " |",
              "|---" * len(header) + "|"]
    for name, e in res.items():
        be = e["best_epoch"]
        lines.append("| " + " | ".join([name, str(e["pairs_done"])] + [_pct(e[k]) for k in KEYS]
                                       + [_pct(e["sensitivity"].get(n)) for n in names]
                                       + [f"{be['mean']:.1f}" if be["mean"] is not None else "–"]) + " |")
    lines += ["", f"Paired by fold (same seed, same split), arm − {base}, percentage points: mean, 95 % t-interval "
              "over the pairs, (pairs better/worse), and the per-pair differences:", "",
              "| lr | balanced accuracy | macro AUC | overall accuracy | balanced accuracy per pair |", "|---|---|---|---|---|"]
    for name, e in res.items():
        if "minus_first" in e:
            d = e["minus_first"]
            per = ", ".join(f"{100 * v:+.1f}" for v in d["balanced_accuracy"]["per_fold"])
            lines.append(f"| {name} | " + " | ".join(paired_cell(d[k]) for k in KEYS) + f" | {per} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("/tmp/usedge-demo-lr"), help="cohort and run folders")
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="comma-separated; the first is the baseline")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (1 torch thread each)")
    p.add_argument("--summarise", action="store_true", help="only table the folds finished so far")
    p.add_argument("--one", nargs=2, metavar=("LR", "SEED"), help=argparse.SUPPRESS)  # a worker
    a = p.parse_args(argv)
    if a.one:
        run_one(a.root, float(a.one[0]), int(a.one[1]))
        return
    lrs = [float(v) for v in a.lrs.split(",")]
    seeds = [int(v) for v in a.seeds.split(",")]
    if not a.summarise:
        make_cohorts(a.root, ["default"])      # once, before the workers start
        run_parallel([[sys.executable, __file__, "--root", str(a.root), "--one", str(lr), str(seed)]
                      for lr in lrs for seed in seeds], a.workers)
    doc = summarise(a.root, lrs, seeds, argv)
    write_results(RESULTS / "demo_lr", doc, markdown(doc))


if __name__ == "__main__":
    main()
