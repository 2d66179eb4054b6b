"""Typed configs: defaults, YAML, overrides, and the errors for bad input."""

from __future__ import annotations

import pytest

from forgetlab import config as config_module
from forgetlab.errors import ConfigError


def test_defaults_follow_paper_1():
    config = config_module.load()
    assert config.method.name == "lora" and config.method.rank == 4 and config.method.dropout == 0.1
    assert config.method.targets == "default" and config.method.alpha is None  # alpha = 2 x rank
    assert config.train.optimizer == "adamw" and config.train.lr == 1e-3 and config.train.weight_decay == 1e-2
    assert config.train.warmup_fraction == pytest.approx(1 / 18)
    assert config.data.tasks == ["fontfamily", "digits", "fontstyle"]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nmethod: {name: lora, rank: 8}\ntrain: {epochs: 2}\n")
    config = config_module.load(path, ["method.rank=16", "train.lr=0.01", "data.tasks=[digits]"])
    assert (config.seed, config.method.rank, config.train.epochs) == (3, 16, 2)
    assert config.train.lr == 0.01 and isinstance(config.train.lr, float)
    assert config.data.tasks == ["digits"]
    # Integers are accepted for floats, comma lists for lists, null for optional values.
    config = config_module.load(None, ["train.lr=1", "data.tasks=digits,fontstyle", "data.max_train=null"])
    assert config.train.lr == 1.0 and config.data.tasks == ["digits", "fontstyle"] and config.data.max_train is None


def test_round_trip_through_dump(tmp_path):
    config = config_module.load(None, ["method.rank=2", "name=x"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config_module.dump(config))
    assert config_module.to_dict(config_module.load(path)) == config_module.to_dict(config)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trian.epochs=2"], "unknown config key 'trian'"),
        (["train.epochs=two"], "'train.epochs' must be int"),
        (["train.epochs=2.5"], "'train.epochs' must be int"),
        (["seed=true"], "'seed' must be int"),
        (["method.name=nope"], "unknown method 'nope'"),
        (["method.rank=0"], "method.rank must be at least 1"),
        (["method.targets=re:blocks.(0"], "method.targets 're:blocks.(0' is not a valid regular expression"),
        (["device=tpu"], "device must be"),
        (["train.epochs=0"], "train.epochs must be at least 1"),
        (["data.tasks=[digits, digits]"], "must not repeat"),
        (["train"], "must look like key=value"),
        (["train=3"], "'train' must be a mapping"),
    ],
)
def test_bad_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config = config_module.load(None, overrides)
        from forgetlab.methods import build_method

        build_method(config.method)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\ntrain: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        config_module.load(path)


def test_describe_lists_every_key_with_help():
    rows = {key: help_text for key, help_text, _ in config_module.describe(config_module.load())}
    assert "train.warmup_fraction" in rows and "1/18" in rows["train.warmup_fraction"]
    assert all(help_text for key, help_text in rows.items() if not key.startswith("method"))
