"""Simplified B-mode physics: echogenicity map -> speckle -> PSF -> attenuation/TGC -> log compression.

Units: echogenicity in dB relative to dermis (0 dB), attenuation in dB/(cm*MHz) one way, pixel size
in mm, probe frequency in MHz, gain and dynamic range in dB. Pure numpy + OpenCV.

The chain, per pixel (x lateral, z depth):
    scatterers  s = 10^(echo/20) * (n1 + i n2) / sqrt(2)            complex Gaussian -> Rayleigh speckle
    attenuation s *= 10^((tgc(z) - 2 f \u222b alpha dz) / 20)           round trip, TGC compensates tissue
                                                                    (plus the user's TGC slider bumps)
    PSF         field = s (*) h_axial(z) h_lateral(x)               Gaussian beam, grain from wavelength
    noise       field += electronic noise (above the display floor: shadows are dark gray, not 0)
    display     gray = 255 * clip((20 log10|field| + gain - top + DR) / DR, 0, 1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

SOUND_SPEED_MM_PER_US = 1.54
TISSUE_ATTENUATION = 0.7  # dB/(cm*MHz), soft tissue average that the TGC curve assumes
TOP_DB = 13.0             # dB level shown as white at zero gain (dermis at 0 dB shows ~ 180-190 gray)


@dataclass(frozen=True)
class BModeSettings:
    """Acquisition and display settings of one image."""

    freq_mhz: float = 15.0          # probe centre frequency, MHz
    pixel_mm: float = 0.1           # pixel size, mm (square pixels)
    dynamic_range_db: float = 55.0  # shown dynamic range, dB
    gain_db: float = 0.0            # overall gain, dB
    tgc_slope_error: float = 0.0    # TGC mismatch, dB/(cm*MHz) added to the compensated attenuation
    noise_db: float = -36.0         # electronic noise level relative to dermis, dB (display floor: display_floor_db)
    tgc_knots_db: tuple = ()        # TGC slider offsets, dB, spread evenly from top to bottom (linear between)
    axial_cycles: float = 1.6       # axial PSF sigma in wavelengths (pulse length)
    lateral_cycles: float = 3.0     # lateral PSF sigma in wavelengths (~ F-number)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def display_floor_db(self) -> float:
        """The level shown as black (dB re dermis): below it every pixel is 0."""
        return TOP_DB - self.gain_db - self.dynamic_range_db

    @property
    def wavelength_mm(self) -> float:
        return SOUND_SPEED_MM_PER_US / self.freq_mhz

    def psf_sigma_px(self) -> tuple[float, float]:
        """(axial, lateral) Gaussian PSF sigma in pixels: speckle grain shrinks as frequency rises."""
        lam = self.wavelength_mm / self.pixel_mm
        return 0.5 * self.axial_cycles * lam, 0.5 * self.lateral_cycles * lam


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / max(sigma, 1e-3)) ** 2)
    return (k / np.sqrt(np.sum(k * k))).astype(np.float32)  # unit energy: E|field|^2 = echo power


def attenuation_gain_db(atten: np.ndarray | float, shape: tuple[int, int], s: BModeSettings) -> np.ndarray:
    """Per-pixel gain in dB: TGC(z) minus the round-trip attenuation accumulated down to z (H x W)."""
    h, w = shape
    dz_cm = s.pixel_mm / 10.0
    alpha = np.broadcast_to(np.asarray(atten, dtype=np.float32), (h, w))
    loss = 2.0 * s.freq_mhz * dz_cm * (np.cumsum(alpha, axis=0) - 0.5 * alpha)
    z_cm = (np.arange(h, dtype=np.float32) + 0.5) * dz_cm
    tgc = 2.0 * s.freq_mhz * (TISSUE_ATTENUATION + s.tgc_slope_error) * z_cm
    if s.tgc_knots_db:
        knots = np.asarray(s.tgc_knots_db, dtype=np.float32)
        tgc = tgc + np.interp(np.arange(h), np.linspace(0, h - 1, knots.size), knots).astype(np.float32)
    return (tgc[:, None] - loss).astype(np.float32)


def scatter_field(echo_db: np.ndarray, atten: np.ndarray | float, s: BModeSettings,
                  rng: np.random.Generator) -> np.ndarray:
    """Complex RF-envelope field (H x W x 2 float32: I, Q) of one speckle realisation, before noise."""
    h, w = echo_db.shape
    amp = np.power(10.0, (echo_db + attenuation_gain_db(atten, (h, w), s)) / 20.0).astype(np.float32)
    sc = rng.standard_normal((h, w, 2), dtype=np.float32) * np.float32(np.sqrt(0.5))
    sc *= amp[:, :, None]
    sig_a, sig_l = s.psf_sigma_px()
    return cv2.sepFilter2D(sc, cv2.CV_32F, _gauss_kernel(sig_l), _gauss_kernel(sig_a),
                           borderType=cv2.BORDER_REFLECT)


def add_noise(field: np.ndarray, s: BModeSettings, rng: np.random.Generator) -> np.ndarray:
    """Add complex electronic noise (white, noise_db relative to dermis) to a field, in place."""
    field += rng.standard_normal(field.shape, dtype=np.float32) * np.float32(10 ** (s.noise_db / 20) * np.sqrt(0.5))
    return field


def log_compress(field: np.ndarray, s: BModeSettings) -> np.ndarray:
    """Envelope |I + iQ| -> dB -> uint8 over the dynamic range."""
    power = field[..., 0] * field[..., 0] + field[..., 1] * field[..., 1]
    db = 10.0 * np.log10(power + 1e-12)
    lo = s.display_floor_db
    img = (db - lo) * (255.0 / s.dynamic_range_db)
    return np.clip(img, 0, 255).astype(np.uint8)


def simulate_bmode(echo_db: np.ndarray, atten: np.ndarray | float, s: BModeSettings,
                   rng: np.random.Generator) -> np.ndarray:
    """Echogenicity (dB) and attenuation (dB/(cm*MHz)) maps -> 8-bit B-mode image, same H x W."""
    field = scatter_field(echo_db, atten, s, rng)
    return log_compress(add_noise(field, s, rng), s)
