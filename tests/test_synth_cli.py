"""usedge synth cohort / frames / video from the command line."""

from __future__ import annotations

import json

import cv2
from typer.testing import CliRunner

from usedge.cli import app
from usedge.dataset import load_dataset
from usedge.errors import ConfigError

runner = CliRunner()


def test_synth_cohort_cli(tmp_path):
    out = tmp_path / "c"
    r = runner.invoke(app, ["synth", "cohort", str(out), "--patients", "1,1,2", "--images", "6", "--seed", "3", "-q",
                            "--freq-mhz", "14,16"])
    assert r.exit_code == 0, r.output
    ds = load_dataset(out)
    assert len(ds) == 6 and len(set(ds.groups)) == 4
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["seed"] == 3 and meta["options"]["freq_mhz"] == [14.0, 16.0]
    r = runner.invoke(app, ["synth", "cohort", str(out), "--patients", "1,1,2", "--images", "6", "-q", "--overwrite"])
    assert r.exit_code == 0, r.output


def test_synth_frames_cli(tmp_path):
    r = runner.invoke(app, ["synth", "frames", str(tmp_path), "--count", "3", "--doppler-fraction", "1",
                            "--curved-fraction", "0.5", "--size", "1280x720", "-q"])
    assert r.exit_code == 0, r.output
    # masks live beside the frames, not among them: crop/infer on frames/ see screens only
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_{i:05d}.png" for i in range(3)]
    assert {p.parent.name for p in tmp_path.rglob("*_doppler.png")} == {"masks"}
    lines = [json.loads(x) for x in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for rec in lines:
        frame = cv2.imread(str(tmp_path / rec["file"]))
        assert frame.shape == (720, 1280, 3) and rec["frame_size"] == [1280, 720]
        mask = cv2.imread(str(tmp_path / rec["doppler_mask"]), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (720, 1280) and mask.max() == 255


def test_synth_video_cli(tmp_path):
    out = tmp_path / "v.mp4"
    r = runner.invoke(app, ["synth", "video", str(out), "--frames", "4", "--size", "480x320", "--label", "lipoma", "-q"])
    assert r.exit_code == 0, r.output
    truth = json.loads(out.with_suffix(".json").read_text())
    assert truth["label"] == "lipoma" and len(truth["frames_truth"]) == 4


def test_bad_option_is_a_config_error(tmp_path):
    r = runner.invoke(app, ["synth", "cohort", str(tmp_path / "x"), "--patients", "1,2"])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError)


def test_synth_cohort_options_at_their_edges(tmp_path):
    """A frequency or depth the phantom's physics cannot take (0, NaN, 1000 MHz) is one line, not a
    ZeroDivisionError or a white image; a negative seed is refused; without --images the count follows
    --patients (698 / 255 per patient) instead of failing for every smaller cohort."""
    for option, value, why in (("--freq-mhz", "0,0", "outside 2..50 MHz"), ("--freq-mhz", "nan,nan", "outside 2..50 MHz"),
                               ("--freq-mhz", "1000,2000", "outside 2..50 MHz"), ("--depth-mm", "0,0", "outside 5..100 mm")):
        r = runner.invoke(app, ["synth", "cohort", str(tmp_path / "x"), "--patients", "2,2,2", "-q", option, value])
        assert r.exit_code != 0 and isinstance(r.exception, ConfigError) and why in str(r.exception), r.output
    r = runner.invoke(app, ["synth", "cohort", str(tmp_path / "x"), "--patients", "2,2,2", "-q", "--seed", "-5"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["synth", "cohort", str(tmp_path / "c"), "--patients", "2,2,2", "-q"])
    assert r.exit_code == 0, r.output
    assert len(load_dataset(tmp_path / "c")) == round(6 * 698 / 255)
