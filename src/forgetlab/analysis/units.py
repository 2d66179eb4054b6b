"""The units of the numbers forgetlab shows a person, in one place.

Stored JSON (``accuracy_matrix.json``, ``progress.json``, ``upstream_eval.json``, ``tasks.json``) holds
accuracies as fractions in [0, 1]: the storage format, unchanged so every folder stays readable and every
cache key and resume the same. Everything a person reads (the CSVs a run or an analysis writes, the Python
API's DataFrames and numbers, the CLI, the report, the trackers) gives accuracies and shares in **percent**
and differences of accuracies in **percentage points**, named where the number is: a column ending
``_pct`` or ``_pp``; where the columns are tasks (the accuracy matrix), ``attrs["unit"] == "percent"`` and
the CSV's first header cell ``row (accuracy %)``. docs/concepts.md lists both.
"""

from __future__ import annotations

PERCENT = "percent"  # attrs["unit"] of a DataFrame whose columns are tasks and whose cells are accuracies


def percent(fraction: float | None) -> float | None:
    """A stored fraction (0.8836) as shown (88.36); None stays None."""
    return None if fraction is None else 100 * fraction


# Attribution files of earlier versions: columns named without their unit, the two shares as fractions.
# Old name -> (name now, factor to its unit now); :func:`upgrade_attribution_columns` reads them through this.
EARLIER_COLUMNS = {
    "pretrained_accuracy": ("pretrained_accuracy_pct", 1),
    "phase_accuracy": ("phase_accuracy_pct", 1),
    "reverted_accuracy": ("reverted_accuracy_pct", 1),
    "reverted_low": ("reverted_low_pct", 1),
    "reverted_high": ("reverted_high_pct", 1),
    "recovered_points": ("recovered_pp", 1),
    "recovered_low": ("recovered_low_pp", 1),
    "recovered_high": ("recovered_high_pp", 1),
    "applied_accuracy": ("applied_accuracy_pct", 1),
    "applied_low": ("applied_low_pct", 1),
    "applied_high": ("applied_high_pct", 1),
    "damage_points": ("damage_pp", 1),
    "damage_low": ("damage_low_pp", 1),
    "damage_high": ("damage_high_pp", 1),
    "recovered_share": ("recovered_share_pct", 100),
    "agreement": ("agreement_pct", 100),
}


def upgrade_attribution_columns(table):
    """An attribution DataFrame with the columns and units of now (:data:`EARLIER_COLUMNS`): a file an
    earlier version wrote (``recovered_points``, ``agreement`` as a fraction) reads as one written now."""
    found = [column for column in EARLIER_COLUMNS if column in table.columns]
    if not found:
        return table
    table = table.copy()
    for column in found:
        table[column] = table[column] * EARLIER_COLUMNS[column][1]
    return table.rename(columns={column: EARLIER_COLUMNS[column][0] for column in found})
