"""The numbers people look for first, as the CLI prints them: a run's average accuracy, forgetting,
BWT and upstream change under its matrix (``forgetlab run``, ``forgetlab show RUN``), and a sweep's
cells with the same metrics (``forgetlab show SWEEP``, the end of ``forgetlab sweep`` and
``--status``). Every number comes from the stored accuracy matrix through
:mod:`forgetlab.analysis.metrics`; nothing is recomputed here.
"""

from __future__ import annotations

import math
from pathlib import Path

from forgetlab.errors import ForgetlabError
from forgetlab.results import AccuracyMatrix, RunFolder

# (column header, metric key): the upstream metric is read under its current name or its old one.
COLUMNS = [("avg acc", "average_accuracy"), ("forgetting", "average_forgetting"), ("BWT", "backward_transfer"),
           ("upstream", "upstream_change")]  # fmt: skip
LEGEND = ("average accuracy: mean final accuracy over the tasks, in %; forgetting: best earlier minus final accuracy, mean "
          "over the tasks before the last (> 0: forgotten); BWT: final minus right-after-training accuracy (< 0: forgotten); "
          "upstream: final minus pretrained accuracy on the upstream task (< 0: lost); the last three in points")  # fmt: skip


def metrics(matrix: AccuracyMatrix) -> dict[str, float]:
    """The metrics of :func:`forgetlab.analysis.metrics.summarise` over the rows committed so far
    (fractions, NaN where undefined: forgetting and BWT need two phases), with the upstream change
    under ``upstream_change``."""
    from forgetlab.analysis.metrics import summarise

    return summarise(matrix.as_array(), trained=matrix.trained()[: len(matrix.values) - 1])


def _points(value: float, signed: bool = True) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def metrics_line(matrix: AccuracyMatrix) -> str:
    """One line under a run's matrix, e.g. ``average accuracy 62.33%, forgetting +3.10 points, BWT
    -3.10 points, upstream change -1.20 points (71.30% -> 70.10%)``; "n/a" where a metric needs more
    phases than the run has (forgetting and BWT: two)."""
    values = metrics(matrix)
    a = matrix.as_array()
    upstream = f" ({100 * a[0, 0]:.2f}% -> {100 * a[-1, 0]:.2f}%)" if a.shape[0] > 1 else ""
    unit = lambda v: "" if math.isnan(v) else " points"  # noqa: E731
    return (f"average accuracy {_points(values['average_accuracy'], signed=False)}{'' if math.isnan(values['average_accuracy']) else '%'}, "
            f"forgetting {_points(values['average_forgetting'])}{unit(values['average_forgetting'])}, "
            f"BWT {_points(values['backward_transfer'])}{unit(values['backward_transfer'])}, "
            f"upstream change {_points(values['upstream_change'])}{unit(values['upstream_change'])}{upstream}")  # fmt: skip


NEAR_CHANCE_PP = 5.0  # the report's rule: within 5 points of chance (or below) a task was not learned


def chance_line(folder: RunFolder) -> str:
    """``chance level: upstream 2.78% (36 classes), fontfamily 12.50% (8 classes)``, then each task whose
    accuracy right after its training (upstream: pretrained) is within :data:`NEAR_CHANCE_PP` points of
    chance or below, as ``AT CHANCE: digits 10.50% (chance 10.00%)``: a run that learned nothing is
    not a result."""
    from forgetlab.analysis.collect import RunResult
    from forgetlab.analysis.metrics import first_accuracies

    run = RunResult(folder)
    chance, matrix = run.chance, run.matrix
    a = matrix.as_array()
    firsts = {matrix.columns[j]: value for j, value in first_accuracies(a, matrix.trained()[: len(a) - 1]).items()}
    firsts[matrix.columns[0]] = float(a[0, 0])
    levels = ", ".join(f"{name} {100 * level:.2f}% ({round(1 / level)} classes)" for name, level in chance.items())
    low = [f"{name} {100 * firsts[name]:.2f}% (chance {100 * level:.2f}%)" for name, level in chance.items()
           if name in firsts and not math.isnan(firsts[name]) and 100 * (firsts[name] - level) < NEAR_CHANCE_PP]  # fmt: skip
    line = f"chance level: {levels or 'unknown (no class counts stored)'}"
    return line + (f"\nAT CHANCE after training (learned nothing measurable): {'; '.join(low)}" if low else "")


def cell_metrics(folder: Path) -> dict[str, float] | None:
    """A cell's metrics, or None before its first finished phase (or when its folder is unreadable)."""
    run = RunFolder(folder)
    try:
        if run.completed_tasks() < 1:
            return None
        return metrics(run.read_matrix())
    except (ForgetlabError, OSError, ValueError, KeyError):
        return None


def cells_table(folder: Path, rows: list[tuple[str, str, str]]) -> str:
    """``(cell, state, detail)`` rows (:func:`forgetlab.sweep.sweep_status`) as a table with each
    cell's metrics (accuracy in %, the others in points), then the legend."""
    header = ["cell", "state", *(name for name, _ in COLUMNS), "detail"]
    table = []
    for name, state, detail in rows:
        values = cell_metrics(Path(folder) / name)
        cells = [_points(values[key], signed=key != "average_accuracy") if values else "" for _, key in COLUMNS]
        table.append([name, state, *cells, detail])
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header) - 1)]
    aligned = lambda row: "  ".join(  # noqa: E731
        str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))) + f"  {row[-1]}"
    return "\n".join([aligned(header), *map(aligned, table), LEGEND])
