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
from typing import NamedTuple

import numpy as np

from forgetlab.analysis.collect import RunResult, find_runs
from forgetlab.analysis.groups import (
    METHOD_SECTIONS,
    distinct,
    flatten,
    format_value,
    identity,
    identity_key,
    matching,
    method_labels,
    what_differs,
)
from forgetlab.analysis.labels import run_labels
from forgetlab.analysis.metrics import in_points, over_seeds, summarise
from forgetlab.errors import DataError
from forgetlab.results import atomic_write_text


def is_linear_probe(run: RunResult) -> bool:
    """A plain linear probe (``method.name=linear``, no LwF, no replay): FWT's reference."""
    config = run.config
    return (
        config["method"]["name"] == "linear"
        and not config["lwf"].get("alpha", 0)
        and not config["replay"].get("size", 0)
    )


def fwt_references(run: RunResult, runs: list[RunResult]) -> list[RunResult]:
    """Every plain linear probe among ``runs`` with ``run``'s whole identity but for the method's sections
    (``method``, ``lwf``, ``replay``) and with its seed (:func:`~forgetlab.analysis.groups.matching`):
    FWT's reference is the one such run; with none or two or more, ``run`` has no FWT."""
    return matching(run, [other for other in runs if is_linear_probe(other)], *METHOD_SECTIONS)


def nearest_probes(run: RunResult, runs: list[RunResult]) -> list[tuple[RunResult, str]]:
    """The linear probes of ``run``'s backbone and seed that :func:`fwt_references` did not take, each
    with what differs from ``run`` (``train.max_steps=1``), fewest differences first."""
    mine = identity(run, *METHOD_SECTIONS)
    found = []
    for other in runs:
        if is_linear_probe(other) and other.backbone == run.backbone and other.seed == run.seed:
            theirs = identity(other, *METHOD_SECTIONS)
            if theirs != mine:
                keys = sorted(key for key in {*mine, *theirs} if mine.get(key) != theirs.get(key))
                found.append(
                    (
                        len(keys),
                        other,
                        ", ".join(
                            f"{key}={format_value(theirs.get(key))} (here {format_value(mine.get(key))})"
                            for key in keys
                        ),
                    )
                )
    return [(other, text) for _, other, text in sorted(found, key=lambda item: item[0])]


def run_rows(runs: list[RunResult]) -> list[dict]:
    """:func:`run_row` of every run, labelled among ``runs`` (unique run labels, method labels that
    name what differs, FWT's reference by its label)."""
    labels = run_labels(runs)
    names = dict(zip(map(id, runs), labels))
    return [run_row(run, runs, label, names, method) for run, label, method in zip(runs, labels, method_labels(runs))]


def run_row(
    run: RunResult,
    runs: list[RunResult] = (),
    label: str | None = None,
    names: dict[int, str] | None = None,
    method: str | None = None,
) -> dict:
    """One run's config and metrics, accuracies in percent (``_pct``) and their differences in percentage
    points (``_pp``); ``label``: its unique label among ``runs`` (default: its folder name; see
    :func:`forgetlab.analysis.labels.run_labels`), ``names``: every run's label by ``id``, ``method``:
    its method label among ``runs`` (:func:`~forgetlab.analysis.groups.method_labels`).

    ``forward_transfer_reference`` names the linear probe FWT used, or why there is none: every
    candidate when two or more match (none is used), nothing when none does."""
    matrix = run.matrix.as_array()
    names = names if names is not None else dict(zip(map(id, runs), run_labels(list(runs))))
    row = {
        "run": label or run.name,
        "backbone": run.backbone,
        "method": method or run.method,
        "seed": run.seed,
        "completed_tasks": run.completed,
        "total_tasks": run.matrix.num_tasks,
        "trainable_parameters": run.tasks[0]["trainable_parameters"] if run.tasks else None,
        "trainable_backbone_parameters": run.tasks[0]["trainable_backbone_parameters"] if run.tasks else None,
        "upstream_pretrained_pct": 100 * float(matrix[0, 0]),
    }
    references = fwt_references(run, list(runs))
    reference = references[0] if len(references) == 1 else None
    row.update(
        in_points(
            summarise(
                matrix,
                reference.matrix.as_array() if reference else None,
                run.matrix.trained(),
                reference.matrix.trained() if reference else None,
            )
        )
    )
    if reference is not None:
        row["forward_transfer_reference"] = names.get(id(reference), reference.name)
    elif references:
        row["forward_transfer_reference"] = "none: ambiguous between " + ", ".join(
            names.get(id(r), r.name) for r in references
        )
    else:
        row["forward_transfer_reference"] = ""
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
    rows = run_rows(runs)
    if rows:
        atomic_write_text(folder / "sweep.csv", rows_to_csv(rows))
    return rows


class SeedGroup(NamedTuple):
    """What the runs of a :func:`seed_groups` group share: backbone, method, task sequence, config
    identity (:func:`~forgetlab.analysis.groups.identity_key`) and tasks completed."""

    backbone: str
    method: str
    sequence: tuple[str, ...]
    identity: str
    completed: int


def seed_groups(runs: list[RunResult]) -> dict[SeedGroup, list[RunResult]]:
    """Runs that differ only in their seed (and folder), keyed by :class:`SeedGroup` and ordered by
    backbone and method: a run stopped after 2 of 3 tasks is never averaged with finished seeds. Runs
    with a duplicate (same identity and seed) are in no group."""
    groups = defaultdict(list)
    for run in distinct(runs):
        groups[
            SeedGroup(run.backbone, run.method, tuple(run.config["data"]["tasks"]), identity_key(run), run.completed)
        ].append(run)
    return dict(sorted(groups.items(), key=lambda item: _natural(item[0][:2])))


def _natural(parts) -> list:
    """Sort key in which 'lora r=4' comes before 'lora r=16'."""
    import re

    return [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(part))] for part in parts]


def paper2_table(runs: list[RunResult]) -> list[dict]:
    """Per (backbone, method, setting): trainable parameters, final downstream and upstream accuracy
    and their mean, each a :class:`~forgetlab.analysis.metrics.SeedStats` (mean, std, seeds) over seeds, with
    ``per_seed`` values for paired tests.

    ``context`` is the config without the method's sections (``method``, ``lwf``, ``replay``) and the
    seed: rows with equal contexts (and every task done) may be compared. ``setting`` names what
    differs between contexts (e.g. ``train.epochs=2``), the backbone aside (its own column); ``method``
    names every key of the method's sections in which a row differs from the table's other rows of its
    method (:func:`~forgetlab.analysis.groups.method_labels`). Accuracies stay fractions here."""
    label = dict(zip(map(id, runs), run_labels(runs)))
    groups = seed_groups(runs)
    contexts = [identity_key(members[0], *METHOD_SECTIONS) for members in groups.values()]
    unique_contexts = list(dict.fromkeys(contexts))
    settings = dict(
        zip(unique_contexts, what_differs([json.loads(c) for c in unique_contexts], skip=("backbone.name",)))
    )
    methods = method_labels([members[0] for members in groups.values()])
    table = []
    for (group, members), context, method in zip(groups.items(), contexts, methods):
        summaries = []
        for run in members:
            a = run.matrix.as_array()
            downstream = float(np.nanmean(a[-1, 1:])) if a.shape[0] > 1 else math.nan
            summaries.append(
                {"downstream": downstream, "upstream": float(a[-1, 0]), "mean": (downstream + float(a[-1, 0])) / 2}
            )
        table.append(
            {
                "backbone": group.backbone,
                "method": method,
                "setting": settings[context],
                "context": context,
                "sequence": " > ".join(group.sequence),
                "completed": group.completed,
                "total": members[0].matrix.num_tasks,
                "trainable_parameters": members[0].tasks[0]["trainable_parameters"] if members[0].tasks else None,
                "runs": [label[id(run)] for run in members],
                "per_seed": {run.seed: summary["mean"] for run, summary in zip(members, summaries)},
                **over_seeds(summaries),
            }
        )
    return table
