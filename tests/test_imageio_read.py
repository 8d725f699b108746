"""Image files (usedge.runtime.formats): formats, 16 bit, bombs, truncated and corrupt files; `usedge crop`."""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.fixtures.crop import pydicom_file
from usedge.cli import app
from usedge.errors import InputError
from usedge.runtime.formats import read_file, read_image

runner = CliRunner()


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_round_trip(tmp_path, picture, ext):
    path = tmp_path / f"a{ext}"
    assert cv2.imwrite(str(path), picture)
    assert np.array_equal(read_image(path), picture)


def test_jpeg_and_gray_and_16_bit(tmp_path, picture):
    cv2.imwrite(str(tmp_path / "a.jpg"), picture)
    assert read_image(tmp_path / "a.jpg").shape == (48, 64, 3)
    gray = picture[:, :, 0]
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    assert read_image(tmp_path / "g.png").shape == (48, 64)
    deep = (gray.astype(np.uint16) * 16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint16 and np.array_equal(out, deep)


def _png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def test_decompression_bomb_refused_from_the_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(50_000, 50_000))
    with pytest.raises(InputError, match="Mpx") as err:
        read_image(path)
    assert "bomb.png" in str(err.value)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_files(tmp_path, picture, ext):
    path = tmp_path / f"t{ext}"
    cv2.imwrite(str(path), np.tile(picture, (4, 4, 1)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as err:
        read_image(path)
    assert path.name in str(err.value)


def test_zero_byte_corrupt_and_missing(tmp_path, picture):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(InputError, match="0 bytes"):
        read_image(tmp_path / "z.png")
    (tmp_path / "r.png").write_bytes(np.random.default_rng(1).bytes(500))
    with pytest.raises(InputError, match="not a PNG"):
        read_image(tmp_path / "r.png")
    cv2.imwrite(str(tmp_path / "c.png"), picture)
    data = bytearray((tmp_path / "c.png").read_bytes())
    data[40:80] = b"\x00" * 40                                   # damage the compressed stream
    (tmp_path / "c.png").write_bytes(bytes(data))
    with pytest.raises(InputError):
        read_image(tmp_path / "c.png")
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_read_file_images_and_cine(tmp_path, picture):
    cv2.imwrite(str(tmp_path / "a.png"), picture)
    d = read_file(tmp_path / "a.png")
    assert (d.kind, d.frames_in_file, d.regions) == ("png", 1, None)
    cine = pydicom_file("examples_ybr_color.dcm")
    d = read_file(cine, frame_index=3)
    assert d.frames_in_file == 30 and d.frame.shape == (240, 320, 3) and d.regions == [(84, 31, 512, 384)]
    assert not np.array_equal(read_image(cine), d.frame)          # frame 0 differs from frame 3


# ------------------------------------------------------------------ usedge crop

def test_crop_cli_images_and_dicom(tmp_path, scanner_frames):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "screen.png"), scanner_frames["doppler"][0])
    cv2.imwrite(str(src / "dual.png"), scanner_frames["dual"][0])
    dcm = pydicom_file("examples_jpeg2k.dcm")
    out = tmp_path / "out"
    r = runner.invoke(app, ["crop", str(src), str(dcm), "--out", str(out), "--overlay", "-q"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (out / "crops.jsonl").read_text().splitlines()]
    assert len(lines) == 4                                       # dual -> two crops
    for rec in lines:
        img = cv2.imread(str(out / rec["output"]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (224, 224)
        assert rec["method"] == "detection" and len(rec["crop_box"]) == 4 and "doppler_fraction" in rec
        assert (out / rec["output"].replace(".png", ".overlay.png")).is_file()
    screen = next(rec for rec in lines if rec["input"].endswith("screen.png"))
    assert screen["doppler_fraction"] > 0
    assert {rec["view"] for rec in lines if "dual" in rec["input"]} == {0, 1}


def test_crop_cli_modes_and_errors(tmp_path, scanner_frames):
    cv2.imwrite(str(tmp_path / "s.png"), scanner_frames["linear"][0])
    (tmp_path / "bad.png").write_bytes(b"")
    out = tmp_path / "o"
    r = runner.invoke(app, ["crop", str(tmp_path / "s.png"), "--out", str(out), "--crop", "0,0,100,50", "--size", "64", "-q"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "crops.jsonl").read_text())
    assert rec["method"] == "manual" and rec["crop_box"] == [0, 0, 100, 50]
    # one bad file among good ones: the good ones are written, the bad one is reported, exit code 1
    r = runner.invoke(app, ["crop", str(tmp_path / "s.png"), str(tmp_path / "bad.png"), "--out", str(out), "-q"])
    assert r.exit_code == 1
    lines = [json.loads(x) for x in (out / "crops.jsonl").read_text().splitlines()]
    assert "error" in lines[1] and "bad.png" in lines[1]["error"]
    r = runner.invoke(app, ["crop", str(tmp_path / "s.png"), "--out", str(out), "--crop", "preset:nope"])
    assert r.exit_code != 0 and "unknown crop preset" in str(r.exception)


def test_damaged_jpeg_data_is_refused_not_classified(tmp_path, picture):
    """A JPEG whose data is damaged mid-file still decodes in OpenCV and Pillow (a libjpeg warning on stderr,
    the damaged part as gray blocks): usedge refuses it with libjpeg's own reason. The intact file reads."""
    ok, buf = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 90])
    data = buf.tobytes()
    half = len(data) // 2
    zero_gap = data[:half] + bytes(len(data) - half - 2) + b"\xff\xd9"   # a zero-filled copy, end marker kept
    flipped = bytearray(data)
    for i in range(len(data) // 3, len(data) - 10, 97):
        flipped[i] ^= 0x55
    assert cv2.imdecode(np.frombuffer(zero_gap, np.uint8), cv2.IMREAD_UNCHANGED) is not None   # OpenCV lets it pass
    for name, bad in (("gap.jpg", zero_gap), ("flipped.jpg", bytes(flipped))):
        (tmp_path / name).write_bytes(bad)
        with pytest.raises(InputError, match="damaged JPEG data") as err:
            read_image(tmp_path / name)
        assert name in str(err.value)
    (tmp_path / "good.jpg").write_bytes(data)
    assert read_image(tmp_path / "good.jpg").shape[:2] == picture.shape[:2]


def test_crop_names_crops_that_are_mostly_colour(tmp_path):
    """A strongly tinted B-mode image is more than half 'Doppler' and filled: the run's line says how many
    and how to keep them (--keep-doppler)."""
    from usedge.synth.phantom import render_view, sample_patient, sample_view

    rng = np.random.default_rng(3)
    p = sample_patient("T0", "lipoma", rng)
    g = render_view(p, sample_view(p, rng), rng)[0]
    cv2.imwrite(str(tmp_path / "tinted.png"), np.dstack([g, g // 2, g]))     # B = g, G = g/2, R = g
    cv2.imwrite(str(tmp_path / "gray.png"), g)
    r = runner.invoke(app, ["crop", str(tmp_path / "tinted.png"), str(tmp_path / "gray.png"), "--out", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 0, r.output
    assert "1 crop(s) more than 50% colour were filled as colour Doppler" in " ".join(r.output.split())
    r = runner.invoke(app, ["crop", str(tmp_path / "gray.png"), "--out", str(tmp_path / "o2"), "-q"])
    assert r.exit_code == 0 and "colour" not in r.output


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_is_turned_as_its_exif_orientation_says(tmp_path, orientation):
    """A phone or scanner JPEG stored sideways with an EXIF Orientation was classified as stored, its crop
    boxes in the stored coordinates (outside audit); it is read as cv2.imread and viewers show it."""
    import io

    from PIL import Image

    from usedge.runtime.formats import read_image, read_image_bytes

    rng = np.random.default_rng(orientation)
    base = cv2.GaussianBlur(rng.integers(0, 255, (40, 60, 3)).astype(np.uint8), (5, 5), 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(base[:, :, ::-1]).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    path = tmp_path / "o.jpg"
    path.write_bytes(buf.getvalue())
    assert np.array_equal(read_image(path), cv2.imread(str(path)))
    assert np.array_equal(read_image_bytes(buf.getvalue()).frame, cv2.imread(str(path)))    # uploads too
    assert read_image(path).shape[:2] == ((40, 60) if orientation <= 4 else (60, 40))


def test_a_complete_png_with_bytes_after_its_end_is_read(tmp_path):
    """A PNG padded after its IEND chunk (a transfer tool) was refused as "truncated (no end marker)";
    a PNG cut short still is."""
    from usedge.errors import InputError
    from usedge.runtime.formats import read_image

    image = np.random.default_rng(0).integers(0, 255, (30, 40), dtype=np.uint8)
    data = cv2.imencode(".png", image)[1].tobytes()
    (tmp_path / "pad.png").write_bytes(data + b"\0" * 16)
    assert np.array_equal(read_image(tmp_path / "pad.png"), image)
    (tmp_path / "cut.png").write_bytes(data[:-20])
    with pytest.raises(InputError, match="truncated PNG"):
        read_image(tmp_path / "cut.png")


def test_a_white_label_does_not_set_the_bit_depth_but_bright_echoes_do():
    """16-bit frames were scaled by their brightest pixel: a 12-bit scan with a label burned in at 65535
    was read as 16-bit and judged empty; a float image in [0, 1] with one pixel at 1.001 read as black
    (outside audit). Up to 0.5 % of pixels at the container's full white are left out of the depth (and
    clipped); other bright pixels count: a dark 12-bit scan with 0.4 % saturated reflectors stays 12-bit
    (a percentile rule read it as 10-bit, 4x brighter, and changed its label; second outside audit)."""
    from usedge.runtime.pixels import as_uint8

    g = np.random.default_rng(0).integers(0, 256, (100, 120)).astype(np.uint16)
    labelled = g * 16                          # 12-bit data ...
    labelled[:2, :10] = 65535                  # ... with a label at full white on 0.17 % of the pixels
    assert np.array_equal(as_uint8(labelled)[2:], g[2:].astype(np.uint8)) and as_uint8(labelled)[0, 0] == 255
    dark = (g // 5) * 16                       # a dark 12-bit scan ...
    dark.flat[np.random.default_rng(1).choice(dark.size, 48, replace=False)] = 4080     # ... 0.4 % reflectors
    assert np.array_equal(as_uint8(dark), (dark >> 4).astype(np.uint8))
    full = (g.astype(np.uint32) * 257).astype(np.uint16)      # true 16-bit data keeps its scale
    assert np.array_equal(as_uint8(full), (full >> 8).astype(np.uint8))
    white = g.copy()
    white[:30] = 65535                         # 25 % at full white: that is the image, 16-bit
    assert as_uint8(white)[50].max() == 0
    f = g.astype(np.float32) / 255
    f[0, 0] = 1.001
    assert np.array_equal(as_uint8(f)[1:], g[1:].astype(np.uint8))


def test_frames_that_are_not_display_values_are_refused_and_float_overshoot_is_kept():
    """A boolean mask got a confident label; a zero-centred float frame (x/255 - 0.5) or signed data had its
    negative half clipped to black and got a label; a [0, 1] frame with 1 % of pixels at 1.001 (a cubic
    resize's overshoot) was read as 0..255 and refused as blank (outside audit of the library API)."""
    from usedge.errors import InputError
    from usedge.runtime.pixels import as_uint8

    g = np.random.default_rng(0).integers(0, 256, (100, 120)).astype(np.uint8)
    for bad, words in ((g > 128, "boolean"), (g / 255.0 - 0.5, "negative"), (g.astype(np.int16) - 128, "negative"),
                       (np.full((20, 20), 1e300), "float32's range"), (g.ravel(), "1-D array")):
        with pytest.raises(InputError, match=words):
            as_uint8(bad)
    f = g.astype(np.float32) / 255
    f.flat[::100] = 1.001                      # 1 % overshoot, more than the 0.5 % the [0, 1] rule allows
    assert np.array_equal(as_uint8(f).ravel()[1::100], g.ravel()[1::100])
    under = g.astype(np.float32) / 255
    under[0, :5] = -0.002                      # a resampling undershoot on a few pixels: clipped, not refused
    assert as_uint8(under)[0, :5].max() == 0 and np.array_equal(as_uint8(under)[1:], g[1:])
    rng = np.random.default_rng(2)             # 0..255 floats that are dark stay dark (a "max <= 2" rule
    black = rng.uniform(0, 2, (100, 120)).astype(np.float32)    # stretched this black screen to a scan; regression round)
    assert as_uint8(black).max() <= 2
    dark = rng.uniform(0, 1, (100, 120)).astype(np.float32)
    dark.flat[:40] = 200.0                     # 0.3 % bright pixels: 0..255 values, not a [0, 1] image's overshoot
    assert as_uint8(dark).mean() < 2


def test_transparent_pixels_are_background():
    """A PNG whose right half is transparent (white underneath) was classified with the white half in the
    crop (outside audit): alpha is composited over black, the screen's background."""
    from usedge.runtime.pixels import as_uint8

    rng = np.random.default_rng(1)
    scan = cv2.GaussianBlur(rng.integers(0, 255, (240, 160), dtype=np.uint8), (3, 3), 0)
    rgba = np.full((240, 320, 4), 255, np.uint8)
    rgba[:, :160, :3] = scan[:, :, None]
    rgba[:, 160:, 3] = 0                                     # transparent, white underneath
    out = as_uint8(rgba)
    assert out.shape == (240, 320, 3) and out[:, 160:].max() == 0 and np.array_equal(out[:, :160, 0], scan)
    half = rgba.copy()
    half[..., 3] = 128
    assert abs(int(as_uint8(half)[0, 200, 0]) - 128) <= 1    # half transparent white over black
    gray_alpha = np.dstack([scan, np.full_like(scan, 255)])
    assert np.array_equal(as_uint8(gray_alpha), scan)


def test_every_frame_of_an_animated_webp_is_read(tmp_path):
    """An animated WebP was read as its first frame only, and serve said it had one frame (outside audit)."""
    import io

    from PIL import Image

    from usedge.runtime.formats import read_image_bytes, read_pages
    from usedge.runtime.sources import iter_file_frames

    frames = [Image.fromarray(np.full((64, 80, 3), 40 * i + 20, np.uint8)) for i in range(5)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    path = tmp_path / "anim.webp"
    path.write_bytes(buf.getvalue())
    pages = list(read_pages(path))
    assert [int(p.frame[..., 0].mean()) for p in pages] == [20, 60, 100, 140, 180]
    assert [f.index for f in iter_file_frames(path)] == [0, 1, 2, 3, 4]
    assert read_image_bytes(buf.getvalue(), frame_index=3).frame[..., 0].mean() == 140
