"""Tables derived from run folders: one row per run (config and metrics), means over seeds, and
paper 2's table (method, trainable parameters, downstream and upstream accuracy, their mean).

Imports ``collect``, ``groups``, ``labels`` and ``metrics`` of the analysis and ``results`` to write a CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from forgetlab.analysis.collect import RunResult, find_runs
from forgetlab.analysis.groups import METHOD_SECTIONS, flatten, identity_key, what_differs
from forgetlab.analysis.labels import run_labels
from forgetlab.analysis.metrics import over_seeds, summarise
from forgetlab.errors import DataError
from forgetlab.results import atomic_write_text


def reference_run(run: RunResult, runs: list[RunResult]) -> RunResult | None:
    """The linear probe with the same backbone, sequence and seed: the reference of forward transfer."""
    for other in runs:
        if (
            other.config["method"]["name"] == "linear"
            and other.backbone == run.backbone
            and other.config["data"] == run.config["data"]
            and other.seed == run.seed
        ):
            return other
    return None


def run_row(run: RunResult, runs: list[RunResult] = (), label: str | None = None) -> dict:
    """One run's config and metrics; ``label``: its unique label among ``runs`` (default: its folder
    name; see :func:`forgetlab.analysis.labels.run_labels`)."""
    matrix = run.matrix.as_array()
    row = {
        "run": label or run.name,
        "backbone": run.backbone,
        "method": run.method,
        "seed": run.seed,
        "completed_tasks": run.completed,
        "total_tasks": run.matrix.num_tasks,
        "trainable_parameters": run.tasks[0]["trainable_parameters"] if run.tasks else None,
        "trainable_backbone_parameters": run.tasks[0]["trainable_backbone_parameters"] if run.tasks else None,
        "upstream_pretrained": float(matrix[0, 0]),
    }
    reference = reference_run(run, list(runs))
    row.update(summarise(matrix, reference.matrix.as_array() if reference else None, run.matrix.trained(),
                         reference.matrix.trained() if reference else None))  # fmt: skip
    row.update({f"config.{k}": v for k, v in flatten(run.config).items()})
    return row


def rows_to_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_sweep_table(folder: Path) -> list[dict]:
    try:
        runs = find_runs([folder])
    except DataError:  # no cell has written anything yet
        runs = []
    rows = [run_row(run, runs, label) for run, label in zip(runs, run_labels(runs))]
    if rows:
        atomic_write_text(folder / "sweep.csv", rows_to_csv(rows))
    return rows


def seed_groups(runs: list[RunResult]) -> dict[tuple, list[RunResult]]:
    """Runs that differ only in their seed (and folder), keyed by (backbone, method, sequence, config,
    tasks completed) and ordered by backbone and method: a run stopped after 2 of 3 tasks is never
    averaged with finished seeds."""
    groups = defaultdict(list)
    for run in runs:
        groups[(run.backbone, run.method, tuple(run.config["data"]["tasks"]), run.config_key(), run.completed)].append(run)
    return dict(sorted(groups.items(), key=lambda item: _natural(item[0][:2])))


def _natural(parts) -> list:
    """Sort key in which 'lora r=4' comes before 'lora r=16'."""
    import re

    return [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(part))] for part in parts]


def paper2_table(runs: list[RunResult]) -> list[dict]:
    """Per (backbone, method, setting): trainable parameters, final downstream and upstream accuracy
    and their mean, each as (mean, std, seeds) over seeds, with ``per_seed`` values for paired tests.

    ``context`` is the config without the method's sections (``method``, ``lwf``, ``replay``) and the
    seed: rows with equal contexts (and every task done) may be compared. ``setting`` names what
    differs between contexts (e.g. ``train.epochs=2``), the backbone aside (its own column)."""
    label = dict(zip(map(id, runs), run_labels(runs)))
    groups = seed_groups(runs)
    contexts = [identity_key(members[0], *METHOD_SECTIONS) for members in groups.values()]
    distinct = list(dict.fromkeys(contexts))
    settings = dict(zip(distinct, what_differs([json.loads(c) for c in distinct], skip=("backbone.name",))))
    table = []
    for ((backbone, method, sequence, _, completed), members), context in zip(groups.items(), contexts):
        summaries = []
        for run in members:
            a = run.matrix.as_array()
            downstream = float(np.nanmean(a[-1, 1:])) if a.shape[0] > 1 else math.nan
            summaries.append({"downstream": downstream, "upstream": float(a[-1, 0]), "mean": (downstream + float(a[-1, 0])) / 2})
        table.append(
            {
                "backbone": backbone,
                "method": method,
                "setting": settings[context],
                "context": context,
                "sequence": " > ".join(sequence),
                "completed": completed,
                "total": members[0].matrix.num_tasks,
                "trainable_parameters": members[0].tasks[0]["trainable_parameters"] if members[0].tasks else None,
                "runs": [label[id(run)] for run in members],
                "per_seed": {run.seed: summary["mean"] for run, summary in zip(members, summaries)},
                **over_seeds(summaries),
            }
        )
    return table
