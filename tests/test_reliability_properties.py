"""Property-based tests (hypothesis): crop/preprocess on arbitrary arrays, the DICOM reader on
arbitrary headers and pixel data, the image reader and DICOM reader on byte-mutated files. The only
allowed outcomes are a valid result or a one-line usedge InputError."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.badinput import LEDGER, make_dicom, scan_like
from usedge.errors import InputError
from usedge.runtime.crop import prepare
from usedge.runtime.preprocess import PreprocessSpec

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, np.bool_]


@st.composite
def frames(draw):
    h = draw(st.integers(1, 200))
    w = draw(st.integers(1, 200))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4]))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["scan", "random", "constant", "nan"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "scan":
        base = scan_like(max(h, 2), max(w, 2), seed=int(rng.integers(1000)))[:h, :w].astype(np.float64)
    elif kind == "random":
        base = rng.uniform(0, draw(st.sampled_from([1.0, 255.0, 4095.0, 65535.0])), (h, w))
    else:
        base = np.full((h, w), draw(st.floats(0, 300)))
    arr = base if channels is None else np.repeat(base[..., None], channels, axis=2)
    if np.issubdtype(dtype, np.integer):
        arr = np.clip(arr, 0, np.iinfo(dtype).max).astype(dtype)
    else:
        arr = arr.astype(dtype)
    if kind == "nan" and dtype in (np.float32, np.float64):
        arr.flat[int(rng.integers(arr.size))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if draw(st.booleans()) and arr.shape[1] > 1:
        arr = arr[:, ::-1]                      # a non-contiguous view
    return arr


@pytest.mark.parametrize("crop", ["auto", "none"])
@SETTINGS
@given(frame=frames())
def test_prepare_gives_a_model_image_or_an_input_error(crop, frame):
    spec = PreprocessSpec(size=32, crop=crop)
    LEDGER.add("properties.prepare", inputs_tried=1)
    try:
        image, info = prepare(frame, spec)
    except InputError as exc:
        assert "\n" not in exc.one_line() and exc.hint
        return
    assert image.shape == (32, 32) and image.dtype == np.uint8
    h, w = frame.shape[:2]
    x, y, bw, bh = info.crop_box
    assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h, (info.crop_box, frame.shape)
    LEDGER.add("properties.prepare", outputs_checked=1)


@st.composite
def dicom_params(draw):
    rows, cols = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    frames_n = draw(st.integers(1, 3))
    photometric = draw(st.sampled_from(["MONOCHROME2", "MONOCHROME1"]))
    length = draw(st.sampled_from(["exact", "short", "long", "empty"]))
    return rows, cols, dtype, frames_n, photometric, length, draw(st.integers(0, 2**16))


@SETTINGS
@given(params=dicom_params())
def test_dicom_reader_gives_frames_or_an_input_error(tmp_path_factory, params):
    from usedge.runtime.dicom import open_dicom

    rows, cols, dtype, n, photometric, length, seed = params
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 200, (n, rows, cols)).astype(dtype)
    raw = pixels.tobytes()
    raw = {"exact": raw, "short": raw[: len(raw) // 2], "long": raw + b"\x00" * 64, "empty": b""}[length]
    raw += b"\x00" * (len(raw) % 2)
    path = tmp_path_factory.mktemp("hdcm") / "x.dcm"
    make_dicom(path, pixels[0] if n == 1 else pixels, rows=rows, cols=cols, frames=n, photometric=photometric,
               raw_pixel_bytes=raw)
    LEDGER.add("properties.dicom", inputs_tried=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = open_dicom(path)
            got = [f for _, f in d.frames()]
    except InputError as exc:
        assert str(path) in exc.one_line() and "\n" not in exc.one_line()
        assert length != "exact", exc.one_line()          # a well-formed file must read
        return
    assert len(got) == n and all(f.shape == (rows, cols) for f in got)
    if photometric == "MONOCHROME2" and length in ("exact", "long"):
        assert np.array_equal(np.stack(got).astype(np.int64), pixels.astype(np.int64))
    LEDGER.add("properties.dicom", outputs_checked=1)


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory) -> dict[str, bytes]:
    import cv2

    folder = tmp_path_factory.mktemp("seeds")
    img = scan_like(64, 80)
    make_dicom(folder / "s.dcm", img)
    return {".png": cv2.imencode(".png", img)[1].tobytes(), ".jpg": cv2.imencode(".jpg", img)[1].tobytes(),
            ".dcm": (folder / "s.dcm").read_bytes()}


@SETTINGS
@given(ext=st.sampled_from([".png", ".jpg", ".dcm"]),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=12),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_byte_mutated_files_read_or_fail_cleanly(tmp_path_factory, seed_files, ext, edits, cut):
    from usedge.runtime.formats import read_image

    data = bytearray(seed_files[ext])
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    path = tmp_path_factory.mktemp("mut") / f"m{ext}"
    path.write_bytes(bytes(data))
    LEDGER.add("properties.mutated_files", inputs_tried=1, faults_injected=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = read_image(path)
    except InputError as exc:
        assert str(path) in exc.one_line() and "\n" not in exc.one_line()
        return
    assert isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.size > 0
    LEDGER.add("properties.mutated_files", outputs_checked=1)
