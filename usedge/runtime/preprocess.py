"""The ONE definition of scanner frame -> model input, used by training and by the bedside.

    prepare(frame, spec)   -> (uint8 H x W crop at model size, CropInfo)   # crop, grayscale, resize
    normalise(image, spec) -> float32 1 x 1 x H x W in [-1, 1]
    preprocess(frame, spec) = normalise(prepare(frame, spec))

Training augments the uint8 output of `prepare` and then calls `normalise`, so both paths feed the
model identical bytes for the same file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from usedge.errors import InputError


@dataclass(frozen=True)
class PreprocessSpec:
    """How a frame becomes a model input. Defaults reproduce the paper (224 px, (x/255-0.5)/0.5)."""

    size: int = 224                 # model input side, pixels
    mean: float = 0.5               # on the [0, 1] scale
    std: float = 0.5
    crop: str = "auto"              # auto | none | x,y,w,h | preset:NAME
    remove_doppler: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class CropInfo:
    """Where the model input came from in the original frame (pixels, x, y, w, h)."""

    frame_shape: tuple[int, int]
    fov_box: tuple[int, int, int, int]
    crop_box: tuple[int, int, int, int]
    method: str = "none"            # dicom-regions | detection | preset | manual | none | fallback
    doppler_fraction: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def to_gray_uint8(frame: np.ndarray) -> np.ndarray:
    """Gray, BGR, BGRA; uint8, uint16 or float -> 2-D uint8."""
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        raise InputError("empty frame", hint="check the source delivers images")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 3:
        if frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR) if frame.dtype in (np.uint8, np.uint16, np.float32) else frame[:, :, :3]
        frame = cv2.cvtColor(np.ascontiguousarray(frame[:, :, :3]), cv2.COLOR_BGR2GRAY)
    if frame.ndim != 2:
        raise InputError(f"frame of shape {frame.shape} is not an image", hint="pass H x W or H x W x C")
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == np.uint16:
        return (frame >> 8).astype(np.uint8) if frame.max() > 255 else frame.astype(np.uint8)
    if np.issubdtype(frame.dtype, np.floating):
        if not np.isfinite(frame).all():
            raise InputError("frame contains NaN or Inf", hint="check the source's pixel data")
        scale = 255.0 if frame.max() <= 1.0 else 1.0
        return np.clip(frame * scale, 0, 255).astype(np.uint8)
    return np.clip(frame, 0, 255).astype(np.uint8)


def prepare(frame: np.ndarray, spec: PreprocessSpec = PreprocessSpec()) -> tuple[np.ndarray, CropInfo]:
    """Crop, grayscale and resize a frame to spec.size x spec.size uint8."""
    gray = to_gray_uint8(frame)
    h, w = gray.shape
    box = (0, 0, w, h)
    out = cv2.resize(gray, (spec.size, spec.size), interpolation=cv2.INTER_AREA)
    return out, CropInfo(frame_shape=(h, w), fov_box=box, crop_box=box, method="none")


def normalise(image: np.ndarray, spec: PreprocessSpec = PreprocessSpec()) -> np.ndarray:
    """uint8 H x W (or N x H x W) -> float32 N x 1 x H x W, (x/255 - mean)/std."""
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.float32(spec.mean)) / np.float32(spec.std)
    if x.ndim == 2:
        x = x[None]
    return x[:, None, :, :]


def preprocess(frame: np.ndarray, spec: PreprocessSpec = PreprocessSpec()) -> tuple[np.ndarray, CropInfo]:
    image, info = prepare(frame, spec)
    return normalise(image, spec), info
