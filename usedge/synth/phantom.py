"""One synthetic patient and one image of their lesion: anatomy + lesion maps -> B-mode physics.

    patient = sample_patient("P0001", "lipoma", rng, difficulty=0.5)
    view    = sample_view(patient, rng)
    image, mask = render_view(patient, view, rng)      # uint8 H x W gray, uint8 0/255 mask

Sizes in pixels unless named *_mm; echo levels in dB re dermis; gains in dB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from usedge.errors import ConfigError
from usedge.synth.anatomy import TissueSpec, sample_tissue, skin_layers
from usedge.synth.bmode import TOP_DB, BModeSettings, simulate_bmode
from usedge.synth.confounders import add_confounders
from usedge.synth.lesions import LesionSpec, draw_lesion, sample_lesion


@dataclass(frozen=True)
class PhantomOptions:
    """Ranges the generator draws acquisition settings from (uniform unless named *_std)."""

    width_px: tuple[int, int] = (296, 352)           # B-mode image width, pixels
    height_px: tuple[int, int] = (232, 280)          # B-mode image height (depth axis), pixels
    depth_mm: tuple[float, float] = (15.0, 26.0)     # imaging depth, mm (sets the pixel size)
    freq_mhz: tuple[float, float] = (12.0, 22.0)     # probe centre frequency, MHz
    dynamic_range_db: tuple[float, float] = (50.0, 60.0)
    gain_std_db: float = 3.0                         # per-patient gain spread (x (1 + difficulty))
    view_gain_std_db: float = 1.5                    # extra per-image gain spread
    tgc_error_std: float = 0.15                      # TGC mismatch, dB/(cm*MHz)
    tgc_slider_std_db: float = 2.0                   # per-image TGC slider offsets (5 over the depth), dB
    noise_above_floor_db: tuple[float, float] = (5.0, 11.0)  # electronic noise above the display floor, dB

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "PhantomOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(f"unknown phantom option(s): {', '.join(unknown)}",
                              hint=f"use {', '.join(sorted(known))}")
        clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
        return cls(**clean)


@dataclass(frozen=True)
class Patient:
    patient_id: str
    label: str
    lesion: LesionSpec
    tissue: TissueSpec
    freq_mhz: float
    dynamic_range_db: float
    depth_mm: float
    gain_db: float
    centre_frac: float          # lateral lesion position as a fraction of the image width
    confounders: float = 1.0    # scales the confounders' probabilities (0 at difficulty 0, 1 from 0.5)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class View:
    width: int
    height: int
    settings: BModeSettings
    centre_frac: float
    tilt_deg: float
    scale_z: float              # probe compression: < 1 flattens the lesion
    flip: bool

    @property
    def pixel_mm(self) -> float:
        return self.settings.pixel_mm


def sample_patient(patient_id: str, label: str, rng: np.random.Generator, difficulty: float = 0.5,
                   options: PhantomOptions = PhantomOptions()) -> Patient:
    lesion = sample_lesion(label, rng, difficulty)
    tissue = sample_tissue(rng)
    if lesion.host == "fat":  # the lipoma sits inside the subcutis, which must hold it
        tissue = replace(tissue, fat_mm=max(tissue.fat_mm, 2 * lesion.half_height_mm + rng.uniform(1.0, 3.0)))
        # its echo level is defined against nominal fat: make it relative to this patient's fat
        lesion = replace(lesion, interior_db=lesion.interior_db + tissue.fat_db - TissueSpec.fat_db)
    # the same rule for every class: the lesion and the fascia below it fit in the image
    bottom = tissue.gel_mm + tissue.dermis_mm + max(tissue.fat_mm, 2 * lesion.half_height_mm + 4.0)
    depth = max(float(rng.uniform(*options.depth_mm)), bottom + 3.0)
    return Patient(
        patient_id=patient_id, label=label, lesion=lesion, tissue=tissue,
        freq_mhz=float(rng.uniform(*options.freq_mhz)),
        dynamic_range_db=float(rng.uniform(*options.dynamic_range_db)),
        depth_mm=depth, gain_db=float(rng.normal(0.0, options.gain_std_db * (1.0 + difficulty))),
        centre_frac=float(rng.uniform(0.4, 0.6)), confounders=min(float(difficulty) / 0.5, 1.0))


def sample_view(patient: Patient, rng: np.random.Generator, options: PhantomOptions = PhantomOptions()) -> View:
    """Another look at the same lesion: size, position, tilt, compression, gain and speckle change."""
    w = int(rng.integers(options.width_px[0] // 8, options.width_px[1] // 8 + 1) * 8)
    h = int(rng.integers(options.height_px[0] // 8, options.height_px[1] // 8 + 1) * 8)
    depth = patient.depth_mm * float(rng.uniform(0.95, 1.1))
    dr = float(np.clip(patient.dynamic_range_db + rng.normal(0, 1.5), 45, 65))
    gain = patient.gain_db + float(rng.normal(0, options.view_gain_std_db))
    settings = BModeSettings(
        freq_mhz=patient.freq_mhz, pixel_mm=depth / h, dynamic_range_db=dr, gain_db=gain,
        tgc_slope_error=float(rng.normal(0, options.tgc_error_std)),
        tgc_knots_db=tuple(float(v) for v in rng.normal(0, options.tgc_slider_std_db, 5)),
        noise_db=TOP_DB - gain - dr + float(rng.uniform(*options.noise_above_floor_db)))
    return View(width=w, height=h, settings=settings,
                centre_frac=float(np.clip(patient.centre_frac + rng.normal(0, 0.08), 0.25, 0.75)),
                tilt_deg=float(rng.normal(0, 4)),
                scale_z=float(1.0 - 0.04 * rng.random() - patient.lesion.compressibility * rng.random()),
                flip=bool(rng.random() < 0.5))


def lesion_centre_depth_mm(patient: Patient, rng: np.random.Generator) -> float:
    """Depth of the lesion centre below the skin surface (mm), by host layer."""
    t, les = patient.tissue, patient.lesion
    if les.host == "fat":
        room = min(max(t.fat_mm - 2 * les.half_height_mm - 1.0, 0.0), 1.0)  # high in the fat, like cysts
        return t.gel_mm + t.dermis_mm + 0.2 + les.half_height_mm + rng.uniform(0, room)
    if les.host == "dermis":
        return t.gel_mm + max(0.6 * t.dermis_mm, les.half_height_mm + 0.4) + rng.uniform(0, 0.5)
    return t.gel_mm + t.dermis_mm + les.half_height_mm * rng.uniform(0.3, 1.2) + rng.uniform(0, 3.0)


def build_maps(patient: Patient, width: int, height: int, pixel_mm: float, centre_px: tuple[float, float],
               rng: np.random.Generator, *, tilt_deg: float = 0.0, scale_z: float = 1.0):
    """Echo (dB) and attenuation maps with the lesion and the confounders painted in, and its mask (bool)."""
    echo, atten, bounds = skin_layers(height, width, pixel_mm, patient.tissue, rng)
    mask = draw_lesion(echo, atten, patient.lesion, centre_px, pixel_mm, rng,
                       skin_row=bounds["skin"], tilt_deg=tilt_deg, scale_z=scale_z)
    add_confounders(echo, atten, bounds, pixel_mm, rng, keep=mask, rate=patient.confounders)
    return echo, atten, mask, bounds


def render_view(patient: Patient, view: View, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One B-mode image (uint8 H x W) and its lesion mask (uint8 0/255, same size)."""
    px = view.pixel_mm
    half_w = patient.lesion.half_width_mm / px
    cx = float(np.clip(view.centre_frac * view.width, half_w + 4, view.width - half_w - 4)) if 2 * half_w + 8 < view.width \
        else view.width / 2
    cz = lesion_centre_depth_mm(patient, rng) / px
    echo, atten, mask, _ = build_maps(patient, view.width, view.height, px, (cx, cz), rng,
                                      tilt_deg=view.tilt_deg, scale_z=view.scale_z)
    image = simulate_bmode(echo, atten, view.settings, rng)
    mask8 = mask.astype(np.uint8) * 255
    if view.flip:
        image, mask8 = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask8[:, ::-1])
    return image, mask8
