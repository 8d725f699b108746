"""The paper's metrics, computed with scikit-learn: per class one-vs-rest, macro averages, aggregation.

Per class c (one-vs-rest: c is positive, every other class negative), from the predicted class
argmax(probs):
    accuracy    = (TP + TN) / N
    sensitivity = TP / (TP + FN)      (recall)
    specificity = TN / (TN + FP)
    precision   = TP / (TP + FP)
    f1          = 2 TP / (2 TP + FP + FN)
    roc_auc     = area under the ROC of probs[:, c] (NaN -> null when a fold lacks a class)
macro_<m> = unweighted mean of <m> over classes. `overall_accuracy` = multi-class accuracy.
Aggregation over folds: `mean`/`sd` = mean and sample SD (ddof=1) of each fold's value;
`pooled` = the same metric computed once on all test predictions of all folds together.
"""

from __future__ import annotations

import math

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
            "f1": f1_score(truth, pred, zero_division=0.0),
            "roc_auc": auc,
            "support": int(truth.sum()),
        }
    macro = {m: float(np.nanmean([per_class[n][m] for n in class_names]))
             if not all(math.isnan(per_class[n][m]) for n in class_names) else float("nan") for m in PER_CLASS}
    out = {
        "n": int(len(labels)),
        "overall_accuracy": accuracy_score(labels, preds),
        "balanced_accuracy": balanced_accuracy_score(labels, preds) if len(labels) else float("nan"),
        "per_class": per_class,
        "macro": macro,
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
    """mean and sd (ddof=1) over folds of every scalar, plus the pooled metrics, same layout."""
    def stat(values):
        v = np.asarray([x for x in values if x is not None], dtype=np.float64)
        if not len(v):
            return {"mean": None, "sd": None}
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}

    per_class = {name: {m: {**stat([f["per_class"][name][m] for f in fold_metrics]),
                            "pooled": pooled["per_class"][name][m]} for m in PER_CLASS}
                 for name in class_names}
    macro = {m: {**stat([f["macro"][m] for f in fold_metrics]), "pooled": pooled["macro"][m]} for m in PER_CLASS}
    scalars = {k: {**stat([f[k] for f in fold_metrics]), "pooled": pooled[k]}
               for k in ("overall_accuracy", "balanced_accuracy")}
    return _clean({"folds": len(fold_metrics), "per_class": per_class, "macro": macro, **scalars,
                   "confusion_matrix_pooled": pooled["confusion_matrix"]})


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
