"""The cross-validation report: metrics.json, report.md (laid out like the paper's table) and PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from usedge.fileio import atomic_write, write_json_atomic, write_text_atomic
from usedge.train.config import TrainConfig
from usedge.train.metrics import PAPER, PER_CLASS, aggregate, classification_metrics, low_sensitivity

HOW_AVERAGED = (
    "Per class metrics are one-vs-rest (the class positive, all others negative) from argmax predictions. "
    "'mean +- sd' is the mean and sample standard deviation (ddof=1) over the outer test folds of each "
    "fold's value, over the folds where it is defined; 'n/a' when fewer than two folds define it. "
    "'pooled' is the metric computed once on the test predictions of all folds together (every image is "
    "tested exactly once, by the model of its own test fold): a pooled AUC is pooled over the fold models, "
    "ranking scores of different models together, not the AUC of any one model. 'macro' is the unweighted "
    "mean over the classes where the metric is defined (of each fold's per class values, then over folds; "
    "or of the pooled per class values); a macro row says when it covers fewer classes, and a row whose metric some folds leave undefined "
    "says how many folds its mean covers. Undefined precision (no image predicted as the class) is left out; "
    "F1 = 2TP / (2TP + FP + FN) is 0 for a class never predicted in a fold that has its images (all missed). "
    "'overall accuracy' is the multi-class accuracy; 'balanced accuracy' the mean of the per-class "
    "sensitivities of the classes a fold has test images of (the headline for imbalanced classes). A class is flagged when its sensitivity is below half the mean of the other "
    "classes'. The paper's numbers are from its own private data set (698 images, 255 "
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


def _mean_sd(d: dict, folds: int | None = None) -> str:
    """'mean ± sd' in %; with `folds`, ' (k of N folds)' when only k folds define the value."""
    if d["mean"] is None:
        return "–"
    sd = "n/a" if d.get("sd") is None else f"{100 * d['sd']:.1f}"
    n = d.get("n")
    part = f" ({n} of {folds} folds)" if folds and n is not None and n < folds else ""
    return f"{100 * d['mean']:.1f} ± {sd}{part}"


def macro_coverage(agg: dict, metric: str, n_classes: int) -> str:
    """'' when a macro average covers every class in every fold and pooled; else ' (k of N classes ...)': a
    metric undefined for a class (no test image of it in a fold, nothing predicted as it) leaves it out."""
    folds = [n for n in agg.get("macro_classes_folds", {}).get(metric, []) if n is not None]
    pooled = agg.get("macro_classes_pooled", {}).get(metric, n_classes)
    if all(n == n_classes for n in folds) and pooled == n_classes:
        return ""
    if not folds:
        return f" ({pooled} of {n_classes} classes)"
    lo, hi = min(folds), max(folds)
    span = str(lo) if lo == hi else f"{lo}-{hi}"
    return f" ({span} of {n_classes} classes per fold, {pooled} pooled)"


def summary_line(metrics: dict) -> str:
    """The headline of a run (metrics.json content): balanced accuracy, macro AUC and overall accuracy,
    mean ± sd over folds, plus any class whose mean sensitivity is below half the others'."""
    agg = metrics["aggregate"]
    n_classes = len(agg["per_class"])
    line = (f"balanced accuracy{macro_coverage(agg, 'sensitivity', n_classes)} {_mean_sd(agg['balanced_accuracy'])} %, "
            f"macro AUC{macro_coverage(agg, 'roc_auc', n_classes)} "
            f"{_mean_sd(agg['macro']['roc_auc'])} %, "
            f"overall accuracy {_mean_sd(agg['overall_accuracy'])} % over {agg['folds']} folds")
    return line + "".join(f"; LOW SENSITIVITY: {name} {100 * v:.1f} % vs {100 * o:.1f} % for the other classes"
                          for name, (v, o) in flagged_classes(agg).items())


def flagged_classes(agg: dict) -> dict[str, tuple[float, float]]:
    """`low_sensitivity` on the mean-over-folds sensitivity of each class."""
    return low_sensitivity({name: c["sensitivity"]["mean"] for name, c in agg["per_class"].items()})


def report_markdown(class_names: list[str], fold_results: list[dict], summary: dict, cfg: TrainConfig,
                    extra: dict | None = None) -> str:
    agg, pooled = summary["aggregate"], summary["pooled"]
    extra = extra or {}
    lines = [f"# Cross-validation report ({cfg.model.arch}, gate {cfg.model.gate_norm}, loss {cfg.loss.name})", ""]
    lines += [f"**{summary_line({'aggregate': agg})}.**", ""]
    for name, (v, o) in flagged_classes(agg).items():
        lines += [f"> **Warning:** {name} is recognised far less often than the other classes (sensitivity "
                  f"{100 * v:.1f} % vs {100 * o:.1f} %): check its number of images and the focal alpha.", ""]
    alphas = [r.get("alpha") for r in fold_results if r.get("alpha")]
    alpha_text = ""
    if alphas:
        alpha_text = (f" Focal alpha {cfg.loss.alpha} (fold {fold_results[0]['fold']}: "
                      + ", ".join(f"{n} {w:.3g}" for n, w in alphas[0].items()) + ").")
    schedule = (f"cosine after {cfg.optim.warmup_epochs} warm-up epoch(s)" if cfg.optim.schedule == "cosine"
                else f"StepLR {cfg.optim.step_size}/{cfg.optim.step_gamma:g}")
    by_image = extra.get("patient_ids") is False      # no patient IDs: each image its own patient
    who = ("no patient IDs (each image counted as its own patient: one patient's images may be in a training and "
           "a test fold, which overstates accuracy)" if by_image else f"{extra.get('patients', '?')} patients")
    lines += [f"Data: {extra.get('images', '?')} images, {who}; "
              f"{len(fold_results)} of {cfg.cv.folds} outer folds by {'image' if by_image else 'patient'} (stratified by class); "
              f"checkpoint chosen on an inner validation split by {'image' if by_image else 'patient'} "
              f"({cfg.cv.inner_val_fraction:.0%} of each "
              f"training part, on {cfg.cv.select_on}). {cfg.optim.epochs} epochs, batch {cfg.optim.batch_size}, "
              f"{cfg.data.image_size} px, Adam lr {cfg.optim.lr:g}, {schedule}, augmentation {cfg.data.augment}, "
              f"seed {cfg.run.seed}, device {extra.get('device', '?')}.{alpha_text}", ""]
    # the paper's column only beside classes it has figures for; its macro means (over its three classes)
    # only beside a run of those three classes
    shown = any(name in PAPER for name in class_names)
    paper_macro = set(class_names) == set(PAPER) - {"mean"}
    rows = []
    for name in class_names:
        for m in PER_CLASS:
            rows.append([name, m, _mean_sd(agg['per_class'][name][m], agg['folds']), _fmt(agg['per_class'][name][m]['pooled']),
                         _fmt(PAPER.get(name, {}).get(m))])
    for m in PER_CLASS:
        rows.append(["macro" + macro_coverage(agg, m, len(class_names)), m, _mean_sd(agg['macro'][m], agg['folds']),
                     _fmt(agg['macro'][m]['pooled']), _fmt(PAPER['mean'].get(m)) if paper_macro else "–"])
    for key in ("balanced_accuracy", "overall_accuracy"):
        cover = macro_coverage(agg, "sensitivity", len(class_names)) if key == "balanced_accuracy" else ""
        rows.append(["all" + cover, key.replace('_', ' '), _mean_sd(agg[key], agg['folds']), _fmt(agg[key]['pooled']), "–"])
    lines += ["All numbers in %. **ours** = this run" + ("; **paper** = Sensors 2023, 23(17):7374 on its own private "
              "data — a different data set, shown for the layout only." if shown else "."), ""]
    head = ["class", "metric", "ours mean ± sd over folds", "ours pooled over fold models"] + (["paper"] if shown else [])
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(r if shown else r[:4]) + " |" for r in rows]
    on_accuracy = cfg.cv.select_on == "accuracy"      # the column the best epoch was chosen on comes first
    lines += ["", "## Per fold", "",
              "| fold | train/val/test images | best epoch | inner val " + ("accuracy (chosen on) | inner val loss"
              if on_accuracy else "loss (chosen on)") + " | test acc | balanced acc | macro sens | macro spec | macro AUC |",
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if on_accuracy else "")]
    for r in fold_results:
        m, s = r["metrics"], r["sizes"]
        val = r["inner_val"]
        chosen = (f"{_fmt(val.get('accuracy'))} | {val['loss']:.4f}" if on_accuracy else f"{val['loss']:.4f}")
        lines.append(f"| {r['fold']} | {s['train']}/{s['val']}/{s['test']} | {r['best_epoch']} | "
                     f"{chosen} | {_fmt(m['overall_accuracy'])} | {_fmt(m['balanced_accuracy'])} | "
                     f"{_fmt(m['macro']['sensitivity'])} | "
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


def plot_font(class_names: list[str]) -> tuple[list[str], str | None]:
    """How the plots can draw the class names: (labels, font family to use or None for the default).

    Matplotlib's default font has no CJK, Arabic, ... glyphs: such names would be drawn as empty boxes,
    with a warning per glyph. An installed font that has every character is used instead; when there is
    none, the plots say `class 0`, `class 1` ... (the order of metrics.json's class_names)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager, ft2font

    chars = {ord(ch) for name in class_names for ch in name if not ch.isspace()}

    def covers(fname: str) -> bool:
        try:
            return chars <= set(ft2font.FT2Font(fname).get_charmap())
        except (OSError, RuntimeError, ValueError):
            return False

    default = font_manager.findfont(font_manager.FontProperties(family=matplotlib.rcParams["font.family"]))
    if covers(default):
        return list(class_names), None
    for entry in font_manager.fontManager.ttflist:     # "Last Resort" maps every character to a placeholder box
        if "last resort" not in entry.name.lower() and covers(entry.fname):
            return list(class_names), entry.name
    return [f"class {i}" for i in range(len(class_names))], None


def plot_roc(path: Path, fold_results: list[dict], class_names: list[str], labels: list[str] | None = None) -> None:
    """One panel per class, one ROC curve per fold with its AUC (the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(class_names), figsize=(4.2 * len(class_names), 4.2), squeeze=False)
    for ax, name, label in zip(axes[0], class_names, labels or class_names):
        for r in fold_results:
            curve = r.get("roc", {}).get(name)
            if curve:
                ax.plot(curve["fpr"], curve["tpr"], lw=1.2, label=f"fold {r['fold']} (AUC {curve['auc']:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=label, xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        if ax.get_legend_handles_labels()[0]:   # a class absent from every test fold has no curve
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
        "headline": summary_line({"aggregate": summary["aggregate"]}),
        "low_sensitivity": {n: {"sensitivity": v, "others_mean": o}
                            for n, (v, o) in flagged_classes(summary["aggregate"]).items()},
        "folds": [{"fold": r["fold"], "sizes": r["sizes"], "best_epoch": r["best_epoch"], "inner_val": r["inner_val"],
                   "alpha": r.get("alpha"), "metrics": r["metrics"], "history": r["history"]} for r in fold_results],
        "seconds_per_epoch_median": float(np.median(secs)) if secs else None,
        "paper": PAPER,
        "run": extra or {},
        "config": cfg.to_dict(),
    }
    write_json_atomic(out_dir / "metrics.json", doc)
    labels, family = plot_font(class_names)
    report = report_markdown(class_names, fold_results, summary, cfg, extra)
    if labels != class_names:
        report += ("\nNo installed font draws these class names, so the plots call them "
                   + ", ".join(f"`{label}` = {name}" for label, name in zip(labels, class_names)) + ".\n")
    write_text_atomic(out_dir / "report.md", report)
    import matplotlib

    with matplotlib.rc_context({"font.family": [family, *matplotlib.rcParams["font.family"]]} if family else {}):
        plot_roc(out_dir / "roc.png", fold_results, class_names, labels)
        plot_confusion(out_dir / "confusion.png", summary["pooled"]["confusion_matrix"], labels)
        plot_curves(out_dir / "curves.png", fold_results)
    return doc
