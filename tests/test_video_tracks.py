"""Video files as recorders write them: the main track among several, variable frame rate, damaged data
(outside audit of streams, 2026-12-02). PyAV writes every file here."""

from __future__ import annotations

import fractions

import numpy as np
import pytest

from usedge.runtime.sources import VideoFileReader, iter_file_frames

av = pytest.importorskip("av")


def _frames(n: int, w: int = 160, h: int = 128) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w), dtype=np.uint8)
    out = []
    for i in range(n):                 # a moving texture with a frame number burned in as a bar
        f = np.roll(base, 3 * i, axis=1).copy()
        f[:8, : 4 + i] = 255
        out.append(np.dstack([f, f, f]))
    return out


def _write(path, frames, *, pts=None, thumbnail="", keyint=10) -> None:
    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        t = c.add_stream(thumbnail, rate=1) if thumbnail else None   # a 1-frame picture track first in the file
        if t is not None:
            t.width, t.height, t.pix_fmt = 48, 32, "yuvj420p" if thumbnail == "mjpeg" else "yuv420p"
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"bf": "0", "g": str(keyint), "keyint_min": str(keyint)}
        if t is not None:
            for p in [*t.encode(av.VideoFrame.from_ndarray(np.zeros((32, 48, 3), np.uint8), format="bgr24")),
                      *t.encode()]:
                c.mux(p)
        for i, a in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(a, format="bgr24")
            if pts is not None:                 # variable frame rate: the given times (ms)
                vf.pts, vf.time_base = pts[i], tb
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _read(path) -> tuple[list[tuple[int, np.ndarray]], VideoFileReader]:
    r = VideoFileReader(path)
    r.open()
    out = []
    while (image := r.read()) is not None:
        out.append((r.frame_number, image))
    r.close()
    return out, r


@pytest.mark.parametrize("codec", ["mjpeg", "libx264"])     # an H.264 thumbnail track declares a duration
def test_the_main_video_track_is_read_not_a_thumbnail_track_first_in_the_file(tmp_path, codec):
    path = tmp_path / "twotrack.mkv"
    _write(path, _frames(30), thumbnail=codec)
    got, r = _read(path)
    assert len(got) == 30 and got[0][1].shape[:2] == (128, 160) and not r.ended_early


def test_a_variable_frame_rate_file_is_complete_not_ended_early(tmp_path):
    """30 frames, a 2 s pause, 30 frames: duration x rate "declared" 120 frames and called it truncated."""
    path = tmp_path / "vfr.mkv"
    pts = [round(i * 1000 / 30) for i in range(30)] + [3000 + round(i * 1000 / 30) for i in range(30)]
    _write(path, _frames(60), pts=pts)
    got, r = _read(path)
    assert len(got) == 60 and r.ended_early == "", r.ended_early
    assert [n for n, _ in got] == list(range(60))          # no damage: frames numbered as read


def test_frames_after_damaged_data_are_left_out_and_the_rest_keep_their_numbers(tmp_path):
    """Damaged bytes mid-file: the frames decoded from missing data were classified as live, and every later
    frame was credited to another frame's number."""
    clean, damaged = tmp_path / "clean.mp4", tmp_path / "damaged.mp4"
    _write(clean, _frames(90))
    data = bytearray(clean.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 20000] = np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    damaged.write_bytes(bytes(data))
    reference = dict(_read(clean)[0])
    got, r = _read(damaged)
    numbers = [n for n, _ in got]
    assert 0 < len(got) < 90 and numbers == sorted(set(numbers)) and "damaged" in r.ended_early, r.ended_early
    assert r.concealed > 0 and "decoded from damaged data left out" in r.ended_early
    gap = next(a for a, b in zip(numbers, numbers[1:]) if b != a + 1)
    after = [(n, image) for n, image in got if n > gap]
    assert after and all(np.array_equal(image, reference[n]) for n, image in after)   # each is the frame its number names
    with pytest.raises(Exception, match="damaged"):
        list(iter_file_frames(damaged))


def test_a_video_is_read_whatever_its_name(tmp_path):
    """An MP4 named IM0001 or clip.dat was refused as "not a supported image type ... pass PNG, JPEG" (a
    video's fix is not an image); in a folder it was left out as another type."""
    from usedge.runtime.formats import expand_inputs, video_container

    src = tmp_path / "clip.mp4"
    _write(src, _frames(12))
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("IM0001", "clip.dat"):
        (folder / name).write_bytes(src.read_bytes())
        assert len(list(iter_file_frames(folder / name))) == 12
    (folder / "notes.txt").write_text("not a video")
    files, _ = expand_inputs([folder])
    assert sorted(p.name for p in files) == ["IM0001", "clip.dat"]
    assert video_container(b"\x89PNG\r\n\x1a\n" + bytes(600)) is None and video_container(b"\xff\xd8\xff\xe0" + bytes(600)) is None


def test_a_cut_single_track_file_without_a_frame_count_is_ended_early(tmp_path):
    """Matroska stores no frame count: a cut file is judged by its duration against its last frame's time."""
    whole, cut = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    _write(whole, _frames(60))
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    got, r = _read(whole)
    assert len(got) == 60 and r.ended_early == ""
    got, r = _read(cut)
    assert 0 < len(got) < 60 and "ended early" in r.ended_early, r.ended_early


def test_a_file_that_grows_while_it_is_read_says_so(tmp_path):
    """A recording still being written was read to its current end and reported as a complete run (exit 0)."""
    path = tmp_path / "rec.ts"
    frames = _frames(30)
    _write(path, frames)
    r = VideoFileReader(path)
    r.open()
    first = r.read()
    with open(path, "ab") as fh:            # the recorder writes on while usedge reads
        fh.write(bytes(188 * 50))
    n = 1
    while r.read() is not None:
        n += 1
    r.close()
    assert first is not None and n == 30 and "grew while it was read" in r.ended_early, r.ended_early


def _mjpeg_mkv(path, pts_ms: list[int]) -> list[tuple[int, int]]:
    """An MJPEG Matroska file with the given frame times (ms); returns each packet's (pos, size)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=25)
        s.width, s.height, s.pix_fmt = 160, 128, "yuvj420p"
        for i, a in enumerate(_frames(len(pts_ms))):
            vf = av.VideoFrame.from_ndarray(a, format="bgr24")
            vf.pts, vf.time_base = pts_ms[i], fractions.Fraction(1, 1000)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(str(path)) as c:
        return [(p.pos, p.size) for p in c.demux(video=0) if p.size]


def test_after_damage_in_a_variable_rate_file_frames_keep_their_place_in_the_file(tmp_path):
    """A damaged frame right after a 2 s pause: later frames were numbered by timestamp x nominal rate
    (54, 55, ... in a 12-frame file: regression round of 2026-12-02). A frame's number is now its place among
    the file's packets, the damaged one included."""
    pts = [0, 40, 80, 120, 2120, 2160, 2200, 2240, 2280, 2320, 2360, 2400]
    path = tmp_path / "vfr.mkv"
    pos, size = _mjpeg_mkv(path, pts)[4]
    data = bytearray(path.read_bytes())
    data[pos + 40:pos + size - 40] = bytes(size - 80)          # the JPEG data of frame 4 zeroed
    (tmp_path / "damaged.mkv").write_bytes(bytes(data))
    r = VideoFileReader(tmp_path / "damaged.mkv")
    r.open()
    got = []
    while r.read() is not None:
        got.append((r.frame_number, round(r.time_s, 3)))
    r.close()
    assert got == [(i, t / 1000) for i, t in enumerate(pts) if i != 4], got
    assert "1 damaged packet" in r.ended_early


def test_a_matroska_file_starting_after_0_s_is_complete(tmp_path):
    """Matroska's duration is its end's timestamp: a complete file whose first frame is at 2 s was reported
    as "ended early, at 0.39 s of the 2.39 s" (regression round)."""
    path = tmp_path / "late.mkv"
    _mjpeg_mkv(path, [2000 + 40 * i for i in range(10)])
    got, r = _read(path)
    assert len(got) == 10 and r.ended_early == "" and [n for n, _ in got] == list(range(10))
