"""Policies: JSON round trip, validation, deterministic application, expand = (1 + N) x the data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from usedge.errors import ConfigError
from usedge.train.augment import (FixedSubPolicy, OpSpec, Policy, RandomSubPolicy, SubPolicy,
                                  make_train_augmenter, policy_for_scope, preview_grid, random_policy)

IMG = (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)


def _policy(n=3) -> Policy:
    subs = [SubPolicy((OpSpec("Rotate", 1.0, 0.5), OpSpec("Gain", 0.5, 0.3)), score=0.1 * i, source=f"s{i}")
            for i in range(n)]
    return Policy(subs, meta={"kind": "test"})


def test_policy_json_round_trip(tmp_path):
    pol = random_policy(7, ops="ultrasound", seed=3)
    path = pol.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["format"] == "usedge-augment-policy" and data["n_sub_policies"] == 7
    first = data["sub_policies"][0]
    assert set(first["ops"][0]) == {"op", "probability", "magnitude"} and "describe" in first
    back = Policy.load(path)
    assert [s.ops for s in back.sub_policies] == [s.ops for s in pol.sub_policies]


@pytest.mark.parametrize("bad", [
    {"format": "other"},
    {"format": "usedge-augment-policy", "sub_policies": []},
    {"format": "usedge-augment-policy", "sub_policies": [{"ops": [{"op": "FlipUD", "probability": 1, "magnitude": 0}]}]},
    {"format": "usedge-augment-policy", "sub_policies": [{"ops": [{"op": "Gain", "probability": 2, "magnitude": 0}]}]},
    {"format": "usedge-augment-policy", "sub_policies": [{"ops": [{"op": "Gain"}]}]},
])
def test_bad_policy_is_a_config_error(tmp_path, bad):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError) as err:
        Policy.load(path)
    assert str(path) in str(err.value)


def test_missing_or_garbage_policy_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Policy.load(tmp_path / "nope.json")
    (tmp_path / "g.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        Policy.load(tmp_path / "g.json")


def test_sub_policy_probability_and_determinism():
    never = SubPolicy((OpSpec("Invert", 0.0, 1.0),))
    always = SubPolicy((OpSpec("Invert", 1.0, 1.0),))
    assert np.array_equal(never(IMG, np.random.default_rng(0)), IMG)
    assert np.array_equal(always(IMG, np.random.default_rng(0)), 255 - IMG)
    sub = _policy().sub_policies[0]
    assert np.array_equal(sub(IMG, np.random.default_rng(9)), sub(IMG, np.random.default_rng(9)))


def test_transforms_follow_numpy_global_seed():
    pol = _policy()
    for t in (RandomSubPolicy(pol), FixedSubPolicy(pol.sub_policies[1])):
        np.random.seed(4)
        a = t(IMG)
        np.random.seed(4)
        assert np.array_equal(a, t(IMG)) and a.shape == IMG.shape and a.dtype == np.uint8


def test_preview_grid_shape():
    grid = preview_grid([IMG, IMG], _policy(), columns=4, size=32)
    assert grid.shape == (2 * 36, 4 * 36) and grid.dtype == np.uint8


def test_policy_for_scope_reads_one_scope_and_refuses_a_missing_one():
    pol = _policy(2)
    pol.meta["scopes"] = {"0": [pol.sub_policies[0].to_dict()], "all": [pol.sub_policies[1].to_dict()]}
    assert [s.source for s in policy_for_scope(pol, "0").sub_policies] == ["s0"]
    assert [s.source for s in policy_for_scope(pol, "all").sub_policies] == ["s1"]
    with pytest.raises(ConfigError, match="scope '1'"):
        policy_for_scope(pol, "1")


def _tumor_set(tmp_path, n=6):
    from usedge.dataset import Sample
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.data import TumorDataset

    samples = [Sample(path=tmp_path / f"{i}.png", label=i % 3, patient_id=f"p{i}") for i in range(n)]
    images = np.stack([np.roll(IMG, i, axis=1) for i in range(n)])
    return TumorDataset(samples, PreprocessSpec(size=48), images=images)


def test_expand_yields_one_plus_n_times_the_data(tmp_path):
    base = _tumor_set(tmp_path)
    pol = _policy(4)
    expanded = make_train_augmenter(pol, "expand")(base)
    assert len(expanded) == (1 + 4) * len(base)
    x0, y0 = expanded[2]
    xb, yb = base[2]
    assert y0 == yb and np.array_equal(x0.numpy(), xb.numpy())  # first block: the originals
    labels = [expanded[i][1] for i in range(len(expanded))]
    assert labels == [base[i][1] for i in range(len(base))] * 5
    x_aug, _ = expanded[len(base) + 2]  # Rotate with p=1: differs from the original
    assert x_aug.shape == xb.shape and not np.array_equal(x_aug.numpy(), xb.numpy())


def test_random_keeps_the_size_and_changes_images(tmp_path, tmp_path_factory):
    base = _tumor_set(tmp_path)
    path = _policy(3).save(tmp_path / "p.json")
    view = make_train_augmenter(path, "random")(base)
    assert len(view) == len(base)
    assert any(not np.array_equal(view[i][0].numpy(), base[i][0].numpy()) for i in range(len(base)))
    with pytest.raises(ConfigError):
        make_train_augmenter(path, "both")


def test_policy_apply_and_expand_on_arrays():
    pol = _policy(4)
    copies = pol.expand(IMG, np.random.default_rng(0))
    assert len(copies) == 1 + 4 and copies[0] is IMG
    assert all(c.shape == IMG.shape and c.dtype == np.uint8 for c in copies)
    a = pol.apply(IMG, np.random.default_rng(3))
    assert np.array_equal(a, pol.apply(IMG, np.random.default_rng(3)))


def test_every_scope_of_a_policy_is_checked_when_it_is_loaded(tmp_path):
    """A bad op, a bad score or an empty list in one fold's scope is refused at load, naming the file: it
    was found only when that fold started training (after the folds before it had trained), and an empty
    scope trained its fold without augmentation."""
    import json

    from usedge.errors import ConfigError

    good = _policy(3)
    for name, scopes, why in (("op.json", {"0": [good.sub_policies[0].to_dict()], "1": [{"ops": [{"op": "Gian",
                              "probability": 0.5, "magnitude": 0.5}]}]}, "unknown op 'Gian'"),
                              ("empty.json", {"0": [good.sub_policies[0].to_dict()], "1": []}, "scope 1 has no sub-policies"),
                              ("score.json", {"0": [{**good.sub_policies[0].to_dict(), "score": "n/a"}]}, "score 'n/a'")):
        d = good.to_dict()
        d["meta"] = {"scopes": scopes}
        (tmp_path / name).write_text(json.dumps(d))
        with pytest.raises(ConfigError, match=why) as err:
            Policy.load(tmp_path / name)
        assert name in err.value.one_line()
