"""The scanner video decodes with OpenCV, has the declared frame count, and its truth matches."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from usedge.errors import ConfigError
from usedge.synth.lesions import CLASSES
from usedge.synth.phantom import render_view, sample_patient, sample_view
from usedge.synth.video import probe_track, write_scanner_video
from tests.fixtures.runtime import opencv_frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "scan.mp4"
    truth = write_scanner_video(path, frames=80, fps=10, size=(640, 360), seed=0, progress=False)
    cap = cv2.VideoCapture(str(path))
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return path, json.loads(truth.read_text()), declared, opencv_frames(path)


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


@pytest.mark.parametrize("seconds", [0.5, 10.0, 60.0])
def test_probe_slides_in_holds_over_the_lesion_and_slides_out(seconds):
    fps, travel = 30.0, 1000.0
    n = int(seconds * fps)
    x = probe_track(n, fps, travel, np.random.default_rng(3))
    assert x.shape == (n,) and x.min() >= 0 and x.max() <= travel
    assert x[0] < 0.05 * travel and x[-1] > 0.95 * travel          # from one edge of the scene to the other
    middle = x[n // 4: 3 * n // 4]                                 # the hold: over the lesion (mid-scene)
    assert np.abs(middle - travel / 2).max() < 0.1 * travel
    if seconds >= 10:                                              # 2-s slides: no jumps between frames
        assert np.abs(np.diff(x)).max() < 0.02 * travel


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


def _depth_bands(gray: np.ndarray, n: int = 8) -> np.ndarray:
    h = gray.shape[0]
    return np.array([gray[i * h // n:(i + 1) * h // n].mean() for i in range(n)])


def test_video_bmode_matches_a_cohort_still_of_its_patient_by_depth(video):
    """The video's B-mode region and cohort-path stills (render_view) of the same patient and view show
    the same gray level in every depth band: one B-mode chain (echo levels, TGC, attenuation, noise,
    display range) for both, whatever the scene width. Tolerance: an eighth of the displayed dynamic
    range; what is left between them is the draw of the anatomy (layer undulation, confounders,
    lesion depth) and speckle, a few dB, while a chain that differed (gain, TGC, range) moves whole
    bands by more."""
    _, truth, _, frames = video
    seed = truth["seed"]
    rng = np.random.default_rng([seed, 31337])  # the video's patient and view, drawn as write_scanner_video does
    label = CLASSES[int(rng.integers(len(CLASSES)))]
    patient = sample_patient(f"video{seed}", label, rng, truth["difficulty"])
    view = sample_view(patient, rng)
    assert (label, patient.patient_id) == (truth["label"], truth["patient_id"])
    assert truth["bmode_size"] == [view.width, view.height] and truth["pixel_mm"] == view.pixel_mm
    ft = truth["frames_truth"]
    best = max(f["lesion_visible"] for f in ft)
    assert best == 1.0
    x, y, w, h = truth["fov_box"]
    shown = [_depth_bands(cv2.resize(cv2.cvtColor(frames[f["frame"]][y:y + h, x:x + w], cv2.COLOR_BGR2GRAY),
                                     (view.width, view.height), interpolation=cv2.INTER_AREA).astype(float))
             for f in ft if f["lesion_visible"] == best]
    stills = [_depth_bands(render_view(patient, view, r)[0].astype(float))
              for r in (rng, np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2]))]
    diff_db = (np.mean(shown, axis=0) - np.mean(stills, axis=0)) * view.settings.dynamic_range_db / 255.0
    assert np.abs(diff_db).max() < view.settings.dynamic_range_db / 8, np.round(diff_db, 1)


def test_curved_avi_and_bad_suffix(tmp_path):
    truth = write_scanner_video(tmp_path / "fan.avi", frames=5, fps=5, size=(480, 320), seed=1, probe="curved",
                                doppler=True, progress=False)
    t = json.loads(truth.read_text())
    assert t["probe"] == "curved" and t["fourcc"] == "MJPG" and t["doppler_box"] is not None
    assert int(cv2.VideoCapture(str(tmp_path / "fan.avi")).get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    with pytest.raises(ConfigError):
        write_scanner_video(tmp_path / "x.mov", frames=2, progress=False)
