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

Pure functions of arrays (numpy only): the bottom of the analysis, imported by ``tables`` and ``findings``.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np


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


def average_accuracy(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    return _mean(a[_final(a), 1:])


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


def backward_transfer(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    final = _final(a)
    _, last = _first_and_last(a, trained)
    return _mean(a[final, j] - a[last[j], j] for j in _earlier_columns(a, trained))


def plasticity(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    return _mean(a[phase, column] for phase, column in enumerate(_trained(a, trained), start=1))


def first_accuracies(a: np.ndarray, trained: Sequence[int] | None = None) -> dict[int, float]:
    """Column -> its accuracy right after the first phase that trained it."""
    first, _ = _first_and_last(a, trained)
    return {column: float(a[phase, column]) for column, phase in first.items()}


def forward_transfer(a: np.ndarray, reference, trained: Sequence[int] | None = None) -> float:
    """``reference[j]``: the reference accuracy on column ``j`` (NaN or missing: skipped), e.g. the
    linear probe's first accuracy on each column."""
    reference = np.asarray(reference, dtype=float)
    return _mean(value - reference[j] for j, value in first_accuracies(a, trained).items() if j < len(reference))


def upstream_change(a: np.ndarray, trained: Sequence[int] | None = None) -> float:
    """Final minus pretrained upstream accuracy: negative is forgetting, positive a gain."""
    return float(a[_final(a), 0] - a[0, 0])


METRICS = {
    "average_accuracy": average_accuracy,
    "average_forgetting": average_forgetting,
    "backward_transfer": backward_transfer,
    "plasticity": plasticity,
    "upstream_change": upstream_change,
}


def summarise(a: np.ndarray, reference: np.ndarray | None = None, trained: Sequence[int] | None = None,
              reference_trained: Sequence[int] | None = None) -> dict[str, float]:  # fmt: skip
    """Every metric of one matrix; ``forward_transfer`` too when a reference matrix (same columns)
    is given."""
    values = {name: metric(a, trained) for name, metric in METRICS.items()}
    values["upstream_final"] = float(a[_final(a), 0])
    if reference is not None:
        firsts = first_accuracies(reference, reference_trained)
        values["forward_transfer"] = forward_transfer(a, [firsts.get(j, math.nan) for j in range(a.shape[1])], trained)
    return values


# The unit of every metric outside this module (API, CSV, CLI, report): accuracies in percent (``_pct``),
# differences of accuracies in percentage points (``_pp``). The functions above return fractions.
UNITS = {
    "average_accuracy": "pct",
    "plasticity": "pct",
    "upstream_final": "pct",
    "upstream_pretrained": "pct",
    "average_forgetting": "pp",
    "backward_transfer": "pp",
    "forward_transfer": "pp",
    "upstream_change": "pp",
}


def in_points(values: dict[str, float]) -> dict[str, float]:
    """Metrics as fractions (:func:`summarise`) -> the same numbers times 100, each named with its unit:
    ``{'average_accuracy': 0.62, 'upstream_change': -0.005}`` -> ``{'average_accuracy_pct': 62.0,
    'upstream_change_pp': -0.5}``. Keys without a unit in :data:`UNITS` are kept as they are."""
    return {f"{key}_{UNITS[key]}" if key in UNITS else key: 100 * value if key in UNITS else value for key, value in values.items()}


def over_seeds(summaries: list[dict[str, float]]) -> dict[str, tuple[float, float, int]]:
    """``metric -> (mean, standard deviation, number of seeds)``; the sample std (ddof 1), 0 for one seed."""
    result = {}
    for key in sorted({k for s in summaries for k in s}):
        values = np.array([s[key] for s in summaries if key in s and not math.isnan(s[key])])
        if len(values) == 0:
            result[key] = (math.nan, math.nan, 0)
        else:
            result[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values))
    return result
