"""A tiny Fast AutoAugment search end to end: valid policy, resumable storage, per-fold lists, CLI."""

from __future__ import annotations

import json

import pytest

from usedge.dataset import load_dataset
from usedge.errors import ConfigError
from usedge.train.augment import Policy, make_train_augmenter, policy_for_patients
from usedge.train.search import ChildConfig, SearchConfig, search

pytest.importorskip("optuna")
pytest.importorskip("torch")

TINY_CHILD = ChildConfig(arch="resnet18", image_size=32, epochs=1, batch_size=8, threads=1)


def _cfg(**kw) -> SearchConfig:
    base = dict(inner_splits=2, trials=4, top=2, ops="ultrasound", child=TINY_CHILD, seed=0)
    base.update(kw)
    return SearchConfig(**base)


def test_tiny_search_writes_a_valid_resumable_policy(tiny_cohort, tmp_path):
    ds = load_dataset(tiny_cohort)
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    pol = search(ds, _cfg(), storage=storage, cache_dir=tmp_path / "children", show_progress=False)
    assert len(pol) == 2 * 2  # inner splits x top
    out = pol.save(tmp_path / "policy.json")
    back = Policy.load(out)
    assert [s.describe() for s in back.sub_policies] == [s.describe() for s in pol.sub_policies]
    for sub in back.sub_policies:
        assert len(sub.ops) == 2 and sub.score is not None and sub.source
    splits = pol.meta["splits"]
    assert [s["trials"] for s in splits] == [4, 4] and not any(s["child_from_cache"] for s in splits)
    # both inner splits' held-out parts hold distinct patients, and together all images
    assert sum(s["n_heldout"] for s in splits) == len(ds)

    # resume: the same storage continues to 6 trials per split, children come from the cache
    more = search(ds, _cfg(trials=6), storage=storage, cache_dir=tmp_path / "children", show_progress=False)
    assert [s["trials"] for s in more.meta["splits"]] == [6, 6]
    assert all(s["child_from_cache"] for s in more.meta["splits"])

    # another op set in the same storage is refused instead of silently mixed
    with pytest.raises(ConfigError, match="another op set"):
        search(ds, _cfg(ops="paper"), storage=storage, show_progress=False)


def test_per_fold_search_and_training_hook(tiny_cohort, tmp_path):
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.cv import make_splits
    from usedge.train.data import TumorDataset

    ds = load_dataset(tiny_cohort)
    pol = search(ds, _cfg(folds=2, max_folds=1, trials=2, top=1, objective="accuracy"), storage=None,
                 show_progress=False)
    assert set(pol.meta["folds"]) == {"0"} and len(pol) == 2
    split = make_splits(ds, folds=2, seed=0)[0]
    train_patients = {ds.samples[i].patient_id for i in split.train}
    chosen = policy_for_patients(pol, train_patients)
    assert chosen.meta["fold"] == "0"
    assert not train_patients & {ds.samples[i].patient_id for i in split.test}
    spec = PreprocessSpec(size=32)
    import numpy as np

    samples = [ds.samples[i] for i in split.train]
    base = TumorDataset(samples, spec, images=np.zeros((len(samples), 32, 32), np.uint8))
    assert len(make_train_augmenter(pol, "expand")(base)) == (1 + len(chosen)) * len(base)


def test_search_config_is_validated():
    with pytest.raises(ConfigError):
        _cfg(top=10, trials=4).validate()
    with pytest.raises(ConfigError):
        _cfg(objective="auc").validate()
    with pytest.raises(ConfigError):
        _cfg(ops="Nope").validate()


def test_cli_search_and_preview(tiny_cohort, tmp_path):
    from typer.testing import CliRunner

    from usedge.cli import app

    out = tmp_path / "policy.json"
    res = CliRunner().invoke(app, ["augment", "search", str(tiny_cohort), "--out", str(out), "--folds", "0",
                                   "--inner-splits", "2", "--trials", "3", "--top", "1", "--child-arch", "resnet18",
                                   "--child-size", "32", "--child-epochs", "1", "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["n_sub_policies"] == 2 and data["meta"]["storage"].startswith("sqlite:///")
    assert (tmp_path / "policy.optuna.db").is_file() and (tmp_path / "policy.children").is_dir()
    grid = tmp_path / "grid.png"
    res = CliRunner().invoke(app, ["augment", "preview", str(tiny_cohort), "--policy", str(out), "--out", str(grid),
                                   "--images", "2", "--columns", "3", "--size", "32"])
    assert res.exit_code == 0, res.output
    import cv2

    assert cv2.imread(str(grid), cv2.IMREAD_GRAYSCALE).shape == (2 * 36, 3 * 36)
