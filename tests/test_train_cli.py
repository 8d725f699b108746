"""`usedge train` end to end on the tiny synthetic cohort, resume, and one-line errors."""

import json
import shutil

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
            "--set", "cv.max_folds=1", "--set", "cv.final_model=false", "--batch-size", "8", "--set", "run.threads=1",
            "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "balanced accuracy" in result.output and "macro AUC" in result.output   # the last line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["aggregate"]["folds"] == 1 and metrics["config"]["data"]["image_size"] == 32
    assert metrics["config"]["cv"]["final_model"] is False and metrics["config"]["run"]["threads"] == 1
    assert set(metrics["folds"][0]["alpha"]) == {"epidermal_cyst", "lipoma", "pilomatricoma"}   # recorded by name
    assert (out / "fold0" / "best.pt").is_file() and not (out / "fold1").exists()
    again = CliRunner().invoke(app, args)                        # same folder without --resume: refused
    assert again.exit_code != 0 and "--resume" in str(again.exception)
    resumed = CliRunner().invoke(app, args + ["--resume"])       # finished fold is kept, not retrained
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "metrics.json").read_text())["folds"][0]["history"] == metrics["folds"][0]["history"]
    other = tmp_path / "other"                                   # --resume on another data set: refused, run unchanged
    shutil.copytree(tiny_cohort, other)
    (other / "lipoma" / sorted(p.name for p in (other / "lipoma").iterdir())[0]).unlink()
    (other / "manifest.csv").unlink()
    stamp = (out / "run.json").read_text()
    mixed = CliRunner().invoke(app, [other.__fspath__() if a == str(tiny_cohort) else a for a in args] + ["--resume"])
    assert mixed.exit_code != 0 and "data set differs" in str(mixed.exception) and (out / "run.json").read_text() == stamp


def test_bad_option_is_a_config_error(tiny_cohort, tmp_path):
    result = CliRunner().invoke(app, ["train", str(tiny_cohort), "--out", str(tmp_path / "r"), "--set", "model.gate_norm=tanh"])
    assert result.exit_code != 0 and "gate_norm" in str(result.exception)


@pytest.mark.parametrize("sets, match", [
    (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["optim.epochs=many"], "bad value"),
    (["epochs=3"], "section.key=value"),
    (["optim.epochs"], "section.key=value"),
])
def test_set_checks_keys_and_types(tiny_cohort, tmp_path, sets, match):
    args = ["train", str(tiny_cohort), "--out", str(tmp_path / "r")]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and match in str(result.exception)


def test_old_flags_still_work_with_a_deprecation_line(tiny_cohort, tmp_path, monkeypatch):
    import usedge.cli.options as options

    monkeypatch.setattr(options, "_warned", set())
    result = CliRunner().invoke(app, ["train", str(tiny_cohort), "--out", str(tmp_path / "r"), "--gate-norm", "tanh"])
    assert "usedge: --gate-norm is deprecated; use --set model.gate_norm=" in result.output
    assert result.exit_code != 0 and "gate_norm" in str(result.exception)   # the old flag's value reached the config


def test_paper_preset_without_policy_says_what_to_pass(tiny_cohort, tmp_path):
    result = CliRunner().invoke(app, ["train", str(tiny_cohort), "--out", str(tmp_path / "r"), "--config", "paper"])
    assert result.exit_code != 0 and "--policy" in str(result.exception)


def test_help_shows_defaults():
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--set" in result.output and "balanced" in result.output and "(30)" in result.output
    assert "--gate-norm" not in result.output    # old spellings are hidden


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_says_how_to_resume(tiny_cohort, tmp_path, sig):
    """SIGINT while training: one line says the run was interrupted and how to continue it (it said nothing).
    SIGTERM (a scheduler's stop, `kill`) the same: it exited 143 without a line (third audit's limit)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "usedge", "train", str(tiny_cohort), "--out", str(out), "--image-size",
                             "32", "--epochs", "200", "--folds", "3", "--set", "run.threads=1", "--quiet"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "run.json").is_file():       # training has started
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "training interrupted" in err and "--resume" in err and "Traceback" not in err


def test_out_naming_a_file_says_so(tiny_cohort, tmp_path):
    """It blamed "File exists" on afile/run.json (third audit's limit); export did the same."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for args in (["train", str(tiny_cohort)], ["export", str(tmp_path / "model.pt")]):
        result = CliRunner().invoke(app, [*args, "--out", str(afile)])
        assert result.exit_code != 0 and "--out is a file, not a folder" in str(result.exception), result.output
    assert afile.read_text() == "mine"


def test_negative_threads_is_a_config_error(tiny_cohort, tmp_path):
    result = CliRunner().invoke(app, ["train", str(tiny_cohort), "--out", str(tmp_path / "r"), "--set", "run.threads=-3"])
    assert result.exit_code != 0 and "run.threads must be >= 0" in str(result.exception)


def test_a_resumed_fold_says_after_which_epoch(tiny_cohort, tmp_path):
    # a long run folder with [brackets]: each message stays one line (Rich wraps at 80 columns when it sees
    # no terminal) and the brackets print as they are (they were read as Rich markup and vanished)
    out = tmp_path / ("[old] runs " + "r" * 70)
    args = ["train", str(tiny_cohort), "--out", str(out), "--image-size", "32", "--epochs", "2", "--folds", "3",
            "--set", "cv.max_folds=1", "--set", "cv.final_model=false", "--batch-size", "8", "--set", "run.threads=1",
            "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    (out / "fold0" / "result.json").unlink()          # as if stopped after its last epoch, before testing
    resumed = CliRunner().invoke(app, args + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"fold 0: resumed after epoch 2 of 2 (from {out / 'fold0' / 'last.pt'})" in resumed.output.splitlines()


def test_a_class_name_typed_wrong_leaves_the_out_folder_usable(tiny_cohort, tmp_path):
    """--alpha with a name that is no class stamped --out first: the corrected command was then refused
    (\"already holds a run\"), and with --resume too (\"the config differs\") (outside audit of the docs)."""
    out = tmp_path / "run"
    args = ["train", str(tiny_cohort), "--out", str(out), "--image-size", "32", "--epochs", "1", "--folds", "3",
            "--set", "cv.max_folds=1", "--set", "cv.final_model=false", "--batch-size", "8", "--set", "run.threads=1",
            "--quiet"]
    typo = CliRunner().invoke(app, args + ["--alpha", "lipoma=0.5,lipomma=1"])
    assert typo.exit_code != 0 and "lipomma" in str(typo.exception)
    assert not (out / "run.json").exists()
    folds = CliRunner().invoke(app, [a if a != "3" else "10" for a in args])       # 4 patients a class
    assert folds.exit_code != 0 and "patients" in str(folds.exception) and "inner_val" not in str(folds.exception)
    crop = CliRunner().invoke(app, args + ["--set", "data.crop=bogus"])            # was blamed on an image
    assert crop.exit_code != 0 and "data.crop" in str(crop.exception) and ".png" not in str(crop.exception)
    assert not (out / "run.json").exists()
    outside = CliRunner().invoke(app, args + ["--set", "data.crop=5000,5000,10,10"])  # fails on the first image,
    assert outside.exit_code != 0 and "outside" in str(outside.exception)          # after the folder is stamped:
    assert CliRunner().invoke(app, args + ["--alpha", "lipoma=0.5"]).exit_code == 0  # a run of no epoch is no run
