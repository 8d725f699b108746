"""The three benign skin tumours and their B-mode signs: partial, variable and sometimes absent.

- epidermal_cyst: round/oval, well circumscribed, hypo/anechoic or filled with low-level echoes
  ("pseudotestis"), often posterior enhancement, sometimes a bright wall, lateral edge shadows
  or a punctum tract to the epidermis.
- lipoma: oval, usually wider than tall and parallel to the skin, hyper-, iso- or hypoechoic to fat,
  often thin echogenic striations parallel to the skin, little posterior effect, compressible.
- pilomatricoma: round/oval at the dermis-fat junction, heterogeneous, usually with echogenic
  calcific foci, often a hypoechoic rim, posterior shadowing in about half.

Each sign is drawn per lesion with a class prevalence (`SIGNS`); the figures at the default
difficulty (0.5) follow published sonographic series (docs/synth.md cites them). `difficulty`
moves them: 0 = textbook (every class sign present, no other class's), 0.5 = the published
prevalences, 1 = half-way from those toward a prevalence shared by all classes.
Sizes in mm, echo levels in dB relative to dermis, attenuation in dB/(cm*MHz).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from usedge.synth.anatomy import smooth_noise

CLASSES = ("epidermal_cyst", "lipoma", "pilomatricoma")

# prevalence of each sign per class at the default difficulty (approximate, from the series in docs/synth.md)
SIGNS = {
    "epidermal_cyst": {"enhancement": 0.75, "anechoic": 0.3, "wall": 0.6, "edge_shadows": 0.35, "punctum": 0.3},
    "lipoma": {"striations": 0.7, "hyperechoic": 0.5, "wider_than_tall": 0.6, "capsule": 0.5},
    "pilomatricoma": {"calcifications": 0.8, "shadowing": 0.5, "rim": 0.6},
}
SHARED_PREVALENCE = 0.5  # where difficulty 1 pulls every prevalence half-way to


def prevalence(published: float, difficulty: float) -> float:
    """A class sign's probability: 1 at difficulty 0, `published` at 0.5, then toward the shared value."""
    d = float(np.clip(difficulty, 0.0, 1.0))
    if d <= 0.5:
        return 1.0 + (published - 1.0) * d / 0.5
    target = 0.5 * (published + SHARED_PREVALENCE)
    return published + (target - published) * (d - 0.5) / 0.5


@dataclass(frozen=True)
class LesionSpec:
    """One patient's lesion; views of it differ in position, tilt, compression and speckle."""

    label: str
    half_width_mm: float
    half_height_mm: float
    tilt_deg: float = 0.0
    harmonics: tuple = ()              # ((k, amplitude, phase), ...) boundary wobble
    host: str = "dermis"               # dermis | subcutis | fat: where its centre sits
    interior_db: float = -32.0
    texture_db: float = 2.0            # std of blotchy interior heterogeneity
    texture_mm: float = 0.4            # grain of that heterogeneity
    echo_density: float = 0.0          # share of interior pixels with point echoes
    echo_db: float = -12.0
    striation_db: float = 0.0          # lipoma: echogenic lines parallel to the skin
    capsule_db: float | None = None    # thin bright wall
    rim_db: float | None = None        # hypoechoic rim (pilomatricoma)
    rim_fraction: float = 0.15
    atten: float = 0.7                 # interior attenuation
    calcifications: tuple = ()         # ((u, v, radius_mm, echo_db, atten), ...) u, v in [-1, 1]
    punctum: bool = False
    edge_shadows: bool = False
    compressibility: float = 0.05      # largest share of its height a probe press removes
    signs: dict = field(default_factory=dict)  # which of the class's SIGNS this lesion shows
    atypical: bool = False             # lacks its class's headline sign

    def to_dict(self) -> dict:
        return asdict(self)


def _span(rng: np.random.Generator, textbook: tuple[float, float], published: tuple[float, float], d: float) -> float:
    """A uniform draw from a range that moves from its textbook values (d = 0) to its published ones (d >= 0.5)."""
    t = min(d / 0.5, 1.0)
    lo, hi = ((1 - t) * a + t * b for a, b in zip(textbook, published))
    return float(rng.uniform(lo, hi))


def _harmonics(rng: np.random.Generator, amp: float) -> tuple:
    return tuple((k, float(rng.uniform(0, amp) / k ** 0.5), float(rng.uniform(0, 2 * np.pi))) for k in range(2, 6))


def _draw_signs(label: str, rng: np.random.Generator, d: float) -> dict:
    return {name: bool(rng.random() < prevalence(p, d)) for name, p in SIGNS[label].items()}


def sample_lesion(label: str, rng: np.random.Generator, difficulty: float = 0.5) -> LesionSpec:
    """Draw one lesion of class `label`; the same rng state gives the same lesion."""
    if label not in SIGNS:
        raise ValueError(f"unknown lesion class {label!r}; use one of {CLASSES}")
    d = float(np.clip(difficulty, 0.0, 1.0))
    sg = _draw_signs(label, rng, d)
    if label == "epidermal_cyst":
        a = rng.uniform(2.5, 8.0)
        aspect = _span(rng, (1.0, 1.6), (1.0, 2.2), d)
        interior = rng.uniform(-38, -30) if sg["anechoic"] else rng.uniform(-30, -17)  # else pseudotestis echoes
        return LesionSpec(
            label=label, half_width_mm=a, half_height_mm=a / aspect, tilt_deg=rng.uniform(-10, 10),
            harmonics=_harmonics(rng, 0.05), host=str(rng.choice(["dermis", "subcutis"], p=[0.3, 0.7])),
            interior_db=interior, texture_db=rng.uniform(1.5, 3.0) if sg["anechoic"] else rng.uniform(2.5, 5.0),
            texture_mm=rng.uniform(0.3, 0.8),
            echo_density=rng.uniform(0.003, 0.03) if sg["anechoic"] else rng.uniform(0.03, 0.12),
            echo_db=rng.uniform(-16, -6), capsule_db=rng.uniform(-8, -2) if sg["wall"] else None,
            atten=_span(rng, (0.1, 0.3), (0.3, 0.55), d) if sg["enhancement"] else rng.uniform(0.55, 0.9),
            punctum=sg["punctum"], edge_shadows=sg["edge_shadows"], compressibility=rng.uniform(0.0, 0.1),
            signs=sg, atypical=not sg["enhancement"])
    if label == "lipoma":
        a = rng.uniform(3.0, 9.0)
        aspect = rng.uniform(1.7, 3.0) if sg["wider_than_tall"] else rng.uniform(1.0, 1.7)
        rel = rng.uniform(2, 8) if sg["hyperechoic"] else rng.uniform(-10, 2)  # echo re the patient's fat
        return LesionSpec(
            label=label, half_width_mm=a, half_height_mm=a / aspect, tilt_deg=rng.uniform(-6, 6),
            harmonics=_harmonics(rng, 0.06), host="fat", interior_db=-22 + rel,
            texture_db=rng.uniform(1.5, 3.0), texture_mm=rng.uniform(0.5, 1.2),
            striation_db=rng.uniform(6, 12) if sg["striations"] else rng.uniform(0, 3),
            capsule_db=rng.uniform(-14, -8) if sg["capsule"] else None,
            atten=_span(rng, (0.5, 0.7), (0.4, 1.0), d), compressibility=rng.uniform(0.05, 0.25),
            signs=sg, atypical=not sg["striations"])
    a = rng.uniform(2.5, 7.0)
    aspect = _span(rng, (0.9, 1.35), (0.9, 1.9), d)
    calcs = []
    for _ in range(int(rng.poisson(3) + 1) if sg["calcifications"] else 0):
        r, phi = np.sqrt(rng.uniform(0, 0.55)), rng.uniform(0, 2 * np.pi)
        calcs.append((float(r * np.cos(phi)), float(r * np.sin(phi)), float(rng.uniform(0.2, 0.7)),
                      float(rng.uniform(4, 14)), _span(rng, (2.0, 5.0), (1.0, 3.0), d)))
    return LesionSpec(
        label=label, half_width_mm=a, half_height_mm=a / aspect, tilt_deg=rng.uniform(-15, 15),
        harmonics=_harmonics(rng, 0.08), host=str(rng.choice(["dermis", "subcutis"], p=[0.3, 0.7])),
        interior_db=_span(rng, (-12, -3), (-28, -6), d),
        texture_db=rng.uniform(4, 7), texture_mm=rng.uniform(0.3, 0.7),
        echo_density=rng.uniform(0.0, 0.03), echo_db=rng.uniform(-6, 4),
        rim_db=rng.uniform(-36, -26) if sg["rim"] else None, rim_fraction=rng.uniform(0.1, 0.22),
        atten=_span(rng, (1.4, 2.0), (0.9, 1.3), d) if sg["shadowing"] else rng.uniform(0.5, 0.9),
        calcifications=tuple(calcs), compressibility=rng.uniform(0.0, 0.1), signs=sg,
        atypical=not sg["calcifications"])


def lesion_coords(spec: LesionSpec, shape: tuple[int, int], centre_px: tuple[float, float],
                  pixel_mm: float, *, tilt_deg: float = 0.0, scale_z: float = 1.0):
    """Normalised lesion coordinates per pixel: q (<1 inside, 1 on the boundary), u, v (units of axes)."""
    h, w = shape
    cx, cz = centre_px
    x = (np.arange(w, dtype=np.float32) - cx) * pixel_mm
    z = (np.arange(h, dtype=np.float32) - cz) * pixel_mm
    xx, zz = np.meshgrid(x, z)
    t = np.deg2rad(spec.tilt_deg + tilt_deg)
    u = (np.cos(t) * xx + np.sin(t) * zz) / spec.half_width_mm
    v = (-np.sin(t) * xx + np.cos(t) * zz) / (spec.half_height_mm * scale_z)
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    r = np.ones_like(rho)
    for k, amp, ph in spec.harmonics:
        r += amp * np.cos(k * theta + ph)
    return rho / r, u, v


def draw_lesion(echo: np.ndarray, atten: np.ndarray, spec: LesionSpec, centre_px: tuple[float, float],
                pixel_mm: float, rng: np.random.Generator, *, skin_row: np.ndarray | None = None,
                tilt_deg: float = 0.0, scale_z: float = 1.0) -> np.ndarray:
    """Paint the lesion into echo (dB) and attenuation maps in place; return its mask (bool H x W)."""
    h, w = echo.shape
    q, u, v = lesion_coords(spec, (h, w), centre_px, pixel_mm, tilt_deg=tilt_deg, scale_z=scale_z)
    inside = q < 1.0
    tex = smooth_noise(rng, (h, w), spec.texture_mm / pixel_mm, spec.texture_mm / pixel_mm)
    interior = spec.interior_db + spec.texture_db * tex
    if spec.label == "epidermal_cyst":
        # keratin debris: scattered echoes, denser in the dependent (lower) half
        p = spec.echo_density * (1.0 + 1.5 * np.clip(v, 0, 1))
        pts = rng.random((h, w)) < p
        interior = np.where(pts, spec.echo_db + 3.0 * rng.standard_normal((h, w)), interior)
    if spec.striation_db:
        sig_x = max(spec.half_width_mm * 0.35, 1.0) / pixel_mm
        s = smooth_noise(rng, (h, w), 0.15 / pixel_mm, sig_x)
        interior = interior + spec.striation_db * np.exp(-(s / 0.2) ** 2)
    if spec.echo_density and spec.label == "pilomatricoma":
        pts = rng.random((h, w)) < spec.echo_density
        interior = np.where(pts, spec.echo_db, interior)
    if spec.rim_db is not None:
        interior = np.where(q > 1.0 - spec.rim_fraction, spec.rim_db + 2.0 * tex, interior)
    echo[inside] = interior[inside]
    atten[inside] = spec.atten
    if spec.capsule_db is not None:  # thin bright wall, about one pixel either side of the boundary
        wall = np.abs(q - 1.0) * min(spec.half_width_mm, spec.half_height_mm * scale_z) / pixel_mm < 0.9
        echo[wall] = np.maximum(echo[wall], spec.capsule_db)
    if spec.edge_shadows:  # refraction at the lateral edges: thin shadows below them (~8-12 dB)
        rows = max(1, int(round(0.3 / pixel_mm)))
        cols = max(1, int(round(0.15 / pixel_mm)))
        for side in (-1.0, 1.0):
            edge = (np.abs(u - side) < cols * pixel_mm / spec.half_width_mm) & \
                   (np.abs(v) < rows * pixel_mm / spec.half_height_mm / 2)
            atten[edge] += 12.0
    for cu, cv, rad, cdb, catt in spec.calcifications:
        rad = min(rad, 0.3 * spec.half_width_mm)
        du = (u - cu) * spec.half_width_mm / (1.4 * rad)   # foci are flatter than tall
        dv = (v - cv) * spec.half_height_mm * scale_z / rad
        blob = (du * du + dv * dv < 1.0) & inside
        echo[blob] = cdb
        atten[blob] = catt
    if spec.punctum and skin_row is not None:  # hypoechoic tract from the cyst's top to the epidermis
        ys, xs = np.nonzero(inside)
        if ys.size:
            top = int(ys.min())
            cx = int(np.clip(round(float(xs[ys == top].mean())), 0, w - 1))
            half = max(1, int(round(0.25 / pixel_mm)))
            x0, x1 = max(0, cx - half), min(w, cx + half + 1)
            z0 = int(np.clip(np.ceil(skin_row[cx] + 1), 0, h - 1))
            if z0 < top:
                echo[z0:top, x0:x1] = np.minimum(echo[z0:top, x0:x1], -26.0)
    return inside


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box x, y, w, h (pixels) of a mask's nonzero pixels, or None when empty."""
    pts = cv2.findNonZero(mask.astype(np.uint8))
    if pts is None:
        return None
    x, y, w, h = cv2.boundingRect(pts)
    return int(x), int(y), int(w), int(h)


__all__ = ["CLASSES", "LesionSpec", "sample_lesion", "draw_lesion", "lesion_coords", "mask_bbox"]
