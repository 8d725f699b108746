"""A tiny Fast AutoAugment search end to end: valid policy, resumable storage, per-fold lists, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from usedge.dataset import load_dataset
from usedge.errors import ConfigError
from usedge.train.augment import Policy, make_train_augmenter
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


def _run_config(**over):
    from usedge.train.config import load_config

    base = {"data.image_size": 32, "cv.folds": 3, "run.seed": 0}
    base.update(over)
    return load_config(None, base)


@pytest.fixture(scope="module")
def fold_policy(tiny_cohort, tmp_path_factory):
    """A tiny per-fold search for a 3-fold run (seed 0) plus its all-data scope, saved as policy.json."""
    ds = load_dataset(tiny_cohort)
    cfg = SearchConfig.for_run(_run_config(), "usedge", inner_splits=2, trials=2, top=1, ops="ultrasound",
                               child_arch="resnet18", child_image_size=32, child_epochs=1, child_batch_size=8,
                               child_threads=1)
    pol = search(ds, cfg, storage=None, show_progress=False)
    return pol.save(tmp_path_factory.mktemp("fold_policy") / "policy.json")


def _scope_of(sub) -> str:
    scope = sub.source.rsplit("/", 1)[1].split("-split")[0]
    return scope.removeprefix("fold")


def test_no_fold_ever_uses_a_sub_policy_searched_with_its_test_patients(tiny_cohort, fold_policy):
    """Every model of the run gets only sub-policies whose search pool excludes that model's test patients;
    the final all-data model gets the dedicated all-data search."""
    from usedge.train.cv import final_split, make_splits
    from usedge.train.data import TumorDataset

    ds = load_dataset(tiny_cohort)
    pol = Policy.load(fold_policy)
    assert set(pol.meta["scopes"]) == {"0", "1", "2", "all"}
    assert pol.meta["search"]["seed"] == 0 and pol.meta["search"]["folds"] == 3
    assert set(pol.meta["search"]["digests"]) == {"0", "1", "2", "all"}
    run = _run_config()
    augment = make_train_augmenter(fold_policy, "expand", run=(ds, run))
    pools = pol.meta["scope_patients"]
    groups = np.asarray(ds.groups)
    images = np.zeros((len(ds), 32, 32), np.uint8)
    models = [(s, str(s.fold)) for s in make_splits(ds, folds=3, seed=0)] + [(final_split(ds, 0.2, 0), "all")]
    for split, scope in models:
        base = TumorDataset([ds.samples[i] for i in split.train], run.preprocess_spec(), images=images[split.train])
        views = augment(base).datasets[1:]
        used = [v.transform.sub_policy for v in views]
        assert used and {_scope_of(sub) for sub in used} == {scope}
        test_patients = set(groups[split.test].tolist())
        for sub in used:
            assert not test_patients & set(pools[_scope_of(sub)]), f"fold {scope} used a leaky sub-policy"
        # the union of every fold's lists (the old fallback) is never what a fold trains on
        assert len(used) < sum(len(v) for k, v in pol.meta["scopes"].items() if k != "all")


def test_train_refuses_a_policy_searched_for_another_run(tiny_cohort, fold_policy, tmp_path):
    ds = load_dataset(tiny_cohort)
    with pytest.raises(ConfigError, match=r"--folds 3 --seed 0; this run is --folds 3 --seed 1 .*usedge augment "
                                          r"search .* --folds 3 --seed 1"):
        make_train_augmenter(fold_policy, "expand", run=(ds, _run_config(**{"run.seed": 1})))
    with pytest.raises(ConfigError, match="--folds 4"):
        make_train_augmenter(fold_policy, "expand", run=(ds, _run_config(**{"cv.folds": 4})))
    with pytest.raises(ConfigError, match="crop=auto .* this run uses crop=none"):
        make_train_augmenter(fold_policy, "expand", run=(ds, _run_config(**{"data.crop": "none"})))
    with pytest.raises(ConfigError, match="resize=colour-halve-linear, this run uses .* resize=area.* --resize area"):
        make_train_augmenter(fold_policy, "expand", run=(ds, _run_config(**{"data.resize": "area"})))
    old = Policy.load(fold_policy)                  # searched before resize existed: searched with area
    del old.meta["search"]["preprocess"]["resize"]
    with pytest.raises(ConfigError, match="resize=area, this run uses .* resize=colour-halve-linear .*--set data.resize=area"):
        make_train_augmenter(old, "expand", run=(ds, _run_config()))
    make_train_augmenter(old, "expand", run=(ds, _run_config(**{"data.resize": "area"})))
    # through training: refused before the run folder is stamped (it was left with config.toml, folds.csv and
    # run.json, outside audit), so the corrected command can use the same --out
    from usedge.train.trainer import cross_validate

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="resize=colour-halve-linear, this run uses .* resize=area"):
        cross_validate(ds, _run_config(**{"data.resize": "area", "data.policy": str(fold_policy),
                                          "data.augment": "expand"}), out)
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(ConfigError, match="needs the training run"):  # a per-fold policy never falls back
        make_train_augmenter(fold_policy, "expand")
    # a policy without the all-data search: the final model is refused, --no-final-model accepted
    pol = Policy.load(fold_policy)
    del pol.meta["search"]["digests"]["all"], pol.meta["scopes"]["all"]
    with pytest.raises(ConfigError, match="no all-data search for the final model"):
        make_train_augmenter(pol, "expand", run=(ds, _run_config()))
    make_train_augmenter(pol, "expand", run=(ds, _run_config(**{"cv.final_model": False})))


def test_usedge_train_refuses_the_mismatch_in_one_line(tiny_cohort, fold_policy, tmp_path):
    from typer.testing import CliRunner

    from usedge.cli import app

    res = CliRunner().invoke(app, ["train", str(tiny_cohort), "--out", str(tmp_path / "run"), "--policy",
                                   str(fold_policy), "--augment", "expand", "--folds", "3", "--seed", "1",
                                   "--image-size", "32", "--epochs", "1", "--quiet"])
    assert res.exit_code != 0 and not (tmp_path / "run" / "fold0").exists()
    line = str(res.exception) if res.exception and not isinstance(res.exception, SystemExit) else res.output
    assert "--seed 1" in line and "usedge augment search" in line and "\n" not in line.strip()


def test_an_all_data_policy_is_refused_for_cross_validation(tiny_cohort, tmp_path):
    ds = load_dataset(tiny_cohort)
    pol = search(ds, _cfg(folds=0, trials=1, top=1), storage=None, show_progress=False)
    assert set(pol.meta["scopes"]) == {"all"}
    with pytest.raises(ConfigError, match="all data only"):
        make_train_augmenter(pol, "expand", run=(ds, _run_config()))
    make_train_augmenter(pol, "expand")  # outside a CV run (e.g. on another cohort) it is usable


def test_search_prepares_images_with_the_runs_crop(tiny_cohort):
    """A run trained with --crop fov gets policies searched on fov crops (not on the class default)."""
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.data import load_images as train_images
    from usedge.train.search import load_images

    ds = load_dataset(tiny_cohort)
    cfg = SearchConfig.for_run(_run_config(**{"data.crop": "fov", "data.remove_doppler": False}), "usedge",
                               folds=0, inner_splits=2, trials=1, top=1, child_arch="resnet18",
                               child_image_size=32, child_epochs=1, child_threads=1)
    assert (cfg.crop, cfg.remove_doppler, cfg.resize, cfg.seed) == ("fov", False, "colour-halve-linear", 0)
    pol = search(ds, cfg, storage=None, show_progress=False)
    assert pol.meta["search"]["preprocess"] == {"crop": "fov", "remove_doppler": False, "resize": "colour-halve-linear"}
    idx = np.arange(4)
    for resize in ("area", "halve-linear", "colour-halve-linear"):
        spec = PreprocessSpec(size=32, crop="fov", remove_doppler=False, resize=resize)
        want = train_images(ds.samples[:4], spec, progress=False)
        assert np.array_equal(load_images(ds, idx, 32, "fov", False, resize), want)


def test_authors_preset_matches_their_search_code():
    from usedge.train.augment import OP_SETS
    from usedge.train.search import from_preset

    a = from_preset("authors").validate()
    assert (a.child.loss, a.child.epochs, a.child.step_size, a.child.step_gamma) == ("ce", 30, 7, 0.1)
    assert a.heldout == "augmented+original" and a.ops == "paper" and len(OP_SETS["paper"]) == 14
    assert (a.inner_splits, a.trials, a.top, a.ops_per_sub_policy) == (4, 100, 5, 2)
    u = from_preset("usedge")
    assert (u.child.loss, u.child.epochs, u.child.step_size, u.heldout, u.ops) == ("focal", 10, 0, "augmented", "all")


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
    assert set(data["meta"]["scopes"]) == {"all"} and data["meta"]["search"]["folds"] == 0
    assert (tmp_path / "policy.optuna.db").is_file() and (tmp_path / "policy.children").is_dir()
    grid = tmp_path / "grid.png"
    res = CliRunner().invoke(app, ["augment", "preview", str(tiny_cohort), "--policy", str(out), "--out", str(grid),
                                   "--images", "2", "--columns", "3", "--size", "32"])
    assert res.exit_code == 0, res.output
    import cv2

    assert cv2.imread(str(grid), cv2.IMREAD_GRAYSCALE).shape == (2 * 36, 3 * 36)


def test_a_search_rerun_never_reuses_children_or_trials_of_other_patients_or_settings(tiny_cohort, tmp_path):
    """The same storage and child cache, re-used by a search with another seed (other outer and inner
    splits: another fold's test patients in each pool), other child settings, or images changed in place
    under the same names: nothing is reused. They were: the seed-1 policy carried seed 0's sub-policies
    under seed 1's digests, and a changed child setting relabelled the old trials."""
    import shutil

    import cv2

    data = shutil.copytree(tiny_cohort, tmp_path / "data")
    storage, cache = f"sqlite:///{tmp_path / 'search.db'}", tmp_path / "children"
    run = dict(storage=storage, cache_dir=cache, show_progress=False)
    first = search(load_dataset(data), _cfg(trials=2, top=1), **run)
    again = search(load_dataset(data), _cfg(trials=2, top=1), **run)         # the same search resumes
    assert all(s["child_from_cache"] for s in again.meta["splits"])
    assert [s.describe() for s in again.sub_policies] == [s.describe() for s in first.sub_policies]
    import optuna

    def studies() -> int:
        return len(optuna.get_all_study_names(storage))

    assert studies() == 2
    for changed in (_cfg(trials=2, top=1, seed=1), _cfg(trials=2, top=1, heldout="augmented+original")):
        before = studies()
        other = search(load_dataset(data), changed, **run)
        assert studies() == before + 2 and [s["trials"] for s in other.meta["splits"]] == [2, 2]  # its own studies
        if changed.seed != 0:
            assert not any(s["child_from_cache"] for s in other.meta["splits"])
    for png in sorted(data.rglob("*.png"))[:3]:                            # re-cropped in place, same names
        image = cv2.imread(str(png))
        cv2.imwrite(str(png), image[:, ::-1])
    moved = search(load_dataset(data), _cfg(trials=2, top=1), **run)
    assert moved.meta["data_fingerprint"] != first.meta["data_fingerprint"]
    assert not any(s["child_from_cache"] for s in moved.meta["splits"])
