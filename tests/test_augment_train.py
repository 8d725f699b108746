"""`usedge train --policy P --augment expand|random` trains on (1 + N) x or 1 x the images."""

from __future__ import annotations

import json

import pytest

from usedge.train.augment import OpSpec, Policy, SubPolicy

pytest.importorskip("torch")


def test_train_cli_with_expand_policy(tiny_cohort, tmp_path):
    mode, copies = "expand", 1 + 3
    from typer.testing import CliRunner

    from usedge.cli import app

    policy = Policy([SubPolicy((OpSpec("Gain", 0.8, 0.5), OpSpec("FlipLR", 0.5, 0.0)))] * 3).save(tmp_path / "p.json")
    out = tmp_path / "run"
    # --policy alone trains the expanded set (docs/train.md; the default augment=light refused it)
    res = CliRunner().invoke(app, ["train", str(tiny_cohort), "--out", str(out), "--policy", str(policy),
                                   "--epochs", "1", "--image-size", "32", "--arch", "resnet18",
                                   "--folds", "2", "--max-folds", "1", "--no-final-model", "--threads", "1", "-q"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "fold0" / "result.json").read_text())
    epoch = result["history"][0]
    seen = round(epoch["images_per_second"] * epoch["seconds"])
    n = result["sizes"]["train"] * copies
    assert n - 1 <= seen <= n  # a last batch of one image is dropped (BatchNorm)
    assert "policy" in (out / "config.toml").read_text() and f'augment = "{mode}"' in (out / "config.toml").read_text()


def test_train_cli_refuses_augment_without_policy(tiny_cohort, tmp_path):
    from typer.testing import CliRunner

    from usedge.cli import app

    res = CliRunner().invoke(app, ["train", str(tiny_cohort), "--out", str(tmp_path / "r"), "--augment", "expand"])
    assert res.exit_code != 0
