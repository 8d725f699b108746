"""The ONE preprocessing definition: same bytes via training and bedside paths; the stream cropper;
property tests over shapes and dtypes."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.fixtures.crop import bmode_image, pydicom_file
from usedge.errors import ConfigError, InputError
from usedge.runtime.crop import CropInfo, FrameCropper, crop_mask, prepare, prepare_all, resize_to_model
from usedge.runtime.doppler import doppler_cells, fill_from_surroundings
from usedge.runtime.pixels import gray_of
from usedge.runtime.preprocess import RESIZE_FOR_NEW_MODELS, RESIZE_METHODS, PreprocessSpec, normalise


def runtime_inputs(path, spec):
    """What `usedge infer` feeds the model: sources.iter_file_frames -> FrameCropper -> normalise."""
    from usedge.runtime.sources import iter_file_frames

    _, frame, regions, _ = next(iter(iter_file_frames(path)))
    image, _ = FrameCropper(spec, regions=regions)(frame)
    return normalise(image, spec)


def training_inputs(path, spec):
    """What training feeds the model: usedge.train.data.load_images (prepare_file) -> normalise."""
    pytest.importorskip("torch")
    from usedge.dataset import Sample
    from usedge.train.data import load_images

    images = load_images([Sample(path=path, label=0, patient_id="p")], spec, progress=False)
    return normalise(images[0], spec)


@pytest.fixture(scope="module")
def files(tiny_cohort, scanner_frames, tmp_path_factory):
    d = tmp_path_factory.mktemp("paths")
    screen = d / "screen_doppler.png"
    cv2.imwrite(str(screen), scanner_frames["doppler"][0])
    return {"cohort png": sorted(tiny_cohort.glob("*/*.png"))[0], "scanner png": screen,
            "dicom jpeg2k": pydicom_file("examples_jpeg2k.dcm"), "dicom cine": pydicom_file("examples_ybr_color.dcm")}


@pytest.mark.parametrize("resize", RESIZE_METHODS)
@pytest.mark.parametrize("name", ["cohort png", "scanner png", "dicom jpeg2k", "dicom cine"])
def test_training_and_bedside_inputs_are_byte_identical(files, name, resize):
    spec = PreprocessSpec(resize=resize)
    a = training_inputs(files[name], spec)
    b = runtime_inputs(files[name], spec)
    assert a.shape == b.shape == (1, 1, 224, 224) and a.dtype == b.dtype == np.float32
    assert a.tobytes() == b.tobytes()
    frame, regions = _frame_and_regions(files[name])
    c = normalise(prepare(frame, spec, regions=regions)[0], spec)
    assert c.tobytes() == a.tobytes()


def _frame_and_regions(path):
    from usedge.runtime.formats import read_file

    d = read_file(path)
    return d.frame, d.regions


def test_normalise_range_and_layout():
    x = normalise(np.array([[0, 255], [128, 64]], np.uint8))
    assert x.shape == (1, 1, 2, 2) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    batch = normalise(np.zeros((3, 8, 8), np.uint8))
    assert batch.shape == (3, 1, 8, 8)


def test_crop_modes(scanner_frames):
    frame, truth = scanner_frames["linear"]
    h, w = frame.shape[:2]
    img, info = prepare(frame, PreprocessSpec(crop="none"))
    assert img.shape == (224, 224) and info.method == "none" and info.crop_box == (0, 0, w, h)
    img, info = prepare(frame, PreprocessSpec(crop="10,20,300,200", size=64))
    assert img.shape == (64, 64) and info.method == "manual" and info.crop_box == (10, 20, 300, 200)
    img, info = prepare(frame, PreprocessSpec(crop="1200,700,500,500"))
    assert info.crop_box == (1200, 700, 80, 20) and info.notes              # clipped to the frame, said so
    _, info = prepare(frame, PreprocessSpec(crop="fov"))
    assert info.crop_box == info.fov_box and info.method == "detection"
    _, info = prepare(frame, PreprocessSpec(crop="auto"))
    x, y, s, s2 = info.crop_box
    fx, fy, fw, fh = info.fov_box
    assert s == s2 and fx <= x and x + s <= fx + fw and fy <= y and y + s <= fy + fh
    _, info = prepare(frame, PreprocessSpec(crop="preset:full-frame"))
    assert info.method == "preset" and info.crop_box == (0, 0, w, h)
    with pytest.raises(ConfigError):
        prepare(frame, PreprocessSpec(crop="3,4"))


def test_doppler_removed_in_the_model_input(scanner_frames):
    frame, truth = scanner_frames["doppler"]
    img, info = prepare(frame, PreprocessSpec(crop="fov"))
    x, y, w, h = info.crop_box
    inside = truth["doppler_mask"][y:y + h, x:x + w].mean()
    assert inside > 0.005 and info.doppler_fraction >= inside
    _, kept = prepare(frame, PreprocessSpec(crop="fov", remove_doppler=False))
    assert kept.doppler_fraction == 0.0


def test_dual_view_prepare_all(scanner_frames):
    frame, truth = scanner_frames["dual"]
    results = prepare_all(frame)
    assert [i.view for _, i in results] == [0, 1]
    assert all(img.shape == (224, 224) for img, _ in results)
    one, info = prepare(frame)
    assert any(one.tobytes() == img.tobytes() for img, _ in results)
    assert any("cropping the largest" in n for n in info.notes)            # prepare crops one view ...
    assert all(not any("cropping the largest" in n for n in i.notes) and any("each cropped" in n for n in i.notes)
               for _, i in results)                                         # ... prepare_all each


def test_dicom_regions_used_when_they_fit(scanner_frames):
    frame, truth = scanner_frames["linear"]
    box = tuple(truth["fov_box"])
    _, info = prepare(frame, PreprocessSpec(crop="fov"), regions=[box])
    assert info.method == "dicom-regions" and info.crop_box == box
    _, info = prepare(frame, PreprocessSpec(crop="fov"), regions=[(0, 0, 5000, 5000)])
    assert info.method == "detection" and "do not fit" in info.notes[0]


@pytest.mark.parametrize("resize", RESIZE_METHODS)
def test_crop_mask_follows_the_crop(resize):
    mask = np.zeros((100, 200), np.uint8)
    mask[20:40, 50:70] = 255
    info = CropInfo(frame_shape=(100, 200), fov_box=(0, 0, 200, 100), crop_box=(50, 20, 40, 40))
    m = crop_mask(mask, info, 20, resize)
    assert m.shape == (20, 20) and m[:10, :10].all() and not m[10:, 10:].any()


# ------------------------------------------------------------------ PreprocessSpec.resize

def _frozen_area_input(frame, crop_box, spec):
    """The model input as usedge computed it before PreprocessSpec.resize existed (a frozen copy of
    crop._render's pixel work): crop -> gray -> one INTER_AREA -> Doppler cells filled."""
    x, y, w, h = crop_box
    roi = frame[y:y + h, x:x + w]
    small = cv2.resize(gray_of(roi), (spec.size, spec.size), interpolation=cv2.INTER_AREA)
    mask = doppler_cells(roi, spec.size) if roi.ndim == 3 and spec.remove_doppler else None
    return small if mask is None else fill_from_surroundings(small, mask)


def test_a_spec_without_resize_is_todays_area(files, scanner_frames):
    """Every model and checkpoint written before the field existed gets "area": the same bytes as before."""
    from usedge.runtime.formats import read_file
    from usedge.runtime.model_info import ModelInfo

    old = {"size": 224, "mean": 0.5, "std": 0.5, "crop": "auto", "remove_doppler": True, "skin_margin": 0.02}
    spec = PreprocessSpec.from_dict(old)
    assert spec.resize == "area" == PreprocessSpec().resize
    assert ModelInfo.from_dict({"class_names": ["a", "b"], "input_size": 224, "preprocess": old}).preprocess == spec
    frames = [read_file(p).frame for p in files.values()] + [f for f, _ in scanner_frames.values()]
    for frame in frames:
        image, info = prepare(frame, spec)
        assert image.tobytes() == _frozen_area_input(frame, info.crop_box, spec).tobytes()


def test_halve_linear_definition_and_anti_aliasing():
    """halve-linear: 2x2 box halvings while the side stays >= 2 x size (remainder trimmed from both
    ends), then bit-exact bilinear; a 1-pixel checkerboard (the worst alias for plain decimation)
    comes out flat, because every 2x2 box holds two black and two white pixels."""
    for side in (448, 744, 894, 1000):
        board = ((np.indices((side, side)).sum(axis=0) % 2) * 255).astype(np.uint8)
        out = resize_to_model(board, 224, "halve-linear")
        assert out.shape == (224, 224) and int(out.max()) - int(out.min()) == 0
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (901, 450), dtype=np.uint8)        # 901 -> 4 (trim 1: row 0 kept), 450 -> 2
    want = img[0:900, 0:450].astype(np.float64).reshape(225, 4, 225, 2).mean(axis=(1, 3))
    got = resize_to_model(img, 225, "halve-linear")                # two rounded stages: within one level
    assert got.shape == (225, 225) and np.abs(got - want).max() <= 1.0
    small = rng.integers(0, 256, (300, 300), dtype=np.uint8)       # under 2 x size: the bilinear step only
    assert resize_to_model(small, 224, "halve-linear").tobytes() == \
        cv2.resize(small, (224, 224), interpolation=cv2.INTER_LINEAR_EXACT).tobytes()


def test_colour_halve_linear_definition(scanner_frames):
    """colour-halve-linear: halve-linear's box halvings on the colour crop, then gray, then bit-exact
    bilinear (spelled out here with OpenCV calls); on gray pixels (B = G = R) the same bytes as halve-linear."""
    rng = np.random.default_rng(5)
    colour = rng.integers(0, 256, (901, 450, 3), dtype=np.uint8)   # 901 -> 4 (trim 1: row 0 kept), 450 -> 2
    x = cv2.resize(colour[0:900], (225, 450), interpolation=cv2.INTER_AREA)
    x = cv2.resize(x, (225, 225), interpolation=cv2.INTER_AREA)
    want = cv2.resize(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), (225, 225), interpolation=cv2.INTER_LINEAR_EXACT)
    assert resize_to_model(colour, 225, "colour-halve-linear").tobytes() == want.tobytes()
    gray = rng.integers(0, 256, (744, 894), dtype=np.uint8)
    assert resize_to_model(gray, 224, "colour-halve-linear").tobytes() == \
        resize_to_model(gray, 224, "halve-linear").tobytes()
    assert resize_to_model(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 224, "colour-halve-linear").tobytes() == \
        resize_to_model(gray, 224, "halve-linear").tobytes()
    frame, _ = scanner_frames["linear"]        # a B-mode screen: gray image, coloured UI around it
    new, info = prepare(frame, PreprocessSpec(resize="colour-halve-linear"))
    old, old_info = prepare(frame, PreprocessSpec(resize="halve-linear"))
    assert info.crop_box == old_info.crop_box and new.tobytes() == old.tobytes()


@pytest.mark.parametrize("resize", RESIZE_METHODS)
def test_doppler_removed_by_every_resize_method(scanner_frames, resize):
    """Doppler is found on the crop (colour-halve-linear: on the halved colour crop) and filled: what is
    left of the colour box in the model input is what the fill leaves, whatever the method."""
    frame, truth = scanner_frames["doppler"]
    img, info = prepare(frame, PreprocessSpec(crop="fov", resize=resize))
    x, y, w, h = info.crop_box
    cells = cv2.resize(truth["doppler_mask"][y:y + h, x:x + w].astype(np.float32), img.shape[::-1],
                       interpolation=cv2.INTER_AREA) > 0
    assert cells.mean() > 0.005 and info.doppler_fraction >= cells.mean()
    kept, _ = prepare(frame, PreprocessSpec(crop="fov", remove_doppler=False, resize=resize))
    assert np.abs(img.astype(int) - kept)[cells].mean() > 5        # the colour pixels' gray was replaced


def test_unknown_resize_method_is_refused():
    with pytest.raises(ConfigError, match="unknown resize method 'bicubic'") as err:
        PreprocessSpec(resize="bicubic")
    assert "area" in err.value.hint and "halve-linear" in err.value.hint
    with pytest.raises(ConfigError):
        PreprocessSpec.from_dict({"resize": "lanczos"})
    assert RESIZE_FOR_NEW_MODELS in RESIZE_METHODS


# ------------------------------------------------------------------ the stream cropper

def test_cropper_matches_prepare_and_detects_once():
    from usedge.synth.scanner import ScannerScreen

    rng = np.random.default_rng(5)
    bm = [bmode_image(s) for s in (10, 11, 12)]
    screen = ScannerScreen(rng, bm[0].shape, size=(1280, 720))
    frames = []
    for b in bm:
        f = screen.background.copy()
        screen.place(f, cv2.resize(b, bm[0].shape[::-1]))
        frames.append(f)
    spec = PreprocessSpec()
    cropper = FrameCropper(spec)
    first, info = cropper(frames[0])
    ref, ref_info = prepare(frames[0], spec)
    assert first.tobytes() == ref.tobytes() and info.crop_box == ref_info.crop_box
    for f in frames[1:]:
        cropper(f)
    assert cropper.detections == 1
    # a new layout (another screen) triggers one new detection
    other = ScannerScreen(np.random.default_rng(99), bm[0].shape, size=(1280, 720), probe="curved")
    f2 = other.background.copy()
    other.place(f2, bm[0])
    out, info2 = cropper(f2)
    assert cropper.detections == 2 and info2.fov_box == prepare(f2, spec)[1].fov_box
    # a new frame size too
    cropper(cv2.resize(frames[0], (960, 540)))
    assert cropper.detections == 3


def _lines_by_slices(image, box, bg, tol):
    """The layout check lines' definition, line by line with numpy slices (the slow reference)."""
    h, w = image.shape[:2]
    x, y, bw, bh = box
    dx, dy = max(2, int(0.03 * bw)), max(2, int(0.03 * bh))
    out = np.full(8, -1.0, np.float32)
    for i, r in enumerate((y + dy, y - dy, y + bh - 1 - dy, y + bh - 1 + dy)):
        if 0 <= r < h and image[r, x + dx:x + bw - dx:4].size:
            d = np.abs(image[r, x + dx:x + bw - dx:4].astype(np.int16) - bg)
            out[i] = ((d.max(axis=-1) if d.ndim == 2 else d) > tol).mean()
    for i, c in enumerate((x + dx, x - dx, x + bw - 1 - dx, x + bw - 1 + dx)):
        if 0 <= c < w and image[y + dy:y + bh - dy:4, c].size:
            d = np.abs(image[y + dy:y + bh - dy:4, c].astype(np.int16) - bg)
            out[4 + i] = ((d.max(axis=-1) if d.ndim == 2 else d) > tol).mean()
    return out


@pytest.mark.parametrize("seed", range(6))
def test_layout_check_lines_match_their_definition(seed):
    """FrameCropper reads its 8 check lines in one gather: same fractions as line-by-line slices, for
    colour and gray frames, contiguous or not, boxes touching the frame's edges."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    big[rng.random((300, 400)) < 0.5] = 0
    for image in (big, big[..., 1], big[10:250, 20:380], np.ascontiguousarray(big[::2, ::2, 0])):
        h, w = image.shape[:2]
        cropper = FrameCropper(PreprocessSpec())
        cropper._bg, cropper._tol = (np.array([3, 5, 7], np.int16) if image.ndim == 3 else np.int16(4)), 2
        for _ in range(20):
            x, y = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            box = (x, y, int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1)))
            assert np.array_equal(cropper._lines(image, box), _lines_by_slices(image, box, cropper._bg, 2))


@pytest.mark.parametrize("resize", RESIZE_METHODS)
@pytest.mark.parametrize("probe,doppler,size", [("linear", False, (1920, 1080)), ("linear", True, (1920, 1080)),
                                                  ("curved", True, (1280, 720)), ("curved", False, (1024, 768))])
def test_cached_stream_path_gives_the_reference_model_input(probe, doppler, size, resize):
    """The stream loop's fast path (cached layout, ROI-only crop, quality gate from the histogram, the
    Classifier's reused input buffer) feeds the model exactly what the reference path gives for the same
    crop box: prepare() of that box (and of the whole frame when it finds the same box), normalise()
    into a fresh array, and the quality gate's numpy.percentile definition."""
    from usedge.runtime.quality import FLAT_LEVELS, MAX_FLAT, MIN_ECHO, MIN_RANGE, no_image_reason
    from usedge.synth.scanner import ScannerScreen

    def reference_gate(px):
        lo, hi = (float(v) for v in np.percentile(px, [1, 99]))
        flat = max(float((px == v).mean()) for v in range(FLAT_LEVELS[0], FLAT_LEVELS[1] + 1))
        return hi - lo < MIN_RANGE or float((px > lo + MIN_RANGE).mean()) < MIN_ECHO or flat > MAX_FLAT

    rng = np.random.default_rng(len(probe) + doppler)
    bm = [bmode_image(s) for s in (20, 21, 22, 23)]
    screen = ScannerScreen(rng, bm[0].shape, size=size, probe=probe, doppler=doppler)
    spec = PreprocessSpec(resize=resize)
    cropper = FrameCropper(spec)
    buf = np.empty((1, 1, spec.size, spec.size), np.float32)     # what Classifier.normalise reuses
    same_box = 0
    for i, b in enumerate(bm * 2):
        frame = screen.background.copy()
        screen.place(frame, cv2.resize(b, bm[0].shape[::-1]))
        screen.paint_doppler(frame, phase=0.7 * i)
        image, info = cropper(frame)
        fast = normalise(image, spec, out=buf)
        x, y, w, h = info.crop_box
        ref, ref_info = prepare(frame, PreprocessSpec(crop=f"{x},{y},{w},{h}", resize=resize))
        assert ref_info.crop_box == info.crop_box and ref_info.doppler_fraction == info.doppler_fraction
        assert fast.tobytes() == normalise(ref, spec).tobytes()
        assert (no_image_reason(image) is not None) == reference_gate(image)
        full, full_info = prepare(frame, spec)
        if full_info.crop_box == info.crop_box:
            same_box += 1
            assert full.tobytes() == image.tobytes()
        assert (info.doppler_fraction > 0) == doppler
    assert cropper.detections == 1 and same_box >= 1


def test_quality_gate_matches_numpy_percentile():
    """The histogram gate gives numpy.percentile's levels and the same decision and message."""
    from usedge.runtime.quality import FLAT_LEVELS, MAX_FLAT, MIN_ECHO, MIN_RANGE, no_image_reason

    def reference(px):
        lo, hi = (float(v) for v in np.percentile(px, [1, 99]))
        if hi - lo < MIN_RANGE:
            return f"uniform field of view (contrast {hi - lo:.0f} < {MIN_RANGE} levels)"
        echo = float((px > lo + MIN_RANGE).mean())
        if echo < MIN_ECHO:
            return f"almost no echoes ({echo:.0%} of the field of view; probe in air or lifted?)"
        shares = [float((px == v).mean()) for v in range(FLAT_LEVELS[0], FLAT_LEVELS[1] + 1)]
        level = FLAT_LEVELS[0] + int(np.argmax(shares))
        if max(shares) > MAX_FLAT:
            return (f"one flat grey level ({level}) covers {max(shares):.0%} of the image: a form, menu or "
                    "drawing, not a scan")
        return None

    rng = np.random.default_rng(7)
    for _ in range(400):
        h, w = (int(v) for v in rng.choice([1, 3, 8, 13, 64, 97, 224], 2))
        if rng.random() < 0.5:
            spread = int(rng.choice([0, 12, 24, 25, 60, 255]))
            px = np.clip(int(rng.integers(0, 256)) + rng.integers(-spread, spread + 1, (h, w)), 0, 255)
        else:       # dark with a few echoes: the probe-in-air case near MIN_ECHO
            lit = rng.random((h, w)) < rng.random() * 0.25
            px = np.where(lit, rng.integers(0, 256, (h, w)), rng.integers(0, 3, (h, w)))
        px = px.astype(np.uint8)
        assert no_image_reason(px) == reference(px)


def test_cropper_keeps_layout_when_probe_lifted(scanner_frames):
    frame, truth = scanner_frames["linear"]
    cropper = FrameCropper(PreprocessSpec())
    _, info = cropper(frame)
    lifted = frame.copy()
    x, y, w, h = truth["fov_box"]
    lifted[y:y + h, x:x + w] = 0                     # no echo: the screen stays, the image goes black
    _, info2 = cropper(lifted)
    assert info2.fov_box == info.fov_box and cropper.detections <= 2


def test_cropper_rejects_blank_frames():
    cropper = FrameCropper(PreprocessSpec())
    with pytest.raises(InputError):
        cropper(np.zeros((480, 640, 3), np.uint8))


def test_bad_size_is_an_input_error():
    with pytest.raises(InputError):
        prepare(np.zeros((64, 64), np.uint8), PreprocessSpec(size=2))


# ------------------------------------------------------------------ properties

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_])


@st.composite
def frames(draw):
    h = draw(st.integers(1, 96))
    w = draw(st.integers(1, 96))
    ch = draw(st.sampled_from([None, 1, 3, 4]))
    dtype = draw(DTYPES)
    shape = (h, w) if ch is None else (h, w, ch)
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(-10, 300, width=32) | st.just(float("nan"))
    elif dtype == np.bool_:
        elements = st.booleans()
    else:
        elements = st.integers(0, 255 if dtype == np.uint8 else 4095)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames(), crop=st.sampled_from(["auto", "fov", "none", "5,5,40,30"]))
def test_prepare_never_crashes(frame, crop):
    spec = PreprocessSpec(size=32, crop=crop)
    try:
        img, info = prepare(frame, spec)
    except InputError:
        return                                       # empty, tiny, blank or NaN: a clear usedge error
    assert img.shape == (32, 32) and img.dtype == np.uint8
    x, y, w, h = info.crop_box
    H, W = frame.shape[:2]
    assert w > 0 and h > 0 and 0 <= x and 0 <= y and x + w <= W and y + h <= H


def test_runtime_crop_modules_do_not_import_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import usedge.runtime.crop, usedge.runtime.preprocess, usedge.runtime.formats, usedge.runtime.dicom\n"
            "import usedge.cli.crop_cmd\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
