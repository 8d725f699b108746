"""Each result carries its frame's time in the file (`time_s`): a video's presentation timestamp, a DICOM
cine's frame time, none for a still image; so results of a variable-rate or damaged video can be put
back on the video's time line (outside audit of 2026-12-02: frame numbers alone cannot)."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from tests.fixtures.badinput import make_dicom
from tests.test_video_tracks import _frames, _write
from usedge.runtime.pipeline import FramePipeline, run_files
from usedge.runtime.sinks import CsvSink, JsonlSink
from usedge.runtime.sources import VideoFileReader, iter_file_frames, open_source
from usedge.runtime.stream import StreamRunner

PTS_MS = [0, 33, 67, 100, 2100, 2133, 2167, 2200]      # a 2 s pause after the 4th frame (a variable-rate recorder)


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    path = tmp_path_factory.mktemp("vfr") / "vfr.mkv"
    _write(path, _frames(len(PTS_MS)), pts=PTS_MS)
    return path


def test_a_video_frame_carries_its_timestamp_with_either_decoder(vfr):
    got = [(f.index, f.time_s) for f in iter_file_frames(vfr)]       # PyAV
    assert got == [(i, pytest.approx(t / 1000, abs=1e-9)) for i, t in enumerate(PTS_MS)]
    r = VideoFileReader(vfr)
    r._open_opencv()                                                    # OpenCV's FFmpeg backend (no PyAV)
    times = []
    while r.read() is not None:
        times.append(r.time_s)
    r.close()
    assert times == [pytest.approx(t / 1000, abs=1e-6) for t in PTS_MS]


def test_a_cine_has_frame_times_and_a_still_image_none(tmp_path):
    px = np.stack([np.full((64, 64), 40 * (k + 1), np.uint8) for k in range(4)])
    fixed = make_dicom(tmp_path / "fixed.dcm", px, frames=4, frame_time_ms=25.0)
    assert [f.time_s for f in iter_file_frames(fixed)] == pytest.approx([0.0, 0.025, 0.05, 0.075])
    varying = make_dicom(tmp_path / "varying.dcm", px, frames=4, frame_time_ms=25.0)
    import pydicom

    ds = pydicom.dcmread(varying)
    del ds.FrameTime
    ds.FrameTimeVector = [0, 20, 40, 100]         # increments (ms); the first is 0 by definition
    ds.save_as(varying)
    assert [f.time_s for f in iter_file_frames(varying)] == pytest.approx([0.0, 0.02, 0.06, 0.16])
    no_rate = make_dicom(tmp_path / "norate.dcm", px, frames=4)
    assert [f.time_s for f in iter_file_frames(no_rate)] == [None] * 4
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), px[0])
    assert [f.time_s for f in iter_file_frames(still)] == [None]


def test_infer_files_writes_time_s_in_csv_and_jsonl(clf, vfr, tmp_path):
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), _frames(1)[0])
    with CsvSink(tmp_path / "r.csv", clf.class_names) as c, JsonlSink(tmp_path / "r.jsonl") as j:
        run_files(FramePipeline(clf, [c, j]), [vfr, still])
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == len(records) == len(PTS_MS) + 1
    assert [float(r["time_s"]) for r in rows[:-1]] == pytest.approx([t / 1000 for t in PTS_MS], abs=1e-6)
    assert [r["time_s"] for r in records[:-1]] == pytest.approx([t / 1000 for t in PTS_MS], abs=1e-6)
    assert rows[-1]["time_s"] == "" and records[-1]["time_s"] is None          # a still image has no time


def test_the_stream_loop_carries_the_time_through(clf, vfr, tmp_path):
    reader = open_source(str(vfr))
    with JsonlSink(tmp_path / "s.jsonl") as sink:
        StreamRunner(FramePipeline(clf, [sink], stream=True), reader, realtime=False).run()
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [(r["frame"], r["time_s"]) for r in records] == [(i, pytest.approx(t / 1000, abs=1e-6))
                                                            for i, t in enumerate(PTS_MS)]


def test_a_cine_is_timed_by_the_tag_its_frame_increment_pointer_names_and_never_by_invented_times(tmp_path):
    """FrameIncrementPointer names which tag times the frames: a cine naming FrameTime (50 ms) that also
    carried a 10 ms FrameTimeVector got the vector's times; a vector with a negative entry, or 2 entries for
    4 frames, got evenly spaced times from its mean (regression round of 2026-12-02)."""
    import pydicom
    from pydicom.tag import Tag

    px = np.stack([np.full((64, 64), 40 * (k + 1), np.uint8) for k in range(4)])

    def cine(name, **tags):
        path = make_dicom(tmp_path / name, px, frames=4, frame_time_ms=50.0)
        ds = pydicom.dcmread(path)
        for k, v in tags.items():
            if v is None:
                delattr(ds, k)
            else:
                setattr(ds, k, v)
        ds.save_as(path)
        return [f.time_s for f in iter_file_frames(path)]

    assert cine("ft.dcm", FrameIncrementPointer=Tag("FrameTime"), FrameTimeVector=[0, 10, 10, 10]) == \
        pytest.approx([0.0, 0.05, 0.10, 0.15])
    assert cine("ftv.dcm", FrameIncrementPointer=Tag("FrameTimeVector"), FrameTimeVector=[0, 10, 20, 10]) == \
        pytest.approx([0.0, 0.01, 0.03, 0.04])
    assert cine("neg.dcm", FrameTime=None, FrameTimeVector=[0, 20, -5, 25]) == [None] * 4
    assert cine("short.dcm", FrameTime=None, FrameTimeVector=[0, 40]) == [None] * 4


def test_a_stream_of_a_complete_file_with_damage_ends_at_its_end_with_the_damage_as_its_error(clf, tmp_path):
    """A complete file with one damaged packet was "ended early" in a stream (regression round)."""
    from tests.test_video_tracks import _mjpeg_mkv

    pts = [40 * i for i in range(12)]
    path = tmp_path / "v.mkv"
    pos, size = _mjpeg_mkv(path, pts)[4]
    data = bytearray(path.read_bytes())
    data[pos + 40:pos + size - 40] = bytes(size - 80)
    path.write_bytes(bytes(data))
    summary = StreamRunner(FramePipeline(clf, [], stream=True), open_source(str(path)), realtime=False).run()
    assert summary.ended_by == "end of source" and "1 damaged packet" in summary.error, summary
