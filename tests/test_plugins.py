"""A package of one's own extends forgetlab through the ``forgetlab.plugins`` entry-point group: the tiny
package in tests/plugin_package (BitFit: only bias terms train) is installed with pip and its method is
then a name like any other, in ``forgetlab config``, in a run and in its trainable-parameter count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(__file__).resolve().parent / "plugin_package"


def _python(code_or_args: list[str], site: Path, home: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "src"), str(ROOT)]),
        "FORGETLAB_HOME": str(home),
        "FORGETLAB_PROGRESS": "0",
    }
    return subprocess.run([sys.executable, *code_or_args], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The plugin package installed by pip (no index, no build isolation: offline) into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(site),
            str(PACKAGE),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (site / "forgetlab_toy_plugin" / "__init__.py").exists()
    return site


def test_an_installed_plugin_method_is_configured_and_runs(installed, random_backbones, forgetlab_home, tmp_path):
    shown = _python(["-m", "forgetlab", "config", "method.name=bitfit", "method.norms=true"], installed, forgetlab_home)
    assert shown.returncode == 0, shown.stderr
    assert "bitfit" in shown.stdout and "norms: true" in shown.stdout

    overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, "bitfit", **{"method.name": "bitfit"})
    ran = _python(["-m", "forgetlab", "run", *overrides], installed, forgetlab_home)
    assert ran.returncode == 0, ran.stderr
    tasks = json.loads((tmp_path / "bitfit" / "tasks.json").read_text())

    from tests.conftest import random_backbone

    backbone = random_backbone("offline_vit")
    biases = sum(
        module.bias.numel()
        for name, module in backbone.named_modules()
        if getattr(module, "bias", None) is not None
        and "norm" not in type(module).__name__.lower()
        and module is not backbone.get_classifier()
    )
    counts = {record["trainable_backbone_parameters"] for record in _records(tasks)}
    assert counts == {biases}, (counts, biases)


def _records(tasks) -> list[dict]:
    return list(tasks.values()) if isinstance(tasks, dict) else list(tasks)


def test_a_broken_plugin_is_one_line_naming_it(tmp_path, forgetlab_home):
    site = tmp_path / "site"
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[forgetlab.plugins]\nbroken = no_such_module_anywhere\n")
    shown = _python(["-m", "forgetlab", "config", "method.name=lora"], site, forgetlab_home)
    assert shown.returncode == 2
    lines = shown.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken = no_such_module_anywhere" in lines[0] and "broken-plugin" in lines[0]
