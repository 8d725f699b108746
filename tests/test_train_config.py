"""Config: usedge defaults, the paper preset; TOML and flags override; mistakes are one-line ConfigErrors."""

import pytest

from usedge.errors import ConfigError
from usedge.train.config import TrainConfig, dump_toml, load_config, read_toml


def test_usedge_defaults():
    cfg = load_config()
    assert (cfg.model.arch, cfg.model.gate_norm, cfg.loss.name, cfg.loss.gamma, cfg.loss.alpha) == \
        ("ag_resnet18", "sigmoid", "focal", 3.0, "balanced")
    assert (cfg.data.augment, cfg.optim.schedule, cfg.optim.warmup_epochs, cfg.optim.lr) == ("light", "cosine", 1, 3e-4)
    assert (cfg.data.image_size, cfg.optim.epochs, cfg.cv.folds, cfg.cv.select_on) == (224, 30, 5, "loss")
    assert cfg.to_dict() == TrainConfig().to_dict()   # dataclass defaults == shipped defaults.toml
    assert cfg.data.resize == cfg.preprocess_spec().resize == "colour-halve-linear"   # new models: the fast resize
    assert load_config(overrides={"data.resize": "area"}).preprocess_spec().resize == "area"


def test_one_gate_norm_default():
    from usedge.train.model import AGResNet18, build_model

    assert AGResNet18().gate_norm == build_model().gate_norm == TrainConfig().model.gate_norm


def test_paper_preset_is_the_papers_protocol(tmp_path):
    with pytest.raises(ConfigError, match="policy"):       # FAA 21x needs the searched policy
        load_config("paper")
    cfg = load_config("paper", {"data.policy": str(tmp_path / "policy.json")})
    assert (cfg.model.gate_norm, cfg.model.conv1_init, cfg.data.augment, cfg.data.image_size) == \
        ("paper", "random", "expand", 224)
    assert cfg.loss.alpha == "epidermal_cyst=0.75,lipoma=0.75,pilomatricoma=0.25"
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.step_size, cfg.optim.step_gamma, cfg.optim.epochs,
            cfg.optim.batch_size) == (1e-4, "step", 7, 0.1, 30, 16)
    assert (cfg.cv.folds, cfg.cv.select_on) == (5, "accuracy")
    assert cfg.data.resize == "colour-halve-linear"   # the paper does not specify the resize (docs/train.md)


def test_toml_then_flags_override(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text('[optim]\nepochs = 5\nlr = 3e-4\n[model]\ngate_norm = "softmax"\n')
    cfg = load_config(path, {"optim.epochs": 2, "loss.alpha": "lipoma=0.5", "cv.final_model": "false", "run.seed": None})
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.model.gate_norm) == (2, 3e-4, "softmax")
    assert cfg.loss.alpha == "lipoma=0.5" and cfg.cv.final_model is False and cfg.run.seed == 0


def test_effective_config_round_trips_through_toml(tmp_path):
    cfg = load_config(overrides={"data.image_size": 96, "data.crop": "fov", "optim.lr": 0.001})
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg))
    assert TrainConfig.from_dict(read_toml(path)).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("overrides, match", [
    ({"optim.lrr": 1}, "unknown config key"),
    ({"model.gate_norm": "tanh"}, "gate_norm"),
    ({"optim.epochs": "many"}, "bad value"),
    ({"cv.inner_val_fraction": 0.7}, "inner_val_fraction"),
    ({"data.augment": "random"}, "policy"),
    ({"loss.alpha": "0.75,0.75,0.25"}, "class_name=positive_weight"),   # by index: no longer accepted
    ({"loss.alpha": [0.75, 0.75, 0.25]}, "by class name"),             # an old config.toml's list
    ({"loss.alpha": "lipoma=inf"}, "class_name=positive_weight"),      # trained on NaN losses after stamping --out
    ({"data.crop": "bogus"}, "data.crop"),
    ({"optim.schedule": "linear"}, "schedule"),
    ({"run.amp": "maybe"}, "bad value"),
    ({"data.resize": "bicubic"}, "'data.resize' is 'bicubic'.*use one of area, halve-linear"),
    ({"data.image_size": 100000}, "data.image_size must be at most 2048"),
])
def test_bad_values_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optim\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_a_policy_that_would_be_ignored_is_refused():
    """--policy with data.augment=light (or none) trained unaugmented by FAA and recorded the policy anyway."""
    for augment in ("light", "none"):
        with pytest.raises(ConfigError, match=f"data.augment={augment} does not use it"):
            load_config(None, {"data.policy": "policy.json", "data.augment": augment})
    assert load_config(None, {"data.policy": "policy.json", "data.augment": "random"}).data.policy == "policy.json"
