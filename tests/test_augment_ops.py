"""Augmentation operations: shape/dtype kept, deterministic for a seed, identity at magnitude 0."""

from __future__ import annotations

import numpy as np
import pytest

from usedge.errors import ConfigError
from usedge.train.augment import ASSUMED_DYNAMIC_RANGE_DB, OP_SETS, OPS, apply_op, resolve_ops


def _image(h=64, w=80, seed=0):
    """A speckly image with a dark lesion and a bright layer, rectangular to catch H/W mix-ups."""
    rng = np.random.default_rng(seed)
    img = rng.rayleigh(45.0, (h, w))
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 5) ** 2] *= 0.3
    img[5:9] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


IMG = _image()


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("magnitude", [0.0, 0.37, 1.0])
def test_op_keeps_shape_dtype_and_is_deterministic(name, magnitude):
    a = apply_op(name, IMG, magnitude, np.random.default_rng(5))
    b = apply_op(name, IMG, magnitude, np.random.default_rng(5))
    assert a.shape == IMG.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert a is not IMG  # never hands back the caller's buffer to be modified in place


@pytest.mark.parametrize("name", [n for n, o in OPS.items() if o.identity_at_zero])
def test_magnitude_zero_is_identity(name):
    for seed in range(3):
        assert np.array_equal(apply_op(name, IMG, 0.0, np.random.default_rng(seed)), IMG), name


@pytest.mark.parametrize("name", [n for n in OPS if n not in ("Invert", "FlipLR", "Equalize", "AutoContrast")])
def test_full_magnitude_changes_the_image(name):
    changed = [not np.array_equal(apply_op(name, IMG, 1.0, np.random.default_rng(s)), IMG) for s in range(4)]
    assert any(changed), name


def test_input_is_not_modified():
    before = IMG.copy()
    for name in OPS:
        apply_op(name, IMG, 0.8, np.random.default_rng(1))
    assert np.array_equal(IMG, before)


def test_flip_is_left_right_only():
    out = apply_op("FlipLR", IMG, 1.0, np.random.default_rng(0))
    assert np.array_equal(out, IMG[:, ::-1])


def test_speckle_noise_clips_instead_of_wrapping():
    bright = np.full((32, 32), 250, np.uint8)
    out = apply_op("SpeckleNoise", bright, 1.0, np.random.default_rng(0))
    # the authors' astype(uint8) wrapped every brightened pixel (half of them) to a dark value;
    # clipped, only the ~12 % with n < -1.2 fall below 100 and the brightened half saturates at 255
    assert np.mean(out < 100) < 0.2
    assert np.mean(out == 255) > 0.4


def test_gain_is_an_offset_in_db():
    flat = np.full((8, 8), 100, np.uint8)
    outs = {int(apply_op("Gain", flat, 1.0, np.random.default_rng(s))[0, 0]) for s in range(8)}
    step = round(6.0 / ASSUMED_DYNAMIC_RANGE_DB * 255)
    assert outs == {100 - step, 100 + step}


def test_tgc_changes_with_depth_only():
    flat = np.full((40, 10), 128, np.uint8)
    out = apply_op("TGC", flat, 1.0, np.random.default_rng(0)).astype(int)
    assert (out == out[:, :1]).all()  # constant along each row
    assert abs(out[0, 0] - out[-1, 0]) > 20  # a depth ramp


def test_dynamic_range_keeps_white_fixed():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    for s in range(4):
        out = apply_op("DynamicRange", ramp, 1.0, np.random.default_rng(s))
        assert out[0, 255] == 255 and np.all(np.diff(out[0].astype(int)) >= 0)


def test_speckle_resynthesis_keeps_the_echogenicity_map():
    out = apply_op("SpeckleResynthesis", IMG, 1.0, np.random.default_rng(0))
    import cv2

    def blur(x):
        return cv2.GaussianBlur(x.astype(np.float32), (0, 0), 6)

    # new speckle, same anatomy: pixel-wise different but the smoothed maps correlate strongly
    assert np.mean(out != IMG) > 0.5
    assert np.corrcoef(blur(out).ravel(), blur(IMG).ravel())[0, 1] > 0.8


def test_op_sets_and_resolve():
    assert len(OP_SETS["paper"]) == 14 and set(OP_SETS["paper"]) <= set(OPS)
    assert {"ShearY", "TranslateY", "Rotate", "Gain", "TGC", "DynamicRange", "SpeckleResynthesis"} <= set(OPS)
    assert "Invert" not in OP_SETS["ultrasound"]
    assert resolve_ops("Gain, Rotate") == ["Gain", "Rotate"]
    with pytest.raises(ConfigError):
        resolve_ops("Gain,FlipUD")
