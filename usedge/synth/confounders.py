"""Class-independent structures and artefacts that mimic or mask the lesions' signs.

Drawn for every image with the same probabilities whatever the lesion, so they carry no class
information; they make single measurements (a dark column, a bright band below the lesion, a
hypoechoic tract) ambiguous:

    vessels          small anechoic tubes in the subcutis (oval cross-sections), low attenuation:
                     a little posterior enhancement, like a tiny cyst
    hair follicles   thin oblique hypoechoic tracts through the dermis, some with a bright shaft
                     that casts a faint shadow (like a punctum or a calcification's shadow)
    anisotropy       a lateral band where muscle and fascia look darker (fibres not at 90 deg)
    reverberation    faint copies of the skin entry echo at 2-4 times its depth
    surface shadow   a narrow shadow column from air or a hair at the skin surface

Works on the echo (dB) and attenuation (dB/(cm*MHz)) maps before the B-mode physics runs; the
lesion's own pixels (`keep`) are left alone. Gain and TGC variation live in usedge.synth.bmode.
"""

from __future__ import annotations

import numpy as np


def _ellipse(xx: np.ndarray, zz: np.ndarray, cx: float, cz: float, rx: float, rz: float) -> np.ndarray:
    return ((xx - cx) / rx) ** 2 + ((zz - cz) / rz) ** 2


def add_confounders(echo: np.ndarray, atten: np.ndarray, bounds: dict, pixel_mm: float,
                    rng: np.random.Generator, keep: np.ndarray, rate: float = 1.0) -> dict:
    """Paint confounders into echo and atten in place (not over `keep`); return what was drawn.

    rate (0..1) scales every probability: 0 draws none (the textbook phantom).
    """
    h, w = echo.shape
    zz, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    skin, derm, fascia = bounds["skin"], bounds["dermis_bottom"], bounds["fascia"]
    free = ~keep
    drawn = {"vessels": 0, "follicles": 0, "anisotropy": False, "reverberation": False, "surface_shadow": False}

    for _ in range(min(int(rng.poisson(0.9 * rate)), 3)):  # vessels in the subcutis
        x = float(rng.uniform(0.05, 0.95) * w)
        xi = int(np.clip(x, 0, w - 1))
        z = float(rng.uniform(derm[xi] + 1.0 / pixel_mm, max(fascia[xi], derm[xi] + 2.0 / pixel_mm)))
        rx = rng.uniform(0.4, 1.5) / pixel_mm
        rz = rx / rng.uniform(1.0, 2.0)
        q = _ellipse(xx, zz, x, z, rx, rz)
        lumen = (q < 1.0) & free
        wall = (np.abs(np.sqrt(q) - 1.0) * rz < 0.8) & free
        echo[wall] = np.maximum(echo[wall], float(rng.uniform(-12, -4)))
        echo[lumen] = float(rng.uniform(-48, -38))
        atten[lumen] = 0.18
        drawn["vessels"] += 1

    for _ in range(min(int(rng.poisson(1.2 * rate)), 4)):  # hair follicles through the dermis
        x0 = float(rng.uniform(0.05, 0.95) * w)
        xi = int(np.clip(x0, 0, w - 1))
        angle = np.deg2rad(rng.uniform(20, 70) * rng.choice([-1, 1]))
        length = rng.uniform(1.0, 3.0) / pixel_mm
        half = 0.5 * rng.uniform(0.15, 0.35) / pixel_mm
        z0 = float(skin[xi]) + 1.0
        # distance of each pixel to the segment from (x0, z0) along the angle from vertical
        dx, dz = np.sin(angle), np.cos(angle)
        t = np.clip((xx - x0) * dx + (zz - z0) * dz, 0, length)
        dist = np.hypot(xx - (x0 + t * dx), zz - (z0 + t * dz))
        tract = (dist < half) & free & (zz > z0)
        echo[tract] = np.minimum(echo[tract], float(rng.uniform(-30, -22)))
        if rng.random() < 0.3:  # a hair shaft: a bright line that attenuates a little
            shaft = (dist < max(0.5, 0.35 * half)) & free & (zz > z0)
            echo[shaft] = float(rng.uniform(-2, 6))
            atten[shaft] = float(rng.uniform(3.0, 8.0))
        drawn["follicles"] += 1

    if rng.random() < 0.4 * rate:  # anisotropy: a darker band of muscle / fascia
        c, half_w = rng.uniform(0, w), rng.uniform(0.1, 0.3) * w
        band = np.clip(1.0 - np.abs(xx - c) / half_w, 0, 1) ** 0.5
        deep = (zz > fascia[None, :] - 2) & free
        echo[deep] -= (float(rng.uniform(4, 10)) * band)[deep]
        drawn["anisotropy"] = True

    if rng.random() < 0.5 * rate:  # reverberation: faint copies of the entry echo
        level = float(rng.uniform(-14, -6))
        for k in (2, 3, 4):
            dist = np.abs(zz - k * skin[None, :])
            line = level - 5.0 * (k - 2) - 8.7 * (dist / 0.8) ** 2
            echo[free] = np.maximum(echo, line)[free]
        drawn["reverberation"] = True

    if rng.random() < 0.3 * rate:  # air or a hair at the skin: a narrow shadow all the way down
        x = float(rng.uniform(0.05, 0.95) * w)
        half = 0.5 * rng.uniform(0.3, 1.0) / pixel_mm
        col = (np.abs(xx - x) < half) & (np.abs(zz - skin[None, :] - 1.0) < 1.5)
        atten[col] += float(rng.uniform(15.0, 40.0))
        drawn["surface_shadow"] = True
    return drawn
