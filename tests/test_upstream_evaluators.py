"""Several upstream evaluators in one run (eval.upstream_evaluator=[head, knn]): every row of
upstream_eval.json holds each one's accuracy, the matrix keeps the first's, a stopped run resumes to
the same rows, and a sweep can vary the evaluators."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import forgetlab
from forgetlab.analysis.contextual import class_similarities
from forgetlab.analysis.drift import (
    lost_misaligned,
    lost_misaligned_by_group_table,
    lost_misaligned_table,
    near_far_classes,
)

from forgetlab import config as config_module
from forgetlab.errors import ConfigError
from forgetlab.results import RunFolder
from forgetlab.runner import run
from forgetlab.sweep import load_sweep, run_sweep

from .conftest import tiny_overrides

QUIET = {"log": lambda message: None}
TIMING = {"seconds"}


def _rows(folder: RunFolder) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in folder.read_upstream_eval()]


def test_each_row_holds_every_evaluator_and_the_matrix_the_first(random_backbones, tmp_path):
    overrides = tiny_overrides(random_backbones["offline_vit"], tmp_path, **{"eval.upstream_evaluator": "[head, knn]"})
    config = config_module.resolve({}, overrides)
    assert config.eval.upstream_evaluator == "head,knn"
    folder = run(config, **QUIET)
    rows, matrix = _rows(folder), folder.read_matrix()
    assert len(rows) == 3
    for row, values in zip(rows, matrix.values):
        assert set(row) >= {"row", "accuracy", "head", "knn", "knn_at_k"}
        assert row["accuracy"] == row["head"] == values[0]
        assert row["knn"] == row["knn_at_k"]["20"] and 0.0 <= row["knn"] <= 1.0
    # the k-NN column equals a run that scores by k-NN alone
    alone = run(
        config_module.resolve(
            {},
            tiny_overrides(random_backbones["offline_vit"], tmp_path, name="knn", **{"eval.upstream_evaluator": "knn"}),
        ),
        **QUIET,
    )
    assert [row["knn"] for row in rows] == [row["accuracy"] for row in alone.read_upstream_eval()]
    # the API's table and the split, from the stored per-evaluator predictions
    table = forgetlab.load_run(folder.path).upstream_evaluators
    knn_pct = table[table.evaluator == "knn"].accuracy_pct.tolist()
    assert table.shape == (6, 3) and knn_pct == pytest.approx([100 * row["knn"] for row in rows], abs=1e-9)
    split = lost_misaligned_table(folder.path, resamples=200)
    assert split.phase.tolist() == [1, 2]
    for phase, record in zip((1, 2), split.itertuples()):
        assert record.lost_pp == pytest.approx(100 * (rows[0]["knn"] - rows[phase]["knn"]), abs=1e-9)
        head_drop_pp = 100 * (rows[0]["head"] - rows[phase]["head"])
        assert record.head_drop_pp == pytest.approx(head_drop_pp, abs=1e-9)
        assert record.lost_pp + record.misaligned_pp == pytest.approx(head_drop_pp, abs=1e-9)
        assert record.lost_ci_pp[0] <= record.lost_pp <= record.lost_ci_pp[1]
    # by group: the top and bottom quartile of the classes' similarity to each phase's domain
    groups = lost_misaligned_by_group_table(folder.path, resamples=100)
    assert set(groups.group) == {"near", "far"} and groups.phase.tolist().count(1) == 2
    labels = folder.read_predictions(0)["labels"]
    near = groups[(groups.group == "near") & (groups.phase == 1)].iloc[0]
    similarity = class_similarities(near.domain, synsets=forgetlab.load_run(folder.path).upstream["synsets"])
    chosen = similarity[labels] >= np.percentile(similarity, 75)
    knn_correct = [folder.read_predictions(r)["predictions_knn"][chosen] == labels[chosen] for r in (0, 1)]
    assert near.images == chosen.sum() and near.lost_pp == pytest.approx(
        100 * (knn_correct[0].mean() - knn_correct[1].mean()), abs=1e-9
    )
    # the report's section: the drift heat map, the evaluators figure, and the split's numbers as notes
    page = forgetlab.report([folder.path], out=tmp_path / "report", permutations=50, log=lambda message: None)
    markdown = (page.parent / "report.md").read_text()
    assert "## Where forgetting happens in the features" in markdown
    assert any((page.parent / "figures").glob("drift_*.png"))
    assert any((page.parent / "figures").glob("evaluators_*.png"))
    first = split.iloc[0]
    assert f"head drop {first.head_drop_pp:.1f} points = lost {first.lost_pp:.1f}" in markdown


def test_lost_and_misaligned_on_known_predictions():
    """60 images: the head loses 30 after phase 1, the k-NN 12 of those; so 20 points lost, 30 misaligned."""
    head = np.ones((2, 60), bool)
    knn = np.ones((2, 60), bool)
    head[1, :30] = False
    knn[1, :12] = False
    split = lost_misaligned({"head": head, "knn": knn}, 1, resamples=500)
    assert (
        split["head_drop_pp"] == pytest.approx(50)
        and split["lost_pp"] == pytest.approx(20)
        and split["misaligned_pp"] == pytest.approx(30)
    )
    low, high = split["misaligned_ci_pp"]
    assert low < 30 < high and high - low < 30
    assert (
        lost_misaligned({"head": head, "knn": head}, 1)["misaligned_pp"] == 0.0
    )  # a k-NN that drops as the head does: all lost


def test_near_and_far_are_the_outer_quartiles():
    groups = near_far_classes(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]))
    assert groups["near"].tolist() == [False] * 6 + [True] * 2 and groups["far"].tolist() == [True] * 2 + [False] * 6
    assert near_far_classes(np.full(8, 0.5)) is None  # no split when every class is as similar


def test_a_frozen_backbone_keeps_its_knn_accuracy_in_every_row(random_backbones, tmp_path):
    overrides = tiny_overrides(
        random_backbones["offline_resnet"],
        tmp_path,
        **{"method.name": "linear", "eval.upstream_evaluator": "[knn, head]"},
    )
    rows = _rows(run(config_module.resolve({}, overrides), **QUIET))
    assert len({row["knn"] for row in rows}) == 1 and len({row["head"] for row in rows}) == 1
    assert all(row["accuracy"] == row["knn"] for row in rows)  # knn first: it is what the matrix keeps


def test_a_stopped_run_resumes_to_the_same_rows(random_backbones, tmp_path):
    extra = {"eval.upstream_evaluator": "[head, knn]", "train.lr": 0.05}
    clean = run(
        config_module.resolve({}, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="clean", **extra)),
        **QUIET,
    )
    stopped = config_module.resolve(
        {}, tiny_overrides(random_backbones["offline_vit"], tmp_path, name="stopped", **extra)
    )

    def stop_after_task_1(message: str) -> None:
        if message.startswith("task 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(stopped, log=stop_after_task_1)
    assert len(RunFolder(stopped.run_dir).read_upstream_eval()) == 2
    resumed = run(stopped, **QUIET)
    assert _rows(resumed) == _rows(clean) and resumed.read_matrix().values == clean.read_matrix().values


@pytest.mark.parametrize(
    "value, message", [("[knn, knn]", "twice"), ("[head, probe2]", "must be one of"), ("'head, knn'", "must be one of")]
)
def test_bad_lists_are_refused(random_backbones, tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        config_module.resolve(
            {}, tiny_overrides(random_backbones["offline_vit"], tmp_path, **{"eval.upstream_evaluator": value})
        )


def test_a_sweep_over_evaluators(random_backbones, tmp_path):
    backbone = random_backbones["offline_vit"]
    path = tmp_path / "evaluators.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "evaluators",
                "out_dir": str(tmp_path / "runs"),
                "base": {
                    "backbone": {"name": backbone.stem, "weights": str(backbone)},
                    "data": {"tasks": ["digits"], "max_train": 48, "max_test": 40},
                    "train": {"batch_size": 16, "max_steps": 3},
                },
                "grid": {"eval.upstream_evaluator": ["head", ["head", "knn"]]},
            }
        )
    )
    sweep = load_sweep(path)
    status = run_sweep(sweep, quiet=True, log=lambda message: None)
    assert sorted(status.values()) == ["ran", "ran"]
    rows = {name: RunFolder(sweep.folder / name).read_upstream_eval() for name in status}
    single, both = (rows[name] for name in sorted(status, key=len))
    assert "knn" not in single[0] and [row["head"] for row in both] == [row["accuracy"] for row in single]
    assert all(0.0 <= row["knn"] <= 1.0 for row in both)
