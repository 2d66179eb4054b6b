"""One unit per quantity: the run folder's JSON keeps accuracies as fractions (the storage format), and
every number a person reads (the CSVs, the Python API's DataFrames) is in percent, 100 x the stored
fraction, with its unit named (a ``_pct`` / ``_pp`` column, or ``attrs["unit"]`` and the CSV's first
header cell where the columns are tasks). A folder whose CSV an earlier version wrote in fractions reads
the same, and a resume rewrites its CSV in percent."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

import forgetlab
from forgetlab import config as config_module
from forgetlab.analysis.drift import lost_misaligned_by_group_table, lost_misaligned_table
from forgetlab.analysis.units import EARLIER_COLUMNS
from forgetlab.explanation import combine
from forgetlab.results import CSV_UNIT_HEADER, RunFolder
from forgetlab.runner import run
from tests.conftest import tiny_overrides

QUIET = {"log": lambda message: None}
EXTRA = {"eval.upstream_evaluator": "[head, knn]", "train.select": "best", "train.eval_every": 2}
# words that make a column an accuracy or a share of images: its name must then give its unit
SHARE_WORDS = ("accuracy", "share", "fraction", "agreement", "drop", "lost", "misaligned")


def _stored_matrix(folder: RunFolder) -> np.ndarray:
    values = json.loads(folder.matrix.read_text())["values"]
    return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)


def _earlier_csv(folder: RunFolder) -> str:
    """``accuracy_matrix.csv`` exactly as the version before percent wrote it: header ``row``, fractions."""
    stored = json.loads(folder.matrix.read_text())
    lines = [",".join(["row"] + stored["columns"])]
    for label, row in zip(stored["row_labels"], stored["values"]):
        lines.append(",".join([label] + ["" if v is None else f"{v:.6f}" for v in row]))
    return "\n".join(lines) + "\n"


def _assert_units_named(table: pd.DataFrame, where: str) -> None:
    for column in table.columns:
        if column.startswith("config."):  # the config's own keys, in the config's units (train.warmup_fraction)
            continue
        if table[column].map(lambda value: isinstance(value, str)).all():  # a name (lost_by: 'probe'), no quantity
            continue
        if set(re.split(r"[_.]", column)) & set(SHARE_WORDS):
            assert column.endswith(("_pct", "_pp")), f"{where}: column {column!r} names no unit"


@pytest.fixture(scope="module")
def tiny_run(random_backbones, tmp_path_factory):
    out = tmp_path_factory.mktemp("units")
    folder = run(
        config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], out, name="units", **EXTRA)), **QUIET
    )
    return folder, random_backbones["offline_vit"]


def test_every_accuracy_the_api_and_the_csv_give_is_percent_of_the_stored_fraction(tiny_run):
    folder, _ = tiny_run
    stored = _stored_matrix(folder)
    assert np.nanmax(stored) > 0.01  # a run that scored above 1 %: percent and fraction differ visibly
    loaded = forgetlab.load_run(folder.path)
    matrix = loaded.matrix
    assert matrix.attrs["unit"] == "percent" and np.nanmax(matrix.to_numpy()) > 1
    np.testing.assert_allclose(matrix.to_numpy(), 100 * stored, rtol=0, atol=1e-9)
    csv = pd.read_csv(folder.matrix_csv, index_col=0)
    assert csv.index.name == CSV_UNIT_HEADER == "row (accuracy %)" and list(csv.columns) == list(matrix.columns)
    np.testing.assert_allclose(csv.to_numpy(), 100 * stored, rtol=0, atol=1e-4)  # 4 decimals of a percent
    assert loaded.metrics["upstream_final_pct"] == pytest.approx(100 * stored[-1, 0])
    records = folder.read_upstream_eval()
    evaluators = loaded.upstream_evaluators
    for name in ("head", "knn"):
        shown = evaluators[evaluators.evaluator == name].accuracy_pct.tolist()
        assert shown == pytest.approx([100 * record[name] for record in records], abs=1e-9)
    tasks, stored_tasks = loaded.tasks, json.loads(folder.tasks.read_text())
    for row, record in zip(tasks.itertuples(), stored_tasks):
        assert row.trainable_backbone_pct == pytest.approx(100 * record["trainable_fraction_of_backbone"])
        assert row.selected_accuracy_pct == pytest.approx(100 * record["selection"]["selected_accuracy"])
        assert row.selection_scores_pct == {
            s["step"]: pytest.approx(100 * s["accuracy"]) for s in record["selection"]["scored"]
        }
    split = lost_misaligned_table(folder.path, resamples=50)
    for phase, row in zip((1, 2), split.itertuples()):
        assert row.head_drop_pp == pytest.approx(100 * (records[0]["head"] - records[phase]["head"]), abs=1e-9)
    frames = {
        "upstream_evaluators": evaluators,
        "tasks": tasks,
        "lost_misaligned_table": split,
        "lost_misaligned_by_group_table": lost_misaligned_by_group_table(folder.path, resamples=50),
        "load_sweep": forgetlab.load_sweep(folder.path.parent),
        "contextual().to_frame()": forgetlab.contextual(loaded, 1, permutations=20).to_frame(),
        "anatomy": forgetlab.anatomy(loaded.config),
    }
    for where, table in frames.items():
        _assert_units_named(table, where)


def test_a_folder_with_the_earlier_fraction_csv_reads_in_percent_and_a_resume_rewrites_it(tiny_run, tmp_path):
    """The JSON files are the storage and did not change, so an earlier version's folder differs only in
    its CSV (header ``row``, fractions): the API reads it in percent; a resume writes the CSV in percent."""
    finished, backbone = tiny_run
    shutil.copytree(finished.path, tmp_path / "older")
    older = RunFolder(tmp_path / "older")
    older.matrix_csv.write_text(_earlier_csv(older))
    stored = _stored_matrix(older)
    np.testing.assert_allclose(forgetlab.load_run(older.path).matrix.to_numpy(), 100 * stored, rtol=0, atol=1e-9)
    assert forgetlab.load_run(older.path).metrics == forgetlab.load_run(finished.path).metrics
    resumed = run(config_module.resolve({}, tiny_overrides(backbone, tmp_path, name="older", **EXTRA)), **QUIET)
    assert resumed.matrix_csv.read_text() == finished.matrix_csv.read_text()
    assert resumed.matrix.read_text() == finished.matrix.read_text()  # the storage untouched


def test_attribution_files_of_the_earlier_columns_read_in_percent(tmp_path):
    """An ``explain/`` folder whose phase files an earlier version wrote (``recovered_points``, the shares as
    fractions) combines into today's columns, every share x 100, every other number as it was."""
    earlier = {"phase": [1, 1], "unit": ["all", "blocks.0"], "images": [40, 40], "recovered_p": [1.0, 0.5]}
    earlier |= {name: [0.25, 0.5] if factor == 100 else [12.5, -2.5] for name, (_, factor) in EARLIER_COLUMNS.items()}
    (tmp_path / "phases").mkdir()
    pd.DataFrame(earlier).to_csv(tmp_path / "phases" / "attribution_1.csv", index=False)
    table = combine(tmp_path, ["attribution"])["attribution"]
    assert table.agreement_pct.tolist() == [25.0, 50.0] and table.recovered_share_pct.tolist() == [25.0, 50.0]
    assert table.recovered_pp.tolist() == [12.5, -2.5] and table.pretrained_accuracy_pct.tolist() == [12.5, -2.5]
    assert table.recovered_p.tolist() == [1.0, 0.5] and not set(EARLIER_COLUMNS) & set(table.columns)
    _assert_units_named(table, "attribution")
    assert pd.read_csv(tmp_path / "attribution.csv").columns.tolist() == table.columns.tolist()
