"""The paper's metrics, computed with scikit-learn: per class one-vs-rest, macro averages, aggregation.

Per class c (one-vs-rest: c is positive, every other class negative), from the predicted class
argmax(probs):
    accuracy    = (TP + TN) / N
    sensitivity = TP / (TP + FN)      (recall)
    specificity = TN / (TN + FP)
    precision   = TP / (TP + FP)
    f1          = 2 TP / (2 TP + FP + FN): 0 for a class never predicted (its images all missed), undefined
                  only when the class neither has images nor was predicted
    roc_auc     = area under the ROC of probs[:, c] (NaN -> null when a fold lacks a class)
Undefined values (a zero denominator) are NaN, written as null. macro_<m> = unweighted mean of <m>
over the classes where it is defined; `macro_classes[m]` says how many classes that is.
`overall_accuracy` = multi-class accuracy; `balanced_accuracy` = mean per-class sensitivity.
Aggregation over folds: `mean`/`sd` = mean and sample SD (ddof=1) of each fold's value over the folds
that define it (`n`); sd is null (shown n/a) when fewer than two folds define it. `pooled` = the same
metric computed once on all test predictions of all folds together (each image scored by its own
test fold's model: a pooled AUC ranks the scores of different models together).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

PER_CLASS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")
PAPER = {  # Sensors 2023, 23(17):7374, as summarised in PAPER.md (their private data, their protocol)
    "epidermal_cyst": {"accuracy": 0.949, "sensitivity": 0.924, "specificity": 0.979},
    "lipoma": {"accuracy": 0.982, "sensitivity": 0.965, "specificity": 0.989},
    "pilomatricoma": {"accuracy": 0.945, "sensitivity": 0.759, "specificity": 0.974},
    "mean": {"accuracy": 0.9587, "sensitivity": 0.9010, "specificity": 0.9623},
}


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def classification_metrics(labels, probs, class_names: list[str]) -> dict:
    """labels (N,) int, probs (N, C) -> {"per_class": {name: {metric: v}}, "macro": {...},
    "overall_accuracy", "balanced_accuracy", "confusion_matrix" (rows true, columns predicted), "n"}."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_score, recall_score, roc_auc_score)

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(class_names)
    preds = probs.argmax(axis=1)
    per_class = {}
    for c, name in enumerate(class_names):
        truth, pred = labels == c, preds == c
        if truth.all() or not truth.any():
            auc = float("nan")
        else:
            auc = roc_auc_score(truth, probs[:, c])
        per_class[name] = {
            "accuracy": accuracy_score(truth, pred),
            "sensitivity": recall_score(truth, pred, zero_division=np.nan) if truth.any() else float("nan"),
            "specificity": recall_score(~truth, ~pred, zero_division=np.nan) if (~truth).any() else float("nan"),
            "precision": precision_score(truth, pred, zero_division=np.nan) if pred.any() else float("nan"),
            "roc_auc": auc,
            "support": int(truth.sum()),
        }
        per_class[name]["f1"] = f1_score(truth, pred) if truth.any() or pred.any() else float("nan")
    macro, macro_classes = {}, {}
    for m in PER_CLASS:
        values = [v for v in (per_class[n][m] for n in class_names) if not math.isnan(v)]
        macro[m] = float(np.mean(values)) if values else float("nan")
        macro_classes[m] = len(values)
    with warnings.catch_warnings():     # a fold without test images of a predicted class: expected, averaged
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")   # over the true ones
        balanced = balanced_accuracy_score(labels, preds) if len(labels) else float("nan")
    out = {
        "n": int(len(labels)),
        "overall_accuracy": accuracy_score(labels, preds),
        "balanced_accuracy": balanced,
        "per_class": per_class,
        "macro": macro,
        "macro_classes": macro_classes,
        "confusion_matrix": confusion_matrix(labels, preds, labels=list(range(n_classes))).tolist(),
    }
    return _clean(out)


def roc_curves(labels, probs, class_names: list[str]) -> dict:
    """Per class one-vs-rest ROC: {name: {"fpr": [...], "tpr": [...], "auc": v}} (classes present only)."""
    from sklearn.metrics import auc, roc_curve

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    out = {}
    for c, name in enumerate(class_names):
        truth = labels == c
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, probs[:, c])
        out[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(auc(fpr, tpr))}
    return out


def aggregate(fold_metrics: list[dict], pooled: dict, class_names: list[str]) -> dict:
    """mean and sd (ddof=1) over the folds that define each scalar (n), plus the pooled metrics, same layout.
    sd is None when fewer than two folds define the value."""
    def stat(values):
        v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
        if not len(v):
            return {"mean": None, "sd": None, "n": 0}
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None, "n": int(len(v))}

    per_class = {name: {m: {**stat([f["per_class"][name][m] for f in fold_metrics]),
                            "pooled": pooled["per_class"][name][m]} for m in PER_CLASS}
                 for name in class_names}
    macro = {m: {**stat([f["macro"][m] for f in fold_metrics]), "pooled": pooled["macro"][m]} for m in PER_CLASS}
    scalars = {k: {**stat([f[k] for f in fold_metrics]), "pooled": pooled[k]}
               for k in ("overall_accuracy", "balanced_accuracy")}
    return _clean({"folds": len(fold_metrics), "per_class": per_class, "macro": macro,
                   "macro_classes_pooled": pooled["macro_classes"],
                   "macro_classes_folds": {m: [f["macro_classes"][m] for f in fold_metrics] for m in PER_CLASS},
                   **scalars,
                   "confusion_matrix_pooled": pooled["confusion_matrix"]})


def low_sensitivity(sensitivity: dict[str, float | None]) -> dict[str, tuple[float, float]]:
    """Classes whose sensitivity is below half the mean sensitivity of the other classes:
    {name: (its sensitivity, the others' mean)}. Classes with an undefined sensitivity are skipped."""
    known = {k: v for k, v in sensitivity.items() if v is not None and not math.isnan(v)}
    flagged = {}
    for name, value in known.items():
        others = [v for k, v in known.items() if k != name]
        if others and value < 0.5 * float(np.mean(others)):
            flagged[name] = (value, float(np.mean(others)))
    return flagged


def headline(metrics: dict) -> str:
    """One line for a `classification_metrics` result: balanced accuracy, macro AUC, overall accuracy
    and any class flagged by `low_sensitivity`."""
    def pct(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"

    line = (f"balanced accuracy {pct(metrics['balanced_accuracy'])}, macro AUC {pct(metrics['macro']['roc_auc'])}, "
            f"overall accuracy {pct(metrics['overall_accuracy'])}")
    flagged = low_sensitivity({n: c["sensitivity"] for n, c in metrics["per_class"].items()})
    return line + "".join(f"; LOW SENSITIVITY {n} {pct(v)} (others {pct(o)})" for n, (v, o) in flagged.items())


def _clean(obj):
    """numpy scalars -> float/int; NaN -> None (JSON null)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    return obj
