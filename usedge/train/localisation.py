"""Measured localisation: how well an explanation map covers the annotated lesion (numpy + scipy).

usedge's defined version of the paper's "CAM vs physician" comparison. For one image, a map
(H x W float, any scale) and a lesion mask (H x W bool, same grid as the model input):

    energy_inside(map, mask)   fraction of the map's energy inside the lesion, after the display
                               normalisation (min-max to [0, 1]); 1 = all energy on the lesion
    topk_iou(map, mask, k)     IoU of the top-k region with the mask; k = "mask" takes the lesion's
                               own area (so a perfect map scores 1), a float takes that fraction
    pointing_game(map, mask)   1 if the map's maximum lies in the lesion (ties: the fraction of
                               maximal pixels that do), else 0 (Zhang et al. 2016, tolerance 0 px)
    energy_below(map, mask)    fraction of the map's energy in the band below the lesion (`below_band`:
                               under each lesion column, as deep as the lesion is tall) - where
                               posterior enhancement or shadowing shows

Baselines on the same images, both deterministic: `centre_prior` (an isotropic Gaussian at the image
centre, sigma = side / 4) and `others` (each image's mask scored with every other image's map, and
the scores averaged: what a map that does not depend on this image's lesion scores).

The unit of the statistics is the patient (images of one patient are not independent): per-image
scores are averaged per patient, `paired_test` runs a two-sided Wilcoxon signed-rank test on the
per-patient differences (map - baseline), and reports the mean difference with a 95 % patient
bootstrap interval and the matched-pairs rank-biserial correlation. `holm` adjusts the p-values of
every test reported together (Holm 1979).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SCORES = ("energy_inside", "topk_iou", "pointing_game", "energy_below")
BASELINES = ("centre", "others")


def is_flat(sal: np.ndarray) -> bool:
    """One value everywhere (to rounding): a map with no signal to localise (a Grad-CAM whose gradients were
    all negative is all zeros after its ReLU)."""
    sal = np.asarray(sal, dtype=np.float64)
    lo, hi = float(sal.min()), float(sal.max())
    return bool(np.isfinite(lo) and np.isfinite(hi) and hi - lo <= 1e-12 * max(1.0, abs(hi)))


def display_normalise(sal: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (float64), as the overlay shows it; a constant map becomes all ones (the scores leave
    such maps out: `is_flat`)."""
    sal = np.asarray(sal, dtype=np.float64)
    lo, hi = float(sal.min()), float(sal.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("map contains NaN or Inf")
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.ones_like(sal)
    return (sal - lo) / (hi - lo)


def _check(sal: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sal = np.asarray(sal)
    mask = np.asarray(mask).astype(bool)
    if sal.shape != mask.shape:
        raise ValueError(f"map {sal.shape} and mask {mask.shape} differ in shape")
    return sal, mask


def energy_inside(sal: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (min-max normalised) map's total that falls inside the mask, in [0, 1]."""
    sal, mask = _check(sal, mask)
    m = display_normalise(sal)
    total = m.sum()
    return float(m[mask].sum() / total) if total > 0 else 0.0


def topk_mask(sal: np.ndarray, n: int) -> np.ndarray:
    """Boolean map of the n highest pixels (ties broken by position, stable)."""
    flat = np.asarray(sal, dtype=np.float64).ravel()
    out = np.zeros(flat.shape, dtype=bool)
    if n > 0:
        order = np.argsort(-flat, kind="stable")
        out[order[:n]] = True
    return out.reshape(np.shape(sal))


def topk_iou(sal: np.ndarray, mask: np.ndarray, k: float | str = "mask") -> float:
    """IoU of the map's top region with the mask. k = "mask": as many pixels as the lesion has; a
    float in (0, 1]: that fraction of the image."""
    sal, mask = _check(sal, mask)
    n = int(mask.sum()) if k == "mask" else int(round(float(k) * mask.size))
    if n == 0 and not mask.any():
        return 0.0
    top = topk_mask(sal, max(n, 1))
    union = np.logical_or(top, mask).sum()
    return float(np.logical_and(top, mask).sum() / union) if union else 0.0


def pointing_game(sal: np.ndarray, mask: np.ndarray) -> float:
    """1.0 if the map's maximum is inside the lesion; with tied maxima the fraction of them inside."""
    sal, mask = _check(sal, mask)
    peak = sal == sal.max()
    return float(mask[peak].mean())


def below_band(mask: np.ndarray) -> np.ndarray:
    """The band under the lesion: below each column's deepest lesion pixel, as many rows as the lesion
    spans in depth (clipped at the image's bottom). Rows are depth, row 0 the skin."""
    mask = np.asarray(mask, dtype=bool)
    band = np.zeros_like(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return band
    height = int(rows[-1] - rows[0] + 1)
    for c in np.flatnonzero(mask.any(axis=0)):
        bottom = int(np.flatnonzero(mask[:, c])[-1])
        band[bottom + 1:bottom + 1 + height, c] = True
    return band & ~mask


def energy_below(sal: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (min-max normalised) map's total in the band below the lesion (`below_band`)."""
    sal, mask = _check(sal, mask)
    return energy_inside(sal, below_band(mask))


def score_map(sal: np.ndarray, mask: np.ndarray, k: float | str = "mask") -> dict[str, float]:
    """Every score of one map against one mask."""
    return {"energy_inside": energy_inside(sal, mask), "topk_iou": topk_iou(sal, mask, k),
            "pointing_game": pointing_game(sal, mask), "energy_below": energy_below(sal, mask)}


def pairwise_scores(maps: list[np.ndarray], masks: list[np.ndarray], k: float | str = "mask") -> dict[str, np.ndarray]:
    """{score: N x N matrix}, entry [i, j] = the score of map j against mask i (the same numbers as
    `score_map(maps[j], masks[i], k)`, vectorised). The diagonal holds each map's own scores."""
    if len(maps) != len(masks) or not maps:
        raise ValueError("one map per mask, at least one")
    shape = np.shape(masks[0])
    for m, mk in zip(maps, masks):
        _check(m, mk)
        if np.shape(mk) != shape:
            raise ValueError("every map and mask must share one grid")
    n = len(maps)
    raw = np.stack([np.asarray(m, dtype=np.float64).ravel() for m in maps])
    norm = np.stack([display_normalise(m).ravel() for m in maps])
    lesion = np.stack([np.asarray(mk, dtype=bool).ravel() for mk in masks])
    band = np.stack([below_band(mk).ravel() for mk in masks])
    totals = norm.sum(axis=1)
    safe = np.where(totals > 0, totals, 1.0)
    out = {"energy_inside": np.where(totals > 0, lesion.astype(np.float64) @ norm.T / safe, 0.0),
           "energy_below": np.where(totals > 0, band.astype(np.float64) @ norm.T / safe, 0.0)}
    peaks = raw == raw.max(axis=1, keepdims=True)
    out["pointing_game"] = lesion.astype(np.float64) @ (peaks / peaks.sum(axis=1, keepdims=True)).T
    ranks = np.empty((n, raw.shape[1]), dtype=np.int64)  # rank of each pixel in its map (0 = highest)
    order = np.argsort(-raw, axis=1, kind="stable")
    np.put_along_axis(ranks, order, np.arange(raw.shape[1])[None, :], axis=1)
    iou = np.zeros((n, n))
    for i in range(n):
        area = int(lesion[i].sum())
        top = max(area if k == "mask" else int(round(float(k) * lesion.shape[1])), 1)
        if area == 0:
            continue
        inter = (ranks[:, lesion[i]] < top).sum(axis=1)
        iou[i] = inter / (top + area - inter)
    out["topk_iou"] = iou
    return {s: out[s] for s in SCORES}


def centre_prior(shape: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    """Isotropic Gaussian at the image centre, sigma = sigma_fraction * the shorter side (pixels)."""
    h, w = shape
    sigma = sigma_fraction * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma**2)))


def patient_means(values, patients) -> tuple[list[str], np.ndarray]:
    """(sorted patient ids, the mean of each patient's values)."""
    values = np.asarray(values, dtype=np.float64)
    patients = np.asarray([str(p) for p in patients])
    ids = sorted(set(patients.tolist()))
    return ids, np.array([values[patients == p].mean() for p in ids])


@dataclass
class PairedTest:
    """Two-sided paired comparison of a map's scores with a baseline's, patient as the unit."""

    n_patients: int           # pairs (per-patient means)
    n_images: int
    n_nonzero: int            # patients with a non-zero difference (Wilcoxon drops the rest)
    mean_map: float           # mean over patients of the per-patient mean score
    mean_baseline: float
    mean_difference: float    # mean over patients of (map - baseline): the effect size, in score units
    ci_low: float             # 95 % percentile interval of mean_difference, patients resampled
    ci_high: float
    rank_biserial: float      # matched-pairs rank-biserial correlation in [-1, 1]; > 0 favours the map
    statistic: float          # Wilcoxon statistic (scipy's, two-sided: min(W+, W-))
    p_value: float            # two-sided, unadjusted
    p_holm: float = float("nan")  # Holm-adjusted over every test reported together (set by `holm`)

    def to_dict(self) -> dict:
        return asdict(self)


def rank_biserial(diff: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (Kerby 2014): (W+ - W-) / (W+ + W-) over non-zero diffs."""
    from scipy.stats import rankdata

    d = np.asarray(diff, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = rankdata(np.abs(d))
    pos, neg = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((pos - neg) / (pos + neg))


def bootstrap_ci(diff: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of per-patient differences, patients drawn with replacement
    (a cluster bootstrap: a patient's images stay together). Seeded: the same data give the same CI."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, (tail, 100 - tail))
    return float(lo), float(hi)


def paired_test(map_scores, baseline_scores, patients=None, n_boot: int = 2000, seed: int = 0) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of map vs baseline scores, pairs = patients (per-patient means
    of their images; `patients=None`: every image its own patient). Zero differences are dropped
    (zero_method="wilcox"); with no non-zero difference p = 1."""
    from scipy.stats import wilcoxon

    a = np.asarray(map_scores, dtype=np.float64)
    b = np.asarray(baseline_scores, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("map and baseline scores must be 1-D and paired")
    patients = np.arange(a.size) if patients is None else np.asarray(patients)
    if patients.shape != a.shape:
        raise ValueError("one patient id per image")
    _, pa = patient_means(a, patients)
    _, pb = patient_means(b, patients)
    d = pa - pb
    nz = int(np.count_nonzero(d))
    if nz == 0:
        stat, p = 0.0, 1.0
    else:
        res = wilcoxon(pa, pb, alternative="two-sided", zero_method="wilcox")
        stat, p = float(res.statistic), float(res.pvalue)
    lo, hi = bootstrap_ci(d, n_boot, seed)
    nan = float("nan")
    return PairedTest(n_patients=int(d.size), n_images=int(a.size), n_nonzero=nz,
                      mean_map=float(pa.mean()) if pa.size else nan, mean_baseline=float(pb.mean()) if pb.size else nan,
                      mean_difference=float(d.mean()) if d.size else nan, ci_low=lo, ci_high=hi,
                      rank_biserial=rank_biserial(d), statistic=stat, p_value=p)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment (controls the family-wise error rate): the i-th smallest p times
    (m - i), made monotone, capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate(p[order] * (p.size - np.arange(p.size)))
    out = np.empty_like(p)
    out[order] = np.minimum(scaled, 1.0)
    return out


def holm_adjust(tests: list[dict]) -> None:
    """Set 'p_holm' on every test dict (to_dict of PairedTest), adjusted as one family."""
    for t, adj in zip(tests, holm([t["p_value"] for t in tests])):
        t["p_holm"] = float(adj)


def compare_to_baselines(maps: list[np.ndarray], masks: list[np.ndarray], patients=None,
                         k: float | str = "mask", sigma_fraction: float = 0.25, n_boot: int = 2000,
                         seed: int = 0) -> dict:
    """Scores of `maps` and of both baselines on the same masks, and the per-patient paired tests
    (p-values unadjusted: adjust the whole reported family with `holm_adjust`).

    Returns {"scores": {score: [per image]}, "baselines": {baseline: {score: [...]}},
             "tests": {baseline: {score: PairedTest dict}}}.
    """
    if len(maps) != len(masks):
        raise ValueError("one map per mask")
    if len(maps) < 2:
        raise ValueError("the baselines need at least two images")
    pair = pairwise_scores(maps, masks, k)
    n = len(maps)
    own = {s: np.diag(m).copy() for s, m in pair.items()}
    others = {s: (m.sum(axis=1) - np.diag(m)) / (n - 1) for s, m in pair.items()}
    priors: dict = {}
    centre_rows = [score_map(priors.setdefault(mk.shape, centre_prior(mk.shape, sigma_fraction)), mk, k) for mk in masks]
    centre = {s: np.array([r[s] for r in centre_rows]) for s in SCORES}
    out = {"scores": {s: own[s].tolist() for s in SCORES}, "baselines": {}, "tests": {}}
    for name, base in (("centre", centre), ("others", others)):
        out["baselines"][name] = {s: base[s].tolist() for s in SCORES}
        out["tests"][name] = {s: paired_test(own[s], base[s], patients, n_boot, seed).to_dict() for s in SCORES}
    return out
