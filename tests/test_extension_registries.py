"""The metric, upstream-evaluator and report-section registries: every registered metric keeps its sign
convention, and a metric, an evaluator and a section of one's own, registered through the public
decorators only, reach every consumer (the API's metrics, sweep.csv's rows, ``forgetlab show``, the
report's per-run table, glossary and units note, upstream_eval.json's fields)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

import forgetlab
from forgetlab.analysis import metrics
from forgetlab.analysis.collect import find_runs
from forgetlab.analysis.tables import rows_to_csv, run_rows
from forgetlab.errors import ConfigError
from forgetlab.results import AccuracyMatrix
from forgetlab.summary import cells_table, legend, metrics_line

from .test_report_claims import make_run, similarity  # noqa: F401 - the fixture

nan = math.nan
# After each phase every earlier task and the upstream task lose accuracy (row 0: pretrained).
FORGETTING = np.array(
    [[0.80, nan, nan, nan], [0.70, 0.60, nan, nan], [0.65, 0.50, 0.70, nan], [0.60, 0.40, 0.55, 0.90]]
)
TWO_TASKS = [
    [None if math.isnan(v) else float(v) for v in row] for row in FORGETTING[:3, :3]
]  # as a run folder stores it


# ----------------------------------------------------------------------------- every registered metric
def test_every_difference_metric_says_forgetting_with_its_registered_sign():
    """On a matrix in which every task is forgotten (and a reference that learns every task better), each difference
    metric is on the side its ``better`` calls worse: forgetting positive, BWT, upstream change and FWT negative."""
    reference = [nan, *(FORGETTING[phase, phase] + 0.1 for phase in (1, 2, 3))]
    for metric in metrics.registered_metrics():
        if metric.unit != "pp":
            continue
        options = {"reference": reference} if metric.reference else {}
        value = metric.function(FORGETTING, trained=None, **options)
        assert (value > 0) == (metric.better == "lower") and value != 0, (metric.name, value)
    assert metrics.average_forgetting(FORGETTING) == pytest.approx(((0.60 - 0.40) + (0.70 - 0.55)) / 2)
    assert metrics.backward_transfer(FORGETTING) == pytest.approx(((0.40 - 0.60) + (0.55 - 0.70)) / 2)
    assert metrics.upstream_change(FORGETTING) == pytest.approx(0.60 - 0.80)


def test_every_accuracy_metric_falls_when_every_accuracy_falls():
    worse = FORGETTING - 0.1
    for metric in metrics.registered_metrics():
        if metric.unit == "pct":
            assert metric.function(worse, trained=None) == pytest.approx(
                metric.function(FORGETTING, trained=None) - 0.1
            ), metric.name


def test_the_registry_orders_the_columns_and_names_each_with_its_unit():
    values = metrics.summarise(FORGETTING, reference=FORGETTING)
    assert list(values) == [m.name for m in metrics.registered_metrics()]  # forward_transfer too: a reference is given
    assert "forward_transfer" not in metrics.summarise(FORGETTING)
    assert values["forward_transfer"] == 0.0  # the matrix against itself
    points = metrics.in_points(values)
    assert list(points) == [m.column for m in metrics.registered_metrics()]
    assert points["upstream_pretrained_pct"] == pytest.approx(80.0) and points["upstream_change_pp"] == pytest.approx(
        -20.0
    )
    assert [m.header for m in metrics.report_metrics()] == [
        "avg acc",
        "avg forgetting",
        "BWT",
        "FWT vs linear",
        "plasticity",
        "upstream",
        "upstream change",
    ]
    assert [m.show.column for m in metrics.shown_metrics()] == ["avg acc", "forgetting", "BWT", "upstream"]


def test_a_metric_is_registered_once_with_a_known_unit_and_sign():
    with pytest.raises(ValueError, match="registered twice"):
        metrics.register_metric("plasticity", unit="pct", better="higher")(lambda a, trained=None: 0.0)
    with pytest.raises(ValueError, match="unit must be"):
        metrics.register_metric("toy", unit="percent", better="higher")(lambda a, trained=None: 0.0)
    assert "toy" not in metrics.units()


# ----------------------------------------------------------------------------- a metric of one's own
@pytest.fixture
def worst_task():
    """The largest drop of any downstream task from its first to its final accuracy, in points, shown by
    ``forgetlab show`` and in the report (registered through ``forgetlab.register_metric``)."""

    @forgetlab.register_metric(
        "worst_task_drop",
        unit="pp",
        better="lower",
        report=metrics.Reported(
            "worst drop", "the largest first-minus-final accuracy of any task", position=85, prose="worst drop"
        ),
        show=metrics.Shown("worst", "worst drop", "worst: the largest drop of any task"),
    )
    def worst_task_drop(a, trained=None):
        firsts = metrics.first_accuracies(a, trained)
        return max((value - a[-1, j] for j, value in firsts.items()), default=nan)

    yield worst_task_drop
    metrics.unregister_metric("worst_task_drop")


def test_a_registered_metric_reaches_the_api_the_csv_and_show(worst_task, tmp_path):
    assert metrics.summarise(FORGETTING)["worst_task_drop"] == pytest.approx(0.60 - 0.40)
    assert metrics.in_points(metrics.summarise(FORGETTING))["worst_task_drop_pp"] == pytest.approx(20.0)
    make_run(tmp_path / "sweep", "cell", rows=TWO_TASKS)
    (row,) = run_rows(find_runs([tmp_path / "sweep"]))
    assert row["worst_task_drop_pp"] == pytest.approx(10.0)  # digits was trained last: fontfamily 0.60 -> 0.50
    header = rows_to_csv([row]).splitlines()[0].split(",")
    assert (
        header.index("worst_task_drop_pp") == header.index("upstream_final_pct") + 1
    )  # after the built-ins (no FWT: no probe)
    matrix = AccuracyMatrix(columns=["upstream", "fontfamily", "digits"], values=TWO_TASKS)
    assert metrics_line(matrix).endswith(", worst drop +10.00 points (80.00% -> 65.00%)")
    table = cells_table(tmp_path / "sweep", [("cell", "done", "")]).splitlines()
    assert table[0].split()[-2:] == ["worst", "detail"] and table[1].split()[-1] == "+10.00"  # no detail
    assert legend().endswith("worst: the largest drop of any task; the last four in points")


def test_a_registered_metric_and_section_reach_the_report(worst_task, tmp_path, similarity):  # noqa: F811
    seen = []

    @forgetlab.register_report_section(
        "toy section", position=65, glossary=((86, "toy term", "what the toy table counts"),)
    )
    def toy_section(inputs):
        from forgetlab.reporting.sections import TableSection

        seen.append(len(inputs.runs))
        return [
            TableSection(
                "Toy table", ["run", "rows"], [[r.name, str(r.matrix.as_array().shape[0])] for r in inputs.runs], []
            )
        ]

    try:
        make_run(tmp_path / "sweep", "cell", rows=TWO_TASKS)
        out = tmp_path / "report"
        forgetlab.report([tmp_path / "sweep"], out, permutations=20)
    finally:
        from forgetlab.reporting.sections import unregister_report_section

        unregister_report_section("toy section")
    markdown = (out / "report.md").read_text()
    assert seen == [1] and "| cell | 3 |" in markdown
    # sections by position: the toy table (65) between the methods table (60) and the metrics per run (70)
    assert (
        markdown.index("## Methods") < markdown.index("## Toy table") < markdown.index("## Forgetting metrics per run")
    )
    per_run = next(line for line in markdown.splitlines() if line.startswith("| run | backbone |"))
    assert per_run.endswith("| upstream | upstream change | worst drop | FWT reference |")
    per_run_rows = markdown.split("## Forgetting metrics per run")[1].split("\n## ")[0]
    (cell,) = [line for line in per_run_rows.splitlines() if line.startswith("| cell |")]
    assert cell.endswith("| -15.00 | 10.00 |  |")  # upstream change, worst drop, no FWT reference
    glossary = markdown.split("## Glossary")[1]
    assert (
        glossary.index("**upstream change**")
        < glossary.index("**worst drop**: the largest first-minus-final")
        < glossary.index("**toy term**")
        < glossary.index("**downstream (mean of tasks)**")
    )
    assert "forgetting, BWT, FWT, upstream change and worst drop are differences of accuracies" in glossary
    assert "toy term" in (out / "report.html").read_text()


# ----------------------------------------------------------------------------- an evaluator of one's own
def test_a_registered_evaluator_is_built_by_name_and_its_result_reaches_the_record(random_backbones, tmp_path):
    from forgetlab import config as config_module
    from forgetlab.data import build_task
    from forgetlab.data.base import dataset_labels
    from forgetlab.evaluate import UpstreamResult, build_upstream_evaluator, head_evaluator
    from forgetlab.evaluators import unregister_evaluator
    from forgetlab.models.backbones import load_backbone
    from forgetlab.models.multihead import MultiHeadModel
    from forgetlab.runtime import Runtime

    from .conftest import tiny_overrides

    @forgetlab.register_evaluator("always_zero")
    def build_always_zero(eval_config, upstream, crop_cache=None):
        def evaluate(model, dataset, runtime, **options):
            predictions = np.zeros(len(dataset), dtype=np.int64)
            return UpstreamResult(
                "always_zero", float(np.mean(dataset_labels(dataset) == 0)), predictions, {1: 0.5, 2: 0.25}
            )

        return evaluate

    try:
        config = config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], tmp_path))
        upstream = build_task(config.data.upstream, config.data)
        with_eval = lambda names: dataclasses.replace(config.eval, upstream_evaluator=names)  # noqa: E731
        with pytest.raises(
            ConfigError, match="eval.upstream_evaluator must be one of: head, knn, probe, always_zero; got 'nope'"
        ):
            build_upstream_evaluator(with_eval("nope"), upstream)
        evaluators = build_upstream_evaluator(with_eval("head,always_zero"), upstream)
        model = MultiHeadModel(load_backbone(config.backbone).model)
        runtime = Runtime(eval_batch_size=8)
        result = evaluators(model, upstream.test, runtime)
        head = head_evaluator(model, upstream.test, runtime)
        zero_share = float(np.mean(dataset_labels(upstream.test) == 0))
        assert result.accuracy == head.accuracy and np.array_equal(
            result.predictions, head.predictions
        )  # the first one's
        assert result.record() == {
            "head": head.accuracy,
            "always_zero": zero_share,
            "always_zero_at_k": {"1": 0.5, "2": 0.25},
        }
        assert set(result.predictions_by_evaluator()) == {"predictions_head", "predictions_always_zero"}
        alone = build_upstream_evaluator(with_eval("always_zero"), upstream)(model, upstream.test, runtime)
        assert alone.record() == {"always_zero": {"1": 0.5, "2": 0.25}} and alone.predictions_by_evaluator() == {}
    finally:
        unregister_evaluator("always_zero")


def test_the_guides_evaluator_is_chosen_by_the_config_and_scores_every_row(random_backbones, tmp_path):
    """docs/extending.md's evaluator, loaded as a user's file, is a valid eval.upstream_evaluator and its
    accuracy reaches every row of upstream_eval.json, next to the head's."""
    import importlib.util
    import json
    import re

    from forgetlab import config as config_module
    from forgetlab.evaluators import unregister_evaluator
    from forgetlab.runner import run

    from .conftest import tiny_overrides

    guide = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    code = re.search(r"```python\n(.*?)```", guide.split("## Adding an upstream evaluator", 1)[1], re.S).group(1)
    (tmp_path / "centroid.py").write_text(code)
    spec = importlib.util.spec_from_file_location("centroid_evaluator", tmp_path / "centroid.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    try:
        overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, "centroid")
        config = config_module.load(None, [*overrides, "eval.upstream_evaluator=[head, centroid]"])
        folder = run(config, log=lambda message: None)
        rows = json.loads((folder.path / "upstream_eval.json").read_text())
        assert len(rows) == 3 and all(0.0 <= row["centroid"] <= 1.0 for row in rows)
        matrix = json.loads((folder.path / "accuracy_matrix.json").read_text())
        assert [row["head"] for row in rows] == [row["accuracy"] for row in rows] == [r[0] for r in matrix["values"]]
    finally:
        unregister_evaluator("centroid")
