"""`usedge train` end to end on the tiny synthetic cohort, resume, and one-line errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from usedge.cli import app


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_usedge_train_writes_a_run_and_resumes(tiny_cohort, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(tiny_cohort), "--out", str(out), "--image-size", "32", "--epochs", "1", "--folds", "3",
            "--max-folds", "1", "--no-final-model", "--batch-size", "8", "--threads", "1", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["aggregate"]["folds"] == 1 and metrics["config"]["data"]["image_size"] == 32
    assert (out / "fold0" / "best.pt").is_file() and not (out / "fold1").exists()
    again = CliRunner().invoke(app, args)                        # same folder without --resume: refused
    assert again.exit_code != 0 and "--resume" in str(again.exception)
    resumed = CliRunner().invoke(app, args + ["--resume"])       # finished fold is kept, not retrained
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "metrics.json").read_text())["folds"][0]["history"] == metrics["folds"][0]["history"]


def test_bad_option_is_a_config_error(tiny_cohort, tmp_path):
    result = CliRunner().invoke(app, ["train", str(tiny_cohort), "--out", str(tmp_path / "r"), "--gate-norm", "tanh"])
    assert result.exit_code != 0 and "gate_norm" in str(result.exception)
