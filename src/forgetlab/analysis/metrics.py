"""Continual-learning metrics from one accuracy matrix.

``a[i, j]`` is the accuracy on column ``j`` after training phase ``i`` (row 0: the pretrained model;
column 0: the upstream task, columns 1..C the distinct downstream tasks). ``trained[i - 1]`` is the
column phase ``i`` trained; by default phase ``i`` trains column ``i`` (every task once). Empty cells
are NaN and are skipped: a metric over no cells is NaN, never 0. ``T`` is the last row.

=================== =====================================================================================
average accuracy    ``mean_j a[T, j]`` over the downstream columns (Lopez-Paz & Ranzato, 2017)
average forgetting  ``mean_j (max_{f(j)<=l<T} a[l, j] - a[T, j])`` over the columns not trained in the
                    last phase, ``f(j)`` the first phase that trained ``j``: best earlier minus final
                    (Chaudhry et al., 2018)
BWT                 ``mean_j (a[T, j] - a[l(j), j])`` over the same columns, ``l(j)`` the last phase
                    that trained ``j``: backward transfer (Lopez-Paz & Ranzato, 2017); negative values
                    are forgetting
plasticity          ``mean_i a[i, trained(i)]`` over phases: accuracy right after each phase
FWT                 ``mean_j (a[f(j), j] - b[j])`` against a named reference ``b`` (e.g. the linear probe
                    of the pretrained backbone: what the updated backbone gains for new tasks; paper 1's
                    forward transfer). With task-incremental heads ``a[j-1, j]`` does not exist, so GEM's
                    definition does not apply.
upstream change     ``a[T, 0] - a[0, 0]``, final minus pretrained accuracy on the pretraining task:
                    negative when upstream knowledge is forgotten, positive when it is gained (called
                    ``upstream_drop`` before, with the same sign, which its name hid)
=================== =====================================================================================

Signs, so that no table needs guessing: average forgetting is positive when accuracy was lost; BWT
and the upstream change are negative when accuracy was lost; FWT is positive when the updated
backbone learns a task better than the reference.

With every task trained once these are the textbook formulas (``f(j) = l(j) = j``). In paper 1's long
setting (each task trained twice, on two halves of its samples) the second pass's gain on a task shows
as positive backward transfer relative to its first pass only through ``average_forgetting``'s max:
BWT compares with the *last* time a task was trained, forgetting with its best accuracy since it was
first trained, and FWT with the first time.

Each metric is registered once (:func:`register_metric`) with its unit, its sign convention and its
wording, and every consumer loops over the registry (:func:`registered_metrics`): :func:`summarise` and
:func:`in_points` (the Python API and ``sweep.csv``), ``forgetlab show`` (:mod:`forgetlab.summary`), the
report's per-run table, glossary and units note, and the trackers. Adding a metric is one registration.

Pure functions of arrays (numpy only): the bottom of the analysis, imported by ``tables`` and ``findings``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, NamedTuple, Sequence

import numpy as np

from forgetlab.plugins import load_plugins


@dataclass(frozen=True)
class Shown:
    """How ``forgetlab show`` prints a metric: ``column``, its header in a sweep's cell table; ``line``, its
    name in a run's metrics line; ``legend``, its whole entry in the legend under the cell table."""

    column: str
    line: str
    legend: str


@dataclass(frozen=True)
class Reported:
    """How the report shows a metric: ``header``, its column in the per-run table and its glossary term;
    ``glossary``, the definition there; ``position``, its place in the table and glossary (lowest first);
    ``prose``, its name in the units note (default: ``header``)."""

    header: str | None
    glossary: str = ""
    position: float = 1000.0
    prose: str | None = None


@dataclass(frozen=True)
class Metric:
    """One metric of an accuracy matrix and everything said about it, in one place.

    ``function`` is called as ``function(a, trained=trained)`` (``a``: the ``[rows, columns]`` accuracy
    matrix as fractions, ``trained``: the column of every phase or None) and, when ``reference`` is true,
    with ``reference=`` the reference accuracy of every column too (a ``[columns]`` array, NaN where there
    is none; such a metric is computed only when a reference run exists). It returns a fraction, NaN when
    undefined. ``unit``: ``pct`` (an accuracy, shown times 100 in percent) or ``pp`` (a difference of
    accuracies, in percentage points); its column everywhere outside this module is ``<name>_<unit>``.
    ``better``: which way is better (``lower`` for forgetting). ``header``: its column in the report's
    per-run table and its glossary term, ``glossary`` the definition there (None: not in the report);
    ``prose``: its name in the report's units note (default ``header``); ``position``: its place in the
    report's table and glossary (lowest first); ``show``: how ``forgetlab show`` prints it (None: not shown)."""

    name: str
    function: Callable[..., float]
    unit: Literal["pct", "pp"]
    better: Literal["higher", "lower"]
    header: str | None = None
    glossary: str = ""
    prose: str | None = None
    position: float = 1000.0
    reference: bool = False
    show: Shown | None = None

    @property
    def column(self) -> str:
        """Its name with its unit, as in ``sweep.csv``, the API and the report's rows: ``average_accuracy_pct``."""
        return f"{self.name}_{self.unit}"


# name -> Metric, in registration order (the order of the API's and sweep.csv's columns).
_METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    *,
    unit: Literal["pct", "pp"],
    better: Literal["higher", "lower"],
    report: Reported | None = None,
    reference: bool = False,
    show: Shown | None = None,
) -> Callable:
    """Function decorator: enter the decorated function as the metric ``name`` and return it unchanged.
    ``unit``, ``better``, ``reference`` and ``show`` are the fields of :class:`Metric` of those names;
    ``report`` (:class:`Reported`) gives its header, glossary line, place and name in the report (None:
    not in the report). Raises ``ValueError`` for a name registered twice, a unit other than ``pct`` or
    ``pp``, or a sign other than ``higher`` or ``lower``."""
    reported = report or Reported(None)

    def register(function: Callable[..., float]) -> Callable[..., float]:
        if name in _METRICS:
            raise ValueError(f"metric '{name}' registered twice")
        if unit not in ("pct", "pp") or better not in ("higher", "lower"):
            raise ValueError(
                f"metric '{name}': unit must be 'pct' or 'pp' and better 'higher' or 'lower', not {unit!r}, {better!r}"
            )
        _METRICS[name] = Metric(
            name,
            function,
            unit,
            better,
            reported.header,
            reported.glossary,
            reported.prose,
            reported.position,
            reference,
            show,
        )
        return function

    return register


def unregister_metric(name: str) -> None:
    """Remove the metric ``name`` (a test's or a notebook's own); raises ``KeyError`` if there is none."""
    del _METRICS[name]


def registered_metrics() -> list[Metric]:
    """Every registered metric, in registration order."""
    load_plugins()
    return list(_METRICS.values())


def report_metrics() -> list[Metric]:
    """The metrics of the report's per-run table and glossary, by ``position`` (ties: registration order)."""
    return sorted((m for m in registered_metrics() if m.header is not None), key=lambda m: m.position)


def shown_metrics() -> list[Metric]:
    """The metrics ``forgetlab show`` prints, in registration order."""
    return [m for m in registered_metrics() if m.show is not None]


def units() -> dict[str, str]:
    """``metric name -> unit`` (``pct`` or ``pp``) of every registered metric."""
    return {m.name: m.unit for m in registered_metrics()}


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _final(a: np.ndarray) -> int:
    return a.shape[0] - 1


def _trained(a: np.ndarray, trained: Sequence[int] | None) -> list[int]:
    """The column of every phase that has a row (phase i = row i)."""
    rows = a.shape[0] - 1
    if trained is None:
        return list(range(1, min(rows, a.shape[1] - 1) + 1))
    return list(trained[:rows])


def _first_and_last(a: np.ndarray, trained) -> tuple[dict[int, int], dict[int, int]]:
    first, last = {}, {}
    for phase, column in enumerate(_trained(a, trained), start=1):
        first.setdefault(column, phase)
        last[column] = phase
    return first, last


def _earlier_columns(a: np.ndarray, trained) -> list[int]:
    """Columns trained before, and not in, the last phase."""
    phases = _trained(a, trained)
    if not phases:
        return []
    final_column = phases[-1] if len(phases) == _final(a) else None
    return sorted({c for c in phases if c != final_column})


def first_accuracies(a: np.ndarray, trained: Sequence[int] | None = None) -> dict[int, float]:
    """Column -> its accuracy right after the first phase that trained it."""
    first, _ = _first_and_last(a, trained)
    return {column: float(a[phase, column]) for column, phase in first.items()}


# The registrations below are in the order of sweep.csv's columns; ``position`` orders the report's.
@register_metric("upstream_pretrained", unit="pct", better="higher")
def upstream_pretrained(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    """The pretrained model's upstream accuracy, ``a[0, 0]``."""
    return float(a[0, 0])


@register_metric(
    "average_accuracy",
    unit="pct",
    better="higher",
    report=Reported("avg acc", "mean final accuracy over the downstream tasks; higher is better", position=10),
    show=Shown("avg acc", "average accuracy", "average accuracy: mean final accuracy over the tasks, in %"),
)
def average_accuracy(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    return _mean(a[_final(a), 1:])


@register_metric(
    "average_forgetting",
    unit="pp",
    better="lower",
    report=Reported(
        "avg forgetting",
        "per task trained before the last, its best accuracy since training minus its final accuracy, "
        "averaged; positive means accuracy was lost; needs two tasks done",
        position=20,
        prose="forgetting",
    ),
    show=Shown(
        "forgetting",
        "forgetting",
        "forgetting: best earlier minus final accuracy, mean over the tasks before the last (> 0: forgotten)",
    ),
)
def average_forgetting(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    last = _final(a)
    first, _ = _first_and_last(a, trained)
    per_task = []
    for j in _earlier_columns(a, trained):
        earlier = a[first[j] : last, j]
        earlier = earlier[~np.isnan(earlier)]
        if len(earlier) and not math.isnan(a[last, j]):
            per_task.append(float(earlier.max() - a[last, j]))
    return _mean(per_task)


@register_metric(
    "backward_transfer",
    unit="pp",
    better="higher",
    report=Reported(
        "BWT",
        "backward transfer: final accuracy minus the accuracy right after the task's (last) training, averaged "
        "over the tasks before the last; negative means accuracy was lost; needs two tasks done",
        position=30,
    ),
    show=Shown("BWT", "BWT", "BWT: final minus right-after-training accuracy (< 0: forgotten)"),
)
def backward_transfer(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    final = _final(a)
    _, last = _first_and_last(a, trained)
    return _mean(a[final, j] - a[last[j], j] for j in _earlier_columns(a, trained))


@register_metric(
    "plasticity",
    unit="pct",
    better="higher",
    report=Reported("plasticity", "mean accuracy right after each task's training", position=60),
)
def plasticity(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    return _mean(a[phase, column] for phase, column in enumerate(_trained(a, trained), start=1))


@register_metric(
    "upstream_change",
    unit="pp",
    better="higher",
    report=Reported(
        "upstream change",
        "final minus pretrained upstream accuracy (upstream_change; upstream_drop before, same sign); "
        "negative means upstream knowledge was forgotten, positive that it was gained",
        position=80,
    ),
    show=Shown(
        "upstream", "upstream change", "upstream: final minus pretrained accuracy on the upstream task (< 0: lost)"
    ),
)
def upstream_change(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    """Final minus pretrained upstream accuracy: negative is forgetting, positive a gain."""
    return float(a[_final(a), 0] - a[0, 0])


@register_metric(
    "upstream_final",
    unit="pct",
    better="higher",
    report=Reported("upstream", "final accuracy on the pretraining (upstream) task", position=70),
)
def upstream_final(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    """The final upstream accuracy, ``a[T, 0]``."""
    return float(a[_final(a), 0])


@register_metric(
    "forward_transfer",
    unit="pp",
    better="higher",
    report=Reported(
        "FWT vs linear",
        "forward transfer: accuracy right after first training a task minus that of the linear probe "
        "(method.name=linear, no LwF, no replay) whose config equals the run's in everything but the method's "
        "sections (method, lwf, replay), with the same seed; positive means the updated backbone learns new "
        "tasks better; empty when no such probe, or more than one, is among the runs given",
        position=40,
        prose="FWT",
    ),
    reference=True,
)
def forward_transfer(a: np.ndarray, reference, trained: Sequence[int] | None = None) -> float:
    """``reference[j]``: the reference accuracy on column ``j`` (NaN or missing: skipped), e.g. the
    linear probe's first accuracy on each column."""
    reference = np.asarray(reference, dtype=float)
    return _mean(value - reference[j] for j, value in first_accuracies(a, trained).items() if j < len(reference))


def summarise(
    a: np.ndarray,
    reference: np.ndarray | None = None,
    trained: Sequence[int] | None = None,
    reference_trained: Sequence[int] | None = None,
) -> dict[str, float]:
    """Every registered metric of one matrix (fractions), in registration order; those that need a
    reference (``forward_transfer``) only when a reference matrix (same columns) is given: its first
    accuracy on every column is the reference accuracy."""
    if reference is not None:
        firsts = first_accuracies(reference, reference_trained)
        per_column = [firsts.get(j, math.nan) for j in range(a.shape[1])]
    values = {}
    for metric in registered_metrics():
        if not metric.reference:
            values[metric.name] = metric.function(a, trained=trained)
        elif reference is not None:
            values[metric.name] = metric.function(a, trained=trained, reference=per_column)
    return values


def in_points(values: dict[str, float]) -> dict[str, float]:
    """Metrics as fractions (:func:`summarise`) -> the same numbers times 100, each named with its unit
    (:attr:`Metric.column`): ``{'average_accuracy': 0.62, 'upstream_change': -0.005}`` ->
    ``{'average_accuracy_pct': 62.0, 'upstream_change_pp': -0.5}``. Keys that are no registered metric
    are kept as they are."""
    return {
        _METRICS[key].column if key in _METRICS else key: 100 * value if key in _METRICS else value
        for key, value in values.items()
    }


class SeedStats(NamedTuple):
    """A value over seeds: mean, sample standard deviation (ddof 1; 0 for one seed) and number of seeds."""

    mean: float
    std: float
    seeds: int


def over_seeds(summaries: list[dict[str, float]]) -> dict[str, SeedStats]:
    """``key -> SeedStats(mean, std, seeds)`` over the seeds' values of every key; NaN values are skipped."""
    result = {}
    for key in sorted({k for s in summaries for k in s}):
        values = np.array([s[key] for s in summaries if key in s and not math.isnan(s[key])])
        if len(values) == 0:
            result[key] = SeedStats(math.nan, math.nan, 0)
        else:
            result[key] = SeedStats(
                float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values)
            )
    return result
