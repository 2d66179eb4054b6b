"""A method of one's own, from one file and the public decorator: the example of docs/extending.md
("Adding a method"), loaded as a user's module, is a method for config, sweeps, runs and labels."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import forgetlab
from forgetlab import config as config_module
from forgetlab import plugins
from forgetlab.analysis.collect import RunResult
from forgetlab.cli import main
from forgetlab.errors import ConfigError
from forgetlab.methods import build_method, registry
from forgetlab.models.multihead import MultiHeadModel
from forgetlab.results import RunFolder
from forgetlab.sweep import load_sweep
from tests.conftest import random_backbone, tiny_overrides

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture
def bitfit(tmp_path, monkeypatch):
    """The guide's example as the user's own file, imported; the registry is restored afterwards."""
    section = GUIDE.read_text().split("## Adding a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "bitfit.py"
    path.write_text(code)
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    spec = importlib.util.spec_from_file_location("bitfit_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guides_method_is_checked_with_the_config_and_listed(bitfit, capsys):
    assert forgetlab.register_method is registry.register_method
    assert registry.method_class("bitfit") is bitfit.BitFit
    with pytest.raises(ConfigError, match="^method.scope must be one of: all, mlp; got 'attn'$"):
        config_module.load(None, ["method.name=bitfit", "method.scope=attn"])
    with pytest.raises(ConfigError, match="^method.min_biases must be at least 1, got 0$"):
        config_module.load(None, ["method.name=bitfit", "method.min_biases=0"])
    # offline_vit: 6 blocks x (qkv, proj, fc1, fc2) + norms: its mlp biases are fc1 and fc2 of each block
    with pytest.raises(
        ConfigError,
        match=r"^method.min_biases=13 but the backbone has 12 mlp biases; pick method.min_biases in 1\.\.12$",
    ):
        config_module.load(None, ["method.name=bitfit", "method.scope=mlp", "method.min_biases=13"])
    assert main(["config", "--keys"]) == 0
    assert "method.scope (method.name=bitfit)" in capsys.readouterr().out


def test_a_sweep_checks_the_guides_method_in_every_cell(bitfit, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "out_dir": str(tmp_path / "runs"),
                "grid": {
                    "method": [
                        {"name": "bitfit"},
                        {"name": "bitfit", "scope": "attn"},
                        {"name": "bitfit", "min_biases": 500},
                    ]
                },
            }
        )
    )
    with pytest.raises(ConfigError) as refused:
        load_sweep(path)
    assert str(refused.value).startswith(
        f"2 of the 3 cells of {path} are invalid, so none runs: (1) sweep cell bitfit-attn: method.scope"
    )
    assert "(2) sweep cell bitfit-min_biases500: method.min_biases=500 but the backbone has" in str(refused.value)


def test_the_guides_method_trains_only_its_biases_and_labels_its_runs(bitfit, random_backbones, tmp_path):
    torch.manual_seed(0)
    model = MultiHeadModel(random_backbone("offline_vit"))
    build_method(config_module.method_config_from_dict({"name": "bitfit", "scope": "mlp"})).prepare(model, "task")
    trainable = {name for name, parameter in model.backbone.named_parameters() if parameter.requires_grad}
    assert trainable == {f"blocks.{i}.mlp.{layer}.bias" for i in range(6) for layer in ("fc1", "fc2")}
    overrides = tiny_overrides(
        random_backbones["offline_vit"],
        tmp_path,
        "bitfit",
        **{"method.name": "bitfit", "method.scope": "mlp", "data.tasks": "[digits]", "eval.probe_images": 0},
    )
    assert main(["run", *overrides, "--quiet"]) == 0
    folder = RunFolder(tmp_path / "bitfit")
    expected = sum(parameter.numel() for name, parameter in model.backbone.named_parameters() if name in trainable)
    assert json.loads(folder.tasks.read_text())[0]["trainable_backbone_parameters"] == expected
    assert RunResult(folder).method == "bitfit mlp"


def test_an_installed_packages_entry_point_adds_its_method(tmp_path, monkeypatch):
    """A package installed with a ``forgetlab.plugins`` entry point (its dist-info on the path, as pip
    leaves it) is imported on the first lookup, and its method is there."""
    (tmp_path / "toy_forgetlab_plugin.py").write_text(
        "from dataclasses import dataclass, field\n"
        "import forgetlab\n"
        "from forgetlab.methods.base import Checked, Method\n\n\n"
        "@dataclass\nclass ToyConfig(Checked):\n"
        "    KEY = 'method.'\n"
        "    name: str = field(default='toy', metadata={'help': 'the method'})\n\n\n"
        "@forgetlab.register_method\nclass Toy(Method):\n"
        "    name = 'toy'\n    Config = ToyConfig\n"
    )
    info = tmp_path / "toy_forgetlab_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-forgetlab-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[forgetlab.plugins]\ntoy = toy_forgetlab_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(plugins, "_state", {"done": False})
    assert "toy" in registry.method_names()
    assert config_module.load(None, ["method.name=toy"]).method.name == "toy"
    (info / "entry_points.txt").write_text("[forgetlab.plugins]\nbroken = toy_forgetlab_plugin_missing\n")
    monkeypatch.setattr(plugins, "_state", {"done": False})
    with pytest.raises(
        plugins.PluginError,
        match=r"^the forgetlab plugin 'broken = toy_forgetlab_plugin_missing' of the package "
        r"toy-forgetlab-plugin failed to load \(ModuleNotFoundError",
    ):
        registry.method_names()
