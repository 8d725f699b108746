"""Each class shows its textbook signature, measurably; speckle behaves like speckle."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from usedge.dataset import load_dataset
from usedge.synth.bmode import BModeSettings, scatter_field
from usedge.synth.phantom import render_view, sample_patient, sample_view
from usedge.synth.signatures import measure_signatures


def _measure(label: str, difficulty: float, n: int = 5) -> list[dict]:
    out = []
    for i in range(n):
        rng = np.random.default_rng([42, i, len(label)])
        patient = sample_patient(f"t{i}", label, rng, difficulty)
        image, mask = render_view(patient, sample_view(patient, rng), rng)
        out.append(measure_signatures(image, mask))
    return out


def test_textbook_cyst_is_dark_with_enhancement_below():
    for m in _measure("epidermal_cyst", 0.0):
        assert m["interior_contrast"] < -15 and m["posterior_contrast"] > 5


def test_textbook_pilomatricoma_shadows():
    for m in _measure("pilomatricoma", 0.0):
        assert m["posterior_contrast"] < -15 and m["aspect"] < 1.6


def test_textbook_lipoma_is_wider_than_tall_without_posterior_effect():
    ms = _measure("lipoma", 0.0)
    assert all(m["aspect"] > 1.5 for m in ms)
    assert abs(np.median([m["posterior_contrast"] for m in ms])) < 10


def test_signatures_hold_on_average_at_default_difficulty(tiny_cohort):
    ds = load_dataset(tiny_cohort)
    by = {n: [] for n in ds.class_names}
    for s in ds.samples:
        img = cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE)
        by[ds.class_names[s.label]].append(measure_signatures(img, cv2.imread(str(s.mask_path), 0)))
    med = {n: {k: np.median([m[k] for m in ms]) for k in ms[0]} for n, ms in by.items()}
    assert med["epidermal_cyst"]["interior_contrast"] < med["lipoma"]["interior_contrast"]
    assert med["epidermal_cyst"]["posterior_contrast"] > 0 > med["pilomatricoma"]["posterior_contrast"]
    assert med["lipoma"]["aspect"] > max(med["epidermal_cyst"]["aspect"], med["pilomatricoma"]["aspect"])


def test_speckle_is_rayleigh_and_grain_shrinks_with_frequency():
    echo = np.zeros((256, 256), np.float32)
    sizes = []
    for f in (10.0, 20.0):
        s = BModeSettings(freq_mhz=f, pixel_mm=0.08)
        field = scatter_field(echo, 0.7, s, np.random.default_rng(0))  # TGC cancels 0.7 dB/(cm MHz)
        env = np.hypot(field[..., 0], field[..., 1])[40:-40, 40:-40]
        snr = env.mean() / env.std()
        assert snr == pytest.approx(1.91, rel=0.1)  # Rayleigh: mean/std = sqrt(pi / (4 - pi))
        row = env[env.shape[0] // 2] - env[env.shape[0] // 2].mean()
        ac = np.correlate(row, row, "full")[row.size - 1:]
        sizes.append(int(np.argmax(ac < 0.5 * ac[0])))  # lateral correlation length, pixels
    assert sizes[0] > sizes[1]
