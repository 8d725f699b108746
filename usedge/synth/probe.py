"""Shortcut probes: can a few hand-made numbers classify the cohort as well as a CNN?

Every probe is a class-balanced, standardised scikit-learn LogisticRegression scored by balanced
accuracy (chance 1/3) under patient-grouped stratified K-fold CV (StratifiedGroupKFold): no
patient's images are ever on both sides of a split. Probes:

    histogram          64-bin global gray histogram (cannot see where pixels are; best of C 0.1/1/10)
    single scalars     each of usedge.synth.signatures' mask-based and mask-free scalars alone
    best combination   greedy forward selection of up to `max_combo` scalars (each step keeps the
                       scalar that raises the CV score most); an optimistic ceiling, since the
                       selection sees the same folds it is scored on

Needs scikit-learn (the train extra); usedge.synth itself stays numpy + OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np

from usedge.synth.signatures import MASK_FEATURES, MASKFREE_FEATURES, maskfree_signatures, measure_signatures

HIST_BINS = 64


def grouped_splits(y: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of a patient-grouped stratified K-fold split."""
    from sklearn.model_selection import StratifiedGroupKFold

    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, groups))


def probe_predict(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Class predictions for x[test] of a logistic regression fitted on x[train], y[train]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.nan_to_num(np.asarray(x, dtype=np.float64).reshape(len(y), -1))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight="balanced"))
    return model.fit(x[train], y[train]).predict(x[test])


def probe_score(x: np.ndarray, y: np.ndarray, splits, c: float = 1.0) -> float:
    """Balanced accuracy of out-of-fold logistic-regression predictions from features x (N x F)."""
    from sklearn.metrics import balanced_accuracy_score

    pred = np.empty_like(y)
    for tr, te in splits:
        pred[te] = probe_predict(x, y, tr, te, c)
    return float(balanced_accuracy_score(y, pred))


def measure_images(images: list[np.ndarray], masks: list[np.ndarray], size: int = 96) -> tuple[dict, np.ndarray]:
    """({scalar name: N values}, N x 64 normalised gray histograms) of images and their lesion masks."""
    rows = [{**measure_signatures(im, m), **maskfree_signatures(im, size)} for im, m in zip(images, masks)]
    scalars = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}
    hist = np.stack([np.bincount((im.astype(np.int32) * HIST_BINS // 256).ravel(), minlength=HIST_BINS) / im.size
                     for im in images])
    return scalars, hist


def greedy_combination(scalars: dict, names: tuple[str, ...], y: np.ndarray, splits, max_k: int = 5) -> list[dict]:
    """Greedy forward selection: the best set of 1..max_k scalars and its CV score at each step."""
    chosen, steps = [], []
    for _ in range(min(max_k, len(names))):
        scores = {n: probe_score(np.column_stack([scalars[c] for c in (*chosen, n)]), y, splits)
                  for n in names if n not in chosen}
        best = max(scores, key=scores.get)
        chosen.append(best)
        steps.append({"features": list(chosen), "balanced_accuracy": round(scores[best], 4)})
    return steps


def run_probes(images: list[np.ndarray], masks: list[np.ndarray], labels, groups, class_names, *,
               folds: int = 5, seed: int = 0, max_combo: int = 5,
               features: tuple[str, ...] = MASK_FEATURES + MASKFREE_FEATURES) -> dict:
    """All probes on one cohort; returns a JSON-ready dict (scores rounded to 4 decimals)."""
    y, groups = np.asarray(labels), np.asarray(groups)
    splits = grouped_splits(y, groups, folds, seed)
    scalars, hist = measure_images(images, masks)
    single = {n: round(probe_score(scalars[n], y, splits), 4) for n in features}
    hist_by_c = {str(c): round(probe_score(hist, y, splits, c), 4) for c in (0.1, 1.0, 10.0)}
    combo = greedy_combination(scalars, features, y, splits, max_combo)
    per_class = {name: {k: round(float(np.nanmedian(scalars[k][y == i])), 3) for k in (*features, "shadow_black")}
                 for i, name in enumerate(class_names)}
    for i, name in enumerate(class_names):
        per_class[name]["share_half_black_below"] = round(float(np.nanmean(scalars["shadow_black"][y == i] > 0.5)), 3)
    best_single = max(single, key=single.get)
    return {"images": int(len(y)), "patients": int(len(set(groups.tolist()))), "folds": folds, "seed": seed,
            "histogram": {"bins": HIST_BINS, "balanced_accuracy": max(hist_by_c.values()), "by_C": hist_by_c},
            "single": single, "best_single": {"feature": best_single, "balanced_accuracy": single[best_single]},
            "combination": combo, "best_combination": max(combo, key=lambda s: s["balanced_accuracy"]),
            "per_class_median": per_class}


def probe_dataset(ds, **kwargs) -> dict:
    """run_probes on a usedge.dataset.Dataset whose samples have masks."""
    images = [cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE) for s in ds.samples]
    masks = [cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE) for s in ds.samples]
    return run_probes(images, masks, ds.labels, ds.groups, ds.class_names, **kwargs)
