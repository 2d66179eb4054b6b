"""Where forgetting happens across runs (forgetlab.analysis.where and the report's across-runs parts), on
run folders written by hand: every expected value below is computed here from the numbers written, not
read back from the module under test."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from forgetlab import config as config_module
from forgetlab.analysis.collect import find_runs
from forgetlab.analysis.drift import lost_misaligned
from forgetlab.analysis.where import (
    drift_table_across,
    lost_misaligned_across,
    predictors_table,
    settings,
    spectra_table,
    unit_loss_table,
)
from forgetlab.results import FORMAT_VERSION, AccuracyMatrix, read_json, write_json

# rank, seed, intruders per matrix at the last phase, relative norm per matrix, upstream accuracy after
# phases 1 and 2 (pretrained: 0.80)
RUNS = [
    (1, 0, (0, 1), (0.010, 0.020), (0.79, 0.78)),
    (1, 1, (1, 1), (0.012, 0.018), (0.78, 0.76)),
    (4, 0, (2, 3), (0.030, 0.050), (0.75, 0.70)),
    (4, 1, (3, 4), (0.040, 0.060), (0.74, 0.69)),
    (4, 2, (4, 4), (0.050, 0.070), (0.73, 0.66)),
]
PRETRAINED = 0.80
UNITS = ("blocks.0", "blocks.1")


def _recovered(rank: int, seed: int, unit: str) -> float:
    return (rank + seed) * (2.0 if unit == "blocks.1" else 0.5)


def _cka(rank: int, seed: int, unit: str, phase: int) -> float:
    return 1.0 - phase * rank * (0.01 if unit == "blocks.0" else 0.03) - 0.001 * seed


def _write_run(folder, rank: int, seed: int, intruders, norms, upstream, rng, extra=()) -> None:
    folder.mkdir(parents=True)
    config = config_module.resolve(
        {}, ["method.name=lora", f"method.rank={rank}", f"seed={seed}", "data.tasks=[fontfamily, digits]", *extra]
    )
    (folder / "config.yaml").write_text(config_module.dump(config))
    matrix = AccuracyMatrix(["upstream", "fontfamily", "digits"])
    matrix.add_row({"upstream": PRETRAINED})
    matrix.add_row({"upstream": upstream[0], "fontfamily": 0.9})
    matrix.add_row({"upstream": upstream[1], "fontfamily": 0.8, "digits": 0.95})
    write_json(folder / "accuracy_matrix.json", matrix.to_json())
    write_json(
        folder / "progress.json",
        {
            "format_version": FORMAT_VERSION,
            "completed_tasks": 2,
            "total_tasks": 2,
            "checkpoint": None,
            "matrix": matrix.to_json(),
            "tasks": [],
            "upstream_eval": [],
            "files": {},
        },
    )
    explain = folder / "explain"
    explain.mkdir()
    attribution = []
    for phase in (1, 2):
        for unit in (*UNITS, "all"):
            recovered = _recovered(rank, seed, unit) * phase if unit != "all" else 2.0
            attribution.append(
                {
                    "phase": phase,
                    "unit": unit,
                    "recovered_pp": recovered,
                    "recovered_low_pp": recovered - 1.0,  # above 0 exactly when recovered > 1
                    "recovered_high_pp": recovered + 1.0,
                    "damage_pp": -recovered / 2,
                    "images": 40,
                    "pretrained_accuracy_pct": 100 * PRETRAINED,
                    "phase_accuracy_pct": 100 * upstream[phase - 1],
                    "agreement_pct": 100.0,
                }
            )
    pd.DataFrame(attribution).to_csv(explain / "attribution.csv", index=False)
    spectra = [
        {"phase": phase, "layer": f"{unit}.attn.qkv", "scope": scope, "intruders": count, "relative_norm": norm}
        for phase in (1, 2)
        for scope in ("phase", "cumulative")
        for unit, count, norm in zip(UNITS, intruders, norms)
    ]
    pd.DataFrame(spectra).to_csv(explain / "spectra.csv", index=False)
    drift = [
        {"phase": phase, "unit": unit, "cka": _cka(rank, seed, unit, phase)}
        for phase in (0, 1, 2)
        for unit in (*UNITS, "features")
    ]
    pd.DataFrame(drift).to_csv(folder / "drift.csv", index=False)
    labels = np.arange(40) % 4
    (folder / "predictions").mkdir()
    for row in range(3):
        head = np.where(rng.random(40) < 0.9 - 0.1 * row, labels, (labels + 1) % 4)
        knn = np.where(rng.random(40) < 0.9 - 0.05 * row, labels, (labels + 1) % 4)
        np.savez(
            folder / "predictions" / f"upstream_after_{row}.npz",
            predictions=head,
            predictions_head=head,
            predictions_knn=knn,
            labels=labels,
        )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    for rank, seed, intruders, norms, upstream in RUNS:
        _write_run(root / f"r{rank}-seed{seed}", rank, seed, intruders, norms, upstream, rng)
    return root, find_runs([root])


def test_settings_group_the_seeds_of_one_config(study):
    _, runs = study
    grouped = settings(runs)
    assert [label for label, _ in grouped] == ["offline_vit lora r=1", "offline_vit lora r=4"]
    assert [sorted(run.seed for run in members) for _, members in grouped] == [[0, 1], [0, 1, 2]]


def test_only_finished_runs_count_once_and_runs_trained_otherwise_are_apart(study, tmp_path):
    """A run given twice (both copies left out, as everywhere in the report), an unfinished run, a run
    explained short of its last row and a run trained with another learning rate never enter a family's n;
    runs explained on other numbers of images are rows of their own; paths and load_run runs are taken."""
    import shutil

    import forgetlab
    from forgetlab.analysis.where import families

    root, runs = study
    assert [(label, len(members)) for label, members in families(runs)] == [("offline_vit lora", len(RUNS))]
    extra = tmp_path / "extra"
    shutil.copytree(root / "r4-seed2", extra / "copy-of-r4-seed2")  # a duplicate of r4-seed2
    rng = np.random.default_rng(1)
    _write_run(extra / "partial", 4, 7, (1, 1), (0.02, 0.02), (0.70, 0.60), rng)
    progress = read_json(extra / "partial" / "progress.json")
    matrix = {**progress["matrix"], "values": progress["matrix"]["values"][:2]}  # stopped after task 1 of 2
    write_json(extra / "partial" / "progress.json", {**progress, "completed_tasks": 1, "matrix": matrix})
    write_json(extra / "partial" / "accuracy_matrix.json", matrix)
    _write_run(extra / "short", 4, 8, (1, 1), (0.02, 0.02), (0.70, 0.60), rng)
    attribution = pd.read_csv(extra / "short" / "explain" / "attribution.csv")
    attribution[attribution.phase == 1].to_csv(extra / "short" / "explain" / "attribution.csv", index=False)
    _write_run(extra / "lr", 4, 9, (1, 1), (0.02, 0.02), (0.70, 0.60), rng, extra=["train.lr=0.01"])
    together = find_runs([root, extra])
    grouped = dict(families(together))
    assert set(grouped) == {"offline_vit lora (train.lr=0.001)", "offline_vit lora (train.lr=0.01)"}
    kept = grouped["offline_vit lora (train.lr=0.001)"]
    assert sorted((run.method, run.seed) for run in kept) == [
        ("lora r=1", 0),
        ("lora r=1", 1),
        ("lora r=4", 0),
        ("lora r=4", 1),
        ("lora r=4", 8),
    ]  # r4-seed2 and its copy left out; the partial run left out
    predictors = predictors_table(together).set_index(["family", "predictor"])
    assert predictors.loc[("lora (train.lr=0.001)", "intruders"), "runs"] == 5  # the short run's spectra are whole
    assert predictors.loc[("lora (train.lr=0.01)", "intruders"), "runs"] == 1
    units = unit_loss_table(together, by="family").set_index(["setting", "unit"])
    assert units.loc[("offline_vit lora (train.lr=0.001)", "blocks.0"), "runs"] == 4  # the short one left out
    mixed = pd.read_csv(root / "r1-seed0" / "explain" / "attribution.csv").assign(images=20)
    moved = tmp_path / "mixed"
    shutil.copytree(root, moved)
    mixed.to_csv(moved / "r1-seed0" / "explain" / "attribution.csv", index=False)
    labels = set(unit_loss_table(find_runs([moved]), by="family")["setting"])
    assert labels == {"offline_vit lora (explained on 40 images)", "offline_vit lora (explained on 20 images)"}
    by_path = unit_loss_table(sorted(root.iterdir()))
    by_run = unit_loss_table([forgetlab.load_run(path) for path in sorted(root.iterdir())])
    pd.testing.assert_frame_equal(by_path, unit_loss_table(find_runs(sorted(root.iterdir()))))
    pd.testing.assert_frame_equal(by_run, by_path)


def test_unit_loss_is_the_mean_over_seeds_at_the_last_phase(study):
    _, runs = study
    table = unit_loss_table(runs).set_index(["setting", "unit"])
    for rank in (1, 4):
        for unit in UNITS:
            values = [_recovered(rank, seed, unit) * 2 for r, seed, *_ in RUNS if r == rank]  # the last phase is 2
            row = table.loc[(f"offline_vit lora r={rank}", unit)]
            assert row.runs == len(values)
            assert row.recovered_pp == pytest.approx(np.mean(values))
            assert row.recovered_sd_pp == pytest.approx(np.std(values, ddof=1))
            assert row.costs_runs == sum(value > 1 for value in values)
            assert row.damage_pp == pytest.approx(-np.mean(values) / 2)
    assert "all" not in table.index.get_level_values("unit")
    family = unit_loss_table(runs, by="family").set_index(["setting", "unit"])
    for unit in UNITS:
        values = [_recovered(rank, seed, unit) * 2 for rank, seed, *_ in RUNS]
        row = family.loc[("offline_vit lora", unit)]
        assert row.runs == len(RUNS) and row.recovered_pp == pytest.approx(np.mean(values))


def test_spectra_sum_intruders_over_matrices_and_average_the_norm(study):
    _, runs = study
    table = spectra_table(runs).set_index(["setting", "phase"])
    for rank in (1, 4):
        cells = [run for run in RUNS if run[0] == rank]
        row = table.loc[(f"offline_vit lora r={rank}", 2)]
        sums = [sum(run[2]) for run in cells]
        assert row.runs == len(cells) and row.intruders == pytest.approx(np.mean(sums))
        assert row.intruders_sd == pytest.approx(np.std(sums, ddof=1))
        assert row.relative_norm == pytest.approx(np.mean([np.mean(run[3]) for run in cells]))


def test_predictors_are_spearman_against_the_upstream_drop_with_an_exact_permutation_p(study):
    _, runs = study
    table = predictors_table(runs).set_index("predictor")
    drops = [100 * (PRETRAINED - run[4][1]) for run in RUNS]
    orderings = list(itertools.permutations(drops))  # 5 runs: 120 orderings, every one tried
    for name, values in (
        ("intruders", [sum(run[2]) for run in RUNS]),
        ("relative_norm", [np.mean(run[3]) for run in RUNS]),
    ):
        row = table.loc[name]
        assert row.backbone == "offline_vit" and row.family == "lora" and row.runs == len(RUNS)
        observed = spearmanr(values, drops).statistic
        assert row.spearman == pytest.approx(observed)
        extreme = sum(abs(spearmanr(values, order).statistic) >= abs(observed) - 1e-12 for order in orderings)
        assert row.p == pytest.approx(extreme / len(orderings))
    fewer = predictors_table(runs[:4])  # below the findings' 5 runs: rho, but no test
    assert fewer["spearman"].notna().all() and fewer["p"].isna().all()


def test_drift_across_runs_is_the_last_phase_mean_per_unit(study):
    _, runs = study
    table = drift_table_across(runs).set_index(["setting", "unit"])
    for rank in (1, 4):
        for unit in (*UNITS, "features"):
            seeds = [seed for r, seed, *_ in RUNS if r == rank]
            row = table.loc[(f"offline_vit lora r={rank}", unit)]
            assert row.runs == len(seeds)
            assert row.cka == pytest.approx(np.mean([_cka(rank, seed, unit, 2) for seed in seeds]))
    units = list(table.loc["offline_vit lora r=1"].index)
    assert units == [*UNITS, "features"]  # forward order kept


def test_lost_and_misaligned_across_runs_average_each_runs_split(study):
    root, runs = study
    table = lost_misaligned_across(runs, resamples=50)
    assert "all" in set(table.group) <= {"all", "near", "far"}  # near/far: the classes' WordNet quartiles
    for rank in (1, 4):
        expected = []
        seeds = [seed for r, seed, *_ in RUNS if r == rank]
        for seed in seeds:
            arrays = [
                np.load(root / f"r{rank}-seed{seed}" / "predictions" / f"upstream_after_{r}.npz") for r in range(3)
            ]
            correct = {
                name: np.stack([a[f"predictions_{name}"] == a["labels"] for a in arrays]) for name in ("head", "knn")
            }
            expected.append(lost_misaligned(correct, 2, resamples=50))
        row = table[(table.setting == f"offline_vit lora r={rank}") & (table.phase == 2) & (table.group == "all")].iloc[
            0
        ]
        assert row.runs == len(seeds) and row.lost_by == "knn"
        assert row.lost_pp == pytest.approx(np.mean([e["lost_pp"] for e in expected]))
        assert row.misaligned_pp == pytest.approx(np.mean([e["misaligned_pp"] for e in expected]))
        assert row.head_drop_pp == pytest.approx(row.lost_pp + row.misaligned_pp)


def test_the_report_draws_the_study_across_runs(study, tmp_path):
    from forgetlab.reporting.page import write_report

    root, _ = study
    write_report([root], tmp_path / "report", permutations=20, log=lambda message: None)
    page = (tmp_path / "report" / "report.md").read_text()
    assert "Where forgetting happens, across runs" in page
    assert "Does the update predict the upstream drop?" in page
    assert "Which units carry the upstream loss" in page
    figures = {path.name for path in (tmp_path / "report" / "figures").iterdir()}
    assert "where_rank_spectra.png" in figures
    assert any(name.startswith("where_drift_") and name.endswith(".png") for name in figures)


def test_report_out_that_is_a_file_is_refused_in_one_line(study, tmp_path, capsys):
    from forgetlab.cli import main

    root, _ = study
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    assert main(["report", str(root), "--out", str(taken)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"forgetlab: error: --out {taken} is a file; give a folder for the report (it is created if missing)"
    ]
    assert taken.read_text() == "not a folder"
