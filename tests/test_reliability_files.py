"""File inputs under faults (issue 16 item 9): non-ultrasound DICOM, DICOM regions off the image,
symlinked and unreadable folders, a FIFO named .png, error messages that name the real cause.
Real files, real pydicom, real CLI processes (unreadable files: root drops its override with setpriv)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from tests.fixtures.crop import pydicom_file
from usedge.errors import UnsupportedInput, Undecodable
from usedge.runtime.crop import prepare
from usedge.runtime.formats import expand_inputs, read_image
from usedge.runtime.preprocess import PreprocessSpec

ROOT = Path(__file__).resolve().parents[1]


def usedge_cli(*args, unprivileged: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m usedge ARGS`; unprivileged: as root, without the capability to read unreadable files."""
    prefix = []
    if unprivileged and os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv: cannot make a file unreadable")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(prefix + [sys.executable, "-m", "usedge", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_non_ultrasound_dicom_refused_unless_allowed(tmp_path):
    ct = pydicom_file("CT_small.dcm")
    with pytest.raises(UnsupportedInput, match="Modality is CT"):
        read_image(ct)
    assert read_image(ct, allow_any_modality=True).ndim == 2
    res = usedge_cli("crop", ct, "--out", tmp_path / "a", "-q")
    assert res.returncode == 1 and "Modality is CT" in res.stderr and "--any-modality" in res.stderr
    res = usedge_cli("crop", ct, "--out", tmp_path / "b", "-q", "--any-modality")
    assert res.returncode == 0, res.stderr
    from usedge.runtime.sources import open_source       # --stream takes it too (it was refused there)
    with pytest.raises(UnsupportedInput, match="Modality is CT"):
        open_source(str(ct))
    assert open_source(str(ct), allow_any_modality=True).read().ndim == 2


def test_dicom_region_on_a_text_corner_is_not_trusted(scanner_frames):
    frame, truth = scanner_frames["linear"]
    h, w = frame.shape[:2]
    corner = (0, 0, w // 5, h // 8)                       # fits the frame, lies on the screen's text
    _, info = prepare(frame, PreprocessSpec(crop="fov"), regions=[corner])
    assert info.method == "detection" and "do not fit" in info.notes[0]
    _, info = prepare(frame, PreprocessSpec(crop="fov"), regions=[tuple(truth["fov_box"])])
    assert info.method == "dicom-regions"                 # a true region is still used


def test_symlinked_and_unreadable_folders_are_reported(tmp_path, scanner_frames):
    data, other = tmp_path / "data", tmp_path / "elsewhere"
    for d in (data / "locked", other):
        d.mkdir(parents=True)
    image = scanner_frames["linear"][0]
    for d in (data, data / "locked", other):
        cv2.imwrite(str(d / "scan.png"), image)
    (data / "linked").symlink_to(other, target_is_directory=True)
    files, notes = expand_inputs([data])
    assert files == [data / "locked" / "scan.png", data / "scan.png"]
    assert len(notes) == 1 and "linked" in str(notes[0]) and "symlinked folder" in str(notes[0])
    (data / "locked").chmod(0)
    try:
        res = usedge_cli("crop", data, "--out", tmp_path / "out", "-q", unprivileged=True)
    finally:
        (data / "locked").chmod(0o755)
    assert res.returncode == 1
    assert "symlinked folder" in res.stderr and "unreadable folder" in res.stderr and "locked" in res.stderr


def test_fifo_named_png_is_skipped_not_waited_on(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    files, notes = expand_inputs([tmp_path])
    assert files == [] and len(notes) == 1 and "not a regular file" in str(notes[0])
    files, notes = expand_inputs([fifo])
    assert files == [] and "not a regular file" in str(notes[0])
    code = ("from usedge.runtime.sources import iter_file_frames\n"
            "from usedge.errors import InputError\n"
            f"try:\n    next(iter(iter_file_frames({str(fifo)!r})))\n"
            "except InputError as e:\n    print(e.one_line())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "not a regular file" in res.stdout, res.stderr


def test_errors_name_the_real_cause(tmp_path):
    data = pydicom_file("examples_ybr_color.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:5000])                          # ends inside the header, before the pixel data
    with pytest.raises(Undecodable, match="truncated") as err:
        read_image(cut)
    assert "report" not in str(err.value)
    (tmp_path / "in").mkdir()
    locked = tmp_path / "in" / "locked.dcm"
    locked.write_bytes(data)
    locked.chmod(0)
    res = usedge_cli("crop", tmp_path / "in", "--out", tmp_path / "out", "-q", unprivileged=True)
    assert res.returncode == 1 and "permission denied" in res.stderr
    assert "truncated" not in res.stderr and "damaged" not in res.stderr


def test_a_broken_link_in_a_folder_is_an_error_line_in_the_results(tmp_path, runtime_model, runtime_images):
    """Skipped entries set exit status 1 but left no line in the results file, and the stderr line said
    "skipped" twice with no fix (outside audit). The results name it too, with what to do."""
    import json
    import shutil

    folder = tmp_path / "s"
    folder.mkdir()
    shutil.copy(sorted(runtime_images.glob("*.png"))[0], folder / "a.png")
    (folder / "broken.png").symlink_to(tmp_path / "nonexistent.png")
    out = tmp_path / "r.jsonl"
    res = subprocess.run([sys.executable, "-m", "usedge", "infer", str(runtime_model), str(folder), "--out", str(out),
                          "-q"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    line = next(x for x in res.stderr.splitlines() if "broken.png" in x)
    assert line.count("skipped") == 1 and "fix or remove the link" in line, line
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    errors = [r for r in rows if "error" in r]
    assert len(rows) == 2 and errors[0]["source"] == str(folder / "broken.png")
    assert "not a regular file" in errors[0]["error"]
