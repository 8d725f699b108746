"""Field of view, Doppler removal, skin line and crop specs (usedge.runtime.crop)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.fixtures.crop import bmode_image
from usedge.errors import ConfigError, InputError
from usedge.runtime.crop import parse_crop, prepare
from usedge.runtime.doppler import DOPPLER_MIN_CHROMA, DOPPLER_MIN_SATURATION, detect_doppler, fill_from_surroundings
from usedge.runtime.fov import (FieldOfView, crop_field_of_view, find_skin_line, iou, percentile90, skin_centred_square,
                                validate_regions)
from usedge.runtime.pixels import as_uint8
from usedge.runtime.preprocess import PreprocessSpec


def hand_made_screen(bg: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A black 800x600 screen with text, a gray ramp and a speckle image at a known box."""
    rng = np.random.default_rng(1)
    frame = np.full((600, 800, 3), bg, np.uint8)
    box = (180, 90, 420, 380)
    speckle = np.clip(rng.rayleigh(50, (box[3], box[2])), 0, 255).astype(np.uint8)
    frame[box[1]:box[1] + box[3], box[0]:box[0] + box[2]] = speckle[:, :, None]
    cv2.putText(frame, "ACME 12L  MI 0.9  2026-01-01", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (230, 230, 230), 2)
    for i, line in enumerate(["Gn 50", "DR 60", "FR 30"]):
        cv2.putText(frame, line, (10, 150 + 30 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (200, 200, 200), 1)
    frame[100:300, 700:715] = np.linspace(255, 0, 200).astype(np.uint8)[:, None, None]
    return frame, box


def test_hand_made_screen_box():
    frame, box = hand_made_screen()
    fov = crop_field_of_view(frame)
    assert fov.method == "detection"
    assert iou(fov.box, box) > 0.95


@pytest.mark.parametrize("case", ["linear", "curved", "doppler"])
def test_synthetic_scanner_screens(scanner_frames, case):
    frame, truth = scanner_frames[case]
    fov = crop_field_of_view(frame)
    assert fov.method == "detection"
    assert iou(fov.box, truth["fov_box"]) > 0.9


def test_dual_view_gives_both_regions(scanner_frames):
    frame, truth = scanner_frames["dual"]
    fov = crop_field_of_view(frame)
    assert len(fov.boxes) == 2
    for t, d in zip(truth["fov_boxes"], fov.boxes):     # both left to right
        assert iou(t, d) > 0.9
    assert fov.box in fov.boxes and any("dual" in n for n in fov.notes)


def test_bmode_only_image_is_all_field_of_view(tiny_cohort):
    path = sorted(tiny_cohort.glob("*/*.png"))[0]
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    fov = crop_field_of_view(image)
    assert fov.box == (0, 0, image.shape[1], image.shape[0])


@pytest.mark.parametrize("kind", ["gray", "bgra", "uint16", "float01", "float255"])
def test_pixel_formats_agree(kind):
    frame, box = hand_made_screen()
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    variant = {
        "gray": gray,
        "bgra": cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA),
        "uint16": frame.astype(np.uint16) * 257,
        "float01": frame.astype(np.float32) / 255.0,
        "float255": frame.astype(np.float64),
    }[kind]
    assert iou(crop_field_of_view(variant).box, box) > 0.95


def test_12_bit_frame_keeps_contrast():
    frame = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    out = as_uint8(frame)
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0


@pytest.mark.parametrize("frame", [
    np.zeros((0, 0, 3), np.uint8), np.zeros((1, 1), np.uint8), np.zeros((4, 400), np.uint8),
    np.zeros((100, 100, 3), np.uint8), np.full((100, 100), 255, np.uint8), np.full((50, 60), np.nan, np.float32),
    np.zeros((10, 10, 5), np.uint8), "not an array",
], ids=["empty", "1x1", "thin", "black", "white", "nan", "5-channel", "string"])
def test_bad_frames_raise_input_error(frame):
    with pytest.raises(InputError):
        crop_field_of_view(frame)


def test_no_ultrasound_falls_back_to_whole_frame():
    frame = np.zeros((300, 400), np.uint8)
    cv2.putText(frame, "NO IMAGE", (20, 150), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)
    fov = crop_field_of_view(frame)
    assert fov.method == "fallback" and fov.box == (0, 0, 400, 300) and fov.notes


def test_doppler_detection_ignores_gray_and_tints():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    gray_bgr = cv2.merge([g, g, g])
    sepia = cv2.merge([(g * 0.75).astype(np.uint8), (g * 0.9).astype(np.uint8), g])
    assert not detect_doppler(gray_bgr).any()
    assert not detect_doppler(sepia).any()
    flow = gray_bgr.copy()
    flow[20:30, 10:50] = (0, 40, 220)          # red flow
    flow[40:44, 10:50] = (200, 60, 0)          # blue flow
    found = detect_doppler(flow)
    assert found[20:30, 10:50].all() and found[40:44, 10:50].all()
    assert found.sum() == 10 * 40 + 4 * 40


def test_doppler_detection_is_the_documented_rule_for_every_colour():
    """Every one of the 2**24 BGR colours: detected exactly when chroma >= DOPPLER_MIN_CHROMA and
    chroma / max >= DOPPLER_MIN_SATURATION (in whole numbers: chroma * 100 >= max * 35)."""
    v = np.arange(256, dtype=np.uint8)
    b, g, r = (a.reshape(4096, 4096) for a in np.meshgrid(v, v, v, indexing="ij"))
    image = cv2.merge([b, g, r])
    hi = np.maximum(np.maximum(b, g), r).astype(np.int32)
    chroma = hi - np.minimum(np.minimum(b, g), r)
    rule = (chroma >= DOPPLER_MIN_CHROMA) & (chroma * 100 >= hi * round(DOPPLER_MIN_SATURATION * 100))
    found = detect_doppler(image)
    assert found.dtype == bool and np.array_equal(found, rule)
    assert found.sum() == rule.sum() > 0


def test_remove_doppler_fills_from_bmode():
    img = np.full((100, 100, 3), 90, np.uint8)
    img[40:60, 40:60] = (0, 0, 255)
    gray, info = prepare(img, PreprocessSpec(crop="none", size=100))
    frac = info.doppler_fraction
    assert 0.04 <= frac <= 0.06
    assert abs(int(gray[50, 50]) - 90) <= 2          # filled with the surrounding level, not red's luma


def test_fill_everything_masked_does_not_crash():
    out = fill_from_surroundings(np.full((10, 10), 7, np.uint8), np.ones((10, 10), bool))
    assert out.shape == (10, 10) and out.dtype == np.uint8


def _fill_whole_image(gray, mask):
    """The fill's definition, computed on the whole image at every window size (the slow reference)."""
    valid = (~mask).astype(np.float32)
    weighted = gray.astype(np.float32) * valid
    filled, todo = np.zeros(gray.shape, np.float32), mask.copy()
    for k in (5, 17, 65, 257):
        num = cv2.blur(weighted, (k, k), borderType=cv2.BORDER_REFLECT)
        den = cv2.blur(valid, (k, k), borderType=cv2.BORDER_REFLECT)
        ok = todo & (den > 0.05)
        filled[ok] = num[ok] / den[ok]
        todo &= ~ok
    out = gray.copy()
    out[mask] = np.clip(filled[mask] + 0.5, 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_fill_on_a_window_equals_the_whole_image(seed):
    """The fill blurs only a window around the pixels still to fill: same bytes as the whole image."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([31, 100, 224, 300]))
    gray = rng.integers(0, 256, (n, n), dtype=np.uint8)
    mask = np.zeros((n, n), bool)
    for _ in range(int(rng.integers(1, 4))):       # a few colour boxes, some at the edge, some large
        y, x = rng.integers(0, n, 2)
        h, w = rng.integers(1, n // 2 + 1, 2)
        mask[y:y + h, x:x + w] = True
    mask |= rng.random((n, n)) < 0.002             # scattered colour speckle
    assert np.array_equal(fill_from_surroundings(gray, mask), _fill_whole_image(gray, mask))


def test_skin_line_found_below_gel():
    img = np.full((300, 200), 5, np.uint8)          # gel: dark
    img[40:46] = 220                                # entry echo / epidermis
    img[46:] = 120                                  # dermis and below
    assert abs(find_skin_line(img, (0, 0, 200, 300)) - 40) <= 3
    assert find_skin_line(np.full((300, 200), 120, np.uint8), (0, 0, 200, 300)) == 0   # probe in contact


def test_percentile90_is_numpys_bit_for_bit():
    """The skin line's fast 90th percentile returns np.percentile's value and type exactly (every length,
    ties, tiny and large values), so the crop box is the same as with numpy's."""
    rng = np.random.default_rng(0)
    for n in list(range(1, 260)) * 4:
        values = (rng.random(n) * rng.choice([1e-3, 1.0, 255.0])).astype(np.float32)
        if rng.random() < 0.3:
            values = np.round(values)          # ties
        ours, numpys = percentile90(values), np.percentile(values, 90)
        assert ours == numpys and type(ours) is type(numpys), (n, ours, numpys)


def test_skin_line_on_synthetic_bmode():
    img = bmode_image(2)
    skin = find_skin_line(img, (0, 0, img.shape[1], img.shape[0]))
    assert 0 < skin < img.shape[0] // 4


def test_skin_centred_square_rule():
    # wide FOV: the square is as tall as the FOV below the skin line, centred horizontally
    x, y, w, h = skin_centred_square((100, 50, 600, 300), skin_y=70, margin=0.02)
    assert (y, w, h) == (64, 286, 286) and x == 100 + (600 - 286) // 2
    # tall FOV: as wide as the FOV
    assert skin_centred_square((0, 0, 200, 500), skin_y=20, margin=0.0) == (0, 20, 200, 200)
    # skin line absurdly deep: fall back to the FOV top
    assert skin_centred_square((0, 0, 400, 300), skin_y=280, margin=0.0) == (50, 0, 300, 300)


def test_validate_regions():
    assert validate_regions([(10, 10, 100, 80)], (200, 300)) == [(10, 10, 100, 80)]
    assert validate_regions([(84, 31, 512, 384)], (240, 320)) is None        # pre-downscale box
    assert validate_regions([(10, 10, 100, 80), (0, 0, 400, 10)], (200, 300)) is None
    assert validate_regions([(0, 0, 2, 2)], (200, 300)) is None               # too small
    assert validate_regions([], (200, 300)) is None
    # a dual view of two equal views: the regions match the detected views even when detection's crop
    # box is the other view (both exact regions were thrown away as "do not fit"; outside audit)
    left, right = (198, 228, 436, 364), (682, 228, 436, 364)
    detected = FieldOfView(box=right, boxes=[left, right], method="detection")
    assert validate_regions([left, right], (1080, 1920), detected) == [left, right]
    assert validate_regions([(10, 900, 436, 150)], (1080, 1920), detected) is None      # off the image: refused


def test_parse_crop_modes(tmp_path):
    assert parse_crop("auto").kind == "auto" and parse_crop("auto").square
    assert parse_crop("none").kind == "none" and not parse_crop("fov").square
    m = parse_crop("10, 20, 300, 200")
    assert m.kind == "manual" and m.box == (10, 20, 300, 200)
    assert parse_crop("preset:ge-logiq-640x480").frame_size == (640, 480)
    for bad in ("10,20,300", "a,b,c,d", "10,20,0,5", "-1,0,5,5", "sideways"):
        with pytest.raises(ConfigError):
            parse_crop(bad)
    with pytest.raises(ConfigError, match="unknown crop preset"):
        parse_crop("preset:nope")
    user = tmp_path / "mine.toml"
    user.write_text('[preset.my-scanner]\nbox = [1, 2, 30, 40]\n')
    assert parse_crop("preset:my-scanner", user).box == (1, 2, 30, 40)
    with pytest.raises(ConfigError, match="unknown crop preset"):
        parse_crop("preset:my-scanner")                  # no process-global registry: another call does not see it
    bad = tmp_path / "bad.toml"
    bad.write_text('[preset.x]\nbox = [1, 2]\n')
    with pytest.raises(ConfigError, match="box"):
        parse_crop("auto", bad)                          # a bad presets file fails whatever the mode


def test_compressed_and_noisy_captures(scanner_frames):
    """The same screen as a JPEG (quality 60) or an analog capture (noise sigma 3) gives the same box."""
    from tests.fixtures.crop import pydicom_file
    from usedge.runtime.dicom import open_dicom

    ge = open_dicom(pydicom_file("examples_jpeg2k.dcm")).frame(0)
    frame, truth = scanner_frames["linear"]
    rng = np.random.default_rng(3)
    for image, ref in ((ge, crop_field_of_view(ge).box), (frame, truth["fov_box"])):
        jpeg = cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_COLOR)
        noisy = np.clip(image.astype(np.int16) + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
        assert iou(crop_field_of_view(jpeg).box, ref) > 0.9
        assert iou(crop_field_of_view(noisy).box, ref) > 0.9


def test_a_manual_box_outside_the_frame_is_refused():
    """`--crop 5000,5000,50,50` on a 296x248 image became a 1x1 crop upscaled to the model size, exit 0
    (outside audit): a box that leaves less than 8 x 8 pixels inside the frame is an error naming both."""
    from usedge.errors import InputError
    from usedge.runtime.crop import prepare
    from usedge.runtime.preprocess import PreprocessSpec

    frame = np.random.default_rng(0).integers(0, 255, (248, 296), dtype=np.uint8)
    with pytest.raises(InputError, match=r"crop box \[5000, 5000, 50, 50\] lies outside the 296x248 frame"):
        prepare(frame, PreprocessSpec(size=64, crop="5000,5000,50,50"))
    with pytest.raises(InputError, match=r"crop box \[10, 10, 5, 5\] is smaller than 8x8 pixels"):
        prepare(frame, PreprocessSpec(size=64, crop="10,10,5,5"))
    with pytest.raises(ConfigError, match="whole pixels"):
        parse_crop("1.5,2,3,4")
    assert parse_crop("10.0,20,30,40").box == (10, 20, 30, 40)
    small, info = prepare(frame, PreprocessSpec(size=64, crop="280,10,50,50"))      # partly inside: clipped, noted
    assert info.crop_box == (280, 10, 16, 50) and "clipped" in info.notes[0]


@pytest.mark.parametrize("screen_bg, bars", [(30, 0), (0, 40), ((90, 40, 10), 0), (0, 0)])
def test_a_screen_inside_bars_of_another_colour_is_cropped_to_its_image(screen_bg, bars):
    """A 4:3 scanner screen pillarboxed in a 16:9 video: with bars of another colour than the screen's
    background, the whole screen (menus, header) was taken for the image (outside audit)."""
    from usedge.runtime.fov import crop_field_of_view, iou

    view = bmode_image(seed=2)
    screen = np.full((768, 1024, 3), screen_bg, np.uint8)
    screen[150:610, 300:900] = cv2.resize(view, (600, 460))[..., None]
    cv2.putText(screen, "ACME L12-5 MSK  MI 0.8", (10, 30), 0, 0.8, (220, 220, 220), 2)
    for k in range(6):
        cv2.rectangle(screen, (10, 90 + 70 * k), (190, 140 + 70 * k), (120, 60, 20), -1)
        cv2.putText(screen, "Gain 52", (20, 125 + 70 * k), 0, 0.8, (255, 255, 255), 2)
    frame = np.full((1080, 1920, 3), bars, np.uint8)
    frame[:, 240:1680] = cv2.resize(screen, (1440, 1080))
    fov = crop_field_of_view(frame)
    assert fov.method == "detection" and iou(fov.box, (661, 210, 843, 646)) > 0.9, (fov.box, fov.notes)
