"""Figures of where forgetting happens across runs, drawn from stored results only (matplotlib, Agg
backend): per group of merged-LoRA runs that differ only in rank and seed
(:func:`forgetlab.analysis.groups.rank_groups`), the cumulative update's intruder dimensions and relative
norm at the last phase against the rank, and the drift (linear CKA with the pretrained features) of every
unit at the last phase, one curve per rank. The numbers come from :mod:`forgetlab.analysis.where`;
``page`` saves the figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def rank_points(group) -> list[tuple[int, float, float]]:
    """``(rank, intruders, relative_norm)`` of the last explained phase of each run of a rank ``group``
    whose ``explain/spectra.csv`` reaches its last row (:func:`forgetlab.analysis.where.last_update`)."""
    from forgetlab.analysis.where import last_update

    return [
        (int(run.config["method"]["rank"]), float(last["intruders"]), float(last["relative_norm"]))
        for run in group.runs
        if (last := last_update(run)) is not None
    ]


def _by_rank(points, column: int):
    ranks = sorted({point[0] for point in points})
    values = [[point[column] for point in points if point[0] == rank] for rank in ranks]
    means = np.array([np.mean(v) for v in values])
    sds = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
    return ranks, means, sds


def rank_spectra_figure(groups_points: list[tuple[str, list]]):
    """Left: intruder dimensions of the last phase's cumulative update (sum over adapted matrices), right:
    its mean ``||dW||_F / ||W0||_F``, against the LoRA rank (log scale), one line per rank group, mean and
    standard deviation over seeds. ``groups_points``: ``[(label, rank_points(group))]``."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, points in groups_points:
        for axis, column in zip(axes, (1, 2)):
            ranks, means, sds = _by_rank(points, column)
            axis.errorbar(ranks, means, yerr=sds, marker="o", capsize=3, label=label)
    for axis, name in zip(axes, ("intruder dimensions (sum, last phase)", "mean ||dW|| / ||W0|| (last phase)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("LoRA rank")
        axis.set_ylabel(name)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def drift_rank_figure(label: str, curves: list[tuple[int, list[str], np.ndarray, int]]):
    """The linear CKA of every unit with the pretrained features at the last phase, one curve per rank
    (``curves``: ``(rank, units in forward order, mean CKA per unit, runs)``), for one rank group."""
    figure, axis = plt.subplots(figsize=(6.5, 3.4))
    for rank, units, values, count in curves:
        axis.plot(range(len(units)), values, marker="o", label=f"r={rank} (n={count})")
    if curves:
        units = curves[0][1]
        axis.set_xticks(range(len(units)), units, rotation=30, ha="right", fontsize=7)
    axis.set_ylabel("linear CKA with the pretrained features")
    axis.set_title(f"{label}: drift per unit after the last phase", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
