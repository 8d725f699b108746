"""Ablations of the usedge default recipe (issue 17 item 4): one change per arm, 5 folds x 2 seeds, paired.

    .venv/bin/python benchmarks/train_ablation.py [--workers 2] [--seeds 0,1] [--root /tmp/usedge-ablation]
    .venv/bin/python benchmarks/train_ablation.py --summarise      # tables from whatever folds have finished

Budget: 96 px, 8 epochs, 5 folds by patient (stratified; the splits depend on the seed), Adam lr 3e-4,
batch 16, no all-data model, 1 torch thread per run, CPU, on the default synthetic cohort
(`make_cohort(seed=0)`, as in benchmarks/train_recipe.py). Every arm of one seed uses the same splits,
so each arm is compared with `usedge` fold by fold (10 pairs: 5 folds x 2 seeds): mean difference,
95 % t-interval over the pairs, pairs better/worse.

Arms (each changes one thing of usedge/train/defaults.toml)
  usedge          the defaults: AG-ResNet18, sigmoid gates, focal gamma 3 with balanced alpha, light augmentation
  resnet18        plain ResNet18 (no attention gates)
  gate-paper      gate normalisation of the authors' code (spatial softmax, then sigmoid)
  gate-softmax    spatial softmax
  alpha-paper     focal with the paper's alpha (0.75/0.75/0.25 by class name)
  alpha-uniform   focal with uniform alpha
  ce              cross-entropy (no class weights)
  aug-none        no augmentation
  faa-searched    Fast AutoAugment: `usedge augment search` per seed (the usedge preset at a reduced budget:
                  SEARCH below), each fold trained with the sub-policies searched without its test patients,
                  drawn one per image per epoch (`--augment random`, the same epochs as every arm)
  faa-random      the same number of sub-policies drawn at random (ops, probabilities, magnitudes), same mode
The searched and random policies are written to ROOT/policies/seed<N>/ (the search once per seed).

Writes benchmarks/results/train_ablation.{json,md} with per-class sensitivity and the CPU flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_recipe import (_mean_sd, _pct, fold_results, make_cohorts, paired, paired_cell, run_parallel,  # noqa: E402
                          write_results)

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = {"data.image_size": 96, "optim.epochs": 8, "optim.lr": 3e-4, "optim.batch_size": 16, "cv.folds": 5,
          "cv.final_model": False, "run.threads": 1, "run.device": "cpu"}
ARMS = {
    "usedge": {},
    "resnet18": {"model.arch": "resnet18"},
    "gate-paper": {"model.gate_norm": "paper"},
    "gate-softmax": {"model.gate_norm": "softmax"},
    "alpha-paper": {"loss.alpha": "epidermal_cyst=0.75,lipoma=0.75,pilomatricoma=0.25"},
    "alpha-uniform": {"loss.alpha": "uniform"},
    "ce": {"loss.name": "ce"},
    "aug-none": {"data.augment": "none"},
}
ARMS.update({"faa-searched": {"data.augment": "random"}, "faa-random": {"data.augment": "random"}})
# the FAA arms' search: the usedge preset with 2 inner splits x 25 trials (top 5: 10 sub-policies per fold), children
# at the arms' size and epochs, 1 thread; the preset's 4 x 100 costs more CPU than the rest of the table
SEARCH = {"inner_splits": 2, "trials": 25, "child_image_size": BUDGET["data.image_size"],
          "child_epochs": BUDGET["optim.epochs"], "child_threads": 1, "child_device": "cpu"}
KEYS = ("balanced_accuracy", "macro_auc", "overall_accuracy")


def policy_path(root: Path, arm: str, seed: int) -> Path:
    """The FAA arm's policy for one seed, made once: searched on the arm's folds, or random of the same size."""
    from usedge.dataset import load_dataset
    from usedge.train.augment import random_policy
    from usedge.train.config import load_config
    from usedge.train.search import SearchConfig, search

    path = root / "policies" / f"seed{seed}" / f"{arm.split('-')[1]}.json"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = SearchConfig.for_run(load_config(overrides={**BUDGET, "run.seed": seed}), "usedge", **SEARCH)
    if arm == "faa-searched":
        policy = search(load_dataset(root / "cohorts" / "default"), cfg, show_progress=False)
    else:
        policy = random_policy(cfg.inner_splits * cfg.top, cfg.ops, cfg.ops_per_sub_policy, seed=seed)
    policy.save(path)
    return path


def run_one(root: Path, arm: str, seed: int) -> None:
    """One 5-fold cross-validation (resumable: finished folds are kept)."""
    from usedge.dataset import load_dataset
    from usedge.train.config import load_config
    from usedge.train.trainer import cross_validate

    out = root / "runs" / f"seed{seed}" / arm
    policy = {"data.policy": str(policy_path(root, arm, seed))} if arm.startswith("faa-") else {}
    cfg = load_config(overrides={**BUDGET, "run.seed": seed, **ARMS[arm], **policy})
    cross_validate(load_dataset(root / "cohorts" / "default"), cfg, out, resume=out.exists(), progress=False,
                   log=lambda m: print(f"[seed{seed}/{arm}] {m}", flush=True))


def pairs(root: Path, arm: str, seeds: list[int]) -> list[dict]:
    """Fold results of one arm over the seeds, keyed (seed, fold) so that `paired` matches them."""
    out = []
    for seed in seeds:
        for r in fold_results(root / "runs" / f"seed{seed}" / arm):
            out.append({**r, "seed": seed, "fold": f"{seed}/{r['fold']}"})
    return out


def epoch_seconds(root: Path, arm: str, seeds: list[int]) -> float:
    """Wall seconds of every training epoch of the arm's finished folds (history in fold*/result.json)."""
    import json

    return sum(e["seconds"] for seed in seeds
               for path in (root / "runs" / f"seed{seed}" / arm).glob("fold*/result.json")
               for e in json.loads(path.read_text())["history"])


def arm_summary(folds: list[dict], names: list[str]) -> dict:
    """One arm's folds (from `pairs`): count, mean ± sd of KEYS, per-class sensitivity and best epoch."""
    return {"pairs_done": len(folds), "folds": folds, **{k: _mean_sd([f[k] for f in folds]) for k in KEYS},
            "sensitivity": {n: _mean_sd([f["sensitivity"][n] for f in folds]) for n in names},
            "best_epoch": _mean_sd([f["best_epoch"] for f in folds])}


def machine_line(m: dict) -> str:
    """The results' machine line: CPU, cores, load average, SIMD flags."""
    return (f"Machine: {m['cpu']}, {m['cores']} cores (load average at the summary {m['load_average_start']}); "
            f"SIMD flags: {', '.join(f for f in m['cpu_flags'] if f.startswith(('avx', 'fma')) or 'vnni' in f)}.")


def partial_lines(res: dict, n_pairs: int) -> list[str]:
    """A paragraph when some arm finished fewer folds than planned (else nothing)."""
    if min(e["pairs_done"] for e in res.values()) >= n_pairs:
        return []
    return [f"**Partial results**: some arms finished fewer than {n_pairs} folds (column 'folds'); paired "
            "differences use only the folds both arms finished. Re-run the same command to continue.", ""]


def summarise(root: Path, seeds: list[int], argv: list[str]) -> dict:
    from usedge.bench.machine import machine_info

    import json

    searches = {str(seed): json.loads(p.read_text())["meta"].get("search_minutes")
                for seed in seeds for p in [root / "policies" / f"seed{seed}" / "searched.json"] if p.is_file()}
    doc = {"budget": BUDGET, "seeds": seeds, "arms": ARMS, "cohort": {"seed": 0},
           "faa_search": {"options": SEARCH, "preset": "usedge", "minutes_per_seed": searches},
           "command": "python benchmarks/train_ablation.py " + " ".join(argv), "runs": str(root),
           "machine": machine_info(), "results": {}}
    runs = {arm: pairs(root, arm, seeds) for arm in ARMS}
    names = next((list(f[0]["sensitivity"]) for f in runs.values() if f), [])
    for arm, folds in runs.items():
        entry = {**arm_summary(folds, names), "epoch_seconds": round(epoch_seconds(root, arm, seeds), 1)}
        if arm != "usedge":
            entry["minus_usedge"] = {k: paired(runs["usedge"], folds, k) for k in KEYS}
            entry["minus_usedge"].update({f"sens_{n}": paired(
                [{"fold": f["fold"], f"sens_{n}": f["sensitivity"][n]} for f in runs["usedge"]],
                [{"fold": f["fold"], f"sens_{n}": f["sensitivity"][n]} for f in folds], f"sens_{n}")
                for n in names})
        doc["results"][arm] = entry
    # Fast AutoAugment against its own baselines (issue 17: searched vs random vs none), paired the same way
    doc["faa_paired"] = {f"{b} - {a}": {k: paired(runs[a], runs[b], k) for k in KEYS}
                         for b, a in (("faa-searched", "faa-random"), ("faa-searched", "aug-none"),
                                      ("faa-random", "aug-none"))}
    return doc


def markdown(doc: dict) -> str:
    m = doc["machine"]
    b = doc["budget"]
    fs = doc.get("faa_search") or {"options": SEARCH, "minutes_per_seed": {}}
    n_pairs = b["cv.folds"] * len(doc["seeds"])
    lines = ["# Training ablations: one change per arm against the usedge defaults", "",
             f"Command: `{doc['command']}` (runs in `{doc['runs']}`). Budget: {b['data.image_size']} px, "
             f"{b['optim.epochs']} epochs, {b['cv.folds']} folds by patient x seeds {doc['seeds']} "
             f"({n_pairs} paired folds), Adam lr {b['optim.lr']}, batch {b['optim.batch_size']}, no all-data model, "
             "1 torch thread per run, CPU; default synthetic cohort (`make_cohort(seed=0)`). Arms: see the script's "
             "docstring.", "",
             f"FAA arms: `usedge augment search` preset usedge with {fs['options']['inner_splits']} inner splits x "
             f"{fs['options']['trials']} trials, children at {fs['options']['child_image_size']} px for "
             f"{fs['options']['child_epochs']} epochs, once per seed (wall minutes per seed: "
             f"{', '.join(f'seed {k} {v}' for k, v in fs['minutes_per_seed'].items()) or 'not run'}); both FAA arms "
             "draw one sub-policy per image per epoch (`--augment random`).", "",
             machine_line(m), ""]
    res = doc["results"]
    lines += partial_lines(res, n_pairs)
    names = next((list(e["sensitivity"]) for e in res.values() if e["sensitivity"]), [])
    header = (["arm", "folds", "balanced accuracy", "macro AUC", "overall accuracy"]
              + [f"sens. {n}" for n in names] + ["best epoch", "training s"])
    lines += ["Mean ± sd over the folds of both seeds, %; training s: wall seconds of all the arm's training "
              "epochs (two runs shared the 2 cores):", "",
              "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for arm, e in res.items():
        be = e["best_epoch"]
        cells = ([arm, str(e["pairs_done"])] + [_pct(e[k]) for k in KEYS] + [_pct(e["sensitivity"].get(n))
                 for n in names] + [f"{be['mean']:.1f}" if be["mean"] is not None else "–", f"{e['epoch_seconds']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Paired by fold (same seed, same split), arm − usedge, percentage points: mean, 95 % t-interval "
              "over the pairs, (pairs better/worse):", "",
              "| arm | balanced accuracy | macro AUC | overall accuracy | "
              + " | ".join(f"sens. {n}" for n in names) + " |", "|---" * (4 + len(names)) + "|"]
    for arm, e in res.items():
        if "minus_usedge" in e:
            d = e["minus_usedge"]
            lines.append(f"| {arm} | " + " | ".join([paired_cell(d[k]) for k in KEYS] + [paired_cell(d[f"sens_{n}"])
                                                                                  for n in names]) + " |")
    if doc.get("faa_paired"):
        lines += ["", "Fast AutoAugment against its baselines, paired the same way, percentage points:", "",
                  "| difference | balanced accuracy | macro AUC | overall accuracy |", "|---|---|---|---|"]
        for name, d in doc["faa_paired"].items():
            lines.append(f"| {name} | " + " | ".join(paired_cell(d[k]) for k in KEYS) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("/tmp/usedge-ablation"), help="cohort and run folders")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (1 torch thread each)")
    p.add_argument("--summarise", action="store_true", help="only write the tables from finished folds")
    p.add_argument("--one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS / "train_ablation")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.one:
        run_one(args.root, args.one[0], int(args.one[1]))
        return
    if not args.summarise:
        make_cohorts(args.root, ["default"])
        run_parallel([[sys.executable, __file__, "--root", str(args.root), "--one", a, str(s)]
                      for s in seeds for a in args.arms.split(",")], args.workers)
    doc = summarise(args.root, seeds, argv)
    write_results(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
