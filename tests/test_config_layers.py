"""Config layers: every pair of layers (preset, config file, a sweep's base_config, base, variants and
grid keys, command-line overrides, forgetlab.run's keyword arguments) merges by the one rule of
:func:`forgetlab.config.merge`, through the entry point that stacks them (``forgetlab config``,
:func:`forgetlab.sweep.load_sweep`, :func:`forgetlab.api.resolve`)."""

from __future__ import annotations

import pytest
import yaml

from forgetlab import config as config_module
from forgetlab.cli import main
from forgetlab.errors import ConfigError

# What a lower layer gives (paper settings in a file), and what the layer above it adds: one key of the
# same sections each, and one key both give (the upper one wins).
LOWER = {
    "train": {"epochs": 20, "lr": 0.01, "batch_size": 32, "optimizer": "sgd"},
    "method": {"name": "lora", "rank": 8, "scaling": "rslora"},
}
UPPER = {"train": {"max_steps": 5, "lr": 0.05}, "method": {"dropout": 0.2}}
EXPECTED = {
    "train.epochs": 20,
    "train.lr": 0.05,
    "train.batch_size": 32,
    "train.optimizer": "sgd",
    "train.max_steps": 5,
    "method.name": "lora",
    "method.rank": 8,
    "method.scaling": "rslora",
    "method.dropout": 0.2,
}
# paper1-vit's own values of the same keys, for a preset below
PRESET_EXPECTED = {
    "train.batch_size": 32,
    "train.schedule": "hf_cosine",
    "method.rank": 32,
    "data.upstream": "imagenet",
    "train.lr": 0.05,
    "train.max_steps": 5,
    "method.dropout": 0.2,
}

# (lower, upper): every pair that one entry point stacks, lower first
PAIRS = [
    *[("preset", upper) for upper in ("base", "command line", "variant", "grid", "keyword arguments")],
    ("variant preset", "base"),
    ("variant preset", "variant"),
    ("variant preset", "grid"),
    ("config file", "command line"),
    ("config file", "keyword arguments"),
    ("config", "keyword arguments"),
    *[("base_config", upper) for upper in ("base", "command line", "variant", "grid")],
    *[("base", upper) for upper in ("command line", "variant", "grid")],
    ("command line", "variant"),
    ("command line", "grid"),
    ("variant", "grid"),
    ("grid", "grid"),
]
SWEEP_KINDS = {"preset", "variant preset", "base_config", "base", "variant", "grid"}


def _leaves(tree: dict, prefix: str = "") -> dict:
    """``{dotted key: value}`` of a nested tree."""
    flat = {}
    for key, value in tree.items():
        flat.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _assignments(tree: dict) -> list[str]:
    return [
        f"{key}={config_module.dump_yaml(value, default_flow_style=True).strip()}"
        for key, value in _leaves(tree).items()
    ]


def _stack(tmp_path, lower: str, upper: str, lower_tree: dict, upper_tree: dict):
    """The resolved config of ``lower_tree`` as layer ``lower`` with ``upper_tree`` as layer ``upper``
    on top, through the entry point that stacks the two."""
    if upper == "keyword arguments":
        from forgetlab.api import resolve

        kwargs = {key.replace(".", "__"): value for key, value in _leaves(upper_tree).items()}
        if lower == "preset":
            return resolve(preset="paper1-vit", **kwargs)
        if lower == "config":
            return resolve(config_module.resolve(lower_tree), **kwargs)  # a RunConfig
        return resolve(_file(tmp_path, "lower.yaml", lower_tree), **kwargs)
    if {lower, upper} & SWEEP_KINDS:
        return _sweep(tmp_path, [(lower, lower_tree), (upper, upper_tree)]).cells[0].config
    assert (lower, upper) == ("config file", "command line")
    return config_module.load(_file(tmp_path, "lower.yaml", lower_tree), _assignments(upper_tree))


def _file(tmp_path, name: str, tree: dict):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def _sweep(tmp_path, layers: list[tuple[str, dict]]):
    from forgetlab.sweep import load_sweep

    sweep: dict = {"name": "layers", "out_dir": str(tmp_path / "runs"), "grid": {}}
    overrides: list[str] = []
    for index, (kind, tree) in enumerate(layers):
        if kind == "preset":
            sweep["base_preset"] = "paper1-vit"
        elif kind == "variant preset":
            sweep["grid"]["variant"] = [{"label": "v", "preset": "paper1-vit"}]
        elif kind == "base_config":
            sweep["base_config"] = _file(tmp_path, "paper.yaml", tree).name
        elif kind == "base":
            sweep["base"] = tree
        elif kind == "command line":
            overrides = _assignments(tree)
        elif kind == "variant":
            variant = sweep["grid"].setdefault("variant", [{"label": "v"}])[0]
            variant.update(_leaves(tree))  # dotted keys, as variants are usually written
        elif kind == "grid" and index == 0:
            sweep["grid"].update({section: [values] for section, values in tree.items()})  # whole sections
        else:
            sweep["grid"].update({key: [value] for key, value in _leaves(tree).items()})  # dotted keys
    sweep["grid"] = sweep["grid"] or {"seed": [0]}
    return load_sweep(_file(tmp_path, "sweep.yaml", sweep), overrides)


def _values(config, keys) -> dict:
    return {key: getattr(getattr(config, key.split(".")[0]), key.split(".")[1]) for key in keys}


@pytest.mark.parametrize("lower, upper", PAIRS, ids=[f"{lower}<{upper}" for lower, upper in PAIRS])
def test_a_layer_adds_to_the_sections_below_it_key_by_key(tmp_path, lower, upper):
    config = _stack(tmp_path, lower, upper, LOWER, UPPER)
    expected = PRESET_EXPECTED if "preset" in lower else EXPECTED
    assert _values(config, expected) == expected


@pytest.mark.parametrize("lower, upper", PAIRS, ids=[f"{lower}<{upper}" for lower, upper in PAIRS])
def test_a_layer_naming_another_method_starts_from_its_defaults(tmp_path, lower, upper):
    config = _stack(tmp_path, lower, upper, LOWER, {"method": {"name": "linear"}, "train": {"max_steps": 5}})
    assert config_module.to_dict(config.method) == config_module.to_dict(
        config_module.method_config_from_dict({"name": "linear"})
    )
    assert config.train.max_steps == 5 and config.train.batch_size == 32  # the sections below keep their keys


WHERE = {
    "config file": "config file in {tmp}/lower.yaml",
    "base_config": "base_config in {tmp}/paper.yaml",
    "base": "base in {tmp}/sweep.yaml",
    "command line": "command line",
    "variant": "grid.variant 'v' in {tmp}/sweep.yaml",
    "grid": "grid.train.epochz in {tmp}/sweep.yaml",
    "keyword arguments": "keyword arguments",
}


@pytest.mark.parametrize("lower, upper", PAIRS, ids=[f"{lower}<{upper}" for lower, upper in PAIRS])
def test_an_error_names_the_layer_and_file_of_its_key(tmp_path, lower, upper):
    for bad, tree in ((upper, {"train": {"epochz": 3}}), (lower, {"train": {"epochz": 3}})):
        if "preset" in bad or bad == "config" or (lower, upper) == ("grid", "grid"):
            continue  # a preset is valid; a config object cannot hold the key; one grid is the other
        trees = (tree, UPPER) if bad == lower else (LOWER, tree)
        with pytest.raises(ConfigError) as error:
            _stack(tmp_path, lower, upper, *trees)
        message = str(error.value)
        where = WHERE[bad].format(tmp=tmp_path)
        assert "unknown config key 'train.epochz'" in message and message.endswith(f"(set by {where})"), message
        assert len(message.splitlines()) == 1


def test_the_merge_rule_itself():
    below = {"backbone": {"kwargs": {"depth": 2}}, "method": {"name": "lora", "rank": 8}, "train": {"epochs": 2}}
    merged = config_module.merge(
        below, {"backbone.kwargs.embed_dim": 64, "method": {"rank": 16}, "train": None, "seed": 3}
    )
    assert merged == {
        "backbone": {"kwargs": {"depth": 2, "embed_dim": 64}},
        "method": {"name": "lora", "rank": 16},
        "train": {"epochs": 2},
        "seed": 3,
    }
    assert config_module.merge(below, {"method.name": "full"})["method"] == {"name": "full"}
    assert config_module.merge({}, {"method": {"name": "lora", "rank": 2}})["method"] == {
        "name": "lora",
        "rank": 2,
    }  # lora is the default
    assert below["method"] == {"name": "lora", "rank": 8}  # neither argument changes


def test_a_base_config_naming_out_dir_is_refused_naming_its_file(tmp_path):
    tree = {"out_dir": "elsewhere", "name": "paper", **LOWER}
    with pytest.raises(ConfigError, match=r"'out_dir' in base_config .*paper\.yaml.*remove it from .*paper\.yaml"):
        _sweep(tmp_path, [("base_config", tree), ("base", UPPER)])
    del tree["out_dir"]  # a run config's name is the run's folder: the cells have their own
    sweep = _sweep(tmp_path, [("base_config", tree), ("base", UPPER)])
    assert [cell.config.name for cell in sweep.cells] == ["seed0"]


def test_the_run_command_stacks_a_preset_and_the_command_line(tmp_path, capsys):
    assert main(["config", "--preset", "paper1-vit", "train.max_steps=5", "method.dropout=0.2", "train.lr=0.05"]) == 0
    printed = config_module.resolve(config_module.parse_yaml(capsys.readouterr().out))
    assert _values(printed, PRESET_EXPECTED) == PRESET_EXPECTED
    assert main(["config", "--preset", "paper1-vit", "method.name=linear"]) == 0
    assert config_module.parse_yaml(capsys.readouterr().out)["method"] == {"name": "linear"}


def test_a_run_without_a_name_is_named_by_what_differs_from_the_defaults(tmp_path):
    assert config_module.load().name == "default"  # the demo's runs/default
    assert config_module.load(None, ["method.rank=16", "train.epochs=2"]).name == "r16-epochs2"
    assert config_module.load(None, ["method.name=linear", "seed=1"]).name == "linear-seed1"
    assert config_module.load(None, ["method.rank=16", "name=mine"]).name == "mine"
    assert config_module.load(None, ["out_dir=elsewhere", "track.tensorboard=true"]).name == "default"  # not identity
    many = [
        "data.tasks=[digits, fontstyle, fontfamily]",
        "train.lr=0.1234567",
        "train.weight_decay=0.5",
        "backbone.weights=/some/folder/a_long_weights_file_name.safetensors",
        "train.warmup_fraction=0.25",
    ]
    long_names = {config_module.load(None, [*many, f"eval.knn_k={k}"]).name for k in (7, 8)}
    assert len(long_names) == 2 and all(len(name) <= 80 for name in long_names)  # cut, and told apart by the hash


def test_a_tab_in_a_yaml_file_is_named(tmp_path):
    path = tmp_path / "tabbed.yaml"
    path.write_text("seed: 1\ntrain:\n\tepochs: 2\n")
    with pytest.raises(ConfigError, match=rf"^tab character at line 3 of {path}; YAML indents with spaces$"):
        config_module.load(path)


def test_a_misspelt_timm_name_suggests_its_own_family_first():
    import timm

    from forgetlab.models.backbones import closest_names

    names = timm.list_models()
    assert closest_names("vit_tiny", names)[0].startswith("vit_tiny_patch16")
    assert closest_names("resnet05", names)[0] == "resnet50"
    assert closest_names("vit_bse_patch16_224", names)[0] == "vit_base_patch16_224"
