"""Localisation scores, baselines and the paired test (numpy + scipy, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usedge.train import localisation as loc

S = 48


def disc(cx: float, cy: float, r: float, size: int = S) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def test_map_equal_to_mask_scores_one():
    mask = disc(15, 20, 6)
    scores = loc.score_map(mask.astype(float), mask)
    assert scores == {"energy_inside": 1.0, "topk_iou": 1.0, "pointing_game": 1.0}


def test_map_outside_mask_scores_zero():
    mask = disc(12, 12, 5)
    outside = disc(36, 36, 6).astype(float)
    scores = loc.score_map(outside, mask)
    assert scores == {"energy_inside": 0.0, "topk_iou": 0.0, "pointing_game": 0.0}


def test_scores_are_shift_and_scale_invariant_and_fixed_k():
    mask = disc(20, 24, 8)
    rng = np.random.default_rng(0)
    sal = rng.random((S, S)) + 2 * mask
    base = loc.score_map(sal, mask)
    assert loc.score_map(3.0 * sal - 7.0, mask) == pytest.approx(base)
    assert 0.0 < loc.topk_iou(sal, mask, 0.05) <= 1.0


def test_pointing_game_ties_count_fractionally():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    sal = np.zeros((4, 4))
    sal[0, 0] = sal[3, 3] = 1.0
    assert loc.pointing_game(sal, mask) == 0.5
    assert loc.energy_inside(np.ones((4, 4)), mask) == pytest.approx(1 / 16)  # constant map: uniform


def test_shape_mismatch_and_nan_are_rejected():
    with pytest.raises(ValueError):
        loc.energy_inside(np.zeros((3, 3)), np.zeros((4, 4), bool))
    with pytest.raises(ValueError):
        loc.energy_inside(np.full((3, 3), np.nan), np.ones((3, 3), bool))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_scores_in_unit_interval(seed):
    rng = np.random.default_rng(seed)
    sal = rng.normal(size=(16, 16))
    mask = rng.random((16, 16)) < rng.uniform(0.05, 0.6)
    for v in loc.score_map(sal, mask).values():
        assert 0.0 <= v <= 1.0


def test_centre_prior_and_derangement():
    prior = loc.centre_prior((S, S))
    assert prior.shape == (S, S)
    assert np.unravel_index(prior.argmax(), prior.shape) in {(23, 23), (23, 24), (24, 23), (24, 24)}
    for n in (2, 3, 10, 101):
        perm = loc.derangement(n, seed=n)
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    with pytest.raises(ValueError):
        loc.derangement(1)


def test_paired_test_detects_a_planted_difference():
    rng = np.random.default_rng(1)
    base = rng.random(120)
    better = np.clip(base + 0.1 + 0.05 * rng.normal(size=120), 0, 1)
    t = loc.paired_test(better, base)
    assert t.n == 120 and t.p_value < 1e-6 and t.rank_biserial > 0.8
    assert loc.paired_test(base, better).p_value > 0.99  # one-sided: the other direction is not significant


def test_paired_test_does_not_detect_a_null_difference():
    rng = np.random.default_rng(2)
    a, b = rng.random(120), rng.random(120)
    t = loc.paired_test(a, b)
    assert t.p_value > 0.05 and abs(t.rank_biserial) < 0.3
    same = loc.paired_test(a, a)
    assert same.p_value == 1.0 and same.n_nonzero == 0 and same.rank_biserial == 0.0


def test_null_rejection_rate_is_near_alpha():
    """Under the null, p < 0.05 in about 5% of repeats (checks the test's one-sidedness and calibration)."""
    rng = np.random.default_rng(3)
    rejections = sum(loc.paired_test(rng.random(60), rng.random(60)).p_value < 0.05 for _ in range(200))
    assert 2 <= rejections <= 20


def test_rank_biserial_extremes():
    assert loc.rank_biserial(np.array([1.0, 2.0, 3.0])) == 1.0
    assert loc.rank_biserial(-np.array([1.0, 2.0, 3.0])) == -1.0
    assert loc.rank_biserial(np.array([0.0, 0.0])) == 0.0


def test_compare_to_baselines_on_perfect_maps():
    rng = np.random.default_rng(4)
    masks = [disc(rng.uniform(8, 40), rng.uniform(8, 40), rng.uniform(3, 7)) for _ in range(30)]
    maps = [m.astype(float) + 0.01 * rng.random((S, S)) for m in masks]
    res = loc.compare_to_baselines(maps, masks)
    assert set(res["tests"]) == {"centre", "permuted"}
    for b in ("centre", "permuted"):
        for s in loc.SCORES:
            t = res["tests"][b][s]
            assert t["n"] == 30 and t["mean_map"] > t["mean_baseline"] and t["p_value"] < 1e-3
    assert np.mean(res["scores"]["topk_iou"]) > 0.95
