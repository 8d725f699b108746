"""DICOM reading (usedge.runtime.dicom): real scanner files, regions, no patient data, bad files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from tests.fixtures.crop import US_DICOM, pydicom_file
from usedge.errors import InputError
from usedge.runtime.dicom import open_dicom
from usedge.runtime.crop import prepare_file
from usedge.runtime.preprocess import PreprocessSpec

PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate",
                "ContentDate", "InstitutionName", "ReferringPhysicianName", "AccessionNumber", "StudyID",
                "OtherPatientIDs", "InstitutionAddress", "OperatorsName")


def patient_strings(path) -> list[str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    vals = [str(ds.get(t, "") or "").strip() for t in PATIENT_TAGS]
    return [v for v in vals if len(v) >= 3]


@pytest.mark.parametrize("name", US_DICOM)
def test_real_ultrasound_files(name):
    path = pydicom_file(name)
    d = open_dicom(path)
    frame = d.frame(0)
    assert frame.dtype == np.uint8 and frame.shape[:2] == d.shape
    assert frame.ndim == 3 and frame.shape[2] == 3          # all four are colour screens: BGR
    assert d.modality == "US"


def test_cine_loop_frames_and_rate():
    d = open_dicom(pydicom_file("examples_ybr_color.dcm"))
    assert d.n_frames == 30 and abs(d.fps - 30.0) < 0.1
    assert d.frame(29).shape == (240, 320, 3)
    with pytest.raises(InputError, match="frame 30"):
        d.frame(30)


def test_regions_that_do_not_fit_are_dropped():
    d = open_dicom(pydicom_file("examples_palette.dcm"))
    assert d.raw_regions == [(120, 60, 681, 459)]           # measured on the screen before downscaling
    assert d.regions == []
    _, info = prepare_file(d.path)
    assert info.method == "detection" and "do not fit" in info.notes[0]


def test_palette_colour_is_applied():
    frame = open_dicom(pydicom_file("examples_palette.dcm")).frame(0)
    assert frame.shape == (350, 800, 3) and frame.dtype == np.uint8
    b, g, r = frame[10, 10]
    assert b > r                                             # Philips' blue title bar, not gray indices


def _write_with_regions(tmp_path, boxes, patient="DOE^JANE"):
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    items = []
    for x, y, w, h in boxes:
        r = Dataset()
        r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
        r.RegionLocationMinX0, r.RegionLocationMinY0 = x, y
        r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x + w - 1, y + h - 1
        items.append(r)
    ds.SequenceOfUltrasoundRegions = Sequence(items)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient, "ID-778899", "19700101"
    path = tmp_path / "with_regions.dcm"
    ds.save_as(path)
    return path


def test_regions_that_fit_are_used(tmp_path):
    path = _write_with_regions(tmp_path, [(8, 54, 305, 115)])
    d = open_dicom(path)
    assert d.regions == [(8, 54, 305, 115)]
    _, info = prepare_file(path, PreprocessSpec(crop="fov"))
    assert info.method == "dicom-regions" and info.crop_box == (8, 54, 305, 115)


def test_a_colour_flow_box_inside_the_image_is_not_a_view(tmp_path):
    """Scanners declare the colour-flow box as a region inside the B-mode region: it is part of that
    image, not a second view (crop --views all wrote it as an extra 94 px training image). Two regions
    side by side (a dual-view screen) stay two views."""
    d = open_dicom(_write_with_regions(tmp_path, [(100, 60, 40, 40), (8, 54, 305, 115)]))
    assert d.regions == [(8, 54, 305, 115)] and d.raw_regions == [(8, 54, 305, 115)]
    d = open_dicom(_write_with_regions(tmp_path, [(8, 54, 150, 115), (160, 54, 150, 115)]))
    assert d.regions == [(8, 54, 150, 115), (160, 54, 150, 115)]


def test_no_patient_data_anywhere(tmp_path):
    path = _write_with_regions(tmp_path, [(8, 54, 305, 115)])
    secrets = patient_strings(path) + ["DOE", "JANE", "ID-778899", "19700101"]
    d = open_dicom(path)
    _, info = prepare_file(path)
    out = tmp_path / "out"
    r = CliRunner().invoke(__import__("usedge.cli", fromlist=["app"]).app,
                           ["crop", str(path), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    texts = [repr(d), json.dumps(d.describe()), json.dumps(info.to_dict()), r.output,
             (out / "crops.jsonl").read_text()]
    # and an error message about the same file
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(InputError) as err:
        open_dicom(broken).frame(0)
    texts.append(str(err.value))
    for text in texts:
        for s in secrets:
            assert s not in text


@pytest.mark.parametrize("name", US_DICOM)
def test_shipped_files_leak_nothing(name):
    path = pydicom_file(name)
    secrets = patient_strings(path)
    d = open_dicom(path)
    _, info = prepare_file(path)
    for text in (repr(d), json.dumps(d.describe()), json.dumps(info.to_dict())):
        for s in secrets:
            assert s not in text


def test_missing_decoder_names_the_package():
    with pytest.raises(InputError, match="pylibjpeg") as err:
        open_dicom(pydicom_file("JPEGLSNearLossless_08.dcm")).frame(0)
    assert "JPEGLSNearLossless_08.dcm" in str(err.value)


def test_truncated_pixel_data(tmp_path):
    with pytest.raises(InputError, match="8130 bytes, less than the 8192 the header implies.*truncated"):
        open_dicom(pydicom_file("MR_truncated.dcm"), allow_any_modality=True).frame(0)
    # a cine declaring 5 frames with data for 3: said at once, with what is there (it was "5 of 5 frames could
    # not be decoded (ValueError: truncated or damaged?)"); a NumberOfFrames below 1 is not "-614400 bytes"
    from tests.fixtures.badinput import make_dicom

    path = make_dicom(tmp_path / "short.dcm", np.zeros((3, 16, 16), np.uint8), frames=3, patient=False)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 5
    ds.save_as(path)
    with pytest.raises(InputError, match=r"3 whole frame\(s\) of the 5 it declares"):
        open_dicom(path)
    ds.NumberOfFrames = -3
    ds.save_as(path)
    with pytest.raises(InputError) as err:
        open_dicom(path)
    assert "is not a size (16x16, NumberOfFrames -3)" in err.value.message and "bytes" not in err.value.message


def test_not_dicom_and_empty(tmp_path):
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"hello, not a DICOM file" * 10)
    with pytest.raises(InputError, match="not a DICOM"):
        open_dicom(fake)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="0 bytes"):
        open_dicom(empty)
    with pytest.raises(InputError, match="not found"):
        open_dicom(tmp_path / "missing.dcm")


def test_header_bomb_refused_before_decoding(tmp_path):
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.Rows, ds.Columns = 60000, 60000                      # 3.6 Gpx claimed, pixel data unchanged
    path = tmp_path / "bomb.dcm"
    ds.save_as(path)
    with pytest.raises(InputError, match="Mpx"):
        open_dicom(path)


def test_monochrome_16_bit(tmp_path):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.Modality = "US"
    ds.save_as(tmp_path / "mono16.dcm")
    d = open_dicom(tmp_path / "mono16.dcm")
    frame = d.frame(0)
    assert frame.ndim == 2 and frame.dtype in (np.uint16, np.uint8)
    img, info = prepare_file(d.path)
    assert img.shape == (224, 224)


def test_header_that_understates_the_pixel_data_is_refused(tmp_path):
    """pydicom drops pixel bytes beyond the header's size as padding: Rows too small or SamplesPerPixel 1 on
    colour data would give a cut or garbled image. Refused with the two sizes."""
    for name, changes in (("rows.dcm", {"Rows": 100}),
                          ("spp.dcm", {"SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2"})):
        ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(tmp_path / name)
        with pytest.raises(InputError, match="header and pixels disagree") as err:
            open_dicom(tmp_path / name)
        assert name in str(err.value) and "230400 bytes" in str(err.value)
    open_dicom(pydicom_file("examples_rgb_color.dcm")).frame(0)     # the intact file reads


def test_damaged_cine_frames_are_passed_over_and_named(tmp_path):
    """Two damaged JPEG frames of a 30-frame cine: the other 28 are read, then one error names frames 3 and 5
    as damaged data (not as a missing decoder)."""
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
    frames = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))]
    bad = bytearray(frames[3])
    for i in range(600, len(bad) - 10, 7):
        bad[i] ^= 0xFF
    frames[3], frames[5] = bytes(bad), b"\x00" * 100
    ds.PixelData = encapsulate(frames)
    ds.save_as(tmp_path / "cine.dcm")
    d = open_dicom(tmp_path / "cine.dcm")
    got = []
    with pytest.raises(InputError) as err:
        for i, _ in d.frames():
            got.append(i)
    assert got == [i for i in range(30) if i not in (3, 5)]
    assert "2 of 30 frames could not be decoded (frame 3, 5" in str(err.value)
    assert "damaged" in str(err.value) and "pip install" not in str(err.value)
    # as a live source (`--stream cine.dcm`): the damaged frames are error results, the stream goes on to the end
    from usedge.runtime.sources import CaptureThread, LatestFrameSlot, open_source

    reader, slot = open_source(str(tmp_path / "cine.dcm")), LatestFrameSlot()
    capture = CaptureThread(reader, slot)
    capture.start()
    indices = []
    while (frame := slot.get(timeout=5)) is not None:
        indices.append(frame.index)
    capture.join(5)
    assert indices == got and not capture.stats.error          # each frame keeps its own number
    assert [(src, i) for src, _, i in reader.failed] == [(str(tmp_path / "cine.dcm"), i) for i in (3, 5)]
    assert all("damaged" in line for _, line, _ in reader.failed)


def test_a_damaged_jpeg_frame_is_refused_not_read_as_gray_blocks(tmp_path):
    """A zero-filled gap in one frame's JPEG data (its end marker kept) decodes in pydicom without an error,
    as gray blocks; it is refused like a damaged JPEG file, and the cine's other frames are still read."""
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
    frames = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))]
    half = len(frames[7]) // 2
    frames[7] = frames[7][:half] + bytes(len(frames[7]) - half - 2) + b"\xff\xd9"
    ds.PixelData = encapsulate(frames)
    ds.save_as(tmp_path / "gap.dcm")
    from pydicom.pixels import pixel_array

    assert pixel_array(pydicom.dcmread(tmp_path / "gap.dcm"), index=7).shape == (240, 320, 3)   # pydicom lets it pass
    d = open_dicom(tmp_path / "gap.dcm")
    with pytest.raises(InputError, match="frame 7 of 30: damaged JPEG data") as err:
        d.frame(7)
    assert "gap.dcm" in str(err.value)
    got = []
    with pytest.raises(InputError, match="1 of 30 frames could not be decoded \\(frame 7;"):
        for i, _ in d.frames():
            got.append(i)
    assert got == [i for i in range(30) if i != 7]
    assert np.array_equal(d.frame(6), open_dicom(pydicom_file("examples_ybr_color.dcm")).frame(6))


def test_a_damaged_transfer_syntax_uid_is_one_line_naming_it(tmp_path):
    """The file meta's TransferSyntaxUID damaged into a UID that is no transfer syntax (found by the
    byte-mutation property test): one line that says so, not a ValueError from pydicom."""
    data = Path(pydicom_file("examples_rgb_color.dcm")).read_bytes()
    assert data.count(b"1.2.840.10008.1.2.1\x00") == 1
    (tmp_path / "uid.dcm").write_bytes(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.9.2.1\x00"))
    with pytest.raises(InputError, match="uid.dcm.*'1.2.840.10008.9.2.1' is not a known one"):
        open_dicom(tmp_path / "uid.dcm").frame(0)


def _grey_dicom(path, stored: np.ndarray, **attrs) -> Path:
    """A US DICOM of a 16-bit grey frame (signed when `stored` is int16) with the given attributes."""
    from tests.fixtures.badinput import make_dicom

    make_dicom(path, stored.view(np.uint16), patient=False)
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = int(stored.dtype == np.int16)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def test_grey_levels_as_a_viewer_shows_them(tmp_path):
    """Signed or rescaled grey pixels go through the Modality LUT (RescaleSlope / Intercept), then the
    window (WindowCenter / Width), as a DICOM viewer shows them: a signed 16-bit file storing
    gray * 4 - 512 with slope 0.25, intercept 128, window 128 / 256 reads back as the gray image (it read
    mostly black: negative values clipped at 0). A narrower window stretches what it holds; a file without a
    window spans its own value range; MONOCHROME1 is inverted last."""
    g = ((np.indices((64, 96)).sum(axis=0) * 3) % 256).astype(np.uint8)
    g[:8] = np.arange(96)[None] * 255 // 95                            # every level from 0 to 255 somewhere
    stored = g.astype(np.int16) * 4 - 512
    signed = dict(RescaleSlope=0.25, RescaleIntercept=128, WindowCenter=128, WindowWidth=256)
    frame = open_dicom(_grey_dicom(tmp_path / "s.dcm", stored, **signed)).frame(0)
    assert frame.dtype == np.uint8 and np.abs(frame.astype(int) - g).max() <= 1
    narrow = open_dicom(_grey_dicom(tmp_path / "n.dcm", stored, **{**signed, "WindowWidth": 128})).frame(0)
    inside = (g >= 72) & (g <= 183)
    assert np.abs(narrow[inside].astype(int) - np.clip((g[inside].astype(int) - 128) * 2 + 128, 0, 255)).max() <= 2
    assert (narrow[g < 60] == 0).all() and (narrow[g > 196] == 255).all()
    auto = open_dicom(_grey_dicom(tmp_path / "a.dcm", stored, RescaleSlope=0.25, RescaleIntercept=128)).frame(0)
    assert np.abs(auto.astype(int) - g).max() <= 1                     # 0..255 spanned: its own range is g's
    mono1 = open_dicom(_grey_dicom(tmp_path / "m.dcm", stored, PhotometricInterpretation="MONOCHROME1",
                                   **signed)).frame(0)
    assert np.abs(mono1.astype(int) - (255 - g)).max() <= 1
    bad = _grey_dicom(tmp_path / "bad.dcm", stored, **{**signed, "RescaleSlope": "0.25"})
    bad.write_bytes(bad.read_bytes().replace(b"0.25", b"x.yz"))        # a damaged slope (DS text)
    with pytest.raises(InputError, match="grey-level transform") as err:
        open_dicom(bad).frame(0)
    assert "bad.dcm" in str(err.value)
    u12 = g.astype(np.uint16) << 4                                     # 12-bit unsigned, no rescale, no window
    plain = _grey_dicom(tmp_path / "u12.dcm", u12, BitsStored=12, HighBit=11)
    assert np.abs(open_dicom(plain).frame(0).astype(int) - g).max() <= 1   # unchanged path: scaled by its depth


def test_dicom_found_by_its_bytes_in_folders(tmp_path):
    """A study folder as PACS tools write it: files named by their SOP Instance UID (whose 'suffix' is
    '.1'), one without the preamble and 'DICM', and a DICOMDIR. The images are found and read (the UID-named
    and preamble-less ones were silently left out); the DICOMDIR is left out of folders, and named on its own
    it says what it is. Other files in the folder are not taken for DICOM."""
    from pydicom.fileset import FileSet

    from usedge.errors import InputError as Err
    from usedge.runtime.formats import expand_inputs, read_file

    study = tmp_path / "study"
    study.mkdir()
    source = pydicom_file("examples_rgb_color.dcm")
    uid = study / "1.2.840.113619.2.55.3.604688119.969.1268071029.320.1"
    shutil.copy(source, uid)
    raw = study / "IM00002"
    assert uid.read_bytes()[128:132] == b"DICM"
    raw.write_bytes(uid.read_bytes()[132:])                            # no preamble, no 'DICM'
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    bare = DicomBytesIO()                                              # no file meta at all: implicit VR, from (0008,...)
    bare.is_little_endian, bare.is_implicit_VR = True, True
    write_dataset(bare, pydicom.dcmread(source))
    (study / "IM00003").write_bytes(bare.getvalue())
    (study / "notes.txt").write_text("not an image\n" * 20)
    (study / "data.bin").write_bytes(bytes(range(256)) * 4)
    fs = FileSet()
    fs.add(pydicom.dcmread(source))
    fs.write(tmp_path / "cd")
    files, notes = expand_inputs([study, tmp_path / "cd"])
    assert not notes and sorted(p.name for p in files) == sorted([uid.name, "IM00002", "IM00003", "IM000000"]), files
    for path in files:
        assert read_file(path).frame.shape[:2] == read_file(uid).frame.shape[:2]
    assert np.array_equal(read_file(raw).frame, read_file(uid).frame)
    assert np.array_equal(read_file(study / "IM00003").frame, read_file(uid).frame)   # its encoding, as read
    with pytest.raises(Err, match="a DICOMDIR") as err:
        read_file(tmp_path / "cd" / "DICOMDIR")
    assert "pass the images it lists" in str(err.value)


def test_an_implausible_cine_frame_rate_is_not_used(tmp_path):
    """FrameTime 0.001 ms (a million fps) or 100 s per frame is a wrong header: pacing by it would skip every
    frame or wait minutes per frame, so the cine gets no rate from it (the stream's default then)."""
    from tests.fixtures.badinput import make_dicom

    frames = np.zeros((3, 32, 32), np.uint8)
    for ms, fps in ((0.001, None), (100000, None), (40, 25.0)):
        path = make_dicom(tmp_path / f"ft{ms}.dcm", frames, frames=3, frame_time_ms=ms, patient=False)
        assert open_dicom(path).fps == (pytest.approx(fps) if fps else None)


def test_stream_of_a_cine_with_a_damaged_frame(tmp_path, runtime_model):
    """`usedge infer --stream cine.dcm`: the damaged frame is an error line with its frame number (the source
    stays the file's path), every other frame is classified, and the exit status says something failed, as
    `usedge infer cine.dcm` does."""
    import subprocess
    import sys

    from pydicom.encaps import encapsulate, generate_fragmented_frames

    ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
    frames = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))]
    frames[3] = b"\x00" * 100
    ds.PixelData = encapsulate(frames)
    ds.save_as(tmp_path / "cine.dcm")
    out = tmp_path / "s.jsonl"
    res = subprocess.run([sys.executable, "-m", "usedge", "infer", str(runtime_model), "--stream", str(tmp_path / "cine.dcm"),
                          "--jsonl", str(out), "-q"], capture_output=True, text=True, timeout=180,
                         env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "1 frame(s) or file(s) could not be classified" in res.stderr.strip().splitlines()[-1]
    records = [json.loads(x) for x in out.read_text().splitlines()]
    errors = [r for r in records if "error" in r]
    assert [(r["source"], r["frame"]) for r in errors] == [(str(tmp_path / "cine.dcm"), 3)]
    assert sorted(r["frame"] for r in records if "error" not in r) == [i for i in range(30) if i != 3]


def test_a_jpeg_named_dcm_is_read_as_the_jpeg_it_is(tmp_path, runtime_model):
    """A PNG named .jpg and a DICOM named .png were read by their bytes, but a JPEG named .dcm was refused
    as "not a DICOM file" (outside audit). Its bytes decide; a damaged file named .dcm still gets the DICOM
    reader's message."""
    import cv2

    from usedge.runtime.dicom import is_dicom
    from usedge.runtime.formats import read_image

    image = np.random.default_rng(0).integers(0, 255, (48, 64), dtype=np.uint8)
    jpeg = tmp_path / "j.dcm"
    jpeg.write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
    assert not is_dicom(jpeg) and read_image(jpeg).shape == (48, 64)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x01\x02" * 200)
    assert is_dicom(junk) and is_dicom(tmp_path / "missing.dcm")
    res = subprocess.run([sys.executable, "-m", "usedge", "infer", str(runtime_model), str(jpeg), str(junk), "-q"],
                         capture_output=True, text=True, timeout=120)
    assert json.loads(res.stdout.splitlines()[0])["source"] == str(jpeg)
    assert "junk.dcm" in res.stderr and "DICOM" in res.stderr and res.returncode == 1, res.stderr


# ------------------------------------------------------------------ outside audit of DICOM pixels, 2026-12-02
def _grey(tmp_path, name, pixels, *, bits_allocated=None, bits_stored=None, photometric="MONOCHROME2", **tags):
    """A native little-endian US DICOM of `pixels` (uint32, float32 or uint8 gray; RGB when H x W x 3)."""
    from tests.fixtures.badinput import make_dicom

    path = make_dicom(tmp_path / name, np.zeros(pixels.shape[:2], np.uint8), patient=False)
    ds = pydicom.dcmread(path)
    if pixels.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
    else:
        ds.PhotometricInterpretation = photometric
    if pixels.dtype.kind == "f":
        ds.BitsAllocated = 32
        del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
        ds.FloatPixelData = pixels.astype("<f4").tobytes()
    else:
        ds.BitsAllocated = bits_allocated or pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)
    return path


def test_32_bit_grey_is_scaled_by_the_bits_its_values_use_not_wrapped_to_16(tmp_path):
    """Values up to ~1.04 M (20 bits) in a 32-bit container were masked to their low 16 bits (correlation 0.74
    with a viewer); now shifted from the 20 bits they use, or from BitsStored when it names fewer bits."""
    g = np.tile(np.arange(256, dtype=np.uint32), (64, 1))
    got = open_dicom(_grey(tmp_path, "u32.dcm", g * 4096)).frame()
    assert np.array_equal(got, g.astype(np.uint8))
    got = open_dicom(_grey(tmp_path, "u32_bs24.dcm", g * 4096, bits_stored=24)).frame()
    assert np.array_equal(got, (g * 4096 >> 16).astype(np.uint8))


def test_float_pixel_data_is_shown_by_its_value_range_not_called_blank(tmp_path):
    """Float data in [0, 1] or around 0 was cut to integers and refused as "blank"."""
    g = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (64, 1))
    for name, x in (("unit.dcm", g), ("centred.dcm", g - 0.5), ("wide.dcm", g * 1000 - 300),
                    ("narrow.dcm", g * 0.5 + 0.25)):       # min..max, not 0..max (regression round)
        got = open_dicom(_grey(tmp_path, name, x)).frame().astype(int)
        assert got.min() == 0 and got.max() == 255 and np.abs(got - np.rint(g * 255)).max() <= 1, name


def test_a_palette_without_its_colour_table_is_one_line_and_a_batch_goes_on(tmp_path):
    """A PALETTE COLOR file without (or with a damaged) lookup table raised pydicom's ValueError as a traceback
    and ended the batch."""
    bad = _grey(tmp_path, "pal.dcm", np.full((64, 64), 7, np.uint8), photometric="PALETTE COLOR")
    with pytest.raises(InputError, match="palette colour table is missing or damaged") as err:
        open_dicom(bad).frame()
    assert "\n" not in err.value.one_line()
    good = _grey(tmp_path, "good.dcm", np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))
    res = CliRunner().invoke(__import__("usedge.cli", fromlist=["app"]).app, ["crop", str(bad), str(good), "--out", str(tmp_path / "o"), "--crop", "none", "-q"])
    assert "Traceback" not in res.output and "palette colour table" in res.output
    assert (tmp_path / "o" / "good.png").exists()


def test_rgb_without_planar_configuration_is_read_pixel_by_pixel(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 50                      # R 200, B 50
    path = _grey(tmp_path, "rgb.dcm", rgb)                 # written without PlanarConfiguration
    assert "PlanarConfiguration" not in pydicom.dcmread(path)
    got = open_dicom(path).frame()
    assert got.shape == (64, 64, 3) and tuple(got[0, 0]) == (50, 0, 200)       # BGR


def test_a_decoder_that_cannot_read_12_bit_jpeg_names_what_to_install_not_damage():
    from usedge.errors import UnsupportedInput

    with pytest.raises(UnsupportedInput) as err:
        open_dicom(pydicom_file("JPGExtended.dcm"), allow_any_modality=True).frame()
    assert "damaged" not in err.value.one_line() and "pip install pylibjpeg" in err.value.one_line()


def test_crop_all_frames_passes_over_a_damaged_cine_frame_as_infer_does(tmp_path):
    """`usedge crop --all-frames` stopped at the first damaged cine frame (the later frames were never
    cropped) while `usedge infer` passed over it."""
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    from usedge.runtime.batch import crop_files

    ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
    n = int(ds.NumberOfFrames)
    frames = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=n)]
    frames[0] = frames[3] = b"\x00" * 100
    ds.PixelData = encapsulate(frames)
    ds.save_as(tmp_path / "cine.dcm")
    errors = []
    run = crop_files([tmp_path / "cine.dcm", tmp_path / "cine.dcm"], PreprocessSpec(size=64), tmp_path / "o",
                     all_frames=True, every=3, on_error=errors.append)
    lines = [json.loads(x) for x in (tmp_path / "o" / "crops.jsonl").read_text().splitlines()]
    cropped = sorted({x["frame"] for x in lines if "output" in x})
    assert cropped == [f for f in range(0, n, 3) if f not in (0, 3)]             # every frame but the damaged ones
    assert len(errors) == 2 and "2 of 10 frames could not be decoded (frame 0, 3; the others were read)" in errors[0]
    assert run.failed == 2


def test_pydicom_warnings_do_not_reach_stderr_unless_debug(tmp_path):
    """A non-conformant header (NumberOfFrames 0) printed two two-line Python warnings with pydicom's source
    paths beside usedge's own lines; --debug still shows them."""
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.NumberOfFrames, ds.Modality = 0, "US"
    ds.save_as(tmp_path / "nof0.dcm")
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "usedge", "crop", str(tmp_path / "nof0.dcm"), "--out", str(tmp_path / "o"), "-q"]
    quiet = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert quiet.returncode == 0 and "Warning" not in quiet.stderr, quiet.stderr
    debug = subprocess.run([cmd[0], "-m", "usedge", "--debug", *cmd[3:]], capture_output=True, text=True, timeout=120, env=env)
    assert "UserWarning" in debug.stderr


def test_a_16_bit_cine_is_scaled_by_one_depth_for_all_its_frames(tmp_path):
    """Frames of one cine (BitsStored = BitsAllocated = 16) holding values up to 1020 and up to 4080 came out
    identical: the depth was guessed per frame, so the scanner's gain changed from frame to frame."""
    from tests.fixtures.badinput import make_dicom

    ramp = np.tile(np.arange(256, dtype=np.uint16), (32, 1))
    px = np.stack([ramp * 4, ramp * 16])                       # up to 1020 (10 bits) and 4080 (12 bits)
    path = make_dicom(tmp_path / "cine16.dcm", px, frames=2, patient=False)
    d = open_dicom(path)
    assert d.bits_stored == d.bits_allocated == 16
    dark, bright = d.frame(0), d.frame(1)
    assert np.array_equal(bright, (ramp * 16 >> 4).astype(np.uint8))          # 12 bits: the cine's depth
    assert np.array_equal(dark, (ramp * 4 >> 4).astype(np.uint8))             # the same depth: 4x darker
    single = make_dicom(tmp_path / "one.dcm", px[0], patient=False)           # a still keeps its own depth
    assert np.array_equal(open_dicom(single).frame(), (ramp * 4 >> 2).astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_a_white_label_on_one_frame_does_not_darken_the_cine_or_a_still(tmp_path, dtype):
    """A 4x10 px label at full white (65535) on one frame of a cine of 12-bit echoes made the one depth for
    the whole cine 16 bits: every frame 16x too dark (regression round of 2026-12-02). A label at full white,
    up to 0.5 % of a frame, is left out of the depth, as for images; it stays white."""
    from tests.fixtures.badinput import make_dicom

    ramp = np.tile(np.arange(0, 4096, 16, dtype=dtype), (64, 1))           # 12-bit echoes, 64 x 256
    labelled = ramp.copy()
    labelled[2:6, 2:12] = 65535
    path = make_dicom(tmp_path / "cine.dcm", np.zeros((3, 64, 256), np.uint16), frames=3, patient=False)
    ds = pydicom.dcmread(path)
    bits = np.dtype(dtype).itemsize * 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelData = np.stack([ramp, labelled, ramp]).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    ds.save_as(path)
    d = open_dicom(path)
    want = (ramp >> 4).astype(np.uint8)
    assert np.array_equal(d.frame(0), want) and np.array_equal(d.frame(2), want)
    got = d.frame(1)
    assert (got[2:6, 2:12] == 255).all() and np.array_equal(got[10:], want[10:])
    ds.NumberOfFrames, ds.PixelData = 1, labelled.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    ds.save_as(tmp_path / "still.dcm")
    assert np.array_equal(open_dicom(tmp_path / "still.dcm").frame()[10:], want[10:])


def test_crop_all_frames_goes_on_after_a_blank_cine_frame_and_counts_the_files_it_cropped(tmp_path):
    """A blank middle frame ended `crop --all-frames` for the whole file (frame 2 never cropped, the error not
    naming the frame), and the last line counted files with any error as not cropped (regression round)."""
    from tests.fixtures.badinput import make_dicom
    from usedge.runtime.batch import crop_files

    rng = np.random.default_rng(0)
    px = rng.integers(20, 200, (3, 96, 128), dtype=np.uint8)
    px[1] = 0
    path = make_dicom(tmp_path / "blank_middle.dcm", px, frames=3, patient=False)
    still = make_dicom(tmp_path / "still.dcm", px[0], patient=False)
    errors = []
    run = crop_files([path, still], PreprocessSpec(size=64, crop="none"), tmp_path / "o", all_frames=True,
                     on_error=errors.append)
    lines = [json.loads(x) for x in (tmp_path / "o" / "crops.jsonl").read_text().splitlines()]
    assert [(x["input"], x["frame"]) for x in lines if "output" in x] == [(str(path), 0), (str(path), 2), (str(still), 0)]
    assert len(errors) == 1 and "frame 1" in errors[0] and "blank" in errors[0]
    assert "wrote 3 crops from 2 of 2 files" in run.line(tmp_path / "o") and "1 with errors (1 of them in part)" in run.line(tmp_path / "o")


def test_a_float_cine_without_a_window_is_stretched_over_the_whole_loop(tmp_path):
    """Float and rescaled cines were stretched frame by frame: a near-black frame (noise 0..3 of 255) came out
    at full contrast and got a label, a dim frame as bright as the others (regression round). One range now."""
    g = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (32, 1))
    frames = np.stack([g * 0.25, g, g * 3 / 255])          # dim, full, near black
    path = _grey(tmp_path, "cine.dcm", frames.reshape(-1, 128))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.NumberOfFrames = 32, 3
    ds.save_as(path)
    d = open_dicom(path)
    full = d.frame(1).astype(int)
    assert full.max() == 255 and abs(int(d.frame(0).max()) - 64) <= 1 and d.frame(2).max() <= 3
