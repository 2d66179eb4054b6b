"""Continual-learning metrics from one accuracy matrix.

``a[i, j]`` is the accuracy on column ``j`` after task ``i`` (row 0: the pretrained model; column 0:
the upstream task, columns 1..T the downstream tasks). Empty cells are NaN and are skipped: a metric
over no cells is NaN, never 0.

=================== =====================================================================================
average accuracy    ``mean_j a[T, j]`` over downstream tasks ``j = 1..T`` (Lopez-Paz & Ranzato, 2017)
average forgetting  ``mean_{j<T} (max_{j<=l<T} a[l, j] - a[T, j])``, best earlier minus final
                    (Chaudhry et al., 2018)
BWT                 ``mean_{j<T} (a[T, j] - a[j, j])``, backward transfer (Lopez-Paz & Ranzato, 2017);
                    negative values are forgetting
plasticity          ``mean_j a[j, j]``, accuracy right after learning each task
FWT                 ``mean_j (a[j, j] - b[j])`` against a named reference ``b`` (e.g. the linear probe of
                    the pretrained backbone: what the updated backbone gains for new tasks; paper 1's
                    forward transfer). With task-incremental heads ``a[j-1, j]`` does not exist, so GEM's
                    definition does not apply.
upstream drop       ``a[T, 0] - a[0, 0]``, the change of the pretraining task's accuracy
=================== =====================================================================================
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _final(a: np.ndarray) -> int:
    return a.shape[0] - 1


def average_accuracy(a: np.ndarray) -> float:
    return _mean(a[_final(a), 1:])


def average_forgetting(a: np.ndarray) -> float:
    last = _final(a)
    per_task = []
    for j in range(1, last):
        earlier = a[j:last, j]
        earlier = earlier[~np.isnan(earlier)]
        if len(earlier) and not math.isnan(a[last, j]):
            per_task.append(float(earlier.max() - a[last, j]))
    return _mean(per_task)


def backward_transfer(a: np.ndarray) -> float:
    last = _final(a)
    return _mean(a[last, j] - a[j, j] for j in range(1, last))


def plasticity(a: np.ndarray) -> float:
    return _mean(a[j, j] for j in range(1, min(a.shape[0], a.shape[1])))


def forward_transfer(a: np.ndarray, reference) -> float:
    """``reference[j]``: the reference accuracy on column ``j`` (NaN or missing: skipped), e.g. the
    linear probe's plasticity ``b[j, j]``."""
    reference = np.asarray(reference, dtype=float)
    return _mean(a[j, j] - reference[j] for j in range(1, min(a.shape[0], a.shape[1])) if j < len(reference))


def upstream_drop(a: np.ndarray) -> float:
    return float(a[_final(a), 0] - a[0, 0])


METRICS = {
    "average_accuracy": average_accuracy,
    "average_forgetting": average_forgetting,
    "backward_transfer": backward_transfer,
    "plasticity": plasticity,
    "upstream_drop": upstream_drop,
}


def summarise(a: np.ndarray, reference: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of one matrix; ``forward_transfer`` too when a reference matrix is given."""
    values = {name: metric(a) for name, metric in METRICS.items()}
    values["upstream_final"] = float(a[_final(a), 0])
    if reference is not None:
        values["forward_transfer"] = forward_transfer(a, [math.nan] + [reference[j, j] for j in range(1, min(reference.shape))])
    return values


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
