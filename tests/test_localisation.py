"""Localisation scores, baselines, the per-patient paired test and Holm (numpy + scipy, no model)."""

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
    assert scores == {"energy_inside": 1.0, "topk_iou": 1.0, "pointing_game": 1.0, "energy_below": 0.0}


def test_map_outside_mask_scores_zero():
    mask = disc(12, 12, 5)
    outside = disc(36, 36, 6).astype(float)
    scores = loc.score_map(outside, mask)
    assert scores == {"energy_inside": 0.0, "topk_iou": 0.0, "pointing_game": 0.0, "energy_below": 0.0}


def test_below_band_lies_under_each_lesion_column_as_deep_as_the_lesion():
    mask = np.zeros((20, 10), bool)
    mask[4:8, 2:5] = True          # 4 rows tall, columns 2..4
    mask[8, 3] = True              # column 3 reaches one row deeper
    band = loc.below_band(mask)
    assert band[8:13, 2].all() and not band[13:, 2].any() and not band[:8, 2].any()
    assert band[9:14, 3].all() and not band[14:, 3].any()
    assert not band[:, [0, 1, 5, 6]].any() and not (band & mask).any()
    shadow = np.zeros((20, 10))
    shadow[9:13, 2:5] = 1.0
    assert loc.energy_below(shadow, mask) == 1.0 and loc.energy_inside(shadow, mask) == 0.0
    deep = np.zeros((20, 10), bool)
    deep[15:20, 1] = True          # a lesion at the bottom has an empty band
    assert not loc.below_band(deep).any() and loc.energy_below(np.ones((20, 10)), deep) == 0.0


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


def test_centre_prior_peaks_at_the_centre():
    prior = loc.centre_prior((S, S))
    assert prior.shape == (S, S)
    assert np.unravel_index(prior.argmax(), prior.shape) in {(23, 23), (23, 24), (24, 23), (24, 24)}


@pytest.mark.parametrize("k", ["mask", 0.07])
def test_pairwise_scores_equal_the_per_image_scores(k):
    rng = np.random.default_rng(5)
    masks = [disc(rng.uniform(8, 40), rng.uniform(8, 30), rng.uniform(3, 8)) for _ in range(7)]
    maps = [rng.random((S, S)) + 2 * disc(rng.uniform(8, 40), rng.uniform(8, 40), 5) for _ in range(7)]
    maps[2] = np.round(maps[2])  # ties at the maximum
    pair = loc.pairwise_scores(maps, masks, k)
    for i in range(7):
        for j in range(7):
            one = loc.score_map(maps[j], masks[i], k)
            for sc in loc.SCORES:
                assert pair[sc][i, j] == pytest.approx(one[sc], abs=1e-12), (sc, i, j)


def test_the_others_baseline_is_deterministic_and_the_mean_over_other_maps():
    rng = np.random.default_rng(6)
    masks = [disc(rng.uniform(8, 40), rng.uniform(8, 40), 5) for _ in range(5)]
    maps = [rng.random((S, S)) for _ in range(5)]
    a = loc.compare_to_baselines(maps, masks)
    assert a == loc.compare_to_baselines(maps, masks)
    want = np.mean([loc.energy_inside(maps[j], masks[0]) for j in range(1, 5)])
    assert a["baselines"]["others"]["energy_inside"][0] == pytest.approx(want)


def test_paired_test_detects_a_planted_difference():
    rng = np.random.default_rng(1)
    base = rng.random(120)
    better = np.clip(base + 0.1 + 0.05 * rng.normal(size=120), 0, 1)
    t = loc.paired_test(better, base)
    assert t.n_patients == 120 and t.p_value < 1e-6 and t.rank_biserial > 0.8
    assert 0.0 < t.ci_low < t.mean_difference < t.ci_high < 0.2
    worse = loc.paired_test(base, better)  # two-sided: the other direction is as significant, negative
    assert worse.p_value < 1e-6 and worse.rank_biserial < -0.8 and worse.ci_high < 0


def test_paired_test_does_not_detect_a_null_difference():
    rng = np.random.default_rng(2)
    a, b = rng.random(120), rng.random(120)
    t = loc.paired_test(a, b)
    assert t.p_value > 0.05 and abs(t.rank_biserial) < 0.3 and t.ci_low < 0 < t.ci_high
    same = loc.paired_test(a, a)
    assert same.p_value == 1.0 and same.n_nonzero == 0 and same.rank_biserial == 0.0


def test_the_patient_is_the_unit():
    """Copying every image of a patient adds no evidence: n, the means and p stay as they were."""
    rng = np.random.default_rng(7)
    a, b = rng.random(40), rng.random(40) + 0.05
    patients = [f"p{i}" for i in range(40)]
    once = loc.paired_test(a, b, patients)
    thrice = loc.paired_test(np.tile(a, 3), np.tile(b, 3), patients * 3)
    assert thrice.n_patients == 40 and thrice.n_images == 120
    assert (thrice.p_value, thrice.mean_difference, thrice.ci_low) == pytest.approx(
        (once.p_value, once.mean_difference, once.ci_low), rel=1e-12)
    # per image, the copies would have tripled n and shrunk p
    assert loc.paired_test(np.tile(a, 3), np.tile(b, 3)).p_value < once.p_value


def test_null_rejection_rate_is_near_alpha():
    """Under the null, p < 0.05 in about 5% of repeats (checks the test's calibration)."""
    rng = np.random.default_rng(3)
    rejections = sum(loc.paired_test(rng.random(60), rng.random(60), n_boot=10).p_value < 0.05 for _ in range(200))
    assert 2 <= rejections <= 20


def test_holm_matches_the_step_down_definition():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    # sorted: 0.005*5=0.025, 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> 0.09 (monotone), 0.5*1=0.5
    assert loc.holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5])
    assert loc.holm([0.9, 0.8]).tolist() == [1.0, 1.0]
    tests = [{"p_value": 0.01}, {"p_value": 0.02}]
    loc.holm_adjust(tests)
    assert [t["p_holm"] for t in tests] == pytest.approx([0.02, 0.02])


def test_rank_biserial_extremes():
    assert loc.rank_biserial(np.array([1.0, 2.0, 3.0])) == 1.0
    assert loc.rank_biserial(-np.array([1.0, 2.0, 3.0])) == -1.0
    assert loc.rank_biserial(np.array([0.0, 0.0])) == 0.0


def test_compare_to_baselines_on_perfect_maps():
    rng = np.random.default_rng(4)
    masks = [disc(rng.uniform(8, 40), rng.uniform(8, 40), rng.uniform(3, 7)) for _ in range(30)]
    maps = [m.astype(float) + 0.01 * rng.random((S, S)) for m in masks]
    patients = [f"p{i // 2}" for i in range(30)]
    res = loc.compare_to_baselines(maps, masks, patients)
    assert set(res["tests"]) == {"centre", "others"}
    for b in ("centre", "others"):
        for s in ("energy_inside", "topk_iou", "pointing_game"):
            t = res["tests"][b][s]
            assert t["n_patients"] == 15 and t["mean_map"] > t["mean_baseline"] and t["p_value"] < 1e-3
            assert t["ci_low"] > 0
    assert np.mean(res["scores"]["topk_iou"]) > 0.95
