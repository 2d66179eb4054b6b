"""What the report claims, on hand-made run folders: unique labels
where names collide, findings that compare like with like and state their n and uncertainty, no figure
of nothing, the mode and the metrics' signs written out."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from forgetlab import config as config_module
from forgetlab.analysis.collect import find_runs
from forgetlab.analysis.labels import class_labels, file_keys, run_labels, unique_labels
from forgetlab.analysis.perclass import class_changes
from forgetlab.reporting import figures, write_report
from forgetlab.results import AccuracyMatrix, RunFolder, write_json, write_npz

# ImageNet's colliding names: two cranes (the bird, the machine) and two maillots.
CLASSES = ["crane", "crane", "maillot", "maillot", "goldfish", "sports car"]
WNIDS = ["n02012849", "n03126707", "n03710637", "n03710721", "n01443537", "n04285008"]


def make_run(
    root,
    name,
    *,
    overrides=(),
    rows=None,
    tasks=("fontfamily", "digits"),
    forgotten=(4, 3, 2, 1, 0, 5),
    images_per_class=10,
    classes=CLASSES,
    synsets=WNIDS,
    domain=("car.n.01", "car"),
):
    """A run folder as ``forgetlab run`` commits it, written by hand: the resolved config, the matrix
    ``rows`` (row 0 pretrained), the task records, ``upstream.json`` and upstream predictions in which,
    after the first task, ``forgotten[c]`` images of class ``c`` turn wrong (all were right before)."""
    folder = RunFolder(root / name)
    folder.path.mkdir(parents=True)
    config = config_module.resolve({}, [f"name={name}", f"data.tasks=[{', '.join(tasks)}]", *overrides])
    folder.config.write_text(config_module.dump(config))
    rows = (
        rows
        if rows is not None
        else [[0.8] + [None] * len(tasks)]
        + [[0.7] + [0.6] * (i + 1) + [None] * (len(tasks) - i - 1) for i in range(len(tasks))]
    )
    matrix = AccuracyMatrix(columns=["upstream", *tasks], values=rows)
    completed = len(rows) - 1
    labels = np.repeat(np.arange(len(classes)), images_per_class)
    files = []
    for index in range(completed + 1):
        predictions = labels.copy()
        if index >= 1:
            for c, count in enumerate(forgotten):
                predictions[np.flatnonzero(labels == c)[:count]] = (c + 1) % len(classes)
        write_npz(folder.predictions(index), predictions=predictions, labels=labels)
        files.append(folder.predictions(index))
    write_json(
        folder.upstream, {"name": "offline_upstream", "classes": list(classes), "synsets": synsets, "groups": None}
    )
    records = [
        {
            "task": task,
            "column": task,
            "num_classes": 10,
            "domain_synset": domain[0],
            "domain_word": domain[1],
            "trainable_parameters": 1290,
            "trainable_backbone_parameters": 0,
            "backbone_parameters": 1000,
            "trainable_fraction_of_backbone": 0.0,
            "steps": 10,
            "images_per_second": 100.0,
        }
        for task in tasks[:completed]
    ]
    folder.commit(completed, len(tasks), matrix, records, [], files)
    return folder.path


@pytest.fixture
def similarity(monkeypatch):
    """Class similarities to the domain without loading WordNet (seconds): class c scores SIMILARITY[c]."""
    from forgetlab.reporting import page

    monkeypatch.setattr(
        page, "class_similarities", lambda domain, synsets=None, **options: SIMILARITY[: len(synsets)].copy()
    )


SIMILARITY = np.array([0.2, 0.3, 0.4, 0.5, 0.1, 0.9])


# ------------------------------------------------------------------------------ labels
def test_unique_labels_add_the_id_only_where_a_name_repeats():
    assert class_labels({"classes": CLASSES, "synsets": WNIDS}) == [
        "crane (n02012849)",
        "crane (n03126707)",
        "maillot (n03710637)",
        "maillot (n03710721)",
        "goldfish",
        "sports car",
    ]
    assert class_labels({"classes": ["a", "a", "b"], "synsets": None}) == ["a (0)", "a (1)", "b"]
    # Equal names with equal ids still get distinct labels; file keys stay distinct after slugging.
    assert unique_labels(["x", "x", "x (1)"], [1, 1, 2]) == ["x (1)", "x (1) #2", "x (1) #3"]
    assert len(set(file_keys(["a b", "a_b", "a/b"]))) == 3


def test_the_most_forgotten_figure_draws_every_class_on_its_own_row():
    labels = np.repeat(np.arange(6), 10)
    after = labels.copy()
    after[[0, 1, 2, 3, 10, 11, 20, 21, 22, 30]] = 5  # crane bird 4, crane machine 2, maillot 3 and 1
    changes = class_changes(labels, after, labels, 6)
    figure = figures.most_forgotten_figure(changes, class_labels({"classes": CLASSES, "synsets": WNIDS}), "t")
    (axis,) = figure.axes
    rows = {round(bar.get_y() + bar.get_height() / 2, 6): bar.get_width() for bar in axis.patches}
    assert len(rows) == len(axis.patches) == 4  # one row per forgotten class, none hidden behind another
    ticks = [tick.get_text() for tick in axis.get_yticklabels()]
    assert ticks == ["maillot (n03710721)", "crane (n03126707)", "maillot (n03710637)", "crane (n02012849)"]
    assert sorted(rows.values()) == [1, 2, 3, 4]


def test_report_tables_csv_and_figure_files_are_keyed_by_unique_labels(tmp_path, similarity):
    make_run(tmp_path / "sweep-a", "rank8-seed0", overrides=["method.rank=8"])
    make_run(tmp_path / "sweep-b", "rank8-seed0", overrides=["method.rank=8", "train.epochs=2"])
    runs = find_runs([tmp_path / "sweep-a", tmp_path / "sweep-b"])
    assert run_labels(runs) == ["rank8-seed0 (sweep-a)", "rank8-seed0 (sweep-b)"]
    out = tmp_path / "report"
    write_report([tmp_path / "sweep-a", tmp_path / "sweep-b"], out, permutations=50, log=lambda message: None)
    figure_files = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "matrix_rank8-seed0_sweep-a.png" in figure_files and "matrix_rank8-seed0_sweep-b.png" in figure_files
    with open(out / "figures" / "forgotten_rank8-seed0_sweep-a.csv") as handle:
        table = list(csv.DictReader(handle))
    keys = [row["class"] for row in table]
    assert keys == [
        "sports car",
        "crane (n02012849)",
        "crane (n03126707)",
        "maillot (n03710637)",
        "maillot (n03710721)",
    ]
    assert [int(row["forgotten"]) for row in table] == [5, 4, 3, 2, 1] and len(set(keys)) == len(keys)
    markdown = (out / "report.md").read_text()
    assert "| crane (n02012849) | n02012849 | 4 |" in markdown and "| crane (n03126707) | n03126707 | 3 |" in markdown
    assert re.search(r"\| rank8-seed0 \(sweep-a\) \| offline_vit \|", markdown) and "rank8-seed0 (sweep-b)" in markdown


# ------------------------------------------------------------------------------ like with like
def rows(upstream: float, downstream: float, tasks: int = 2) -> list[list]:
    """A matrix: pretrained upstream 0.8, then every task at ``downstream``, upstream ending at ``upstream``."""
    return [[0.8] + [None] * tasks] + [
        [upstream if i == tasks - 1 else 0.75] + [downstream] * (i + 1) + [None] * (tasks - i - 1) for i in range(tasks)
    ]


def test_methods_are_compared_only_within_one_setting_and_one_seed_each_is_indistinguishable(tmp_path):
    from forgetlab.analysis.findings import method_findings
    from forgetlab.analysis.tables import paper2_table

    # The demo: the default run (8 epochs a task) and a rank sweep at 2 epochs, one seed each.
    make_run(tmp_path, "default", overrides=["method.rank=4", "train.epochs=8"], rows=rows(0.60, 0.6233))
    for rank, upstream in ((1, 0.6201), (4, 0.6231), (16, 0.5001)):
        make_run(
            tmp_path / "demo-rank-sweep",
            f"rank{rank}",
            overrides=[f"method.rank={rank}", "train.epochs=2"],
            rows=rows(upstream, 0.6233),
        )
    table = paper2_table(find_runs([tmp_path]))
    assert [(row["setting"], row["method"]) for row in table] == [
        ("train.epochs=2", "lora r=1"),
        ("train.epochs=8", "lora r=4"),
        ("train.epochs=2", "lora r=4"),
        ("train.epochs=2", "lora r=16"),
    ]
    (sentence,) = method_findings(table)  # the 8-epoch row has nothing to be compared with
    assert sentence.startswith("Of 3 methods on offline_vit (train.epochs=2), the best balance")
    assert "not settled" in sentence and "indistinguishable (one seed each, no interval)" in sentence
    # With no seed spread nothing can be called best, not even over a 6-point gap: each method's value is listed.
    assert "keeps the best balance" not in sentence
    assert "lora r=4 62.32 % (one seed), lora r=1 62.17 % (one seed), lora r=16 56.17 % (one seed)" in sentence


def test_a_method_is_called_best_only_beyond_the_seed_spread_or_by_a_paired_test(tmp_path):
    from forgetlab.analysis.findings import method_findings
    from forgetlab.analysis.tables import paper2_table

    gaps = {"linear": (0.70, 0.71, 0.72), "lora": (0.60, 0.62, 0.61), "full": (0.695, 0.73, 0.70)}
    for method, values in gaps.items():
        for seed, value in enumerate(values):
            make_run(
                tmp_path,
                f"{method}-{seed}",
                overrides=[f"method.name={method}", f"seed={seed}"],
                rows=rows(value, value),
            )
    table = paper2_table(find_runs([tmp_path]))
    assert {row["method"]: row["mean"][2] for row in table} == {"linear": 3, "lora r=4": 3, "full": 3}
    (sentence,) = method_findings(table)
    # full (70.8 %) vs linear (71.0 %): within the spread, and a paired test over 3 seeds does not separate them.
    assert "not settled" in sentence and "full" in sentence and "linear" in sentence and "lora" not in sentence
    assert "within the seed spread" in sentence and "(3 seeds)" in sentence
    table = [row for row in table if row["method"] != "full"]
    (sentence,) = method_findings(table)
    assert sentence.startswith("Of 2 methods on offline_vit, linear keeps the best balance")
    from scipy.stats import ttest_rel

    p = ttest_rel(gaps["linear"], gaps["lora"]).pvalue
    assert f"paired t-test over 3 seeds p = {p:.2g}" in sentence and p < 0.05


def test_runs_with_different_task_counts_are_never_averaged(tmp_path):
    from forgetlab.analysis.tables import paper2_table

    make_run(tmp_path, "two-tasks", rows=rows(0.7, 0.6))
    make_run(tmp_path, "three-tasks", tasks=("fontfamily", "digits", "fontstyle"), rows=rows(0.7, 0.9, tasks=3))
    make_run(
        tmp_path,
        "stopped",
        overrides=["seed=1"],
        tasks=("fontfamily", "digits", "fontstyle"),
        rows=rows(0.7, 0.3, tasks=3)[:2],
    )
    table = {(row["setting"], row["completed"]): row for row in paper2_table(find_runs([tmp_path]))}
    assert sorted(table) == [
        ("data.tasks=[fontfamily, digits, fontstyle]", 1),
        ("data.tasks=[fontfamily, digits, fontstyle]", 3),
        ("data.tasks=[fontfamily, digits]", 2),
    ]
    assert table[("data.tasks=[fontfamily, digits]", 2)]["downstream"] == (pytest.approx(0.6), 0.0, 1)
    assert table[("data.tasks=[fontfamily, digits, fontstyle]", 3)]["downstream"] == (pytest.approx(0.9), 0.0, 1)


def test_rank_curves_label_groups_by_what_differs_in_distinct_colours_and_name_the_dropped(tmp_path):
    from forgetlab.analysis.groups import rank_groups
    from forgetlab.reporting.page import _dropped_groups

    for epochs in (2, 8):
        for rank in (1, 4):
            make_run(
                tmp_path / f"e{epochs}",
                f"rank{rank}",
                overrides=[f"method.rank={rank}", f"train.epochs={epochs}"],
                rows=rows(0.7 - 0.01 * rank, 0.6),
            )
    make_run(tmp_path, "lr", overrides=["method.rank=4", "train.epochs=2", "train.lr=0.01"])
    groups = rank_groups(find_runs([tmp_path]))
    figure = figures.rank_curves(groups)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    assert sorted(labels) == [
        "offline_vit (train.epochs=2, train.lr=0.001)",
        "offline_vit (train.epochs=8, train.lr=0.001)",
    ]
    assert len({handle.lines[0].get_color() for handle in handles}) == 2  # errorbar containers: the line's colour
    assert (
        _dropped_groups(groups)
        == " Not drawn, one rank only: offline_vit (train.epochs=2, train.lr=0.01) (rank 4, 1 run)."
    )


def test_a_contextual_finding_below_the_minimum_of_forgotten_images_gives_no_p_value(tmp_path, similarity):
    from forgetlab.analysis.findings import MIN_FORGOTTEN_IMAGES, contextual_findings
    from forgetlab.reporting.page import contextual_rows

    make_run(tmp_path, "one-image", forgotten=(1, 0, 0, 0, 0, 0))
    for seed in (0, 1):  # another setting: many forgotten images, most of them of the most similar class
        make_run(tmp_path, f"many-{seed}", overrides=[f"seed={seed}", "train.epochs=2"], forgotten=(2, 2, 2, 2, 2, 10))
    make_run(tmp_path, "nothing", overrides=["train.epochs=3"], forgotten=(0,) * 6)
    many, nothing, few = contextual_findings(
        contextual_rows(find_runs([tmp_path]), permutations=200)
    )  # sorted by setting
    assert nothing.endswith(
        "(train.epochs=3) after its first task (fontfamily, domain car.n.01): no test: no upstream image was "
        "forgotten in its one run."
    )
    assert (
        few.startswith("Contextual forgetting on offline_vit lora (train.epochs=")
        and "p <" not in few
        and "p =" not in few
    )
    assert f"no test: its one run forgot 1 upstream image, fewer than the {MIN_FORGOTTEN_IMAGES} a test needs" in few
    assert "in 2 of 2 runs (20 forgotten images each)" in many and "difference is +0.200 in each" in many


# ------------------------------------------------------------------------------ what the report says
def test_the_report_names_its_mode_defines_its_metrics_and_draws_nothing_of_nothing(tmp_path, similarity):
    from forgetlab.errors import ForgetlabError
    from forgetlab.results import single_prediction_path

    # rank16 is the run whose classes are drawn; its single-adapter model forgot nothing.
    for rank in (1, 16):
        path = make_run(tmp_path / "sweep", f"rank{rank}", overrides=[f"method.rank={rank}"], rows=rows(0.7, 0.6))
        labels = np.repeat(np.arange(len(CLASSES)), 10)
        for phase in (1, 2):
            predictions = labels.copy()
            if rank == 1 or phase == 2:
                predictions[:25] = 5  # 20 images of classes 0 and 1 (and 2) are forgotten
            write_npz(single_prediction_path(RunFolder(path), phase), predictions=predictions, labels=labels)
    out = tmp_path / "report"
    write_report(
        [tmp_path / "sweep"], out, permutations=50, after="single", similarity="tokens", log=lambda message: None
    )
    page, markdown = (out / "report.html").read_text(), (out / "report.md").read_text()
    # Which mode made the numbers: in the headings, the captions and the findings.
    assert "<h2>Contextual forgetting (--after single, --similarity tokens)</h2>" in page
    assert "Which upstream classes are forgotten (paper 1, figures 3-4; --after single, --similarity tokens)" in page
    assert "pretrained backbone plus only that task&#x27;s adapter" in page and "paper 1&#x27;s token matching" in page
    assert "(fontfamily, domain car.n.01; --after single, --similarity tokens)" in markdown
    # A run that forgot nothing gets a sentence, not a figure titled 'nan'.
    assert not list((out / "figures").glob("forgotten_*")) and not list((out / "figures").glob("similarity_*"))
    assert (
        "rank16 forgot no upstream test image after fontfamily (0 of the 60 right before; --after single, "
        "--similarity tokens): no forgotten-classes or similarity figure is drawn for it."
    ) in markdown
    # The glossary defines every column of the metrics table, with its sign.
    metrics_header = (
        re.search(r"\| run \| backbone \| method \| seed \| tasks \| (.*) \|\n", markdown).group(1).split(" | ")
    )
    glossary = dict(re.findall(r"^- \*\*(.+?)\*\*: (.*)$", markdown, flags=re.M))
    assert set(metrics_header) <= set(glossary), set(metrics_header) - set(glossary)
    assert "negative means upstream knowledge was forgotten" in glossary["upstream change"]
    assert "positive means accuracy was lost" in glossary["avg forgetting"] and "negative means" in glossary["BWT"]
    assert "| rank1 | offline_vit | lora r=1 | 0 | 2/2 | 60.00 | 0.00 | 0.00 |  | 60.00 | 70.00 | -10.00 |" in markdown
    # Why FWT is empty, and the run that would fill it.
    assert (
        "FWT vs linear is empty for rank1, rank16: no linear-probe run (method.name=linear) of "
        "the same backbone and seed is among the runs given; run one with all its other settings and report "
        "both, e.g. for rank1: forgetlab run method.name=linear backbone.name=offline_vit "
        "'data.tasks=[fontfamily, digits]' seed=0\n"
    ) in markdown
    with pytest.raises(ForgetlabError, match="unknown report mode --after both"):
        write_report([tmp_path / "sweep"], tmp_path / "other", after="both")
    assert not (tmp_path / "other").exists()


def test_a_similarity_figure_of_no_forgotten_image_is_refused_and_a_few_get_no_p_value():
    from forgetlab.analysis.contextual import contextual_forgetting

    labels = np.repeat(np.arange(6), 10)
    nothing = contextual_forgetting(labels, labels, labels, SIMILARITY, permutations=20)
    with pytest.raises(ValueError, match="no upstream image was forgotten"):
        figures.similarity_figure(nothing, "car.n.01", "t")
    after = labels.copy()
    after[:3] = 5
    few = contextual_forgetting(labels, after, labels, SIMILARITY, permutations=20)
    figure = figures.similarity_figure(few, "car.n.01", "t", min_forgotten=20, similarity="tokens")
    assert (
        "no test: 3 forgotten, fewer than 20" in figure.axes[0].get_title() and "p =" not in figure.axes[0].get_title()
    )
    assert figure.axes[0].get_xlabel() == "Wu-Palmer similarity to car.n.01 (class-name tokens)"


def test_one_counting_rule_for_the_share_of_the_backbone():
    """The frozen upstream head is not part of the backbone: anatomy's 1000-class random head and a
    run's 36-class head give the same share (0.917 % against 1.011 % for LoRA r=4)."""
    import torch

    from forgetlab.config import method_config_from_dict
    from forgetlab.methods import build_method
    from forgetlab.models.multihead import MultiHeadModel
    from forgetlab.train import backbone_parameters
    from tests.conftest import random_backbone

    counts = {}
    for classes in (36, 1000):
        for name in ("lora", "full"):
            torch.manual_seed(0)
            model = MultiHeadModel(random_backbone("offline_vit", num_classes=classes))
            model.add_head("task", 10)
            build_method(method_config_from_dict({"name": name, **({"rank": 4} if name == "lora" else {})})).prepare(
                model, "task"
            )
            model.upstream_head.requires_grad_(False)  # as a run and anatomy do
            counts[(classes, name)] = backbone_parameters(model)
    assert (
        counts[(36, "lora")] == counts[(1000, "lora")] == (12_288, 1_198_592 + 12_288)
    )  # 6 qkv layers x 4 x (128 + 384)
    assert counts[(36, "full")] == counts[(1000, "full")] == (1_198_592, 1_198_592)  # full fine-tuning is 100 %
