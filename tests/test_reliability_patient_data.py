"""Patient data never leaves: DICOM files with a planted patient name, ID, birth date, institution and
referring physician go through `usedge infer` (files, overlays, stream, recording, summary), `usedge
crop`, the error paths (no pixels, no decoder, truncated) and the library's describe/repr/logging;
every byte written and printed is searched for the planted values."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.badinput import PLANTED_ID, PLANTED_NAME, encapsulated_jpegls_dicom, make_dicom, scan_like

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
# the planted strings as they could appear: DICOM's PN with ^, its parts, the ID
NEEDLES = [PLANTED_NAME, *PLANTED_NAME.split("^"), PLANTED_ID, "19010101", "Planted Hospital"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("planted")
    frames = np.stack([scan_like(240, 320, seed=i) for i in range(6)])
    make_dicom(folder / "single.dcm", frames[0])
    make_dicom(folder / "cine.dcm", frames, frames=6, frame_time_ms=33.3)
    make_dicom(folder / "report.dcm", None)                                   # no pixel data: error path
    encapsulated_jpegls_dicom(folder / "jpegls.dcm")                          # no decoder: error path
    data = (folder / "single.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) - 20000])         # damaged pixels: error path
    assert PLANTED_ID.encode() in data                                         # the needle really is there
    return folder


def _leaks(blob: bytes) -> list[str]:
    return [n for n in NEEDLES if n.encode() in blob or n.encode("utf-16-le") in blob]


def _scan_tree(root: Path) -> tuple[int, dict[str, list[str]]]:
    n, found = 0, {}
    for p in root.rglob("*"):
        if p.is_file():
            n += 1
            if hits := _leaks(p.read_bytes()):
                found[str(p)] = hits
    return n, found


def _usedge(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "usedge", *(["--debug"] if debug else []), *args]
    return subprocess.run(cmd, capture_output=True, env=ENV, timeout=180)


def test_no_patient_data_in_any_output(planted, runtime_model, tmp_path, reliability_ledger):
    out = tmp_path / "out"
    out.mkdir()
    inputs = [str(planted / n) for n in ("single.dcm", "cine.dcm", "report.dcm", "jpegls.dcm", "truncated.dcm")]
    runs = [
        _usedge("infer", str(runtime_model), *inputs, "--out", str(out / "files.jsonl"), "--overlay", str(out / "ov"),
                "--backend", "ort-cpu", "--threads", "1"),
        _usedge("infer", str(runtime_model), *inputs, "--format", "csv", "--out", str(out / "files.csv"),
                "--backend", "ort-cpu", "--threads", "1", debug=True),
        _usedge("infer", str(runtime_model), "--stream", str(planted / "cine.dcm"), "--jsonl", str(out / "live.jsonl"),
                "--record", str(out / "live.mp4"), "--summary", str(out / "summary.json"), "--backend", "ort-cpu",
                "--threads", "1"),
        _usedge("infer", str(runtime_model), "--stream", str(planted / "report.dcm"), "--backend", "ort-cpu"),
        _usedge("crop", *inputs, "--out", str(out / "crops"), "--size", "64", "--all-frames"),
    ]
    assert runs[0].returncode == 1 and runs[2].returncode == 0 and runs[3].returncode != 0, \
        [r.stderr.decode()[-500:] for r in runs]
    assert (out / "live.mp4").is_file() and len(list((out / "ov").glob("*.png"))) == 7   # 1 + 6 cine frames
    leaks = {f"run {i} {stream}": hits for i, r in enumerate(runs)
             for stream, blob in (("stdout", r.stdout), ("stderr", r.stderr)) if (hits := _leaks(blob))}
    n_files, file_leaks = _scan_tree(out)
    assert not leaks and not file_leaks, {**leaks, **file_leaks}
    assert n_files >= 12
    reliability_ledger.add("patient_data.cli", inputs_tried=len(inputs), processes_run=len(runs),
                           outputs_checked=n_files + 2 * len(runs))


def test_no_patient_data_from_the_library(planted, caplog, reliability_ledger):
    """describe(), repr(), frames, error messages and every log record at DEBUG level."""
    from usedge.errors import UsedgeError
    from usedge.runtime.dicom import open_dicom
    from usedge.runtime.formats import read_file
    from usedge.runtime.sources import open_source

    texts = []
    with caplog.at_level(logging.DEBUG):
        for path in sorted(planted.glob("*.dcm")):
            try:
                d = open_dicom(path)
                texts += [repr(d), str(d.describe())]
                for _, frame in d.frames():
                    assert frame.size
                texts.append(repr(read_file(path).regions))
                reader = open_source(str(path))
                texts += [reader.name, repr(vars(reader).keys())]
            except UsedgeError as exc:
                texts += [exc.one_line(), repr(exc), str(exc.__cause__)]
    texts += [r.getMessage() for r in caplog.records]
    hits = _leaks("\n".join(texts).encode())
    assert not hits, hits
    reliability_ledger.add("patient_data.library", inputs_tried=len(list(planted.glob("*.dcm"))),
                           outputs_checked=len(texts))
