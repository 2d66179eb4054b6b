"""Which runs the report pairs and what it shows, on hand-made run folders: FWT's probe matches on the
whole config but the method and never by folder order; copies of a run are named and not used; a
method's label names every key in which it differs; a figure of some runs says which and why; the
cells a sweep did not finish are listed; one unit per quantity; the chance level of every task."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

import forgetlab
from forgetlab.analysis.collect import find_runs
from forgetlab.cli import main
from forgetlab.analysis.tables import paper2_table, run_rows, write_sweep_table
from forgetlab.errors import ForgetlabError
from forgetlab.reporting import write_report
from forgetlab.results import write_json
from tests.test_report_claims import make_run


def first_task(accuracy: float, tasks: int = 2) -> list[list]:
    """A matrix in which every task scores ``accuracy`` right after its training and keeps it; upstream 0.8 -> 0.7."""
    return [[0.8] + [None] * tasks] + [[0.7] + [accuracy] * (i + 1) + [None] * (tasks - i - 1) for i in range(tasks)]


def _rows(paths) -> dict[str, dict]:
    runs = find_runs(paths)
    return {row["run"]: row for row in run_rows(runs)}


# ------------------------------------------------------------------------------ FWT's reference
@pytest.mark.parametrize("short_probe_name", ["a-probe", "z-probe"])  # folder order must not matter
def test_fwt_uses_the_probe_with_the_whole_config_but_the_method_whatever_the_folder_order(tmp_path, short_probe_name):
    make_run(tmp_path, short_probe_name, overrides=["method.name=linear", "train.max_steps=1"], rows=first_task(0.16))
    make_run(tmp_path, "m-probe", overrides=["method.name=linear", "train.max_steps=20"], rows=first_task(0.28))
    make_run(tmp_path, "lora", overrides=["method.rank=4", "train.max_steps=20"], rows=first_task(0.38))
    rows = _rows([tmp_path])
    assert rows["lora"]["forward_transfer_pp"] == pytest.approx(10.0)  # 38 % - 28 %, not 38 % - 16 % = 22
    assert rows["lora"]["forward_transfer_reference"] == "m-probe"
    assert rows[short_probe_name]["forward_transfer_pp"] == pytest.approx(0.0)  # a probe is its own reference


def test_two_matching_probes_are_both_named_and_neither_is_used(tmp_path):
    for sweep, accuracy in (("sweep-a", 0.16), ("sweep-b", 0.28)):  # copies of one probe config, e.g. run twice
        make_run(tmp_path / sweep, "probe", overrides=["method.name=linear"], rows=first_task(accuracy))
    make_run(tmp_path / "sweep-a", "lora", rows=first_task(0.38))
    # A probe that differs in anything but the method is not a candidate: named as the nearest, not used.
    make_run(tmp_path / "other", "lora-flip0", overrides=["preprocess.hflip=0"], rows=first_task(0.38))
    rows = _rows([tmp_path])
    assert math.isnan(rows["lora"].get("forward_transfer_pp", math.nan))
    assert rows["lora"]["forward_transfer_reference"] == "none: ambiguous between probe (sweep-a), probe (sweep-b)"
    assert (
        math.isnan(rows["lora-flip0"].get("forward_transfer_pp", math.nan))
        and rows["lora-flip0"]["forward_transfer_reference"] == ""
    )
    out = tmp_path / "report"
    write_report([tmp_path], out, permutations=20, log=lambda message: None)
    markdown = (out / "report.md").read_text()
    assert "FWT vs linear is empty for lora: probe (sweep-a), probe (sweep-b) match it equally" in markdown
    assert (
        "FWT vs linear is empty for lora-flip0: the nearest linear probe of its "
        "backbone and seed, probe (sweep-a), differs in method.name=linear (here lora)"
    ) not in markdown  # the method is what FWT compares: never a difference
    assert "probe (sweep-a), differs in preprocess.hflip=0.5 (here 0); it is not used." in markdown
    # The copies of one probe config and seed are named in the report and pooled nowhere.
    assert (
        "Same config and seed, so no comparison uses them (they are "
        "listed per run only): probe (sweep-a), probe (sweep-b)."
    ) in markdown
    assert all(row["method"] != "linear" for row in paper2_table(find_runs([tmp_path])))


def test_copies_of_one_run_are_in_no_rank_group(tmp_path):
    from forgetlab.analysis.groups import rank_groups

    for sweep in ("sweep-a", "sweep-b"):
        for rank in (1, 4):
            make_run(tmp_path / sweep, f"rank{rank}", overrides=[f"method.rank={rank}"], rows=first_task(0.5))
    make_run(tmp_path / "sweep-a", "rank8", overrides=["method.rank=8"], rows=first_task(0.5))
    make_run(tmp_path / "sweep-a", "rank8-seed1", overrides=["method.rank=8", "seed=1"], rows=first_task(0.5))
    (group,) = rank_groups(find_runs([tmp_path]))
    assert [run.name for run in group.runs] == ["rank8", "rank8-seed1"] and group.ranks == [8]


# ------------------------------------------------------------------------------ labels that name what differs
def test_method_labels_name_every_key_in_which_rows_differ(tmp_path):
    from forgetlab.analysis.findings import method_findings

    variants = {
        "standard": [],
        "rslora": ["method.scaling=rslora"],
        "dora": ["method.dora=true"],
        "pissa": ["method.init=pissa"],
    }
    for name, overrides in variants.items():
        make_run(tmp_path, name, overrides=["method.rank=16", *overrides], rows=first_task(0.6))
    make_run(tmp_path, "linear", overrides=["method.name=linear"], rows=first_task(0.5))
    table = paper2_table(find_runs([tmp_path]))
    labels = sorted(row["method"] for row in table)
    assert labels == [
        "linear",
        "lora r=16 (method.dora=false, method.init=kaiming, method.scaling=rslora)",
        "lora r=16 (method.dora=false, method.init=kaiming, method.scaling=standard)",
        "lora r=16 (method.dora=false, method.init=pissa, method.scaling=standard)",
        "lora r=16 (method.dora=true, method.init=kaiming, method.scaling=standard)",
    ]
    (sentence,) = method_findings(table)
    assert "lora r=16 (method.dora=true, method.init=kaiming, method.scaling=standard) 65.00 % (one seed)" in sentence
    rows = _rows([tmp_path])
    assert rows["rslora"]["method"] == "lora r=16 (method.dora=false, method.init=kaiming, method.scaling=rslora)"
    assert rows["linear"]["method"] == "linear"


# ------------------------------------------------------------------------------ figures of a subset
def test_figures_of_some_runs_say_which_and_why_and_the_user_chooses(tmp_path, monkeypatch):
    from forgetlab.reporting import page
    from tests.test_report_claims import SIMILARITY

    monkeypatch.setattr(
        page, "class_similarities", lambda domain, synsets=None, **options: SIMILARITY[: len(synsets)].copy()
    )
    make_run(tmp_path, "lora-r4", overrides=["method.rank=4"], forgotten=(0,) * 6)
    make_run(tmp_path, "lora-r16", overrides=["method.rank=16"], forgotten=(0,) * 6)
    make_run(tmp_path, "full", overrides=["method.name=full"], forgotten=(5, 5, 5, 5, 5, 5))
    out = tmp_path / "default"
    write_report([tmp_path], out, permutations=20, log=lambda message: None)
    markdown = (out / "report.md").read_text()
    assert (
        "Forgotten classes and similarity are drawn for 1 of 3 runs (lora-r16): per backbone, the LoRA run of the "
        "highest rank (lowest seed)"
    ) in markdown
    assert "Not drawn: full, lora-r4. Choose with --figure-runs highest-rank|per-method|all|LABEL,LABEL..." in markdown
    assert not list((out / "figures").glob("forgotten_*"))  # lora-r16 forgot nothing; full was not chosen
    out = tmp_path / "all"
    write_report([tmp_path], out, permutations=20, figure_runs="all", log=lambda message: None)
    assert sorted(p.name for p in (out / "figures").glob("forgotten_*.png")) == ["forgotten_full.png"]
    assert "drawn for 3 of 3 runs (full, lora-r16, lora-r4): every run" in (out / "report.md").read_text()
    out = tmp_path / "chosen"
    assert (
        main(["report", str(tmp_path), "--out", str(out), "--permutations", "20", "--figure-runs", "full", "--quiet"])
        == 0
    )
    markdown = (out / "report.md").read_text()
    assert sorted(p.name for p in (out / "figures").glob("matrix_*.png")) == ["matrix_full.png"]
    assert "Accuracy matrices are drawn for 1 of 3 runs (full): the runs chosen with --figure-runs." in markdown
    with pytest.raises(ForgetlabError, match="--figure-runs: no run labelled 'nope'"):
        write_report([tmp_path], tmp_path / "refused", figure_runs="full,nope")
    assert not (tmp_path / "refused").exists()


# ------------------------------------------------------------------------------ cells a sweep did not finish
def test_the_report_lists_failed_and_unfinished_cells_with_their_reasons(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep, "rank1", overrides=["method.rank=1"])
    make_run(sweep, "rank4", overrides=["method.rank=4"], rows=first_task(0.6)[:2])  # stopped after 1 of 2 tasks
    write_json(
        sweep / "status.json",
        {
            "rank1": {"status": "ran"},
            "rank4": {"status": "running"},
            "rank16": {"status": "failed", "message": "out of memory; lower train.batch_size"},
        },
    )
    messages = []
    write_report([sweep], tmp_path / "report", permutations=20, log=messages.append)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert f"- Cell {sweep / 'rank16'}: failed (task 0/?: out of memory; lower train.batch_size)." in markdown
    assert (
        f"- Cell {sweep / 'rank4'}: partial (task 1/2): its finished tasks are reported, in rows of their own."
        in markdown
    )
    assert f"Cell {sweep / 'rank1'}:" not in markdown
    assert messages[-1].startswith("report of 2 runs; 2 cells not done, listed in it:")


# ------------------------------------------------------------------------------ units
def test_one_unit_per_quantity_in_the_api_the_csv_and_the_report(tmp_path, capsys):
    make_run(tmp_path / "sweep", "lora", rows=[[0.8, None, None], [0.75, 0.6, None], [0.705, 0.55, 0.62]])
    (row,) = write_sweep_table(tmp_path / "sweep")
    with open(tmp_path / "sweep" / "sweep.csv") as handle:
        (stored,) = list(csv.DictReader(handle))
    table = forgetlab.load_sweep(tmp_path / "sweep")
    metrics = forgetlab.load_run(tmp_path / "sweep" / "lora").metrics
    expected = {
        "average_accuracy_pct": 58.5,
        "average_forgetting_pp": 5.0,
        "backward_transfer_pp": -5.0,
        "plasticity_pct": 61.0,
        "upstream_change_pp": -9.5,
        "upstream_final_pct": 70.5,
    }
    for key, value in expected.items():
        assert row[key] == pytest.approx(value) and float(stored[key]) == pytest.approx(value)
        assert table.loc["lora", key] == pytest.approx(value) and metrics[key] == pytest.approx(value)
    # No metric column without its unit: a fraction and a point never share a name.
    assert not {"average_accuracy", "average_forgetting", "upstream_change", "forward_transfer"} & set(stored)
    assert main(["show", str(tmp_path / "sweep" / "lora")]) == 0
    assert "forgetting +5.00 points, BWT -5.00 points, upstream change -9.50 points" in capsys.readouterr().out


# ------------------------------------------------------------------------------ chance level
def test_show_and_the_report_give_each_tasks_chance_level_and_flag_a_task_not_learned(tmp_path, capsys):
    make_run(tmp_path, "learned-nothing", rows=[[0.8, None, None], [0.75, 0.12, None], [0.7, 0.11, 0.64]])
    assert main(["show", str(tmp_path / "learned-nothing")]) == 0
    shown = capsys.readouterr().out
    assert (
        "chance level: upstream 16.67% (6 classes), fontfamily 10.00% (10 classes), digits 10.00% (10 classes)\n"
        "AT CHANCE after training (learned nothing measurable): fontfamily 12.00% (chance 10.00%)"
    ) in shown
    write_report([tmp_path], tmp_path / "report", permutations=20, log=lambda message: None)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| fontfamily | 10 | 10.00 | learned-nothing (12.00) |" in markdown
    assert "| digits | 10 | 10.00 |  |" in markdown and "| upstream | 6 | 16.67 |  |" in markdown
    assert "Runs at chance on a task (within 5 points of it, or below, right after training it;" in markdown


# ------------------------------------------------------------------------------ the contextual test, readable
def test_the_contextual_test_prints_a_summary_and_gives_a_frame_per_class():
    import dataclasses

    from forgetlab.analysis.contextual import contextual_forgetting

    labels = np.repeat(np.arange(3), 10)
    after = labels.copy()
    after[:4] = 1  # four images of class 0 forgotten
    test = contextual_forgetting(labels, after, labels, np.array([0.9, 0.2, 0.1]), permutations=50)
    test = dataclasses.replace(
        test,
        domain="car.n.01",
        task="cars",
        classes=["sports car", "tench", "goldfish"],
        synsets=["n04285008", "n01440764", "n01443537"],
    )
    text = repr(test)
    assert "array(" not in text and len(text) < 400
    assert (
        "4 upstream test images forgotten of 30" in text
        and "after cars" in text
        and "to car.n.01 0.900 (forgotten) vs 0.400" in text
    )
    frame = test.to_frame()
    assert list(frame.columns) == ["class", "synset", "similarity", "images", "forgotten", "forgotten_pct"]
    assert frame.iloc[0].to_dict() == {
        "class": "sports car",
        "synset": "n04285008",
        "similarity": 0.9,
        "images": 10,
        "forgotten": 4,
        "forgotten_pct": 40.0,
    }
    assert int(frame["forgotten"].sum()) == test.forgotten == 4
