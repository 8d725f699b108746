"""Augmentation operations and Fast AutoAugment policies, on single-channel uint8 images (numpy/opencv).

Every operation has the signature ``op(image, magnitude, rng) -> image``:

    image      H x W uint8 (the output of `usedge.runtime.crop.prepare`)
    magnitude  float in [0, 1]; the mapping to physical units is in `OPS` and in docs/augment.md
    rng        np.random.Generator: the only source of randomness (same seed -> same bytes)

and returns a new H x W uint8 array. Signed operations (shear, translate, rotate, contrast, ...) draw
their sign from `rng`. Where an operation has a strength, magnitude 0 is the identity.

A *sub-policy* is a short list of (operation, probability, magnitude); a *policy* is a list of
sub-policies, as searched by Fast AutoAugment (`usedge.train.search`) and saved as readable JSON.
No torch here: the transforms are plain callables usable by any data loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from usedge.errors import ConfigError
from usedge.fileio import write_json_atomic

Op = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

# B-mode images are log-compressed: the display value is linear in dB. We assume the common 60 dB
# display dynamic range to turn gain/TGC/dynamic-range changes (dB) into grey levels.
ASSUMED_DYNAMIC_RANGE_DB = 60.0
FILL = 0  # what geometric ops and cutout expose: black, as outside the scanner's field of view


def _sign(rng: np.random.Generator) -> float:
    return -1.0 if rng.random() < 0.5 else 1.0


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    return cv2.LUT(image, np.clip(np.rint(table), 0, 255).astype(np.uint8))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)  # clip, never wrap around


def _warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = image.shape
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=FILL)


# --- geometry ---------------------------------------------------------------------------------

def shear_x(image, magnitude, rng):
    """Horizontal shear, factor +-0.3 * m (tan of up to ~16.7 degrees), about the image centre."""
    s = _sign(rng) * 0.3 * magnitude
    h, _ = image.shape
    return _warp(image, np.float32([[1, s, -s * (h - 1) / 2], [0, 1, 0]]))


def shear_y(image, magnitude, rng):
    """Vertical shear, factor +-0.3 * m, about the image centre."""
    s = _sign(rng) * 0.3 * magnitude
    _, w = image.shape
    return _warp(image, np.float32([[1, 0, 0], [s, 1, -s * (w - 1) / 2]]))


def translate_x(image, magnitude, rng):
    """Horizontal shift by +-0.3 * m of the width (pixels rounded)."""
    t = round(_sign(rng) * 0.3 * magnitude * image.shape[1])
    return _warp(image, np.float32([[1, 0, t], [0, 1, 0]]))


def translate_y(image, magnitude, rng):
    """Vertical (depth) shift by +-0.3 * m of the height."""
    t = round(_sign(rng) * 0.3 * magnitude * image.shape[0])
    return _warp(image, np.float32([[1, 0, 0], [0, 1, t]]))


def rotate(image, magnitude, rng):
    """Rotation by +-30 * m degrees about the centre."""
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), _sign(rng) * 30.0 * magnitude, 1.0)
    return _warp(image, matrix)


def flip_lr(image, magnitude, rng):
    """Left-right mirror (never up-down: depth has a direction). Magnitude unused."""
    return np.ascontiguousarray(image[:, ::-1])


def cutout(image, magnitude, rng):
    """One square hole of side 0.5 * m of the shorter side, centre uniform in the image, set to black."""
    h, w = image.shape
    half = int(round(0.5 * magnitude * min(h, w))) // 2
    out = image.copy()
    if half == 0:
        return out
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    out[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half] = FILL
    return out


# --- intensity (the authors' PIL operations, re-done on uint8 arrays) ---------------------------

def auto_contrast(image, magnitude, rng):
    """Stretch grey levels so that the darkest/brightest 10 * m percent map to 0/255 (m = 0: min..max, as
    PIL's cutoff 0; the authors' 49 * m percent left a near-binary image)."""
    cut = 10.0 * magnitude
    lo, hi = np.percentile(image, (cut, 100.0 - cut))
    if hi <= lo:
        return image.copy()
    return _lut(image, (np.arange(256, dtype=np.float64) - lo) * 255.0 / (hi - lo))


def equalize(image, magnitude, rng):
    """Histogram equalisation (OpenCV). Magnitude unused."""
    return cv2.equalizeHist(image)


def invert(image, magnitude, rng):
    """255 - x. Magnitude unused. (An authors' op; anechoic becomes bright: rarely useful here.)"""
    return cv2.bitwise_not(image)


def solarize(image, magnitude, rng):
    """Invert grey levels >= 256 * (1 - m): m = 0 inverts nothing."""
    threshold = 256.0 * (1.0 - magnitude)
    levels = np.arange(256, dtype=np.float64)
    return _lut(image, np.where(levels >= threshold, 255 - levels, levels))


def posterize(image, magnitude, rng):
    """Keep round(8 - 6 * m) bits (8 = identity, down to 2; the authors' 0 bits blanked the image)."""
    bits = int(round(8 - 6 * magnitude))
    mask = (0xFF << (8 - bits)) & 0xFF
    return _lut(image, np.arange(256) & mask)


def _enhance_factor(magnitude, rng):
    # the authors used 10 * m: m = 0 gave a blank image and 0.1 was the identity
    return 1.0 + _sign(rng) * 0.9 * magnitude


def contrast(image, magnitude, rng):
    """Blend with the mean grey level, factor 1 +- 0.9 * m (PIL ImageEnhance.Contrast semantics)."""
    f = _enhance_factor(magnitude, rng)
    mean = float(image.mean())
    return _lut(image, mean + f * (np.arange(256, dtype=np.float64) - mean))


def brightness(image, magnitude, rng):
    """Multiply grey levels by 1 +- 0.9 * m (PIL ImageEnhance.Brightness semantics)."""
    return _lut(image, np.arange(256, dtype=np.float64) * _enhance_factor(magnitude, rng))


def sharpness(image, magnitude, rng):
    """Blend with PIL's 3x3 smoothing filter, factor 1 +- 0.9 * m (>1 sharpens, <1 blurs)."""
    f = _enhance_factor(magnitude, rng)
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
    smooth = cv2.filter2D(image, cv2.CV_32F, kernel, borderType=cv2.BORDER_REPLICATE)
    out = smooth + f * (image.astype(np.float32) - smooth)
    out[[0, -1], :] = image[[0, -1], :]  # PIL leaves the border pixels as they are
    out[:, [0, -1]] = image[:, [0, -1]]
    return _to_uint8(out)


def gaussian_noise(image, magnitude, rng):
    """Add zero-mean Gaussian noise, sigma = 0.1 * m * 255 grey levels, clipped.

    (The authors passed the magnitude as the noise *mean*: a brightness shift with fixed noise.)"""
    if magnitude <= 0:
        return image.copy()
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.1 * magnitude * 255.0)
    return _to_uint8(image.astype(np.float32) + noise)


def speckle_noise(image, magnitude, rng):
    """Multiplicative noise x * (1 + 0.5 * m * n), n ~ N(0, 1), clipped (the authors' version wrapped
    around at 255 -> 0, turning bright echoes black)."""
    if magnitude <= 0:
        return image.copy()
    n = rng.standard_normal(image.shape, dtype=np.float32)
    x = image.astype(np.float32)
    return _to_uint8(x + np.float32(0.5 * magnitude) * x * n)


# --- ultrasound-aware ---------------------------------------------------------------------------

def _db_to_levels(db: float) -> float:
    return db / ASSUMED_DYNAMIC_RANGE_DB * 255.0


def gain(image, magnitude, rng):
    """Overall receive gain +-6 * m dB: an additive offset of the log-compressed display (+-25.5 * m
    grey levels at 60 dB dynamic range), clipped."""
    offset = _db_to_levels(_sign(rng) * 6.0 * magnitude)
    return _lut(image, np.arange(256, dtype=np.float64) + offset)


def tgc(image, magnitude, rng):
    """Time-gain-compensation change: a gain that varies linearly with depth (rows), from -s/2 at the
    top to +s/2 at the bottom, s = +-12 * m dB; the middle row keeps its gain."""
    if magnitude <= 0:
        return image.copy()
    h, _ = image.shape
    slope_db = _sign(rng) * 12.0 * magnitude
    depth = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5)[:, None]
    return _to_uint8(image.astype(np.float32) + np.float32(_db_to_levels(slope_db)) * depth)


def dynamic_range(image, magnitude, rng):
    """Display dynamic range scaled by 1.5 ** (+-m) (60 dB -> 40..90 dB), the brightest echo fixed:
    x -> 255 - (255 - x) * 1.5 ** (-+m)."""
    ratio = 1.5 ** (_sign(rng) * magnitude)  # old / new dynamic range
    return _lut(image, 255.0 - (255.0 - np.arange(256, dtype=np.float64)) * ratio)


def speckle_resynthesis(image, magnitude, rng):
    """Replace the speckle pattern by a new, fully developed one over the same echogenicity map.

    Pixels are taken to linear amplitude (60 dB log compression); the local mean amplitude (Gaussian
    blur, sigma ~ 1.5 % of the side) is multiplied by a fresh Rayleigh field of unit mean (a complex
    Gaussian field low-passed to a speckle grain of ~0.5 % of the side) and compressed back. The
    result is mixed with the original in dB with weight m (m = 0: identity).
    """
    if magnitude <= 0:
        return image.copy()
    h, w = image.shape
    side = min(h, w)
    dr = ASSUMED_DYNAMIC_RANGE_DB
    db = image.astype(np.float32) * np.float32(dr / 255.0) - np.float32(dr)
    amplitude = np.power(np.float32(10.0), db / np.float32(20.0))
    local = cv2.GaussianBlur(amplitude, (0, 0), max(1.0, 0.015 * side))
    grain = max(0.5, 0.005 * side)
    re = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), grain)
    im = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), grain)
    rayleigh = np.sqrt(re * re + im * im)
    rayleigh /= np.float32(max(float(rayleigh.mean()), 1e-12))
    new_db = np.float32(20.0) * np.log10(np.maximum(local * rayleigh, np.float32(1e-12)))
    mixed = (1.0 - magnitude) * db + magnitude * new_db
    return _to_uint8((mixed + dr) * np.float32(255.0 / dr))


@dataclass(frozen=True)
class OpInfo:
    name: str
    fn: Op
    identity_at_zero: bool   # magnitude 0 leaves the image unchanged
    ultrasound_safe: bool    # a change a scanner or a sonographer could make


OPS: dict[str, OpInfo] = {o.name: o for o in [
    # the authors' 14 (their ShearXY / TranslateXY split into X and the anchor's Y)
    OpInfo("ShearX", shear_x, True, True),
    OpInfo("TranslateX", translate_x, True, True),
    OpInfo("AutoContrast", auto_contrast, False, True),
    OpInfo("Invert", invert, False, False),
    OpInfo("FlipLR", flip_lr, False, True),
    OpInfo("Equalize", equalize, False, False),
    OpInfo("Solarize", solarize, True, False),
    OpInfo("Posterize", posterize, True, False),
    OpInfo("Contrast", contrast, True, True),
    OpInfo("Brightness", brightness, True, True),
    OpInfo("Sharpness", sharpness, True, True),
    OpInfo("GaussianNoise", gaussian_noise, True, True),
    OpInfo("SpeckleNoise", speckle_noise, True, True),
    OpInfo("Cutout", cutout, True, False),
    # the anchor's (kakaobrain/fast-autoaugment) that the authors lacked
    OpInfo("ShearY", shear_y, True, True),
    OpInfo("TranslateY", translate_y, True, True),
    OpInfo("Rotate", rotate, True, True),
    # ultrasound-aware
    OpInfo("Gain", gain, True, True),
    OpInfo("TGC", tgc, True, True),
    OpInfo("DynamicRange", dynamic_range, True, True),
    OpInfo("SpeckleResynthesis", speckle_resynthesis, True, True),
]}

OP_SETS: dict[str, list[str]] = {
    "paper": ["ShearX", "TranslateX", "AutoContrast", "Invert", "FlipLR", "Equalize", "Solarize",
              "Posterize", "Contrast", "Brightness", "Sharpness", "GaussianNoise", "SpeckleNoise", "Cutout"],
    "all": list(OPS),
    "ultrasound": [n for n, o in OPS.items() if o.ultrasound_safe],
}


def resolve_ops(spec: str | Sequence[str]) -> list[str]:
    """'all' | 'paper' | 'ultrasound' | 'Op1,Op2,...' (or a list) -> validated op names."""
    if isinstance(spec, str):
        if spec in OP_SETS:
            return list(OP_SETS[spec])
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    names = list(spec)
    unknown = [n for n in names if n not in OPS]
    if unknown or not names:
        raise ConfigError(f"unknown augmentation op(s) {', '.join(unknown) or '(none given)'}",
                          hint=f"use a set ({', '.join(OP_SETS)}) or names from: {', '.join(OPS)}")
    return names


def apply_op(name: str, image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one named op (magnitude clipped to [0, 1])."""
    return OPS[name].fn(image, float(min(max(magnitude, 0.0), 1.0)), rng)


# --- policies -----------------------------------------------------------------------------------

POLICY_FORMAT = "usedge-augment-policy"
POLICY_VERSION = 2


@dataclass(frozen=True)
class OpSpec:
    op: str
    probability: float   # chance the op is applied, [0, 1]
    magnitude: float     # [0, 1], see the op's docstring

    def to_dict(self) -> dict:
        return {"op": self.op, "probability": self.probability, "magnitude": self.magnitude}


@dataclass(frozen=True)
class SubPolicy:
    """Operations applied in order, each with its own probability. `score` is the search objective
    (lower = better; the child's loss on augmented held-out images) and `source` says where from."""

    ops: tuple[OpSpec, ...]
    score: float | None = None
    source: str = ""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = image
        for spec in self.ops:
            if rng.random() < spec.probability:
                out = apply_op(spec.op, out, spec.magnitude, rng)
        return out

    def describe(self) -> str:
        return " -> ".join(f"{s.op}(p={s.probability:.2f}, m={s.magnitude:.2f})" for s in self.ops)

    def to_dict(self) -> dict:
        d = {"ops": [s.to_dict() for s in self.ops], "describe": self.describe()}
        if self.score is not None:
            d["score"] = round(float(self.score), 6)
        if self.source:
            d["source"] = self.source
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "policy") -> "SubPolicy":
        try:
            ops = tuple(OpSpec(str(o["op"]), float(o["probability"]), float(o["magnitude"])) for o in d["ops"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed sub-policy ({exc})", path=where,
                              hint='each sub-policy is {"ops": [{"op", "probability", "magnitude"}, ...]}') from exc
        for o in ops:
            if o.op not in OPS:
                raise ConfigError(f"unknown op '{o.op}' in policy", path=where, hint=f"known: {', '.join(OPS)}")
            if not (0.0 <= o.probability <= 1.0 and 0.0 <= o.magnitude <= 1.0):
                raise ConfigError(f"op {o.op}: probability and magnitude must lie in [0, 1]", path=where,
                                  hint="fix the numbers in the policy file")
        score = d.get("score")
        try:
            score = None if score is None else float(score)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sub-policy score {str(score)[:20]!r} is not a number", path=where,
                              hint="fix or remove the score in the policy file") from exc
        return cls(ops=ops, score=score, source=str(d.get("source", "")))


@dataclass
class Policy:
    """A list of sub-policies plus how they were found (the search config, data, cost)."""

    sub_policies: list[SubPolicy]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sub_policies)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniformly drawn sub-policy applied to `image` (the anchor's per-image choice)."""
        return self.sub_policies[int(rng.integers(len(self.sub_policies)))](image, rng)

    def expand(self, image: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """[original, one copy per sub-policy]: the paper's 1 + N images from one."""
        return [image] + [sub(image, rng) for sub in self.sub_policies]

    def to_dict(self) -> dict:
        return {"format": POLICY_FORMAT, "format_version": POLICY_VERSION,
                "n_sub_policies": len(self.sub_policies),
                "sub_policies": [s.to_dict() for s in self.sub_policies], "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, where: str = "policy") -> "Policy":
        if not isinstance(d, dict) or d.get("format") != POLICY_FORMAT:
            raise ConfigError("not a usedge augmentation policy", path=where,
                              hint="pass a policy.json written by usedge augment search")
        version = d.get("format_version", 0)
        if not (isinstance(version, int) and not isinstance(version, bool)):
            raise ConfigError(f"policy format_version {str(version)[:20]!r} is not a whole number", path=where,
                              hint=f"a policy written by usedge has format_version {POLICY_VERSION}")
        if version > POLICY_VERSION:
            raise ConfigError("policy format is newer than this usedge reads", path=where, hint="upgrade usedge")
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise ConfigError("policy meta must be an object", path=where, hint="fix or remove 'meta' in the policy file")
        entries = d.get("sub_policies", [])
        if not isinstance(entries, list):
            raise ConfigError("policy sub_policies must be a list", path=where, hint="re-run usedge augment search")
        subs = [SubPolicy.from_dict(s, where) for s in entries]
        if not subs:
            raise ConfigError("policy has no sub-policies", path=where, hint="re-run usedge augment search")
        scopes = meta.get("scopes") or {}
        if not isinstance(scopes, dict):
            raise ConfigError("policy meta.scopes must be an object", path=where, hint="re-run usedge augment search")
        for scope, scoped in scopes.items():   # every fold's list checked now, not when that fold starts training
            if not isinstance(scoped, list) or not scoped:
                raise ConfigError(f"policy scope {scope} has no sub-policies", path=where,
                                  hint="re-run usedge augment search (a fold without sub-policies would train unaugmented)")
            for entry in scoped:
                SubPolicy.from_dict(entry, f"{where} (scope {scope})")
        return cls(sub_policies=subs, meta=dict(meta))

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError("policy file not found", path=path,
                              hint="run usedge augment search DATA --out policy.json first") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read policy ({exc.__class__.__name__})", path=path,
                              hint="pass the JSON written by usedge augment search") from exc
        return cls.from_dict(d, str(path))


def random_policy(n: int, ops: Sequence[str] | str = "all", ops_per_sub_policy: int = 2,
                  seed: int = 0) -> Policy:
    """n sub-policies with ops, probabilities and magnitudes drawn uniformly (the ablation's baseline)."""
    names = resolve_ops(ops)
    rng = np.random.default_rng(seed)
    subs = [SubPolicy(tuple(OpSpec(names[int(rng.integers(len(names)))], float(rng.random()), float(rng.random()))
                            for _ in range(ops_per_sub_policy)), source="random")
            for _ in range(n)]
    return Policy(subs, meta={"kind": "random", "seed": seed, "ops": names})


# --- training views: expand (the paper's 1 + N copies) and random (the anchor) ------------------

AUGMENT_MODES = ("expand", "random")


def image_rng(seed: int, epoch: int, index: int, copy: int = 0) -> np.random.Generator:
    """A Generator that depends only on (seed, epoch, image, copy): reproducible with any number of
    loader workers and any order."""
    return np.random.default_rng([seed, epoch, index, copy])


class RandomSubPolicy:
    """transform(image) -> image: one sub-policy drawn per call (per image per epoch: the anchor's way).

    Randomness comes from numpy's global generator (seeded by the trainer, and per DataLoader worker by
    `usedge.train.data.seed_worker`), so runs are reproducible for a seed and workers differ."""

    def __init__(self, policy: Policy):
        if not len(policy):
            raise ConfigError("policy has no sub-policies", hint="re-run usedge augment search")
        self.policy = policy

    def __call__(self, image: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1, size=4))
        sub = self.policy.sub_policies[int(rng.integers(len(self.policy)))]
        return sub(image, rng)


class FixedSubPolicy:
    """transform(image) -> image through one sub-policy (its ops still fire with their probabilities)."""

    def __init__(self, sub_policy: SubPolicy):
        self.sub_policy = sub_policy

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.sub_policy(image, np.random.default_rng(np.random.randint(0, 2**31 - 1, size=4)))


def patients_digest(patients) -> str:
    """Short sha256 of a set of patient ids (order-free): names the pool a scope was searched on."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(str(p) for p in patients)).encode()).hexdigest()[:16]


def policy_for_scope(policy: Policy, scope: str) -> Policy:
    """The sub-policies searched on one scope: an outer fold's number ('0', '1', ...) or 'all'."""
    entries = (policy.meta.get("scopes") or {}).get(scope)
    if entries is None:
        raise ConfigError(f"policy has no sub-policies searched for scope '{scope}'",
                          hint="re-run usedge augment search for this run")
    subs = [SubPolicy.from_dict(d, f"policy scope {scope}") for d in entries]
    return Policy(subs, meta={"scope": scope, "kind": policy.meta.get("kind", "")})


def _search_command(dataset, cfg, policy_path: str) -> str:
    from usedge.train.config import DataConfig

    crop = f" --crop {cfg.data.crop}" if cfg.data.crop != "auto" else ""
    doppler = "" if cfg.data.remove_doppler else " --keep-doppler"
    resize = f" --resize {cfg.data.resize}" if cfg.data.resize != DataConfig.resize else ""
    final = "" if cfg.cv.final_model else " --no-final-model"
    return (f"usedge augment search {dataset.root} --folds {cfg.cv.folds} --seed {cfg.run.seed}{crop}{doppler}{resize}"
            f"{final} --out {policy_path or 'policy.json'}")


def check_policy_for_run(policy: Policy, dataset, cfg, where: str = "policy") -> None:
    """Refuse (ConfigError, one line naming the search to run) a searched policy that does not fit this
    training run: another data set, preprocessing, seed or fold count, fold pools that are not this
    run's, no entry for a fold the run trains, or no all-data entry for the final model.

    A policy searched on images holds what their patients look like; a fold may only use sub-policies
    searched without its test patients. Policies not searched on data (random, hand-written) pass.
    """
    from usedge.train.cv import final_split, make_splits

    meta = policy.meta
    if meta.get("kind") != "fast-autoaugment":
        return
    search = meta.get("search")
    fix = _search_command(dataset, cfg, where)

    def refuse(message: str) -> None:
        raise ConfigError(message, path=where, hint=f"run `{fix}`")

    if not search:
        refuse("policy was searched by an older usedge that did not record its folds and seed")
    from usedge.train.search import data_fingerprint

    if meta.get("data_fingerprint") != data_fingerprint(dataset):
        refuse(f"policy was searched on another data set ({meta.get('data')})")
    pre = search.get("preprocess", {})
    searched = (pre.get("crop"), pre.get("remove_doppler"), pre.get("resize", "area"))  # no resize: searched before it existed
    if searched != (cfg.data.crop, cfg.data.remove_doppler, cfg.data.resize):
        refuse(f"policy was searched on crop={searched[0]} remove_doppler={searched[1]} resize={searched[2]}, "
               f"this run uses crop={cfg.data.crop} remove_doppler={cfg.data.remove_doppler} resize={cfg.data.resize}"
               + (" (or train with --set data.resize=area)" if searched[2] == "area" and searched[:2] == (cfg.data.crop, cfg.data.remove_doppler) else ""))
    if int(search.get("folds", 0)) != cfg.cv.folds or int(search.get("seed", -1)) != cfg.run.seed:
        what = ("on all data only (every fold's test patients were in its pool)" if not search.get("folds")
                else f"for --folds {search.get('folds')} --seed {search.get('seed')}")
        refuse(f"policy was searched {what}; this run is --folds {cfg.cv.folds} --seed {cfg.run.seed}")
    digests = search.get("digests", {})
    splits = make_splits(dataset, folds=cfg.cv.folds, inner_val_fraction=cfg.cv.inner_val_fraction, seed=cfg.run.seed)
    run_splits = splits[:cfg.cv.max_folds] if cfg.cv.max_folds else splits
    groups = np.asarray(dataset.groups)
    for s in run_splits:
        pool = set(groups[np.concatenate([s.train, s.val])].tolist())
        if str(s.fold) not in digests:
            refuse(f"policy has no sub-policies searched for fold {s.fold}")
        if digests[str(s.fold)] != patients_digest(pool):
            refuse(f"fold {s.fold}'s patients differ from those the policy was searched on")
    if cfg.cv.final_model:
        if "all" not in digests:
            refuse("policy has no all-data search for the final model (or train with --set cv.final_model=false)")
        final = final_split(dataset, cfg.cv.inner_val_fraction, cfg.run.seed)
        if digests["all"] != patients_digest(set(groups[np.concatenate([final.train, final.val])].tolist())):
            refuse("the all-data search ran on other patients than this run's")


def _scopes_of_run(dataset, cfg) -> dict[frozenset, str]:
    """{training patients of each model the run trains: the policy scope it uses}."""
    from usedge.train.cv import final_split, make_splits

    groups = np.asarray(dataset.groups)
    out = {}
    models = [(str(s.fold), s.train) for s in make_splits(dataset, folds=cfg.cv.folds,
                                                           inner_val_fraction=cfg.cv.inner_val_fraction,
                                                           seed=cfg.run.seed)]
    if cfg.cv.final_model:
        models.append(("all", final_split(dataset, cfg.cv.inner_val_fraction, cfg.run.seed).train))
    for scope, train in models:
        key = frozenset(groups[train].tolist())
        if out.setdefault(key, scope) != scope:  # two models with the same training patients: cannot tell
            raise ConfigError(f"fold {scope} trains on the same patients as fold {out[key]}", path=dataset.root,
                              hint="add patients or change --folds")
    return out


def make_train_augmenter(policy: Policy | str | Path, mode: str = "expand", run: tuple | None = None):
    """The trainer's hook (`cross_validate(..., augmenter=...)`): un-augmented TumorDataset -> training set.

    expand: ConcatDataset of the originals + one copy per sub-policy ((1 + N) x the images, the paper's 21x)
    random: the same images, each drawn through one random sub-policy per epoch (the anchor)
    run: (dataset, TrainConfig) of the training run. A searched policy is then checked against the run
    (`check_policy_for_run`) and each model gets the sub-policies of its own scope: fold k those
    searched without fold k's test patients, the final model those of the all-data search. Without
    `run`, only a policy with no per-fold entries (all-data, random, hand-written) is accepted, and its
    main list is used.
    """
    if mode not in AUGMENT_MODES:
        raise ConfigError(f"unknown augment mode '{mode}'", hint=f"use one of {', '.join(AUGMENT_MODES)}")
    where = str(policy) if not isinstance(policy, Policy) else "policy"
    if not isinstance(policy, Policy):
        policy = Policy.load(policy)
    scopes = policy.meta.get("scopes") or {}
    by_patients = None
    if run is not None:
        check_policy_for_run(policy, run[0], run[1], where)
        if scopes:
            by_patients = _scopes_of_run(*run)
    elif any(k != "all" for k in scopes):
        raise ConfigError("a per-fold policy needs the training run to pick each fold's sub-policies", path=where,
                          hint="use it through usedge train --policy, or pass run=(dataset, config)")

    def augment(train_set):
        import torch

        from usedge.train.data import TumorDataset

        chosen = policy
        if by_patients is not None:
            scope = by_patients.get(frozenset(s.patient_id for s in train_set.samples))
            if scope is None:
                raise ConfigError("a training set matches none of the run's folds", path=where,
                                  hint="build the augmenter with the run's own data set and config")
            chosen = policy_for_scope(policy, scope)

        def view(transform):
            return TumorDataset(train_set.samples, train_set.spec, transform=transform, images=train_set.images)

        if mode == "random":
            return view(RandomSubPolicy(chosen))
        return torch.utils.data.ConcatDataset([train_set] + [view(FixedSubPolicy(s)) for s in chosen.sub_policies])

    augment.policy = policy
    augment.mode = mode
    return augment


def preview_grid(images: Sequence[np.ndarray], policy: Policy, columns: int = 6, seed: int = 0,
                 size: int = 128) -> np.ndarray:
    """A uint8 grid: one row per image, first column the original, then `columns - 1` augmented copies
    (sub-policies taken in turn). For eyeballing a policy."""
    rows = []
    for r, img in enumerate(images):
        tiles = [cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)]
        for c in range(columns - 1):
            sub = policy.sub_policies[(r * (columns - 1) + c) % len(policy)]
            aug = sub(img, image_rng(seed, 0, r, c))
            tiles.append(cv2.resize(aug, (size, size), interpolation=cv2.INTER_AREA))
        row = np.concatenate([np.pad(t, 2, constant_values=255) for t in tiles], axis=1)
        rows.append(row)
    return np.concatenate(rows, axis=0) if rows else np.zeros((size, size), np.uint8)


def magnitude_table() -> list[tuple[str, str]]:
    """(op name, first docstring line) for docs and `usedge augment ops`."""
    return [(n, " ".join((o.fn.__doc__ or "").strip().split("\n\n")[0].split())) for n, o in OPS.items()]


__all__ = ["OPS", "OP_SETS", "OpInfo", "OpSpec", "SubPolicy", "Policy",
           "apply_op", "resolve_ops", "RandomSubPolicy", "FixedSubPolicy", "make_train_augmenter",
           "policy_for_scope", "check_policy_for_run", "patients_digest", "random_policy", "image_rng", "preview_grid",
           "magnitude_table", "AUGMENT_MODES", "ASSUMED_DYNAMIC_RANGE_DB"]
