"""Where forgetting happens, across runs: the files that ``forgetlab explain`` (``explain/attribution.csv``,
``explain/spectra.csv``) and the runs themselves (``drift.csv``, the per-evaluator predictions) wrote,
read together, one row per **setting** (runs that differ only in their seed) and averaged over its seeds.

* :func:`unit_loss_table`: per setting and unit, the upstream points that reverting the unit's update
  recovers at the last phase (leave-one-out, ``recovered_pp``), and in how many runs its paired 95 %
  interval lies above 0.
* :func:`spectra_table`: per setting and phase, the intruder dimensions of the cumulative update (summed
  over the adapted matrices) and its mean ``||dW||_F / ||W0||_F``.
* :func:`predictors_table`: per backbone and method family (``lora``, ``full``, ...), Spearman's
  correlation across runs between a property of the last phase's cumulative update (the intruder count,
  the relative norm) and the run's upstream drop, with a two-sided permutation p
  (:func:`forgetlab.analysis.findings.spearman_permutation_p`).
* :func:`drift_table_across`: per setting and unit, the linear CKA with the pretrained features at the last
  phase (the curves per rank).
* :func:`lost_misaligned_across`: per setting and phase, the head's upstream drop split into lost and
  misaligned (:func:`forgetlab.analysis.drift.lost_misaligned`), overall and for the classes near to and
  far from the phase's domain.

Every table states its ``runs`` (n). Reads files only (pandas, numpy, scipy); the report and the results
pages import it. Sources: ``docs/explain.md`` and ``docs/drift.md`` give the per-run quantities.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from forgetlab.analysis.findings import MIN_RUNS_FOR_TEST, spearman, spearman_permutation_p
from forgetlab.analysis.groups import distinct, group_labels, identity_key, method_family, method_labels
from forgetlab.errors import DataError


def comparable(runs) -> list:
    """The runs an across-runs table compares: finished (every task of the sequence committed, so their
    last row is the sequence's end) and without a duplicate (:func:`forgetlab.analysis.groups.distinct`: a
    run given twice, or copied into two sweeps, would count twice), in their order. ``runs``: run folders
    (paths), :func:`forgetlab.load_run` runs or :func:`forgetlab.analysis.collect.find_runs` results."""
    from forgetlab.analysis.collect import RunResult, find_runs

    results = [run if isinstance(run, RunResult) else find_runs([getattr(run, "path", run)])[0] for run in runs]
    return [run for run in distinct(results) if run.completed >= run.matrix.num_tasks]


def settings(runs) -> list[tuple[str, list]]:
    """``[(label, runs)]``: the :func:`comparable` runs grouped by their config without the seed, in the order
    first seen, each labelled ``<backbone> <method label>`` (:func:`forgetlab.analysis.groups.method_labels`:
    ``offline_vit lora r=4 (method.scaling=rslora)``) and, where two groups share that, what else differs."""
    runs = comparable(runs)
    by_key: dict[tuple[str, str], list] = {}
    for run, label in zip(runs, method_labels(runs)):
        by_key.setdefault((f"{run.backbone} {label}", identity_key(run)), []).append(run)
    names = group_labels(list(by_key))
    return [(names[key], members) for key, members in by_key.items()]


def families(runs) -> list[tuple[str, list]]:
    """``[(label, runs)]``: the :func:`comparable` runs grouped by backbone and method family (``offline_vit
    lora``: every rank and variant of LoRA together) and by everything outside the method section, in the
    order first seen; where two groups share a backbone and family, the label says what else differs
    (``offline_vit lora (train.lr=0.01)``), so runs trained otherwise are never pooled."""
    by_key: dict[tuple[str, str], list] = {}
    for run in comparable(runs):
        by_key.setdefault((f"{run.backbone} {method_family(run)}", identity_key(run, "method")), []).append(run)
    names = group_labels(list(by_key))
    return [(names[key], members) for key, members in by_key.items()]


def upstream_drop_pp(run) -> float:
    """The run's upstream drop in percentage points: the pretrained row's upstream accuracy minus the last
    committed row's (positive: forgotten)."""
    matrix = run.matrix.as_array()
    return 100 * float(matrix[0, 0] - matrix[run.completed, 0])


def explain_tables(folder: str | Path) -> dict:
    """``{"attribution": DataFrame, "spectra": DataFrame}`` of the files in ``folder / "explain"`` that exist
    (an attribution file of an earlier version read in today's columns and units)."""
    import pandas as pd

    from forgetlab.analysis.units import upgrade_attribution_columns

    tables = {}
    for name, required in EXPLAIN_COLUMNS.items():
        path = Path(folder) / "explain" / f"{name}.csv"
        try:
            if not path.exists() or not path.read_text().strip():
                continue
            table = pd.read_csv(path)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
            raise DataError(f"{path} is unreadable ({type(error).__name__}); {_REBUILD.format(run=folder)}") from error
        table = upgrade_attribution_columns(table) if name == "attribution" else table
        missing = [column for column in required if column not in table.columns]
        if missing:
            raise DataError(f"{path} lacks the column {missing[0]}; {_REBUILD.format(run=folder)}")
        tables[name] = table
    return tables


# The columns the report and the tables read from explain/ (a file without them is damaged, not a run's).
EXPLAIN_COLUMNS = {
    "attribution": ("phase", "unit", "images", "recovered_pp", "recovered_low_pp", "damage_pp"),
    "spectra": ("phase", "layer", "scope", "relative_norm", "intruders"),
}
_REBUILD = "run 'forgetlab explain {run}' to rebuild it from explain/phases"


def _explain_tables(run) -> dict:
    return explain_tables(run.folder.path)


def _last(table):
    return table[table["phase"] == table["phase"].max()]


def _mean_sd(values) -> tuple[float, float]:
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def unit_loss_table(runs, *, by: str = "setting"):
    """Per setting (``by="setting"``: :func:`settings`; ``by="family"``: :func:`families`, every rank and
    variant of one method on one backbone together) and unit (``all`` left out), at each run's last row
    (a run whose explanation stops before it is left out; runs explained on other numbers of images are
    rows of their own, labelled ``(explained on N images)``): ``runs`` (n),
    ``recovered_pp`` and ``recovered_sd_pp`` (mean and standard deviation over the runs of the points that
    reverting the unit's update recovers; positive: the update costs that many points in context),
    ``costs_runs`` (runs whose paired 95 % interval of ``recovered_pp`` lies above 0) and ``damage_pp``
    (mean points that the update alone costs the pretrained model; negative: it costs). Runs without
    ``explain/attribution.csv`` are left out; empty when none has one."""
    import pandas as pd

    rows = []
    for family, members in families(runs) if by == "family" else settings(runs):
        tables = [
            table[table["unit"] != "all"]
            for run in members
            if "attribution" in (t := _explain_tables(run))
            for table in [_last(t["attribution"])]
            if int(table["phase"].max()) == run.completed  # explained to the run's last row
        ]
        tables = [table for table in tables if len(table)]
        by_images: dict[int, list] = {}  # explained on other image sets: other quantities, never pooled
        for table in tables:
            by_images.setdefault(int(table["images"].iloc[0]), []).append(table)
        for images, same in by_images.items():
            label = family if len(by_images) == 1 else f"{family} (explained on {images} images)"
            rows += _unit_rows(label, pd.concat(same))
    return pd.DataFrame(rows, columns=UNIT_COLUMNS)


UNIT_COLUMNS = ["setting", "unit", "runs", "recovered_pp", "recovered_sd_pp", "costs_runs", "damage_pp"]


def _unit_rows(label: str, joined) -> list[dict]:
    """The rows of :func:`unit_loss_table` for one group's last-phase attribution rows."""
    rows = []
    for unit in dict.fromkeys(joined["unit"]):
        cells = joined[joined["unit"] == unit]
        mean, sd = _mean_sd(cells["recovered_pp"])
        rows.append(
            {
                "setting": label,
                "unit": unit,
                "runs": len(cells),
                "recovered_pp": mean,
                "recovered_sd_pp": sd,
                "costs_runs": int((cells["recovered_low_pp"] > 0).sum()),
                "damage_pp": float(cells["damage_pp"].mean()),
            }
        )
    return rows


def update_summary(spectra):
    """Per phase of one run's ``explain/spectra.csv``: the cumulative update's ``intruders`` (summed over
    the adapted matrices; matrices without a count, e.g. block expansion's zero-inserted projections, add
    nothing) and ``relative_norm`` (the mean over matrices with one). A DataFrame indexed by phase."""
    cumulative = spectra[spectra["scope"] == "cumulative"].groupby("phase")
    return cumulative.agg(intruders=("intruders", "sum"), relative_norm=("relative_norm", "mean"))


def spectra_table(runs):
    """Per setting and phase: ``runs`` (n), ``intruders`` and ``intruders_sd`` (mean and standard deviation
    over the runs of :func:`update_summary`'s count), ``relative_norm`` (mean). Runs without
    ``explain/spectra.csv`` are left out."""
    import pandas as pd

    rows = []
    for label, members in settings(runs):
        summaries = [update_summary(t["spectra"]) for run in members if "spectra" in (t := _explain_tables(run))]
        if not summaries:
            continue
        joined = pd.concat(summaries)
        for phase, cells in joined.groupby(level=0):
            mean, sd = _mean_sd(cells["intruders"])
            rows.append(
                {
                    "setting": label,
                    "phase": int(phase),
                    "runs": len(cells),
                    "intruders": mean,
                    "intruders_sd": sd,
                    "relative_norm": float(cells["relative_norm"].mean()),
                }
            )
    return pd.DataFrame(rows, columns=["setting", "phase", "runs", "intruders", "intruders_sd", "relative_norm"])


PREDICTORS = ("intruders", "relative_norm")


def last_update(run):
    """:func:`update_summary`'s row (``intruders``, ``relative_norm``) of ``run``'s last row, or None when
    the run has no ``explain/spectra.csv`` or its spectra stop before its last row."""
    tables = _explain_tables(run)
    if "spectra" not in tables:
        return None
    summary = update_summary(tables["spectra"])
    if summary.empty or int(summary.index.max()) != run.completed:
        return None
    return summary.loc[run.completed]


def predictors_table(runs, *, resamples: int = 9999):
    """How well a property of the last phase's cumulative update predicts the upstream drop across runs:
    per backbone, method family (:func:`families`: ``lora``, or ``lora (train.lr=0.01)`` where runs trained
    otherwise are beside it) and predictor of :data:`PREDICTORS`, ``runs`` (n: the :func:`comparable` runs
    with ``explain/spectra.csv`` whose last explained phase is their last row), ``spearman`` (rho between
    the predictor and :func:`upstream_drop_pp`) and ``p`` (two-sided permutation p, from
    :data:`~forgetlab.analysis.findings.MIN_RUNS_FOR_TEST` runs on, as the report's findings; rho is NaN
    with fewer than 3 runs or a constant side, p then too)."""
    import pandas as pd

    points: dict[tuple[str, str], list[tuple[dict, float]]] = {}
    for label, members in families(runs):
        for run in members:
            if (last := last_update(run)) is None:
                continue
            points.setdefault((run.backbone, label[len(run.backbone) + 1 :]), []).append(
                ({name: float(last[name]) for name in PREDICTORS}, upstream_drop_pp(run))
            )
    rows = []
    for (backbone, family), cells in points.items():
        drops = [drop for _, drop in cells]
        for name in PREDICTORS:
            values = [properties[name] for properties, _ in cells]
            rho = spearman(values, drops)
            testable = not math.isnan(rho) and len(cells) >= MIN_RUNS_FOR_TEST
            p = spearman_permutation_p(values, drops, resamples=resamples) if testable else math.nan
            rows.append(
                {"backbone": backbone, "family": family, "predictor": name, "runs": len(cells), "spearman": rho, "p": p}
            )
    return pd.DataFrame(rows, columns=["backbone", "family", "predictor", "runs", "spearman", "p"])


def drift_table_across(runs):
    """Per setting and unit (forward order), at each run's last committed phase: ``runs`` (n), ``cka`` and
    ``cka_sd`` (mean and standard deviation over the runs of the linear CKA with the pretrained features,
    1: unchanged). Runs without ``drift.csv`` are left out."""
    import pandas as pd

    from forgetlab.analysis.drift import drift_table

    rows = []
    for label, members in settings(runs):
        tables = [_last(table) for run in members if len(table := drift_table(run.folder.path))]
        if not tables:
            continue
        joined = pd.concat(tables)
        for unit in dict.fromkeys(joined["unit"]):
            mean, sd = _mean_sd(joined.loc[joined["unit"] == unit, "cka"])
            rows.append({"setting": label, "unit": unit, "runs": len(tables), "cka": mean, "cka_sd": sd})
    return pd.DataFrame(rows, columns=["setting", "unit", "runs", "cka", "cka_sd"])


SPLIT = ("head_drop_pp", "lost_pp", "misaligned_pp")
GROUPS = ("all", "near", "far")


def lost_misaligned_across(runs, *, resamples: int = 2000):
    """Per setting, phase and group (``all`` the upstream test images, ``near`` and ``far`` the classes in
    the outer quartiles of similarity to the phase's domain): ``runs`` (n), the means over the runs of
    ``head_drop_pp``, ``lost_pp`` and ``misaligned_pp`` (:func:`forgetlab.analysis.drift.lost_misaligned`),
    ``lost_sd_pp`` and ``misaligned_sd_pp``, ``lost_by`` (``probe``, ``knn``, or both joined by ``/``).
    Runs that stored no second evaluator's predictions are left out."""
    import pandas as pd

    from forgetlab.analysis.drift import lost_misaligned_by_group_table, lost_misaligned_table

    rows = []
    for label, members in settings(runs):
        parts = []
        for run in members:
            overall = lost_misaligned_table(run.folder.path, resamples=resamples)
            if overall.empty:
                continue
            parts.append(overall.assign(group="all"))
            grouped = lost_misaligned_by_group_table(run.folder.path, resamples=resamples)
            if len(grouped):
                parts.append(grouped)
        if not parts:
            continue
        joined = pd.concat(parts)
        for phase in sorted(joined["phase"].unique()):
            for group in GROUPS:
                cells = joined[(joined["phase"] == phase) & (joined["group"] == group)]
                if cells.empty:
                    continue
                row = {"setting": label, "phase": int(phase), "group": group, "runs": len(cells)}
                row |= {key: float(cells[key].mean()) for key in SPLIT}
                row["lost_sd_pp"] = _mean_sd(cells["lost_pp"])[1]
                row["misaligned_sd_pp"] = _mean_sd(cells["misaligned_pp"])[1]
                row["lost_by"] = "/".join(dict.fromkeys(cells["lost_by"]))
                rows.append(row)
    columns = ["setting", "phase", "group", "runs", *SPLIT, "lost_sd_pp", "misaligned_sd_pp", "lost_by"]
    return pd.DataFrame(rows, columns=columns)
