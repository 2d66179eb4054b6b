"""What the report claims, on hand-made run folders (issue 17 part 4, issue 21 parts 1-2): unique labels
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


def make_run(root, name, *, overrides=(), rows=None, tasks=("fontfamily", "digits"), forgotten=(4, 3, 2, 1, 0, 5),
             images_per_class=10, classes=CLASSES, synsets=WNIDS, domain=("car.n.01", "car")):  # fmt: skip
    """A run folder as ``forgetlab run`` commits it, written by hand: the resolved config, the matrix
    ``rows`` (row 0 pretrained), the task records, ``upstream.json`` and upstream predictions in which,
    after the first task, ``forgotten[c]`` images of class ``c`` turn wrong (all were right before)."""
    folder = RunFolder(root / name)
    folder.path.mkdir(parents=True)
    config = config_module.resolve({}, [f"name={name}", f"data.tasks=[{', '.join(tasks)}]", *overrides])
    folder.config.write_text(config_module.dump(config))
    rows = rows if rows is not None else [[0.8] + [None] * len(tasks)] + [[0.7] + [0.6] * (i + 1) + [None] * (len(tasks) - i - 1)
                                                                           for i in range(len(tasks))]  # fmt: skip
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
    write_json(folder.upstream, {"name": "offline_upstream", "classes": list(classes), "synsets": synsets, "groups": None})
    records = [{"task": task, "column": task, "num_classes": 10, "domain_synset": domain[0], "domain_word": domain[1],
                "trainable_parameters": 1290, "trainable_backbone_parameters": 0, "backbone_parameters": 1000,
                "trainable_fraction_of_backbone": 0.0} for task in tasks[:completed]]  # fmt: skip
    folder.commit(completed, len(tasks), matrix, records, [], files)
    return folder.path


@pytest.fixture
def similarity(monkeypatch):
    """Class similarities to the domain without loading WordNet (seconds): class c scores SIMILARITY[c]."""
    from forgetlab.reporting import page

    monkeypatch.setattr(page, "class_similarities", lambda domain, synsets=None, **options: SIMILARITY[: len(synsets)].copy())


SIMILARITY = np.array([0.2, 0.3, 0.4, 0.5, 0.1, 0.9])


# ------------------------------------------------------------------------------ issue 17, part 4: labels
def test_unique_labels_add_the_id_only_where_a_name_repeats():
    assert class_labels({"classes": CLASSES, "synsets": WNIDS}) == [
        "crane (n02012849)", "crane (n03126707)", "maillot (n03710637)", "maillot (n03710721)", "goldfish", "sports car"]  # fmt: skip
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
    assert keys == ["sports car", "crane (n02012849)", "crane (n03126707)", "maillot (n03710637)", "maillot (n03710721)"]
    assert [int(row["forgotten"]) for row in table] == [5, 4, 3, 2, 1] and len(set(keys)) == len(keys)
    markdown = (out / "report.md").read_text()
    assert "| crane (n02012849) | n02012849 | 4 |" in markdown and "| crane (n03126707) | n03126707 | 3 |" in markdown
    assert re.search(r"\| rank8-seed0 \(sweep-a\) \| offline_vit \|", markdown) and "rank8-seed0 (sweep-b)" in markdown
