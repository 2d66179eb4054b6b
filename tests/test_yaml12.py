"""YAML 1.2's core schema everywhere forgetlab reads YAML (overrides, config files, run folders'
config.yaml, sweep files), and every documented value of every key accepted as the docs type it."""

import dataclasses
import re
import typing

import pytest

from forgetlab import config as config_module
from forgetlab.errors import ConfigError
from forgetlab.methods.lora import POLICIES, TARGETS

# text -> value under YAML 1.2's core schema (https://yaml.org/spec/1.2.2/#103-core-schema)
CORE_SCHEMA = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
    "off": "off",
    "on": "on",
    "yes": "yes",
    "no": "no",
    "y": "y",
    "n": "n",
    "Off": "Off",
    "tRue": "tRue",
    "null": None,
    "~": None,
    "NULL": None,
    "1e-3": 0.001,
    "1e6": 1e6,
    "1.0e5": 1e5,
    ".5": 0.5,
    "-2.": -2.0,
    "-.inf": float("-inf"),
    "10": 10,
    "010": 10,
    "+7": 7,
    "0o10": 8,
    "0x1F": 31,
    "1_000": "1_000",
    "1:30": "1:30",
    "0b101": "0b101",
    "2024-01-01": "2024-01-01",
    "._": "._",
}


@pytest.mark.parametrize("text", CORE_SCHEMA)
def test_scalars_follow_the_core_schema(text):
    value = config_module.parse_yaml(text)
    assert value == CORE_SCHEMA[text] and type(value) is type(CORE_SCHEMA[text])


def test_dumped_strings_read_back_as_strings():
    # strings that YAML 1.2 (1e5, 0o17) or YAML 1.1 (off, yes, 1_000) would read as something else
    strings = ["1e5", "0o17", "1.0e5", "off", "yes", "1_000", "true", "null", "q,v", ".5"]
    assert config_module.parse_yaml(config_module.dump_yaml(strings)) == strings
    config = config_module.resolve(overrides=["name='1e5'", "out_dir='0o17'"])
    stored = config_module.parse_yaml(config_module.dump(config))
    assert (stored["name"], stored["out_dir"]) == ("1e5", "0o17")


def _leaf_types(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_types(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name], f.metadata.get("help", "")


def _help(key):
    return next(help_text for name, _, help_text in _leaf_types(config_module.RunConfig) if name == key)


def _documented_values():
    """(overrides, key, typed value, expected value): every documented choice of every key, typed
    as its help text shows it (bare words), and every spelling of true/false for boolean keys."""
    cases = [
        ([], key, choice, choice) for key, choices in config_module.documented_choices().items() for choice in choices
    ]
    cases += [
        ([], key, text, value)
        for key, tp, _ in _leaf_types(config_module.RunConfig)
        if tp is bool
        for text, value in {"true": True, "True": True, "TRUE": True, "false": False, "False": False}.items()
    ]
    # the methods' own keys (their config classes keep the choices as constants)
    cases += [(["method.name=lora"], "method.policy", policy, policy) for policy in POLICIES]
    cases += [(["method.name=lora"], "method.targets", target, target) for target in TARGETS]
    cases += [(["method.name=fullrank"], "method.targets", target, target) for target in TARGETS if target != "q,v"]
    return cases


DOCUMENTED = _documented_values()


def test_the_walk_covers_every_key_with_choices():
    keys = {key for _, key, _, _ in DOCUMENTED}
    assert {
        "device",
        "precision",
        "train.compile",
        "train.optimizer",
        "train.schedule",
        "train.select",
        "data.pipeline",
        "eval.upstream_evaluator",
        "eval.knn_bank_dtype",
        "eval.knn_features",
        "eval.knn_cache",
        "preprocess.eval_crop",
        "preprocess.train_interpolation",
        "preprocess.eval_interpolation",
        "preprocess.upstream_eval",
        "method.policy",
        "method.targets",
        "track.wandb",
        "lwf.train_earlier_heads",
        "data.cache_decoded",
    } <= keys
    assert len(DOCUMENTED) >= 70
    # the help text (what `forgetlab config --keys` prints) shows each choice, and quotes no other value
    for key, choices in config_module.documented_choices().items():
        help_text = _help(key)
        assert all(re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", help_text) for choice in choices), key
        quoted = set(re.findall(r"(?<![A-Za-z])'([a-z0-9_\-]+)'", help_text))
        assert quoted <= set(choices), (key, quoted - set(choices))


def test_every_key_whose_help_quotes_names_declares_them_as_choices():
    """So that the walk below reaches every documented value: a key whose help text quotes names must
    carry them as ``choices`` metadata (checked by validate), unless it takes an open set."""
    open_sets = {"backbone.name": "any timm model name"}
    undeclared = [
        key
        for key, _, help_text in _leaf_types(config_module.RunConfig)
        if key not in open_sets
        and key not in config_module.documented_choices()
        and len(re.findall(r"(?<![A-Za-z])'([a-z0-9_\-]+)'", help_text)) >= 2
    ]
    assert undeclared == [], f"give these keys choices=(...) in config.py: {undeclared}"


@pytest.mark.parametrize(
    ("overrides", "key", "typed", "expected"), DOCUMENTED, ids=[f"{key}={typed}" for _, key, typed, _ in DOCUMENTED]
)
def test_every_documented_value_is_accepted_and_round_trips(tmp_path, overrides, key, typed, expected):
    section, _, name = key.rpartition(".")

    def value(config):
        return getattr(getattr(config, section) if section else config, name)

    from_command_line = config_module.resolve(overrides=[*overrides, f"{key}={typed}"])
    assert value(from_command_line) == expected and type(value(from_command_line)) is type(expected)
    # the same value in a YAML file, typed the same way
    path = tmp_path / "c.yaml"
    method_name = "".join(f"\n  name: {o.split('=')[1]}" for o in overrides)  # method.name=...
    path.write_text(f"{section}:{method_name}\n  {name}: {typed}\n" if section else f"{name}: {typed}\n")
    assert config_module.to_dict(config_module.load(path)) == config_module.to_dict(from_command_line)
    # written into a run folder's config.yaml and read back: the same config
    stored = tmp_path / "config.yaml"
    stored.write_text(config_module.dump(from_command_line))
    assert config_module.to_dict(config_module.load_stored(stored)) == config_module.to_dict(from_command_line)


@pytest.mark.parametrize("word", ["no", "yes", "off", "on", "n", "y", "1", "0"])
def test_yaml11_booleans_are_refused_for_boolean_keys(word):
    with pytest.raises(ConfigError, match=rf"^'eval\.knn_cache' must be true or false, got '?{word}'?$"):
        config_module.resolve(overrides=[f"eval.knn_cache={word}"])


def test_an_undocumented_name_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"^train\.compile must be one of: auto, on, off, reduce-overhead; got 'no'$"):
        config_module.resolve(overrides=["train.compile=no"])


def test_sweep_files_and_stored_sweeps_read_yaml12(tmp_path):
    from forgetlab.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nout_dir: runs\ngrid:\n  train.compile: [off, on]\n  eval.knn_cache: [true, FALSE]\n")
    sweep = load_sweep(path)
    assert sorted((cell.config.train.compile, cell.config.eval.knn_cache) for cell in sweep.cells) == [
        ("off", False),
        ("off", True),
        ("on", False),
        ("on", True),
    ]


@pytest.mark.parametrize("tagged", ["!!int abc", "!!int 0o", "!!float x", "!!bool maybe", "!!timestamp 2020"])
def test_a_value_that_does_not_fit_its_tag_is_a_one_line_error(tmp_path, tagged):
    with pytest.raises(ConfigError, match=rf"^'train\.epochs' must be int, got '{re.escape(tagged)}'$"):
        config_module.resolve(overrides=[f"train.epochs={tagged}"])
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  epochs: {tagged}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml is not valid YAML; fix the file$"):
        config_module.load(path)


def test_strings_that_yaml12_reads_as_numbers_survive_sweeps_cells_and_the_api(tmp_path):
    """A sweep grid, a cell's spec file for a worker and the API's keyword overrides write values with
    YAML 1.2's quoting, so the string '1e5' (a float in YAML 1.2, a string in 1.1) stays a string."""
    from forgetlab.api import resolve
    from forgetlab.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nout_dir: runs\ngrid:\n  data.root: ['1e5', '0o17']\n")
    sweep = load_sweep(path)
    assert sorted(cell.config.data.root for cell in sweep.cells) == ["0o17", "1e5"]
    for cell in sweep.cells:
        assert config_module.parse_yaml(config_module.dump_yaml(cell.tree, sort_keys=False)) == cell.tree
    assert resolve(data__root="1e5").data.root == "1e5"
