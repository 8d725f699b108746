"""Each class shows its signs: always at difficulty 0, partially (published prevalences) by default."""

from __future__ import annotations

import numpy as np
import pytest

from usedge.synth.bmode import BModeSettings, scatter_field
from usedge.synth.lesions import SIGNS, prevalence, sample_lesion
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
    # the noise floor sits above the display floor, so a shadow is only as dark as the noise
    for m in _measure("pilomatricoma", 0.0):
        assert m["posterior_contrast"] < -10 and m["aspect"] < 1.6


def test_textbook_lipoma_is_wider_than_tall_without_posterior_effect():
    ms = _measure("lipoma", 0.0)
    assert all(m["aspect"] > 1.5 for m in ms)
    assert abs(np.median([m["posterior_contrast"] for m in ms])) < 10


def test_signs_are_partial_with_the_published_prevalences():
    for label, signs in SIGNS.items():
        drawn = [sample_lesion(label, np.random.default_rng([7, i]), 0.5).signs for i in range(400)]
        for name, p in signs.items():
            share = np.mean([d[name] for d in drawn])
            assert abs(share - p) < 0.08, (label, name, share)  # 400 draws: 2.5 binomial SDs at most
            assert 0 < share < 1  # every sign is sometimes absent
        textbook = [sample_lesion(label, np.random.default_rng([7, i]), 0.0).signs for i in range(50)]
        assert all(all(d.values()) for d in textbook)
    assert prevalence(0.6, 1.0) == pytest.approx(0.55)


@pytest.fixture(scope="module")
def default_views():
    by = {}
    for label in ("epidermal_cyst", "lipoma", "pilomatricoma"):
        for i in range(20):
            rng = np.random.default_rng([11, i, len(label)])
            patient = sample_patient(f"d{i}", label, rng, 0.5)
            image, mask = render_view(patient, sample_view(patient, rng), rng)
            by.setdefault(label, []).append((image, measure_signatures(image, mask)))
    return by


def test_signs_still_exist_on_average_at_default_difficulty(default_views):
    share = {n: {"shadow": np.mean([m["posterior_contrast"] < -15 for _, m in v]),
                 "enhancement": np.mean([m["posterior_contrast"] > 5 for _, m in v]),
                 "aspect": np.median([m["aspect"] for _, m in v])} for n, v in default_views.items()}
    cyst, lipoma, pilo = share["epidermal_cyst"], share["lipoma"], share["pilomatricoma"]
    assert pilo["shadow"] > max(cyst["shadow"], lipoma["shadow"])
    assert cyst["enhancement"] > max(lipoma["enhancement"], pilo["enhancement"])
    assert lipoma["aspect"] > max(cyst["aspect"], pilo["aspect"])
    assert 0 < pilo["shadow"] < 1 and 0 < cyst["enhancement"] < 1  # partial, not universal


def test_shadows_are_not_pitch_black(default_views):
    # electronic noise lies 5-11 dB above the display floor: even noise alone is mostly not 0
    for views in default_views.values():
        assert np.median([m["shadow_black"] for _, m in views]) < 0.1
        for image, _ in views:
            assert (image[image.shape[0] // 2:] == 0).mean() < 0.3


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
