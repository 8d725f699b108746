"""The scanner video decodes with OpenCV, has the declared frame count, and its truth matches."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from usedge.errors import ConfigError
from usedge.synth.lesions import CLASSES
from usedge.synth.video import write_scanner_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "scan.mp4"
    truth = write_scanner_video(path, frames=80, fps=10, size=(640, 360), seed=0, progress=False)
    cap = cv2.VideoCapture(str(path))
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    return path, json.loads(truth.read_text()), declared, frames


def test_decodes_with_the_declared_frame_count(video):
    path, truth, declared, frames = video
    assert truth["frames"] == 80 == declared == len(frames) == len(truth["frames_truth"])
    assert frames[0].shape == (360, 640, 3)
    assert truth["video"] == path.name and truth["fourcc"] == "mp4v" and truth["label"] in CLASSES
    assert [f["frame"] for f in truth["frames_truth"]] == list(range(80))


def test_fov_box_matches_the_pixels(video):
    _, truth, _, frames = video
    x, y, w, h = truth["fov_box"]
    for f in frames[::10]:
        g = f.astype(float).mean(axis=2)
        inside = g[y + 2:y + h - 2, x + 2:x + w - 2].mean()
        left, right = g[y:y + h, max(0, x - 12):x - 3].mean(), g[y:y + h, x + w + 40:x + w + 60].mean()
        assert inside > 3 * max(left, right, 1.0)


def test_lesion_enters_and_leaves_and_boxes_lie_in_the_view(video):
    _, truth, _, _ = video
    ft = truth["frames_truth"]
    seen = [f["lesion_box"] is not None for f in ft]
    assert any(seen) and not all(seen)
    x, y, w, h = truth["fov_box"]
    for f in ft:
        assert (f["lesion_box"] is None) == (f["lesion_visible"] == 0.0)
        if f["lesion_box"]:
            lx, ly, lw, lh = f["lesion_box"]
            assert x <= lx and y <= ly and lx + lw <= x + w + 1 and ly + lh <= y + h + 1 and lw > 0 and lh > 0


def test_frozen_frames_repeat_and_live_frames_move(video):
    _, truth, _, frames = video
    ft = truth["frames_truth"]
    frozen = [i for i in range(1, len(ft)) if ft[i]["frozen"]]
    live = [i for i in range(1, len(ft)) if not ft[i]["frozen"] and not ft[i - 1]["frozen"]]
    assert frozen and live
    diff = lambda i: float(np.abs(frames[i].astype(int) - frames[i - 1].astype(int)).mean())  # noqa: E731
    assert max(diff(i) for i in frozen) < 0.3 * np.median([diff(i) for i in live])
    for i in frozen:  # the truth of a frozen frame is the last live frame's
        assert ft[i]["lesion_box"] == ft[i - 1]["lesion_box"]


def test_curved_avi_and_bad_suffix(tmp_path):
    truth = write_scanner_video(tmp_path / "fan.avi", frames=5, fps=5, size=(480, 320), seed=1, probe="curved",
                                doppler=True, progress=False)
    t = json.loads(truth.read_text())
    assert t["probe"] == "curved" and t["fourcc"] == "MJPG" and t["doppler_box"] is not None
    assert int(cv2.VideoCapture(str(tmp_path / "fan.avi")).get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    with pytest.raises(ConfigError):
        write_scanner_video(tmp_path / "x.mov", frames=2, progress=False)
