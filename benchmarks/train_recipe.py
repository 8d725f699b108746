"""Today's training recipe against the usedge default recipe, at the demo's budget, on two synthetic cohorts.

    .venv/bin/python benchmarks/train_recipe.py [--workers 2] [--cohorts default,hard] [--root /tmp/usedge-recipe]
    .venv/bin/python benchmarks/train_recipe.py --summarise        # tables from whatever runs have finished

Budget (the demo's): 96 px, 6 epochs, 5 folds by patient (stratified), Adam lr 3e-4, batch 16, seed 0,
no all-data model, 1 torch thread per run. Every recipe uses the same patient splits.

Recipes
  previous   the recipe of the previous release as the demo ran it: no augmentation, StepLR(4, 0.1),
             focal alpha 0.75/0.75/0.25 (by the paper's class names, i.e. its old alphabetical
             order), checkpoint on inner-validation loss
  balanced   usedge defaults (light augmentation, 1 warm-up epoch + cosine, checkpoint on
             inner-validation loss, focal alpha balanced = inverse class frequency of the training part,
             resize halve-linear)
  balanced-area, sqrt, uniform
             the focal alpha alternatives, compared with each other at the previous release's resize
             ("area", one INTER_AREA): balanced, sqrt (square root of the balanced weights), uniform
The usedge default alpha (usedge/train/defaults.toml) is recorded in the results.

Cohorts
  default    `make_cohort(seed=0)`: 698 images, 255 patients (149/74/32), difficulty 0.5, 12-22 MHz
  hard       `make_cohort(seed=1, difficulty=0.8, freq_mhz=(5, 10), depth_mm=(25, 40))`: more class
             overlap, lower probe frequencies (coarser speckle, less resolution), deeper fields

Writes benchmarks/results/train_recipe.{json,md}: per cohort and recipe, balanced accuracy, macro AUC,
overall accuracy and per-class sensitivity (mean ± sd over folds), and per-fold paired differences
against `previous` (mean, 95 % t-interval over the 5 folds, folds better/worse), with CPU flags.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_ALPHA = "epidermal_cyst=0.75,lipoma=0.75,pilomatricoma=0.25"
BUDGET = {"data.image_size": 96, "optim.epochs": 6, "optim.lr": 3e-4, "optim.batch_size": 16, "cv.folds": 5,
          "cv.final_model": False, "run.threads": 1, "run.device": "cpu", "run.seed": 0}
RECIPES = {
    "previous": {"data.augment": "none", "optim.schedule": "step", "optim.step_size": 4, "optim.step_gamma": 0.1,
                 "optim.warmup_epochs": 0, "loss.alpha": PAPER_ALPHA, "cv.select_on": "loss", "data.resize": "area"},
    "balanced": {"loss.alpha": "balanced"},
    "balanced-area": {"loss.alpha": "balanced", "data.resize": "area"},
    "sqrt": {"loss.alpha": "sqrt", "data.resize": "area"},
    "uniform": {"loss.alpha": "uniform", "data.resize": "area"},
}
COHORTS = {
    "default": {"seed": 0},
    "hard": {"seed": 1, "difficulty": 0.8, "freq_mhz": (5.0, 10.0), "depth_mm": (25.0, 40.0)},
}


def make_cohorts(root: Path, names: list[str]) -> None:
    from usedge.synth.cohort import make_cohort

    for name in names:
        folder = root / "cohorts" / name
        if not (folder / "manifest.csv").is_file():
            make_cohort(folder, progress=False, overwrite=True, **COHORTS[name])


def run_one(root: Path, cohort: str, recipe: str) -> None:
    """One 5-fold cross-validation (resumable: finished folds are kept)."""
    from usedge.dataset import load_dataset
    from usedge.train.config import load_config
    from usedge.train.trainer import cross_validate

    out = root / "runs" / cohort / recipe
    cfg = load_config(overrides={**BUDGET, **RECIPES[recipe]})
    t0 = time.process_time()
    cross_validate(load_dataset(root / "cohorts" / cohort), cfg, out, resume=out.exists(), progress=False,
                   log=lambda m: print(f"[{cohort}/{recipe}] {m}", flush=True))
    # CPU seconds add up over resumed runs (a run that only finds its folds done adds its few seconds)
    cpu = out / "cpu_seconds.txt"
    before = float(cpu.read_text()) if cpu.is_file() else 0.0
    cpu.write_text(f"{before + time.process_time() - t0:.1f}\n")


def run_parallel(commands: list[list[str]], workers: int) -> None:
    """Run the commands, at most `workers` at a time, and wait for all."""
    running: list[subprocess.Popen] = []
    for cmd in commands:
        while len(running) >= workers:
            running = [j for j in running if j.poll() is None]
            time.sleep(2)
        running.append(subprocess.Popen(cmd))
    for j in running:
        j.wait()


def fold_results(run_dir: Path) -> list[dict]:
    out = []
    for path in sorted(run_dir.glob("fold*/result.json")):
        r = json.loads(path.read_text())
        m = r["metrics"]
        out.append({"fold": r["fold"], "balanced_accuracy": m["balanced_accuracy"], "macro_auc": m["macro"]["roc_auc"],
                    "overall_accuracy": m["overall_accuracy"], "best_epoch": r["best_epoch"],
                    "sensitivity": {n: c["sensitivity"] for n, c in m["per_class"].items()},
                    "alpha": r.get("alpha")})
    return out


def _mean_sd(values: list[float]) -> dict:
    import numpy as np

    v = np.asarray([x for x in values if x is not None], dtype=float)
    return {"mean": float(v.mean()) if len(v) else None, "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": int(len(v))}


def paired(a: list[dict], b: list[dict], key: str) -> dict:
    """b - a per fold present in both: mean, sample sd, 95 % t-interval, folds better/worse/tied."""
    from scipy import stats

    by_fold = {r["fold"]: r[key] for r in a}
    diffs = [r[key] - by_fold[r["fold"]] for r in b if r["fold"] in by_fold and r[key] is not None
             and by_fold[r["fold"]] is not None]
    out = {"per_fold": diffs, **_mean_sd(diffs), "better": sum(d > 0 for d in diffs),
           "worse": sum(d < 0 for d in diffs), "tied": sum(d == 0 for d in diffs)}
    if len(diffs) > 1:
        half = stats.t.ppf(0.975, len(diffs) - 1) * out["sd"] / math.sqrt(len(diffs))
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    return out


def summarise(root: Path, cohorts: list[str], argv: list[str]) -> dict:
    from usedge.bench.machine import machine_info
    from usedge.train.config import load_config

    doc = {"budget": BUDGET, "recipes": RECIPES, "cohorts": {k: {kk: list(v) if isinstance(v, tuple) else v
                                                                for kk, v in COHORTS[k].items()} for k in cohorts},
           "command": "python benchmarks/train_recipe.py " + " ".join(argv), "runs": str(root),
           "usedge_default_alpha": load_config().loss.alpha,
           "machine": machine_info(), "results": {}}
    for cohort in cohorts:
        runs = {r: fold_results(root / "runs" / cohort / r) for r in RECIPES}
        entry = {}
        for recipe, folds in runs.items():
            cpu = root / "runs" / cohort / recipe / "cpu_seconds.txt"
            entry[recipe] = {
                "folds_done": len(folds), "folds": folds,
                "cpu_seconds": float(cpu.read_text()) if cpu.is_file() else None,
                **{k: _mean_sd([f[k] for f in folds]) for k in ("balanced_accuracy", "macro_auc", "overall_accuracy")},
                "sensitivity": {n: _mean_sd([f["sensitivity"][n] for f in folds])
                                for n in (folds[0]["sensitivity"] if folds else {})},
            }
            if recipe != "previous":
                entry[recipe]["minus_previous"] = {k: paired(runs["previous"], folds, k)
                                                   for k in ("balanced_accuracy", "macro_auc", "overall_accuracy")}
        doc["results"][cohort] = entry
    return doc


def _pct(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    sd = "n/a" if d.get("sd") is None else f"{100 * d['sd']:.1f}"
    return f"{100 * d['mean']:.1f} ± {sd}"


def paired_cell(p: dict) -> str:
    """A `paired` difference as a table cell: mean, 95 % interval, (better/worse), in percentage points."""
    if p.get("mean") is None:
        return "–"
    ci = f" [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}]" if "ci95" in p else ""
    return f"{100 * p['mean']:+.1f}{ci} ({p['better']}/{p['worse']})"


def write_results(out: Path, doc: dict, md: str) -> None:
    """out.json and out.md (atomic), and the Markdown on stdout."""
    from usedge.fileio import write_json_atomic, write_text_atomic

    write_json_atomic(out.with_suffix(".json"), doc)
    write_text_atomic(out.with_suffix(".md"), md)
    print(md)


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# Training recipe: previous vs usedge default (demo budget)", "",
             f"Command: `{doc['command']}` (runs in `{doc['runs']}`; `--summarise` tables the folds finished so "
             "far). Budget: 96 px, 6 epochs, 5 folds by patient, Adam lr 3e-4, batch 16, "
             "seed 0, same splits for every recipe, 1 torch thread per run, CPU. Recipes and cohorts: see the "
             f"script's docstring. The usedge default focal alpha is `{doc['usedge_default_alpha']}`.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores shared with other jobs (load average at start "
             f"{m['load_average_start']}); SIMD flags: "
             f"{', '.join(f for f in m['cpu_flags'] if f.startswith(('avx', 'fma', 'sse4')) or 'vnni' in f)} "
             "(all flags in the JSON).", ""]
    done = [e["folds_done"] for entry in doc["results"].values() for e in entry.values()]
    if min(done) < doc["budget"]["cv.folds"]:
        lines += [f"**Partial results**: some runs finished fewer than {doc['budget']['cv.folds']} folds (column "
                  "'folds'); paired differences use only the folds both recipes finished. Re-run the same command "
                  "to continue (finished folds are kept).", ""]
    for cohort, entry in doc["results"].items():
        names = next((list(e["sensitivity"]) for e in entry.values() if e["sensitivity"]), [])
        header = (["recipe", "folds", "balanced accuracy", "macro AUC", "overall accuracy"]
                  + [f"sens. {n}" for n in names] + ["CPU s (all folds)"])
        lines += [f"## Cohort `{cohort}`", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for recipe, e in entry.items():
            cells = [recipe, str(e["folds_done"]), _pct(e["balanced_accuracy"]), _pct(e["macro_auc"]),
                     _pct(e["overall_accuracy"])] + [_pct(e["sensitivity"].get(n)) for n in names]
            cells.append(f"{e['cpu_seconds']:.0f}" if e["cpu_seconds"] else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Paired by fold, recipe − previous, percentage points (mean, 95 % t-interval over folds, "
                  "folds better/worse):", "",
                  "| recipe | balanced accuracy | macro AUC | overall accuracy | per-fold balanced accuracy diff |",
                  "|---|---|---|---|---|"]
        for recipe, e in entry.items():
            if "minus_previous" not in e:
                continue
            cells = [paired_cell(e["minus_previous"][k]) for k in ("balanced_accuracy", "macro_auc", "overall_accuracy")]
            per_fold = ", ".join(f"{100 * d:+.1f}" for d in e["minus_previous"]["balanced_accuracy"]["per_fold"])
            lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {per_fold} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("/tmp/usedge-recipe"), help="cohorts and run folders")
    p.add_argument("--cohorts", default="default,hard")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (1 torch thread each)")
    p.add_argument("--summarise", action="store_true", help="only write the tables from finished folds")
    p.add_argument("--one", nargs=2, metavar=("COHORT", "RECIPE"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS / "train_recipe")
    args = p.parse_args(argv)
    cohorts = args.cohorts.split(",")
    if args.one:
        run_one(args.root, *args.one)
        return
    if not args.summarise:
        make_cohorts(args.root, cohorts)
        run_parallel([[sys.executable, __file__, "--root", str(args.root), "--one", c, r]
                      for r in args.recipes.split(",") for c in cohorts], args.workers)
    doc = summarise(args.root, cohorts, argv)
    write_results(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
