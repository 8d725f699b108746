"""Training configuration: dataclasses whose defaults (defaults.toml) are the "usedge defaults".

Precedence: defaults.toml < a user TOML file or a built-in preset (`paper`: the paper's protocol;
same sections and keys) < dotted overrides from flags (`{"optim.lr": 3e-4}`, `--set optim.lr=3e-4`).
The effective config is saved beside every checkpoint and report. docs/train.md lists how the usedge
defaults differ from the paper's protocol.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from usedge.errors import ConfigError, UsedgeError
from usedge.runtime.crop import parse_crop
from usedge.runtime.preprocess import MAX_INPUT_SIZE, RESIZE_FOR_NEW_MODELS, RESIZE_METHODS, PreprocessSpec


@dataclass
class ModelConfig:
    arch: str = "ag_resnet18"
    gate_norm: str = "sigmoid"     # the one default (model.py uses it); paper preset: "paper"
    pretrained: str = "none"
    conv1_init: str = "sum_rgb"    # with pretrained weights: sum_rgb (RGB conv1 summed) | random (the authors)


@dataclass
class DataConfig:
    image_size: int = 224          # pixels
    crop: str = "auto"
    remove_doppler: bool = True
    resize: str = RESIZE_FOR_NEW_MODELS   # crop -> model size: colour-halve-linear | halve-linear | area (PreprocessSpec.resize)
    num_workers: int = 0
    augment: str = "light"         # light (data.LightAugment) | none | expand | random (FAA, need policy)
    policy: str = ""


@dataclass
class LossConfig:
    name: str = "focal"
    gamma: float = 3.0
    alpha: str = "balanced"        # balanced | sqrt | uniform | by class name "lipoma=0.5,epidermal_cyst=1"


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"       # cosine (after warmup_epochs of linear warm-up) | step (StepLR)
    warmup_epochs: int = 1
    step_size: int = 7             # epochs (schedule = step)
    step_gamma: float = 0.1
    epochs: int = 30
    batch_size: int = 16           # global batch


@dataclass
class CVConfig:
    folds: int = 5
    inner_val_fraction: float = 0.2
    select_on: str = "loss"
    final_model: bool = True
    max_folds: int = 0


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int = 0
    sync_bn: bool = True           # under torchrun: BatchNorm statistics over the global batch


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        cfg = cls()
        apply_dict(cfg, d, where)
        validate(cfg, where)
        return cfg

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(size=self.data.image_size, crop=self.data.crop,
                              remove_doppler=self.data.remove_doppler, resize=self.data.resize)


_CHOICES = {
    "model.arch": ("ag_resnet18", "resnet18"),
    "model.gate_norm": ("paper", "softmax", "sigmoid"),
    "model.conv1_init": ("sum_rgb", "random"),
    "loss.name": ("focal", "ce"),
    "optim.schedule": ("cosine", "step"),
    "cv.select_on": ("loss", "accuracy"),
    "data.augment": ("light", "none", "expand", "random"),
    "data.resize": RESIZE_METHODS,
}
PRESETS = ("paper",)  # built-in TOML files beside defaults.toml: `--config paper`


def _coerce(value: Any, current: Any, key: str, where: str) -> Any:
    """Convert a TOML/flag value to the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, (list, dict)):
                raise ValueError(value)
            return int(value)
        if isinstance(current, float):
            if isinstance(value, (list, dict)):
                raise ValueError(value)
            return float(value)
        if isinstance(value, (list, dict)):
            raise ValueError(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        hint = "fix the TOML value or flag"
        if key == "loss.alpha":
            hint = 'give alpha by class name, e.g. alpha = "lipoma=0.5,epidermal_cyst=1.0", or balanced | sqrt | uniform'
        raise ConfigError(f"bad value {value!r} for '{key}' (expected {type(current).__name__})", path=where,
                          hint=hint) from exc


def parse_alpha(spec: str, where: str = "config") -> str | dict[str, float]:
    """loss.alpha: "balanced" | "sqrt" | "uniform" | {class name: weight} from "name=w,name=w"."""
    spec = spec.strip()
    if spec in ("balanced", "sqrt", "uniform"):
        return spec
    weights: dict[str, float] = {}
    for item in (p.strip() for p in spec.split(",")):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or not 0 < weight < float("inf"):     # inf trained on NaN losses
            raise ConfigError(f"bad loss.alpha entry {item!r} (wanted class_name=positive_weight)", path=where,
                              hint='use balanced, sqrt, uniform or e.g. --alpha "lipoma=0.5,epidermal_cyst=1.0"')
        weights[name.strip()] = weight
    return weights


def apply_dict(cfg: TrainConfig, d: dict, where: str = "config") -> TrainConfig:
    """Merge a nested dict ({section: {key: value}}) or dotted keys ({"optim.lr": v}) into cfg in place."""
    for key, value in d.items():
        if isinstance(value, dict):
            apply_dict(cfg, {f"{key}.{k}": v for k, v in value.items()}, where)
            continue
        section, _, name = key.partition(".")
        sub = getattr(cfg, section, None) if section in {f.name for f in fields(cfg)} else None
        if sub is None or name not in {f.name for f in fields(sub)}:
            raise ConfigError(f"unknown config key '{key}'", path=where,
                              hint=f"known keys: {', '.join(known_keys())}")
        setattr(sub, name, _coerce(value, getattr(sub, name), key, where))
    return cfg


def known_keys() -> list[str]:
    cfg = TrainConfig()
    return [f"{s.name}.{f.name}" for s in fields(cfg) for f in fields(getattr(cfg, s.name))]


def validate(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    flat = {f"{s}.{k}": v for s, sub in cfg.to_dict().items() for k, v in sub.items()}
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"'{key}' is {flat[key]!r}", path=where, hint=f"use one of {', '.join(choices)}")
    checks = [
        (cfg.data.image_size >= 32, "data.image_size must be at least 32 pixels"),
        (cfg.data.image_size <= MAX_INPUT_SIZE, f"data.image_size must be at most {MAX_INPUT_SIZE} pixels"),
        (cfg.optim.epochs >= 1, "optim.epochs must be at least 1"),
        (cfg.optim.batch_size >= 1, "optim.batch_size must be at least 1"),
        (cfg.optim.lr > 0, "optim.lr must be positive"),
        (cfg.optim.step_size >= 1, "optim.step_size must be at least 1"),
        (cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
        (cfg.cv.folds >= 2, "cv.folds must be at least 2"),
        (0.0 < cfg.cv.inner_val_fraction < 0.5, "cv.inner_val_fraction must be in (0, 0.5)"),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (cfg.run.threads >= 0, "run.threads must be >= 0 (0: torch's default)"),
        (cfg.loss.gamma >= 0, "loss.gamma must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message, path=where, hint="fix the TOML value or flag")
    parse_alpha(cfg.loss.alpha, where)
    try:
        parse_crop(cfg.data.crop)          # checked here: a bad crop was blamed on the first image it met
    except UsedgeError as exc:
        raise ConfigError(f"data.crop is {cfg.data.crop!r}: {exc.message}", path=where,
                          hint="use auto | fov | none | x,y,w,h | preset:NAME") from None
    if cfg.data.augment in ("expand", "random") and not cfg.data.policy:
        raise ConfigError(f"data.augment={cfg.data.augment} needs a policy file", path=where,
                          hint="pass --policy policy.json (from `usedge augment search`)")
    if cfg.data.policy and cfg.data.augment not in ("expand", "random"):   # it would be ignored, yet recorded
        raise ConfigError(f"a policy ({cfg.data.policy}) is given but data.augment={cfg.data.augment} does not use it",
                          path=where, hint="drop --policy, or --set data.augment=expand (or random)")
    return cfg


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("config file not found", path=path, hint="pass an existing .toml file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML ({exc})", path=path, hint="fix the syntax") from exc


def default_dict() -> dict:
    text = resources.files("usedge.train").joinpath("defaults.toml").read_text()
    return tomllib.loads(text)


def preset_dict(name: str) -> dict:
    """A built-in preset (usedge/train/<name>.toml), applied on top of defaults.toml."""
    return tomllib.loads(resources.files("usedge.train").joinpath(f"{name}.toml").read_text())


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """defaults.toml, then a preset name (`paper`) or the user's TOML file, then dotted overrides
    (None values are skipped)."""
    cfg = TrainConfig()
    apply_dict(cfg, default_dict(), "usedge/train/defaults.toml")
    if path is not None and str(path) in PRESETS and not Path(path).is_file():
        apply_dict(cfg, preset_dict(str(path)), f"usedge/train/{path}.toml")
    elif path is not None:
        apply_dict(cfg, read_toml(path), str(path))
    if overrides:
        apply_dict(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    return validate(copy.deepcopy(cfg), str(path) if path else "command line")


def dump_toml(cfg: TrainConfig) -> str:
    """The effective config as TOML (saved beside every run so it can be re-run with --config)."""
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)
