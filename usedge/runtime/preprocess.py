"""The ONE definition of scanner frame -> model input, used by training and by the bedside:

    crop.prepare(frame, spec, regions=None) -> uint8 spec.size x spec.size, CropInfo   # crop, Doppler, gray, resize
    preprocess.normalise(image, spec)       -> float32 N x 1 x H x W, (x/255 - mean) / std  ([-1, 1] by default)

Training augments the uint8 output of `prepare` and then calls `normalise`; `usedge infer` runs
`crop.FrameCropper` (the same bytes as `prepare`) and then `normalise`, so both paths feed the model
identical bytes for the same file (tests/test_preprocess_paths.py). `PreprocessSpec` says how, and
travels with the model (checkpoint and ONNX metadata).

`PreprocessSpec.resize` names how the crop is brought to spec.size (crop.resize_to_model):
"area" (one INTER_AREA resize of the gray crop; what a spec without the field means, so every model
trained before the field existed keeps its exact bytes), "halve-linear" (the gray crop: 2x2 box
averages while the side stays at least twice the model size, then bit-exact bilinear: cheaper on a
1080p screen's crop) or "colour-halve-linear" (the same box averages on the colour crop, before the
gray conversion, and Doppler found on the halved colour crop at the model grid: the crop's pixels are
read once; what `usedge train` uses for new models; on gray pixels, B = G = R, the same bytes as
halve-linear).
docs/crop.md gives the definitions and their measured differences.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from usedge.errors import ConfigError

RESIZE_METHODS = ("area", "halve-linear", "colour-halve-linear")   # PreprocessSpec.resize (crop.resize_to_model)
RESIZE_FOR_NEW_MODELS = "colour-halve-linear"   # what training records for a new model (usedge/train/defaults.toml)
MAX_INPUT_SIZE = 2048    # model input side, pixels: beyond it one crop takes gigabytes (100000 px: 10 GB per image)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a frame becomes a model input. Defaults reproduce the paper (224 px, (x/255-0.5)/0.5)."""

    size: int = 224                 # model input side, pixels
    mean: float = 0.5               # on the [0, 1] scale
    std: float = 0.5
    crop: str = "auto"              # auto | fov | none | x,y,w,h | preset:NAME
    remove_doppler: bool = True
    skin_margin: float = 0.02       # fraction of the FOV height kept above the skin line (crop=auto)
    resize: str = "area"            # area | halve-linear | colour-halve-linear (RESIZE_METHODS); "area" = no field

    def __post_init__(self):
        if self.resize not in RESIZE_METHODS:
            raise ConfigError(f"unknown resize method {self.resize!r} (from a newer usedge?)",
                              hint=f"use one of {', '.join(RESIZE_METHODS)}, or upgrade usedge")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def normalise(image: np.ndarray, spec: PreprocessSpec = PreprocessSpec(), *,
              out: np.ndarray | None = None) -> np.ndarray:
    """uint8 H x W (or N x H x W) -> float32 N x 1 x H x W, (x/255 - mean)/std.

    out: a float32 N x 1 x H x W buffer to write into (a stream reuses one: no allocation per frame).
    """
    images = image[None] if image.ndim == 2 else image
    if out is None:
        out = np.empty((images.shape[0], 1) + images.shape[1:], np.float32)
    x = out[:, 0]
    np.multiply(images, np.float32(1.0 / 255.0), out=x, casting="unsafe")
    np.subtract(x, np.float32(spec.mean), out=x)
    np.divide(x, np.float32(spec.std), out=x)
    return out

