"""The numbers people look for first, as the CLI prints them: a run's average accuracy, forgetting,
BWT and upstream change under its matrix (``forgetlab run``, ``forgetlab show RUN``), and a sweep's
cells with the same metrics (``forgetlab show SWEEP``, the end of ``forgetlab sweep`` and
``--status``). Every number comes from the stored accuracy matrix through
:mod:`forgetlab.analysis.metrics`; nothing is recomputed here, and the metrics shown, their names,
units and legend are those the metric registry gives them (:attr:`forgetlab.analysis.metrics.Metric.show`).
"""

from __future__ import annotations

import math
from pathlib import Path

from forgetlab.errors import ForgetlabError
from forgetlab.results import AccuracyMatrix, RunFolder

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def legend() -> str:
    """The line under a sweep's cell table: every shown metric's legend entry
    (:attr:`forgetlab.analysis.metrics.Shown.legend`), then which of them are in points."""
    from forgetlab.analysis.metrics import shown_metrics

    shown = shown_metrics()
    points = [m for m in shown if m.unit == "pp"]
    if not points:
        return "; ".join(m.show.legend for m in shown)
    if shown[-len(points) :] == points and len(points) in NUMBER_WORDS:  # "the last three in points"
        which = f"the last {NUMBER_WORDS[len(points)]}"
    else:
        which = ", ".join(m.show.column for m in points)
    return "; ".join(m.show.legend for m in shown) + f"; {which} in points"


def metrics(matrix: AccuracyMatrix) -> dict[str, float]:
    """Every registered metric (:func:`forgetlab.analysis.metrics.summarise`) over the rows committed so
    far (fractions, NaN where undefined: forgetting and BWT need two phases)."""
    from forgetlab.analysis.metrics import summarise

    return summarise(matrix.as_array(), trained=matrix.trained()[: len(matrix.values) - 1])


def _points(value: float, signed: bool = True) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _shown(value: float, unit: str) -> str:
    """One metric as the metrics line prints it: ``62.33%`` (an accuracy), ``+3.10 points`` (a
    difference), ``n/a`` where undefined."""
    if math.isnan(value):
        return "n/a"
    return f"{_points(value, signed=False)}%" if unit == "pct" else f"{_points(value)} points"


def metrics_line(matrix: AccuracyMatrix) -> str:
    """One line under a run's matrix, every shown metric by its name, e.g. ``average accuracy 62.33%,
    forgetting +3.10 points, BWT -3.10 points, upstream change -1.20 points (71.30% -> 70.10%)``; "n/a"
    where a metric needs more phases than the run has (forgetting and BWT: two). The upstream accuracy,
    pretrained -> final, closes the line."""
    from forgetlab.analysis.metrics import shown_metrics

    values = metrics(matrix)
    a = matrix.as_array()
    upstream = f" ({100 * a[0, 0]:.2f}% -> {100 * a[-1, 0]:.2f}%)" if a.shape[0] > 1 else ""
    return ", ".join(f"{m.show.line} {_shown(values[m.name], m.unit)}" for m in shown_metrics()) + upstream


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
    low = [
        f"{name} {100 * firsts[name]:.2f}% (chance {100 * level:.2f}%)"
        for name, level in chance.items()
        if name in firsts and not math.isnan(firsts[name]) and 100 * (firsts[name] - level) < NEAR_CHANCE_PP
    ]
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
    from forgetlab.analysis.metrics import shown_metrics

    shown = shown_metrics()
    header = ["cell", "state", *(m.show.column for m in shown), "detail"]
    table = []
    for name, state, detail in rows:
        values = cell_metrics(Path(folder) / name)
        cells = [_points(values[m.name], signed=m.unit == "pp") if values else "" for m in shown]
        table.append([name, state, *cells, detail])
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header) - 1)]
    aligned = lambda row: (
        "  ".join(  # noqa: E731
            str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))
        )
        + f"  {row[-1]}"
    )
    return "\n".join([aligned(header), *map(aligned, table), legend()])
