"""Figures of where forgetting happens in the features, drawn from stored results only (matplotlib,
Agg backend): the drift heat map (unit x phase, linear CKA with the pretrained features), each upstream
evaluator's accuracy per phase, and the head's upstream drop split into lost and misaligned with
bootstrap intervals. The numbers come from :mod:`forgetlab.analysis.drift`; ``page`` saves the figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def drift_heatmap(table, title: str):
    """``table``: :func:`forgetlab.analysis.drift.drift_table` (phase, unit, cka); units top to bottom
    in forward order, phases left to right; the colour is the CKA (1: unchanged)."""
    units = list(dict.fromkeys(table["unit"]))
    grid = table.pivot(index="unit", columns="phase", values="cka").reindex(units)
    figure, axis = plt.subplots(figsize=(1.2 + 0.7 * grid.shape[1], 0.9 + 0.32 * len(units)))
    image = axis.imshow(
        grid.to_numpy(dtype=float),
        vmin=min(0.0, float(np.nanmin(grid.to_numpy(dtype=float)))),
        vmax=1.0,
        cmap="viridis",
        aspect="auto",
    )
    axis.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    axis.set_yticks(range(len(units)), units)
    axis.set_xlabel("phase (0: pretrained)")
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, label="linear CKA with the pretrained features")
    figure.tight_layout()
    return figure


def evaluators_figure(table, split, title: str):
    """Left: each evaluator's upstream accuracy per matrix row (``table``: row, evaluator, accuracy_pct).
    Right (when ``split`` has rows): the head's drop per phase, stacked as lost and misaligned, with
    the 95 % bootstrap interval of each part."""
    columns = 2 if len(split) else 1
    figure, axes = plt.subplots(1, columns, figsize=(4.2 * columns, 3.2), squeeze=False)
    left = axes[0][0]
    for name, rows in table.groupby("evaluator", sort=False):
        left.plot(rows["row"], rows["accuracy_pct"].astype(float), marker="o", label=name)
    left.set_xticks(sorted(set(int(row) for row in table["row"])))  # whole rows, not 0.5 steps
    left.set_xlabel("matrix row (0: pretrained)")
    left.set_ylabel("upstream accuracy (%)")
    left.legend(fontsize=8)
    if len(split):
        right = axes[0][1]
        phases = split["phase"].to_numpy()
        lost, misaligned = split["lost_pp"].to_numpy(), split["misaligned_pp"].to_numpy()
        for offset, (name, values, key) in enumerate(
            (("lost", lost, "lost_ci_pp"), ("misaligned", misaligned, "misaligned_ci_pp"))
        ):
            low = np.array([ci[0] for ci in split[key]])
            high = np.array([ci[1] for ci in split[key]])
            positions = phases + (offset - 0.5) * 0.35
            right.bar(positions, values, width=0.35, label=name, yerr=[values - low, high - values], capsize=3)
        right.axhline(0, color="grey", linewidth=0.8)
        right.set_xticks(phases)
        right.set_xlabel("phase")
        right.set_ylabel("upstream drop (points)")
        right.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure
