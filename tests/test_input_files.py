"""Input files from the outside: a multi-page TIFF is read page by page (each page a frame, like a DICOM
cine), never silently as its first page; a file named more than once among the inputs is read once, with
one line saying so; a broken video gives usedge's one line (an MP4 cut before its index says so), without
OpenCV's or FFmpeg's own log lines."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from usedge.errors import InputTooLarge, NoSuchFrame, Undecodable
from usedge.runtime.formats import StillPages, drop_repeats, read_file, read_image_bytes, read_pages
from usedge.runtime.sources import iter_file_frames, open_source

ROOT = Path(__file__).resolve().parents[1]


def usedge(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "usedge", *map(str, args)], capture_output=True, text=True,
                          timeout=180, env=env)


def stack(path: Path, pages: list[np.ndarray]) -> Path:
    assert cv2.imwritemulti(str(path), pages)
    return path


@pytest.fixture()
def three_pages(runtime_images):
    return [cv2.imread(str(p)) for p in sorted(Path(runtime_images).glob("*.png"))][:3]


def test_each_page_is_a_frame(tmp_path):
    pages = [np.full((40, 60), 30 * (i + 1), np.uint8) for i in range(3)] + [np.full((20, 30, 3), 200, np.uint8)]
    path = stack(tmp_path / "s.tif", pages)
    for i, page in enumerate(pages):
        d = read_file(path, frame_index=i)
        assert (d.kind, d.frames_in_file, d.frame_index) == ("tiff", 4, i)
        assert np.array_equal(d.frame, page)                  # pages of other sizes and colours too
    assert [int(d.frame.mean()) for d in read_pages(path)] == [30, 60, 90, 200]
    assert [d.frame_index for d in read_pages(path, every=2)] == [0, 2]
    assert [(i, int(f.mean())) for i, f, _, _ in iter_file_frames(path)] == [(0, 30), (1, 60), (2, 90), (3, 200)]
    with pytest.raises(NoSuchFrame, match="4 pages") as err:
        read_file(path, frame_index=4)
    assert "s.tif" in str(err.value)
    one = stack(tmp_path / "one.tif", pages[:1])
    assert read_file(one).frames_in_file == 1
    with pytest.raises(NoSuchFrame, match="1 page\\b"):
        read_file(one, frame_index=1)
    reader = open_source(str(path))                               # --stream stack.tif: every page, in order
    reader.open()
    assert [int(reader.read().mean()) for _ in range(4)] == [30, 60, 90, 200] and reader.read() is None


def test_a_thumbnail_directory_is_not_a_page(tmp_path):
    """A reduced-resolution copy (NewSubfileType 1: a preview some exporters add) is not a frame."""
    from PIL import Image, TiffImagePlugin

    path = tmp_path / "t.tif"
    big, thumb = Image.fromarray(np.full((40, 60), 90, np.uint8)), Image.fromarray(np.full((10, 15), 5, np.uint8))
    with TiffImagePlugin.AppendingTiffWriter(str(path), new=True) as tf:
        for image, extra in ((big, {}), (thumb, {254: 1}), (big, {})):
            image.save(tf, format="TIFF", tiffinfo=extra)
            tf.newFrame()
    assert cv2.imcount(str(path)) == 3                      # OpenCV counts the preview as a page
    assert read_file(path).frames_in_file == 2
    assert [(d.frame_index, d.frame.shape, int(d.frame.mean())) for d in read_pages(path)] == [(0, (40, 60), 90),
                                                                                               (1, (40, 60), 90)]


def test_a_bomb_on_a_later_page_is_refused_when_that_page_is_read(tmp_path):
    path = stack(tmp_path / "b.tif", [np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)])
    data = path.read_bytes()
    assert read_image_bytes(data, "b.tif", frame_index=1).frame.shape == (8, 8)
    with pytest.raises(InputTooLarge, match="Mpx"):
        read_image_bytes(data, "b.tif", frame_index=1, max_pixels=32)
    # pages are decoded a few at a time: never together with a later page over the limit
    path = stack(tmp_path / "c.tif", [np.full((8, 8), 10 * i, np.uint8) for i in range(3)] + [np.zeros((16, 16), np.uint8)])
    pages = StillPages(path.read_bytes(), "c.tif", max_pixels=100)
    assert [int(pages[i].frame.mean()) for i in range(3)] == [0, 10, 20]
    with pytest.raises(InputTooLarge, match="c.tif"):
        pages[3]


def test_infer_and_crop_read_every_page(tmp_path, runtime_model, three_pages):
    path = stack(tmp_path / "loop.tif", three_pages)
    cv2.imwrite(str(tmp_path / "one.png"), three_pages[0])
    res = usedge("infer", runtime_model, path, "--out", tmp_path / "r.jsonl", "-q")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == [0, 1, 2] and all(r["label"] for r in lines)
    res = usedge("infer", runtime_model, path, tmp_path / "one.png", "--overlay", tmp_path / "ov", "-q")
    assert res.returncode == 0, res.stderr                      # pages named by frame, as a cine's frames are
    assert sorted(p.name for p in (tmp_path / "ov").glob("*.png")) == ["loop_f0000.png", "loop_f0001.png",
                                                                       "loop_f0002.png", "one.png"]
    res = usedge("crop", path, "--out", tmp_path / "crops", "--all-frames", "-q")
    assert res.returncode == 0, res.stderr
    crops = [json.loads(x) for x in (tmp_path / "crops" / "crops.jsonl").read_text().splitlines()]
    assert [c["frame"] for c in crops] == [0, 1, 2]
    res = usedge("crop", path, "--out", tmp_path / "first", "-q")          # as a cine without --all-frames: frame 0
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "first" / "crops.jsonl").read_text().splitlines()) == 1


def test_a_file_named_twice_is_read_once(tmp_path, runtime_model, runtime_images):
    scans = tmp_path / "scans"
    shutil.copytree(runtime_images, scans)
    first = sorted(scans.glob("*.png"))[0]
    (tmp_path / "link.png").symlink_to(first)
    os.link(first, tmp_path / "hard.png")
    assert drop_repeats([first, tmp_path / "hard.png"])[0] == [first]          # a hard link is the same file too
    kept, lines = drop_repeats([first, scans / ".." / "scans" / first.name, first])
    assert kept == [first] and lines == [f"{first}: named 3 times in the inputs (also as {scans}/../scans/{first.name}): read once"]
    res = usedge("infer", runtime_model, scans, first, tmp_path / "link.png", "--out", tmp_path / "r.jsonl", "-q")
    assert res.returncode == 0, res.stderr
    n = len(list(scans.glob("*.png")))
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == n
    notes = [line for line in res.stderr.splitlines() if "times in the inputs" in line]
    assert len(notes) == 1 and "named 3 times" in notes[0] and "link.png" in notes[0] and "read once" in notes[0]


def test_a_broken_video_gives_one_line_without_opencv_or_ffmpeg_log_lines(tmp_path, runtime_model, runtime_video):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(Path(runtime_video).read_bytes()[:600])          # no index (moov): cannot be opened
    res = usedge("infer", runtime_model, "--stream", cut, "-q")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"usedge: {cut}: cannot open this video: its index (moov) is missing "
                                               "— the file was cut short or is still being recorded; copy or export "
                                               "it again"], res.stderr
    (tmp_path / "noise.mp4").write_bytes(bytes(range(256)) * 8 + b"moov")   # not a video at all: the general line
    res = usedge("infer", runtime_model, "--stream", tmp_path / "noise.mp4", "-q")
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].endswith("can decode its codec"), res.stderr


def test_a_tiff_cut_short_gives_its_pages_then_says_it_is_damaged(tmp_path, runtime_model, three_pages):
    """The file's chain of pages breaks (cut short): the pages before are read, then one error says the TIFF
    is damaged after them; it used to look like a shorter TIFF, its other pages silently lost."""
    path = stack(tmp_path / "loop.tif", three_pages + three_pages[:1])
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    pages = StillPages(cut.read_bytes(), str(cut))
    assert pages.damaged and 1 <= len(pages) < 4
    got = []
    with pytest.raises(Undecodable, match=rf"cut.tif: the TIFF is damaged after page {len(pages)}"):
        for i, *_ in iter_file_frames(cut):
            got.append(i)
    assert got == list(range(len(pages)))
    with pytest.raises(Undecodable, match="frame 3 cannot be read: the TIFF is damaged"):
        read_file(cut, frame_index=3)
    res = usedge("infer", runtime_model, cut, "--out", tmp_path / "r.jsonl", "-q")
    assert res.returncode == 1 and "damaged after page" in res.stderr and "Traceback" not in res.stderr
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines if r.get("label")] == list(range(len(pages))) and "error" in lines[-1]


def test_infer_says_when_frames_were_mostly_filled_as_doppler(tmp_path, runtime_model):
    """A strongly tinted B-mode image is mostly 'Doppler' and filled before the model. Wholly tinted,
    nothing is left to classify: its no-image reason says why. Tinted over 80 %, it is classified: each
    result carries doppler_fraction, infer's last line counts such frames and says how to keep the
    colour, and a stream says it once, on the first such frame. (The tiny test model keeps colour, so it
    is loaded with remove_doppler switched on, as `usedge train` records by default.)"""
    import dataclasses

    from usedge.runtime.classifier import Classifier
    from usedge.runtime.pipeline import FramePipeline, run_files
    from usedge.runtime.sinks import CsvSink
    from usedge.synth.phantom import render_view, sample_patient, sample_view

    rng = np.random.default_rng(3)
    p = sample_patient("T0", "lipoma", rng)
    g = render_view(p, sample_view(p, rng), rng)[0]            # as in crop's test of the same note
    tinted = np.dstack([g, g // 2, g])                          # B = g, G = g/2, R = g: magenta-tinted B-mode
    part = np.dstack([g, g, g])
    part[: int(0.8 * len(g))] = tinted[: int(0.8 * len(g))]
    for name, image in (("tinted.png", tinted), ("part.png", part), ("gray.png", g)):
        cv2.imwrite(str(tmp_path / name), image)
    clf = Classifier.load(runtime_model, backend="ort-cpu", threads=1)
    clf.spec = dataclasses.replace(clf.spec, remove_doppler=True)
    no_image = []
    with CsvSink(tmp_path / "r.csv", clf.class_names) as sink:
        run = run_files(FramePipeline(clf, [sink]), [tmp_path / n for n in ("tinted.png", "part.png", "gray.png")],
                        on_no_image=no_image.append)
    assert len(no_image) == 1 and "tinted.png" in no_image[0] and "the crop was more than 50% colour" in no_image[0]
    assert run.mostly_colour == 1 and run.frames == 2
    assert "; 1 frame(s) more than 50% colour, filled as colour Doppler" in run.line() and "remove_doppler=false" in run.line()
    rows = {Path(r["source"]).name: r for r in csv.DictReader((tmp_path / "r.csv").open())}
    assert float(rows["part.png"]["doppler_fraction"]) > 0.5 and float(rows["gray.png"]["doppler_fraction"]) == 0
    res = usedge("infer", runtime_model, tmp_path / "gray.png", "-q")      # the JSON line carries it too
    assert res.returncode == 0 and "colour" not in res.stderr, res.stderr
    assert json.loads(res.stdout)["doppler_fraction"] == 0
    events = []
    pipeline = FramePipeline(clf, stream=True, on_event=events.append)
    for i, frame in enumerate([part[::-1].copy(), part, part.copy(), part[::-1].copy()]):
        pipeline.run_frame(frame, index=i)
    assert [e for e in events if "colour" in e] == [events[0]] and events[0].startswith("frame 0 is more than 50% colour")


def test_a_phone_recording_is_read_the_way_players_show_it(tmp_path):
    """A video whose track says "turn 90 degrees" (a phone's display matrix) is read turned, as players and
    OpenCV show it: the model saw the stored, sideways pixels."""
    import struct

    import av

    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:40, :] = 255                                           # a white band at the top
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for _ in range(3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode())
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd") + 4 + 4 + 4 * 5 + 8 + 8                # the track header's display matrix
    data[at:at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)   # 90 degrees
    path.write_bytes(bytes(data))
    frames = [f.image for f in iter_file_frames(path)]
    assert len(frames) == 3 and frames[0].shape == (160, 120, 3)   # turned: 120 wide, 160 high
    cap = cv2.VideoCapture(str(path))
    ok, shown = cap.read()
    cap.release()
    assert ok and shown.shape == frames[0].shape and np.abs(shown.astype(int) - frames[0]).mean() < 3
    assert frames[0][:, -40:].mean() > 200 and frames[0][:, :80].mean() < 60    # the band is now on the right


def test_a_file_without_video_says_so(tmp_path, runtime_model):
    """An audio-only .mp4 opens fine: it has no video stream, which is what the line says (it said "check
    that FFmpeg can decode its codec")."""
    import av

    path = tmp_path / "voice.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        samples = np.zeros((1, 8000), np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        out.mux(stream.encode(None))
    res = usedge("infer", runtime_model, path, "-q")
    assert res.returncode == 1 and "has no video stream (audio only)" in res.stderr and "Traceback" not in res.stderr


def test_stream_limits_must_not_be_negative(runtime_model, runtime_video):
    for option in ("--max-reconnects", "--idle-timeout"):
        res = usedge("infer", runtime_model, "--stream", runtime_video, option, "-1", "-q")
        assert res.returncode != 0 and f"{option} -1" in res.stderr and "is negative" in res.stderr, res.stderr


def test_output_names_keep_a_uid_named_files_last_part():
    """Files named by their UID (1.2.840...12345.1, .2, .3): the last part is not a suffix to drop (they came
    out as 12345.png, 12345_2.png, 12345_3.png, numbered unlike their UIDs)."""
    from usedge.runtime.sinks import OutputNames

    names = OutputNames()
    got = [names(p) for p in ("s/1.2.840.9.12345.1", "s/1.2.840.9.12345.2", "a/scan.png", "b/scan.png", "c/IM00001")]
    assert got == ["1.2.840.9.12345.1", "1.2.840.9.12345.2", "scan", "scan_2", "IM00001"]
    assert names("c/cine.dcm", frame=3) == "cine_f0003"


def test_hidden_files_and_folders_are_left_out_of_a_folder(tmp_path):
    """A USB stick's macOS `._x.png` (AppleDouble metadata, not a PNG) failed the batch (exit 1), and a
    hidden folder was walked (outside audit). Folder walks leave both out; a file named directly is read."""
    import cv2
    import numpy as np

    from usedge.runtime.formats import expand_inputs

    image = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    (tmp_path / ".hid").mkdir()
    for p in (tmp_path / "ok.png", tmp_path / ".hid" / "y.png", tmp_path / ".shown.png"):
        cv2.imwrite(str(p), image)
    (tmp_path / "._ok.png").write_bytes(b"\x00\x05\x16\x07Mac OS X        ")
    files, notes = expand_inputs([tmp_path])
    assert files == [tmp_path / "ok.png"] and notes == []
    assert expand_inputs([tmp_path / ".shown.png"])[0] == [tmp_path / ".shown.png"]


def test_files_of_other_types_in_a_folder_are_counted_in_one_line(tmp_path, runtime_model, runtime_images):
    """A folder of 25 files with a GIF and text files reported "18/24 files" and nothing about the rest
    (outside audit): one line counts them by suffix; the exit status stays 0 (they are not failures)."""
    import shutil
    import subprocess
    import sys

    shutil.copy(sorted(runtime_images.glob("*.png"))[0], tmp_path / "a.png")
    for name in ("notes.txt", "b.gif", "c.txt"):
        (tmp_path / name).write_text("x")
    res = subprocess.run([sys.executable, "-m", "usedge", "infer", str(runtime_model), str(tmp_path), "-q"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usedge: left out 3 file(s) of other types in the folders (.txt 2, .gif 1)" in res.stderr
