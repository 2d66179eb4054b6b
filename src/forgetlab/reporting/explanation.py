"""The report's "Where forgetting happens" section, from a run's ``explain/`` files (written by
``forgetlab explain``; docs/explain.md gives their columns). Read from the CSVs alone: the report never
runs a model.

Per run with ``explain/attribution.csv`` or ``explain/spectra.csv`` (at most :data:`MAX_RUNS`): a unit x
phase heat map of the points each unit's update costs in context (leave-one-out: ``recovered_pp``)
beside the points it costs alone (leave-one-in: ``damage_pp``), and the intruder dimensions and the
relative norm of the cumulative update against phase. The notes give ``n`` (images), the units whose
95 % interval of recovered points excludes 0 in the last phase, and whether the ``all`` rows
reproduced the run's predictions (they must)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_RUNS = 6


def where_forgetting_happens(runs, labels: dict[int, str], keys: dict[int, str]) -> list[tuple[str, list, list[str]]]:
    """The section: ``[(heading, [(figure, key, caption)], notes)]``, empty when no run has ``explain/``."""
    from forgetlab.analysis.where import explain_tables

    explained = [(run, tables) for run in runs if (tables := explain_tables(run.folder.path))][:MAX_RUNS]
    if not explained:
        return []
    drawn, notes = [], []
    for run, tables in explained:
        label, key = labels[id(run)], keys[id(run)]
        if "attribution" in tables and (tables["attribution"].unit != "all").any():  # linear: no unit to draw
            drawn.append(
                (
                    attribution_figure(tables["attribution"], label),
                    f"explain_attribution_{key}",
                    f"{label}: upstream points each unit's update costs, "
                    f"in context (left: accuracy with the unit's update of "
                    "phases 1..t reverted minus the phase-t accuracy) "
                    "and alone (right: pretrained plus only that update, "
                    "minus the pretrained accuracy); percentage points, paired over the same images.",
                )
            )
        if "attribution" in tables:
            notes.append(attribution_note(tables["attribution"], label))
        if "spectra" in tables:
            drawn.append(
                (
                    spectra_figure(tables["spectra"], label),
                    f"explain_spectra_{key}",
                    f"{label}: intruder dimensions (Shuttleworth et al., "
                    f"2024; top 10, epsilon 0.5) of the cumulative update, "
                    "summed over the adapted matrices, and its mean ||dW||_F / ||W0||_F, against phase.",
                )
            )
    return [("Where forgetting happens (forgetlab explain)", drawn, notes)]


def _grid(attribution, column: str):
    units = [u for u in dict.fromkeys(attribution.unit) if u != "all"]
    phases = sorted(attribution.phase.unique())
    table = (
        attribution[attribution.unit != "all"]
        .pivot_table(index="unit", columns="phase", values=column)
        .reindex(index=units, columns=phases)
    )
    return units, phases, table.to_numpy(dtype=float)


def attribution_figure(attribution, label: str):
    """Two heat maps, unit x phase: recovered points (leave-one-out) and damage points (leave-one-in)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 1.2 + 0.35 * attribution.unit.nunique()))
    for axis, column, title in zip(
        axes, ("recovered_pp", "damage_pp"), ("reverted: points recovered", "applied alone: points")
    ):
        units, phases, values = _grid(attribution, column)
        limit = max(float(np.nanmax(np.abs(values))) if values.size else 0.0, 1e-9)
        image = axis.imshow(
            values, cmap="RdBu_r" if column == "recovered_pp" else "RdBu", vmin=-limit, vmax=limit, aspect="auto"
        )
        for (i, j), value in np.ndenumerate(values):
            if not math.isnan(value):
                axis.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=7)
        axis.set_xticks(range(len(phases)), [f"phase {p}" for p in phases])
        axis.set_yticks(range(len(units)), units)
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis)
    figure.suptitle(label, fontsize=9)
    figure.tight_layout()
    return figure


def spectra_figure(spectra, label: str):
    """Intruders (sum over matrices) and mean relative norm of the cumulative update, against phase."""
    cumulative = spectra[spectra.scope == "cumulative"].groupby("phase")
    figure, axes = plt.subplots(1, 2, figsize=(8, 3))
    axes[0].plot(cumulative.intruders.sum(), marker="o")
    axes[0].set_ylabel("intruder dimensions (sum)")
    axes[1].plot(cumulative.relative_norm.mean(), marker="o")
    axes[1].set_ylabel("mean ||dW|| / ||W0||")
    for axis in axes:
        axis.set_xlabel("phase")
    figure.suptitle(label, fontsize=9)
    figure.tight_layout()
    return figure


def attribution_note(attribution, label: str) -> str:
    """n, the agreement of the ``all`` rows with the run, and the units whose interval excludes 0 in the last phase."""
    last = attribution[attribution.phase == attribution.phase.max()]
    total = last[last.unit == "all"].iloc[0]
    units = last[last.unit != "all"]
    clear = units[(units.recovered_low_pp > 0) | (units.recovered_high_pp < 0)].sort_values(
        "recovered_pp", ascending=False
    )
    named = (
        ", ".join(
            f"{row.unit} {row.recovered_pp:+.2f} [{row.recovered_low_pp:+.2f}, {row.recovered_high_pp:+.2f}]"
            for row in clear.itertuples()
        )
        or "none"
    )
    if units.empty:  # a method that trains no backbone tensor (linear)
        named = "none: the run trained no backbone tensor, so there is nothing to attribute"
    agreement = total.agreement_pct
    check = (
        "the rebuilt models reproduce the run's predictions on every image"
        if agreement == 100
        else "no stored predictions to check the rebuilt models against"
        if math.isnan(agreement)
        else f"WARNING: the rebuilt models reproduce the run's predictions on only {agreement:.2f}% of the images"
    )
    return (
        f"{label}, phase {int(total.phase)} (n = {int(total.images)} upstream images, "
        f"{total.pretrained_accuracy_pct:.2f}% -> {total.phase_accuracy_pct:.2f}%): units whose update costs points "
        f"with a 95 % paired interval excluding 0 (points recovered by reverting it): {named}; {check}."
    )
