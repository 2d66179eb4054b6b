"""forgetlab from Python: run, load_run, load_sweep, report, the example script."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import forgetlab
from forgetlab.analysis.metrics import in_points, summarise
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parent.parent


def _kwargs(overrides: list[str]) -> dict:
    return {key.replace(".", "__"): yaml.safe_load(value) for key, value in (o.split("=", 1) for o in overrides)}


def test_run_and_load_run_give_the_matrix_metrics_predictions_and_adapters(random_backbones, tmp_path):
    kwargs = _kwargs(tiny_overrides(random_backbones["offline_vit"], tmp_path, name="api"))
    run = forgetlab.run(log=None, method__rank=2, **kwargs)
    assert isinstance(run, forgetlab.Run) and run.completed == 2 and run.config.method.rank == 2
    matrix = run.matrix
    assert list(matrix.columns) == ["upstream", "fontfamily", "digits"]
    assert list(matrix.index) == ["pretrained", "after fontfamily", "after digits"] and np.isnan(matrix.iloc[0, 1])
    assert run.metrics == in_points(summarise(run.accuracy_matrix.as_array()))  # percent and points, named
    predictions = run.predictions(2)
    assert predictions["predictions"].shape == predictions["labels"].shape == (40,)
    assert 100 * (predictions["predictions"] == predictions["labels"]).mean() == pytest.approx(
        matrix.loc["after digits", "upstream"]
    )  # the matrix in percent
    assert (
        sorted(run.adapters) == ["digits", "fontfamily"] and (run.adapters["digits"] / "adapter_config.json").exists()
    )
    assert list(run.tasks["task"]) == ["fontfamily", "digits"] and run.upstream["synsets"][0].endswith(".n.03")
    again = forgetlab.load_run(run.path)
    assert again.matrix.equals(matrix) and repr(again).endswith("2/2 phases)")
    with pytest.raises(forgetlab.DataError, match="not a run folder"):
        forgetlab.load_run(tmp_path / "nowhere")
    with pytest.raises(forgetlab.ConfigError, match="unknown config key 'train.epoch'"):
        forgetlab.run(log=None, train__epoch=3, **kwargs)
    assert forgetlab.resolve(preset="paper2-lora-r4", data__root="/data").train.lr == 0.05


def test_load_sweep_is_one_dataframe_and_report_writes_the_page(random_backbones, tmp_path):
    import forgetlab.reporting  # noqa: F401 - importing every subpackage first must not shadow an API function
    import forgetlab.runner  # noqa: F401
    from tests.test_sweep_report import _sweep_file
    from forgetlab.sweep import load_sweep, run_sweep

    path = _sweep_file(tmp_path, random_backbones["offline_vit"], {"method.rank": [1, 2]})
    run_sweep(load_sweep(path), quiet=True, log=lambda message: None)
    table = forgetlab.load_sweep(tmp_path / "runs" / "tiny")
    assert sorted(table.index) == ["rank1", "rank2"] and set(table["config.method.rank"]) == {1, 2}
    assert {"average_accuracy_pct", "upstream_change_pp", "backbone", "seed"} <= set(table.columns)
    page = forgetlab.report(tmp_path / "runs" / "tiny", out=tmp_path / "report", permutations=50)
    assert page.name == "report.html" and "rank1" in page.read_text()


def test_the_example_reproduces_the_contextual_forgetting_figure_from_the_api(random_backbones, tmp_path, monkeypatch):
    run = forgetlab.run(log=None, **_kwargs(tiny_overrides(random_backbones["offline_vit"], tmp_path, name="example")))
    monkeypatch.setattr(sys, "argv", ["contextual_forgetting.py", str(run.path), "--out", str(tmp_path / "figure.png")])
    example = runpy.run_path(str(REPO / "examples" / "contextual_forgetting.py"))
    result = example["main"]([str(run.path), "--out", str(tmp_path / "figure.png")])
    test = forgetlab.contextual(run, phase=1)
    assert result["forgotten"] == test.forgotten and result["p_value"] == test.p_value
    before, after = run.predictions(0), run.predictions(1)
    forgotten = ((before["predictions"] == before["labels"]) & (after["predictions"] != after["labels"])).sum()
    assert test.forgotten == forgotten and (tmp_path / "figure.png").stat().st_size > 5000


def test_no_submodule_shadows_an_api_function():
    """Importing a submodule sets it as an attribute of the package: one named like an API function
    (forgetlab.run, forgetlab.anatomy, ...) would replace that function. Import every module, then check."""
    import importlib
    import pkgutil

    import forgetlab

    for module in pkgutil.walk_packages(forgetlab.__path__, "forgetlab."):
        if module.name != "forgetlab.__main__":
            importlib.import_module(module.name)
    for name in forgetlab.__all__:
        value = getattr(forgetlab, name)
        assert callable(value) and not isinstance(value, type(forgetlab)), name
