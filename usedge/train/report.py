"""The cross-validation report: metrics.json, report.md (laid out like the paper's table) and PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from usedge.fileio import atomic_write, write_json_atomic, write_text_atomic
from usedge.train.config import TrainConfig
from usedge.train.metrics import PAPER, PER_CLASS, aggregate, classification_metrics

HOW_AVERAGED = (
    "Per class metrics are one-vs-rest (the class positive, all others negative) from argmax predictions. "
    "'mean +- sd' is the mean and sample standard deviation (ddof=1) over the outer test folds of each "
    "fold's value. 'pooled' is the metric computed once on the test predictions of all folds together "
    "(every image is tested exactly once). 'macro' is the unweighted mean over classes (of each fold's "
    "per class values, then over folds; or of the pooled per class values). 'overall accuracy' is the "
    "multi-class accuracy. The paper's numbers are from its own private data set (698 images, 255 "
    "patients) and protocol (checkpoint chosen on the test fold): they are printed for reference only "
    "and are not comparable with numbers on other data."
)


def summarise(fold_results: list[dict], class_names: list[str]) -> dict:
    """Per fold metrics, pooled metrics over all test predictions, and their aggregate."""
    labels = np.concatenate([np.asarray(r["labels"], dtype=int) for r in fold_results])
    probs = np.concatenate([np.asarray(r["probs"], dtype=np.float64).reshape(-1, len(class_names))
                            for r in fold_results])
    pooled = classification_metrics(labels, probs, class_names)
    folds = [r["metrics"] for r in fold_results]
    return {"pooled": pooled, "aggregate": aggregate(folds, pooled, class_names)}


def _fmt(v, pct: bool = True) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def _mean_sd(d: dict) -> str:
    if d["mean"] is None:
        return "–"
    return f"{100 * d['mean']:.1f} ± {100 * d['sd']:.1f}"


def report_markdown(class_names: list[str], fold_results: list[dict], summary: dict, cfg: TrainConfig,
                    extra: dict | None = None) -> str:
    agg, pooled = summary["aggregate"], summary["pooled"]
    extra = extra or {}
    lines = [f"# Cross-validation report ({cfg.model.arch}, gate {cfg.model.gate_norm}, loss {cfg.loss.name})", ""]
    lines += [f"Data: {extra.get('images', '?')} images, {extra.get('patients', '?')} patients; "
              f"{len(fold_results)} of {cfg.cv.folds} outer folds by patient (stratified by class); "
              f"checkpoint chosen on an inner validation split by patient ({cfg.cv.inner_val_fraction:.0%} of each "
              f"training part, on {cfg.cv.select_on}). {cfg.optim.epochs} epochs, batch {cfg.optim.batch_size}, "
              f"{cfg.data.image_size} px, Adam lr {cfg.optim.lr:g}, StepLR {cfg.optim.step_size}/{cfg.optim.step_gamma:g}, "
              f"seed {cfg.run.seed}, device {extra.get('device', '?')}.", ""]
    lines += ["All numbers in %. **ours** = this run; **paper** = Sensors 2023, 23(17):7374 on its own private "
              "data — a different data set, shown for the layout only.", ""]
    lines += ["| class | metric | ours mean ± sd over folds | ours pooled | paper |", "|---|---|---|---|---|"]
    for name in class_names:
        for m in PER_CLASS:
            paper = PAPER.get(name, {}).get(m)
            lines.append(f"| {name} | {m} | {_mean_sd(agg['per_class'][name][m])} | "
                         f"{_fmt(agg['per_class'][name][m]['pooled'])} | {_fmt(paper)} |")
    for m in PER_CLASS:
        lines.append(f"| macro | {m} | {_mean_sd(agg['macro'][m])} | {_fmt(agg['macro'][m]['pooled'])} | "
                     f"{_fmt(PAPER['mean'].get(m))} |")
    lines.append(f"| all | overall accuracy | {_mean_sd(agg['overall_accuracy'])} | "
                 f"{_fmt(agg['overall_accuracy']['pooled'])} | – |")
    lines += ["", "## Per fold", "",
              "| fold | train/val/test images | best epoch | inner val loss | test acc | macro sens | macro spec | macro AUC |",
              "|---|---|---|---|---|---|---|---|"]
    for r in fold_results:
        m, s = r["metrics"], r["sizes"]
        lines.append(f"| {r['fold']} | {s['train']}/{s['val']}/{s['test']} | {r['best_epoch']} | "
                     f"{r['inner_val']['loss']:.4f} | {_fmt(m['overall_accuracy'])} | {_fmt(m['macro']['sensitivity'])} | "
                     f"{_fmt(m['macro']['specificity'])} | {_fmt(m['macro']['roc_auc'])} |")
    lines += ["", "## Confusion matrix, pooled (rows true, columns predicted)", "",
              "| true \\ predicted | " + " | ".join(class_names) + " |", "|---" * (len(class_names) + 1) + "|"]
    for name, row in zip(class_names, pooled["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    secs = [h["seconds"] for r in fold_results for h in r["history"]]
    if secs:
        lines += ["", f"Training time: {np.median(secs):.1f} s per epoch (median over {len(secs)} epochs)."]
    lines += ["", "## How averages are formed", "", HOW_AVERAGED, "",
              "Plots: `roc.png` (ROC per class per fold, as the paper's Fig. 4), `confusion.png`, `curves.png`. "
              "Split: `folds.csv`. Per image test predictions: `fold*/test_predictions.csv`.", ""]
    return "\n".join(lines)


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_roc(path: Path, fold_results: list[dict], class_names: list[str]) -> None:
    """One panel per class, one ROC curve per fold with its AUC (the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(class_names), figsize=(4.2 * len(class_names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], class_names):
        for r in fold_results:
            curve = r.get("roc", {}).get(name)
            if curve:
                ax.plot(curve["fpr"], curve["tpr"], lw=1.2, label=f"fold {r['fold']} (AUC {curve['auc']:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=name, xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
    _save_fig(fig, path)


def plot_confusion(path: Path, matrix: list[list[int]], class_names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)), xlabel="predicted", ylabel="true",
           title="pooled over folds")
    ax.set_xticklabels(class_names, rotation=20)
    ax.set_yticklabels(class_names)
    _save_fig(fig, path)


def plot_curves(path: Path, fold_results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, r in enumerate(fold_results):
        ep, colour = [h["epoch"] for h in r["history"]], f"C{i % 10}"
        axes[0].plot(ep, [h["train_loss"] for h in r["history"]], lw=1, color=colour, label=f"fold {r['fold']} train")
        axes[0].plot(ep, [h["val_loss"] for h in r["history"]], lw=1, ls="--", color=colour,
                     label=f"fold {r['fold']} inner val")
        axes[1].plot(ep, [h["val_accuracy"] for h in r["history"]], lw=1, color=colour, label=f"fold {r['fold']}")
    axes[0].set(xlabel="epoch", ylabel="loss")
    axes[1].set(xlabel="epoch", ylabel="inner validation accuracy")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=7)
    _save_fig(fig, path)


def write_report(out_dir: str | Path, class_names: list[str], fold_results: list[dict], cfg: TrainConfig,
                 extra: dict | None = None) -> dict:
    """Write metrics.json, report.md, roc.png, confusion.png, curves.png. Returns the metrics.json content."""
    out_dir = Path(out_dir)
    summary = summarise(fold_results, class_names)
    secs = [h["seconds"] for r in fold_results for h in r["history"]]
    doc = {
        "class_names": class_names,
        "how_averaged": HOW_AVERAGED,
        "aggregate": summary["aggregate"],
        "pooled": summary["pooled"],
        "folds": [{"fold": r["fold"], "sizes": r["sizes"], "best_epoch": r["best_epoch"], "inner_val": r["inner_val"],
                   "metrics": r["metrics"], "history": r["history"]} for r in fold_results],
        "seconds_per_epoch_median": float(np.median(secs)) if secs else None,
        "paper": PAPER,
        "run": extra or {},
        "config": cfg.to_dict(),
    }
    write_json_atomic(out_dir / "metrics.json", doc)
    write_text_atomic(out_dir / "report.md", report_markdown(class_names, fold_results, summary, cfg, extra))
    plot_roc(out_dir / "roc.png", fold_results, class_names)
    plot_confusion(out_dir / "confusion.png", summary["pooled"]["confusion_matrix"], class_names)
    plot_curves(out_dir / "curves.png", fold_results)
    return doc
