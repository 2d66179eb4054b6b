"""Figures of the papers, drawn from stored results only (matplotlib, Agg backend).

Each function takes what ``analysis`` computed (a run's matrix, rank groups, class changes, a
contextual test) and returns a matplotlib figure; it writes no file (``page`` saves them). Imports
``analysis`` only; the run code, a floor above, also draws ``matrix_figure`` for its trackers."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from forgetlab.analysis.collect import RunResult  # noqa: E402
from forgetlab.analysis.contextual import ContextualTest  # noqa: E402
from forgetlab.analysis.groups import RankGroup  # noqa: E402
from forgetlab.analysis.labels import unique_labels  # noqa: E402
from forgetlab.analysis.perclass import ClassChanges, most_forgotten  # noqa: E402


def matrix_heatmap(run: RunResult, label: str | None = None):
    """The accuracy matrix: rows after each task, columns upstream and the tasks (percent);
    ``label``: the run's unique label in the report (default: its folder name)."""
    return matrix_figure(run.matrix, f"{label or run.name}: {run.backbone}, {run.method}")


def matrix_figure(matrix, title: str):
    """An :class:`~forgetlab.results.AccuracyMatrix` as a heatmap with its values (percent)."""
    values = 100 * matrix.as_array()
    labels = unique_labels(matrix.row_labels(), [f"phase {i}" for i in range(len(matrix.row_labels()))])
    figure, axis = plt.subplots(figsize=(1.3 + 1.1 * values.shape[1], 0.9 + 0.45 * values.shape[0]))
    image = axis.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if not math.isnan(value):
            axis.text(
                j, i, f"{value:.1f}", ha="center", va="center", color="white" if value < 60 else "black", fontsize=8
            )
    axis.set_xticks(range(values.shape[1]), matrix.columns, rotation=30, ha="right")
    axis.set_yticks(range(values.shape[0]), labels)
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, label="accuracy (%)")
    figure.tight_layout()
    return figure


def rank_curves(groups: list[RankGroup]):
    """Paper 1, figures 1 and 2: final upstream and first-task accuracy against LoRA rank, one curve per
    :class:`~forgetlab.analysis.groups.RankGroup` with at least two ranks (mean and standard
    deviation over seeds), each in its own colour and labelled by what sets it apart. None without
    such a group; the caller names the groups left out."""
    drawn = [group for group in groups if len(group.ranks) >= 2]
    if not drawn:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for index, group in enumerate(drawn):
        ranks = group.ranks
        for panel, axis in enumerate(axes):
            points = group.points(panel)
            values = [np.array([a for rank, a in points if rank == r]) * 100 for r in ranks]
            means = [v.mean() for v in values]
            stds = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in values]
            axis.errorbar(
                ranks,
                means,
                yerr=stds,
                marker="o",
                capsize=3,
                color=palette[index % len(palette)],
                linestyle=styles[(index // len(palette)) % len(styles)],
                label=group.label,
            )
    all_ranks = sorted({rank for group in drawn for rank in group.ranks})
    first_tasks = {group.runs[0].matrix.columns[1] for group in drawn}
    first_task = f"{first_tasks.pop()} (first task)" if len(first_tasks) == 1 else "first task"
    for axis, title in zip(axes, ["upstream task, after the sequence", f"{first_task}, after the sequence"]):
        axis.set_xscale("log", base=2)
        axis.set_xticks(all_ranks, [str(r) for r in all_ranks])
        axis.set_xlabel("LoRA rank")
        axis.set_ylabel("accuracy (%)")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def most_forgotten_figure(changes: ClassChanges, class_labels: list[str], title: str, k: int = 20):
    """Paper 1, figure 3: the classes with the most forgotten test images, one bar per class.

    ``class_labels``: one unique label per class (:func:`forgetlab.analysis.labels.class_labels`);
    bars are placed by position, so even equal labels never share a row."""
    top = most_forgotten(changes, k)
    figure, axis = plt.subplots(figsize=(6, 0.8 + 0.28 * max(len(top), 1)))
    if top:
        labels = [class_labels[c] for c, _ in top][::-1]
        counts = [n for _, n in top][::-1]
        axis.barh(range(len(top)), counts, color="#d62728")
        axis.set_yticks(range(len(top)), labels)
    else:
        axis.text(0.5, 0.5, "no upstream image was forgotten", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel("forgotten test images")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def similarity_figure(
    test: ContextualTest, domain: str, title: str, *, min_forgotten: int = 1, similarity: str = "synset"
):
    """Paper 1, figure 4: similarity to the task's domain of the forgotten images and of all upstream
    test images (classes weighted by image counts), with the permutation test; below
    ``min_forgotten`` forgotten images the title says there is no test instead of a p-value.
    ``similarity`` names the measure on the x axis ('synset' or 'tokens'). Raises ``ValueError`` when
    no image was forgotten: there is nothing to draw (the report says so in words)."""
    if test.forgotten == 0:
        raise ValueError("no upstream image was forgotten: no similarity figure to draw")
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    bins = np.linspace(0, 1, 21)
    for weights, label, colour in [
        (test.images_per_class, "all upstream test images", "#7f7f7f"),
        (test.forgotten_per_class, "forgotten images", "#d62728"),
    ]:
        axis.hist(test.similarity, bins=bins, weights=weights, density=True, alpha=0.45, color=colour, label=label)
        if len(np.unique(test.similarity[weights > 0])) >= 5:  # a density of a few distinct values misleads
            from scipy.stats import gaussian_kde

            grid = np.linspace(0, 1, 200)
            kde = gaussian_kde(test.similarity, weights=weights.astype(float))
            axis.plot(grid, kde(grid), color=colour)
    measure = "class synset" if similarity == "synset" else "class-name tokens"
    axis.set_xlabel(f"Wu-Palmer similarity to {domain} ({measure})")
    axis.set_ylabel("density")
    tested = (
        f"permutation p = {test.p_value:.2g}"
        if test.forgotten >= min_forgotten
        else f"no test: {test.forgotten} forgotten, fewer than {min_forgotten}"
    )
    axis.set_title(
        f"{title}\nmean forgotten {test.mean_forgotten:.3f} vs all {test.mean_all:.3f} "
        f"(difference {test.difference:+.3f}, {tested})",
        fontsize=9,
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
