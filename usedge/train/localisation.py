"""Measured localisation: how well an explanation map covers the annotated lesion (numpy + scipy).

usedge's defined version of the paper's "CAM vs physician" comparison. For one image, a map
(H x W float, any scale) and a lesion mask (H x W bool, same grid as the model input):

    energy_inside(map, mask)   fraction of the map's energy inside the lesion, after the display
                               normalisation (min-max to [0, 1]); 1 = all energy on the lesion
    topk_iou(map, mask, k)     IoU of the top-k region with the mask; k = "mask" takes the lesion's
                               own area (so a perfect map scores 1), a float takes that fraction
    pointing_game(map, mask)   1 if the map's maximum lies in the lesion (ties: the fraction of
                               maximal pixels that do), else 0 (Zhang et al. 2016, tolerance 0 px)

Baselines on the same images: `centre_prior` (an isotropic Gaussian at the image centre,
sigma = side / 4) and `permuted` (each image gets the map of another image: a derangement).
`paired_test` runs a one-sided Wilcoxon signed-rank test (map > baseline) and reports the
matched-pairs rank-biserial correlation as the effect size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SCORES = ("energy_inside", "topk_iou", "pointing_game")
BASELINES = ("centre", "permuted")


def display_normalise(sal: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (float64), as the overlay shows it; a constant map becomes all ones."""
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


def score_map(sal: np.ndarray, mask: np.ndarray, k: float | str = "mask") -> dict[str, float]:
    """All three scores of one map against one mask."""
    return {"energy_inside": energy_inside(sal, mask), "topk_iou": topk_iou(sal, mask, k),
            "pointing_game": pointing_game(sal, mask)}


def centre_prior(shape: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    """Isotropic Gaussian at the image centre, sigma = sigma_fraction * the shorter side (pixels)."""
    h, w = shape
    sigma = sigma_fraction * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma**2)))


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A random permutation with no fixed point (index i never maps to i); n >= 2."""
    if n < 2:
        raise ValueError("a permutation baseline needs at least two images")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


@dataclass
class PairedTest:
    """One-sided paired comparison of a map's scores against a baseline's on the same images."""

    n: int                    # image pairs
    n_nonzero: int            # pairs with a non-zero difference (Wilcoxon drops the rest)
    mean_map: float
    mean_baseline: float
    median_difference: float  # median of (map - baseline)
    statistic: float          # Wilcoxon W+ (sum of ranks of positive differences)
    p_value: float            # one-sided: H1 map > baseline
    rank_biserial: float      # matched-pairs rank-biserial correlation in [-1, 1]; > 0 favours the map

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


def paired_test(map_scores, baseline_scores) -> PairedTest:
    """One-sided Wilcoxon signed-rank test that map scores exceed baseline scores (pairs by image).

    Zero differences are dropped (zero_method="wilcox"); with no non-zero difference p = 1.
    """
    from scipy.stats import wilcoxon

    a = np.asarray(map_scores, dtype=np.float64)
    b = np.asarray(baseline_scores, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("map and baseline scores must be 1-D and paired")
    d = a - b
    nz = int(np.count_nonzero(d))
    if nz == 0:
        stat, p = 0.0, 1.0
    else:
        res = wilcoxon(a, b, alternative="greater", zero_method="wilcox")
        stat, p = float(res.statistic), float(res.pvalue)
    return PairedTest(n=int(a.size), n_nonzero=nz, mean_map=float(a.mean()) if a.size else float("nan"),
                      mean_baseline=float(b.mean()) if b.size else float("nan"),
                      median_difference=float(np.median(d)) if d.size else float("nan"),
                      statistic=stat, p_value=p, rank_biserial=rank_biserial(d))


def compare_to_baselines(maps: list[np.ndarray], masks: list[np.ndarray], k: float | str = "mask",
                         seed: int = 0, sigma_fraction: float = 0.25) -> dict:
    """Scores of `maps` and of both baselines on the same masks, and the paired tests.

    Returns {"scores": {score: [per image]}, "baselines": {baseline: {score: [...]}},
             "tests": {baseline: {score: PairedTest dict}}}.
    """
    if len(maps) != len(masks):
        raise ValueError("one map per mask")
    own = [score_map(m, k=k, mask=mk) for m, mk in zip(maps, masks)]
    centre = {}
    base_maps = {"centre": [centre.setdefault(mk.shape, centre_prior(mk.shape, sigma_fraction)) for mk in masks]}
    if len(maps) >= 2:
        perm = derangement(len(maps), seed)
        base_maps["permuted"] = [maps[j] for j in perm]
    out = {"scores": {s: [r[s] for r in own] for s in SCORES}, "baselines": {}, "tests": {}}
    for name, bmaps in base_maps.items():
        rows = [score_map(bm, mk, k) for bm, mk in zip(bmaps, masks)]
        out["baselines"][name] = {s: [r[s] for r in rows] for s in SCORES}
        out["tests"][name] = {s: paired_test(out["scores"][s], out["baselines"][name][s]).to_dict()
                              for s in SCORES}
    return out
