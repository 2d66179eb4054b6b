"""Five extensions of one's own, in this one module, through the public decorators only (no file of
forgetlab is edited): a method, a dataset, an upstream evaluator, a metric and a report section. Each is
then part of forgetlab like the built-in ones: ``forgetlab config --keys`` lists it, a sweep checks its
cells before any runs, a sweep of two cells trains on the dataset with the method and scores with the
evaluator, ``forgetlab show`` and ``sweep.csv`` give the metric, and the report has the section, the
metric's column and both glossary lines."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest
import torch
import yaml

import forgetlab
from forgetlab.analysis import metrics
from forgetlab.cli import main
from forgetlab.data import registry as datasets
from forgetlab.data.base import ArrayDataset, TaskData, dataset_labels
from forgetlab.data.files import dataset_folder
from forgetlab.errors import ConfigError
from forgetlab.evaluators import unregister_evaluator
from forgetlab.methods import registry as methods
from forgetlab.methods.base import Checked, Method
from forgetlab.reporting.sections import TableSection, unregister_report_section
from forgetlab.sweep import load_sweep

from .conftest import random_backbone, tiny_overrides


# ----------------------------------------------------------------------------------- the five toys
@dataclass
class NormTuneConfig(Checked):
    KEY = "method."
    name: str = field(default="normtune", metadata={"help": "the method"})
    which: Literal["all", "last"] = field(default="all", metadata={"help": "the norms that train: all, or the last"})


def norms(backbone, which: str) -> list:
    """The LayerNorm parameters of ``backbone`` (``which='last'``: the final norm's only)."""
    modules = [(name, m) for name, m in backbone.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    return [p for name, m in modules if which == "all" or name == "norm" for p in m.parameters()]


def register_toys(tmp_path):
    """Register the five toys; returns the toy dataset's folder root (``data.root``)."""

    @forgetlab.register_method
    class NormTune(Method):
        name = "normtune"
        Config = NormTuneConfig

        @classmethod
        def label(cls, options: dict) -> str:
            return f"normtune {options['which']}"

        def prepare(self, model, task: str) -> None:
            super().prepare(model, task)
            for parameter in norms(model.backbone, self.config.which):
                parameter.requires_grad_(True)

    @forgetlab.register_dataset(
        "squares",
        folder="squares",
        how="write squares/train.npz and test.npz",
        channels=1,
        domain=("square.n.01", "square"),
    )
    def squares(data_config=None, preprocess=None) -> TaskData:
        root = dataset_folder("squares", data_config)
        splits = {}
        for split in ("train", "test"):
            with np.load(root / f"{split}.npz") as arrays:
                splits[split] = ArrayDataset(arrays["x"], arrays["y"])
        return TaskData(name="squares", classes=["small", "large"], train=splits["train"], test=splits["test"])

    @forgetlab.register_evaluator("majority")
    def majority(eval_config, upstream, crop_cache=None):
        """The most common upstream training label, predicted for every image: the chance floor."""
        label = int(np.bincount(dataset_labels(upstream.train)).argmax())

        def evaluate(model, dataset, runtime, **options):
            from forgetlab.evaluate import UpstreamResult

            predictions = np.full(len(dataset), label, dtype=np.int64)
            return UpstreamResult("majority", float(np.mean(dataset_labels(dataset) == label)), predictions)

        return evaluate

    @forgetlab.register_metric(
        "last_task",
        unit="pct",
        better="higher",
        report=metrics.Reported("last task", "the last trained task's accuracy at the end", position=87),
        show=metrics.Shown("last", "last task", "last: the last trained task's final accuracy"),
    )
    def last_task(a, trained=None):
        return float(a[-1, (trained or list(range(1, a.shape[1])))[-1]])

    @forgetlab.register_report_section(
        "trainable norms", position=66, glossary=((88, "norm runs", "runs whose method trains norms only"),)
    )
    def norm_runs(inputs):
        rows = [[run.name, run.method] for run in inputs.runs if run.method.startswith("normtune")]
        return [TableSection("Norm runs", ["run", "method"], rows, [])] if rows else []

    root = tmp_path / "data"
    (root / "squares").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 12)):
        labels = np.arange(count) % 2
        images = rng.integers(0, 40, (count, 28, 28), dtype=np.uint8)
        for image, label in zip(images, labels):
            side = 8 if label == 0 else 20
            image[4 : 4 + side, 4 : 4 + side] = 255
        np.savez(root / "squares" / f"{split}.npz", x=images, y=labels)
    return root


@pytest.fixture
def toys(tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "_METHODS", dict(methods._METHODS))
    monkeypatch.setattr(datasets, "_DATASETS", dict(datasets._DATASETS))
    try:
        yield register_toys(tmp_path)
    finally:
        for undo in (
            lambda: unregister_evaluator("majority"),
            lambda: metrics.unregister_metric("last_task"),
            lambda: unregister_report_section("trainable norms"),
        ):
            try:
                undo()
            except KeyError:
                pass


def sweep_file(tmp_path, backbone, root, methods_grid) -> str:
    base = dict(item.split("=", 1) for item in tiny_overrides(backbone, tmp_path))
    base = {key: value for key, value in base.items() if key not in ("out_dir", "name")}
    base.update(
        {"data.tasks": "[squares, digits]", "data.root": str(root), "eval.upstream_evaluator": "[head, majority]"}
    )
    nested: dict = {}
    for key, value in base.items():
        section, leaf = key.split(".", 1)
        nested.setdefault(section, {})[leaf] = yaml.safe_load(value)
    path = tmp_path / "toys.yaml"
    path.write_text(
        yaml.safe_dump({"out_dir": str(tmp_path / "runs"), "base": nested, "grid": {"method": methods_grid}})
    )
    return str(path)


# ----------------------------------------------------------------------------------- everywhere at once
def test_the_toys_are_listed_and_checked_like_the_built_in_ones(toys, random_backbones, tmp_path, capsys):
    assert main(["config", "--keys"]) == 0
    listed = capsys.readouterr().out
    assert "method.which (method.name=normtune) = 'all'" in listed
    assert "datasets: cifar100, cub200, digits" in listed and ", squares, stanford_cars" in listed
    assert "upstream evaluators: head, knn, probe, majority" in listed
    bad = sweep_file(
        tmp_path,
        random_backbones["offline_vit"],
        toys,
        [{"name": "normtune"}, {"name": "normtune", "which": "first"}, {"name": "normtune", "which": "none"}],
    )
    with pytest.raises(ConfigError) as refused:
        load_sweep(bad)
    assert str(refused.value).startswith(f"2 of the 3 cells of {bad} are invalid, so none runs: (1) sweep cell")
    for cell, value in (("normtune-first", "first"), ("normtune-none", "none")):
        assert f"sweep cell {cell}: method.which must be one of: all, last; got '{value}'" in str(refused.value)
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_the_toys_run_and_reach_show_the_csv_and_the_report(toys, random_backbones, tmp_path, capsys):
    path = sweep_file(
        tmp_path, random_backbones["offline_vit"], toys, [{"name": "normtune"}, {"name": "normtune", "which": "last"}]
    )
    assert main(["sweep", path, "--quiet"]) == 0
    capsys.readouterr()
    sweep = tmp_path / "runs" / "toys"
    cells = sorted(p.name for p in sweep.iterdir() if (p / "accuracy_matrix.json").exists())
    assert cells == ["normtune", "normtune-last"]
    run = forgetlab.load_run(sweep / "normtune-last")
    # the dataset: a task column of its own, with its classes and its registered domain
    assert list(run.matrix.columns) == ["upstream", "squares", "digits"]
    record = run.tasks.set_index("task").loc["squares"]
    assert record["num_classes"] == 2 and record["domain_synset"] == "square.n.01"
    # the method: only the final norm trains ("all": every LayerNorm, 2 per block and the final one)
    backbone = random_backbone("offline_vit")
    assert record["trainable_backbone_parameters"] == sum(p.numel() for p in backbone.norm.parameters())
    every = forgetlab.load_run(sweep / "normtune").tasks.set_index("task").loc["squares"]
    assert (
        every["trainable_backbone_parameters"]
        == sum(p.numel() for p in norms(backbone, "all"))
        > record["trainable_backbone_parameters"]
    )
    # the evaluator: every row holds the majority label's share of the upstream test images, beside the head's
    rows = json.loads((sweep / "normtune-last" / "upstream_eval.json").read_text())
    shares = {row["majority"] for row in rows}
    assert len(rows) == 3 and len(shares) == 1 and 0.0 < shares.pop() < 0.5
    assert [row["head"] for row in rows] == [row["accuracy"] for row in rows]
    # the metric: the last task's final accuracy, in show and in sweep.csv
    expected = 100 * run.accuracy_matrix.as_array()[-1, 2]
    assert main(["show", str(sweep)]) == 0
    shown = capsys.readouterr().out
    header, _, last_cell = shown.splitlines()[1:4]
    assert header.split()[-2:] == ["last", "detail"] and last_cell.split()[-3] == f"{expected:.2f}"
    assert "last: the last trained task's final accuracy" in shown
    with open(sweep / "sweep.csv") as handle:
        by_cell = {row["run"]: row for row in csv.DictReader(handle)}
    assert set(by_cell) == set(cells)
    assert math.isclose(float(by_cell["normtune-last"]["last_task_pct"]), expected, abs_tol=1e-6)
    assert by_cell["normtune"]["method"].startswith("normtune all")  # the method's label
    # the report: the section's table, the metric's column, both glossary lines
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "## Norm runs" in markdown and "| normtune-last | normtune last |" in markdown
    per_run = next(line for line in markdown.splitlines() if line.startswith("| run | backbone |"))
    assert "| last task |" in per_run
    glossary = markdown.split("## Glossary")[1]
    assert "**last task**: the last trained task's accuracy at the end" in glossary and "**norm runs**" in glossary
