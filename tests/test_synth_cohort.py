"""The synthetic cohort on disk: layout, manifest round trip, determinism, patient grouping."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from usedge.dataset import load_dataset, scan_image_folder
from usedge.errors import ConfigError, OutputError
from usedge.synth.cohort import allocate_views, make_cohort
from usedge.synth.lesions import CLASSES


def test_tiny_cohort_layout_and_manifest_round_trip(tiny_cohort):
    ds = load_dataset(tiny_cohort)
    assert ds.class_names == list(CLASSES)
    assert len(ds) == 24
    meta = json.loads((tiny_cohort / "cohort.json").read_text())
    assert meta["images"] == 24 and meta["seed"] == 0
    for s in ds.samples:
        img = cv2.imread(str(s.path), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(s.mask_path), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.ndim == 2
        assert 200 <= img.shape[0] <= 320 and 280 <= img.shape[1] <= 360
        assert mask.shape == img.shape and set(np.unique(mask)) <= {0, 255}
        x, y, w, h = s.bbox
        ys, xs = np.nonzero(mask)
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert s.path.parent.name == ds.class_names[s.label]


def test_patients_never_span_classes(tiny_cohort):
    ds = load_dataset(tiny_cohort)
    seen = {}
    for s in ds.samples:
        assert seen.setdefault(s.patient_id, s.label) == s.label
    assert len(seen) == 12


def test_plain_image_folder_loads_each_image_as_its_own_patient(tiny_cohort):
    ds = scan_image_folder(tiny_cohort)  # the masks/ folder is not a class
    assert ds.class_names == list(CLASSES)
    assert len(ds) == 24 and len(set(ds.groups)) == 24


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_cohort):
    make_cohort(tmp_path / "a", seed=0, patients=(4, 4, 4), images=24, progress=False)
    make_cohort(tmp_path / "b", seed=1, patients=(1, 1, 1), images=3, progress=False)
    first = sorted((tiny_cohort / "epidermal_cyst").glob("*.png"))[0]
    again = tmp_path / "a" / "epidermal_cyst" / first.name
    assert again.read_bytes() == first.read_bytes()
    assert (tmp_path / "a" / "manifest.csv").read_text() == (tiny_cohort / "manifest.csv").read_text()
    other = sorted((tmp_path / "b" / "epidermal_cyst").glob("*.png"))[0]
    assert other.read_bytes() != first.read_bytes()


def test_view_allocation_matches_paper_counts():
    counts = allocate_views((149, 74, 32), 698, np.random.default_rng(0))
    flat = np.concatenate(counts)
    assert [len(c) for c in counts] == [149, 74, 32]
    assert flat.sum() == 698 and flat.min() >= 1 and flat.max() <= 5


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(ConfigError):
        make_cohort(tmp_path / "x", patients=(2, 2, 2), images=100, progress=False)
    with pytest.raises(ConfigError):
        make_cohort(tmp_path / "x", patients=(2, 2), images=4, progress=False)
    with pytest.raises(ConfigError, match="unknown phantom option"):
        make_cohort(tmp_path / "x", patients=(1, 1, 1), images=3, progress=False, colour="red")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        make_cohort(tmp_path / "full", patients=(1, 1, 1), images=3, progress=False)


def test_synth_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, usedge.synth.cohort, usedge.synth.video, usedge.synth.frames, usedge.cli.synth_cmd; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
