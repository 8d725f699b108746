"""Skin anatomy under a high-frequency linear probe, as echogenicity (dB) and attenuation maps.

From the top: coupling gel (anechoic band), epidermis (bright entry echo), dermis (echogenic band),
subcutaneous fat (hypoechoic lobules with echogenic septa), fascia (bright line), muscle
(hypoechoic with echogenic fibrillar lines). Thicknesses in mm; boundaries undulate gently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class TissueSpec:
    """Layer thicknesses (mm) and levels of one patient's skin (echo in dB re dermis)."""

    gel_mm: float = 0.8
    dermis_mm: float = 2.0
    fat_mm: float = 6.0
    dermis_db: float = -3.0
    fat_db: float = -22.0
    septa_db: float = -7.0
    muscle_db: float = -17.0
    undulation_mm: float = 0.25
    septa_density: float = 1.0     # >1: more, finer septa

    def to_dict(self) -> dict:
        return asdict(self)


def sample_tissue(rng: np.random.Generator) -> TissueSpec:
    return TissueSpec(
        gel_mm=float(rng.uniform(0.3, 2.5)),  # gel / stand-off thickness under the probe
        dermis_mm=float(rng.uniform(1.2, 2.8)),
        fat_mm=float(rng.uniform(3.0, 9.0)),
        dermis_db=float(rng.normal(-3.0, 1.5)),
        fat_db=float(rng.uniform(-25.0, -19.0)),
        septa_db=float(rng.uniform(-10.0, -5.0)),
        muscle_db=float(rng.uniform(-20.0, -14.0)),
        undulation_mm=float(rng.uniform(0.1, 0.4)),
        septa_density=float(rng.uniform(0.7, 1.4)),
    )


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_z: float, sigma_x: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation; sigmas in pixels (z, x)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(sigma_x, 0.3), sigmaY=max(sigma_z, 0.3),
                         borderType=cv2.BORDER_REFLECT)
    return n / (n.std() + 1e-6)


def smooth_curve(rng: np.random.Generator, w: int, sigma_px: float) -> np.ndarray:
    """1-D unit-std smooth random curve of length w."""
    n = rng.standard_normal(w + 8 * int(sigma_px) + 8).astype(np.float32)
    k = cv2.getGaussianKernel(int(6 * sigma_px) | 1, sigma_px).ravel().astype(np.float32)
    c = np.convolve(n, k, mode="same")[4 * int(sigma_px) + 4:][:w]
    return c / (c.std() + 1e-6)


def _line_db(dist_px: np.ndarray, peak_db: float, half_width_px: float) -> np.ndarray:
    """A bright specular line: peak at dist 0 falling off as a Gaussian in amplitude."""
    return peak_db - 8.7 * (dist_px / max(half_width_px, 0.5)) ** 2


def skin_layers(h: int, w: int, pixel_mm: float, tissue: TissueSpec,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Echo map (dB, H x W float32), attenuation map (dB/(cm*MHz)), boundary rows per column (px)."""
    z = np.arange(h, dtype=np.float32)[:, None]
    und = tissue.undulation_mm / pixel_mm
    skin = tissue.gel_mm / pixel_mm + und * smooth_curve(rng, w, w / 6)
    dermis_bot = skin + tissue.dermis_mm / pixel_mm + 0.5 * und * smooth_curve(rng, w, w / 5)
    fat_bot = dermis_bot + tissue.fat_mm / pixel_mm + 1.5 * und * smooth_curve(rng, w, w / 4)

    # dermis: echogenic, a little darker in its deeper part
    frac = np.clip((z - skin) / np.maximum(dermis_bot - skin, 1.0), 0, 1)
    dermis = tissue.dermis_db - 4.0 * frac + 2.0 * smooth_noise(rng, (h, w), 1.0 / pixel_mm * 0.15, 0.4 / pixel_mm)
    # fat: hypoechoic lobules separated by thin echogenic septa (zero crossings of a smooth field)
    d = tissue.septa_density
    lob = smooth_noise(rng, (h, w), 0.45 / pixel_mm / d, 1.1 / pixel_mm / d)
    septa = np.exp(-(lob / 0.16) ** 2)
    fat = tissue.fat_db + 1.5 * smooth_noise(rng, (h, w), 2.0, 3.0) + (tissue.septa_db - tissue.fat_db) * septa
    # muscle: fibrillar echogenic lines, slightly oblique
    fib = smooth_noise(rng, (h, w), 0.12 / pixel_mm, 2.5 / pixel_mm)
    shear = float(rng.uniform(-0.12, 0.12))
    fib = cv2.warpAffine(fib, np.float32([[1, 0, 0], [shear, 1, -shear * w / 2]]), (w, h),
                         borderMode=cv2.BORDER_REFLECT)
    muscle = tissue.muscle_db - 5.0 + 12.0 * np.exp(-(fib / 0.3) ** 2)

    echo = np.where(z < skin, -70.0, np.where(z < dermis_bot, dermis, np.where(z < fat_bot, fat, muscle)))
    echo = np.maximum(echo, _line_db(np.abs(z - skin), 9.0, 0.7))                 # epidermis entry echo
    echo = np.maximum(echo, _line_db(np.abs(z - fat_bot), 3.0, 0.25 / pixel_mm))    # fascia
    atten = np.where(z < skin, 0.05, np.where(z < dermis_bot, 0.8, np.where(z < fat_bot, 0.6, 0.85)))
    bounds = {"skin": skin, "dermis_bottom": dermis_bot, "fascia": fat_bot}
    return echo.astype(np.float32), atten.astype(np.float32), bounds
