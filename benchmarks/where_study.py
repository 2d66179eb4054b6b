"""The study of where forgetting happens on the offline world: runs (or resumes) the two sweeps
``sweeps/explain_offline.yaml`` (both offline backbones x LoRA ranks 1, 4, 16, 64 x standard and rsLoRA x
3 seeds) and ``sweeps/drift_offline.yaml`` (full fine-tuning on both, block expansion on the ViT, 3 seeds),
explains every finished cell (``forgetlab explain --images N``: attribution and spectra), then writes
``OUT/where.md`` (``OUT``: the sweeps' ``out_dir``, ``runs``), the Markdown tables that
``docs/results/where-forgetting-happens.md`` includes from ``benchmarks/results/where-offline.md``:

    FORGETLAB_HOME=.cache/forgetlab .venv/bin/python benchmarks/where_study.py [--images 500]
        [--jobs 2] [--explain-only | --tables-only]

Every cell is an ordinary run folder and every explanation resumes, so an interrupted study goes on where
it stopped. The tables come from :mod:`forgetlab.analysis.where` (means over the seeds; every row says
its n). ``forgetlab report OUT/explain-offline OUT/drift-offline`` draws the same runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SWEEPS = ("sweeps/explain_offline.yaml", "sweeps/drift_offline.yaml")
FOLDERS = ("explain-offline", "drift-offline")


def run_sweeps(jobs: int) -> float:
    """Run (or finish) both sweeps (into their ``out_dir``, ``runs``); returns the wall-clock seconds."""
    start = time.perf_counter()
    for sweep in SWEEPS:
        command = [sys.executable, "-m", "forgetlab", "sweep", sweep, f"--jobs={jobs}", "--quiet"]
        subprocess.run(command, check=True)
    return time.perf_counter() - start


def explain_all(out: Path, images: int) -> float:
    """``forgetlab explain`` on every finished cell of both sweeps (the other methods' cells stored their
    updates, ``save.updates``; a cell whose explanation is complete costs only its loading); returns the
    wall-clock seconds."""
    from forgetlab import explain
    from forgetlab.analysis.collect import find_runs

    start = time.perf_counter()
    for run in find_runs([out / folder for folder in FOLDERS]):
        if run.completed == run.matrix.num_tasks:
            explain(run.folder.path, parts="attribution,spectra", images=images, device="cpu", log=None)
    return time.perf_counter() - start


def _f(value, digits: int = 2) -> str:
    return "" if value != value else f"{value:.{digits}f}"


def _order(run) -> tuple:
    """Backbone, method, scaling, rank, seed: the tables' row order."""
    method = run.config["method"]
    return (run.backbone, method["name"], str(method.get("scaling", "")), method.get("rank") or 0, run.seed)


def _units_markdown(units) -> str:
    from forgetlab.reporting.page import markdown_table

    return markdown_table(
        ["setting", "unit", "runs", "recovered (points)", "sd", "interval above 0", "alone (points)"],
        [
            [
                r.setting,
                r.unit,
                str(r.runs),
                _f(r.recovered_pp),
                _f(r.recovered_sd_pp),
                f"{r.costs_runs}/{r.runs}",
                _f(r.damage_pp),
            ]
            for r in units.itertuples()
        ],
    )


def tables(out: Path) -> str:
    """The study's tables as Markdown, from the run folders under ``out``."""
    from forgetlab.analysis.collect import find_runs
    from forgetlab.analysis.where import (
        drift_table_across,
        lost_misaligned_across,
        predictors_table,
        spectra_table,
        unit_loss_table,
    )
    from forgetlab.reporting.page import markdown_table

    folders = [out / folder for folder in FOLDERS if (out / folder).exists()]
    runs = [run for run in find_runs(folders) if run.completed == run.matrix.num_tasks]
    runs.sort(key=_order)
    parts = [f"{len(runs)} finished runs.\n"]
    units = unit_loss_table(runs, by="family")
    parts.append("### Which units carry the upstream loss (last phase, every setting of a method together)\n")
    parts.append(_units_markdown(units))
    by_setting = unit_loss_table(runs)
    parts.append("\n### The unit whose update costs most, per setting (last phase)\n")
    top = by_setting.loc[by_setting.groupby("setting", sort=False)["recovered_pp"].idxmax()]
    parts.append(_units_markdown(top))
    spectra = spectra_table(runs)
    parts.append("\n### Intruder dimensions and relative norm of the cumulative update, per phase\n")
    parts.append(
        markdown_table(
            ["setting", "phase", "runs", "intruders (sum)", "sd", "mean ||dW|| / ||W0||"],
            [
                [
                    r.setting,
                    str(r.phase),
                    str(r.runs),
                    _f(r.intruders, 1),
                    _f(r.intruders_sd, 1),
                    _f(r.relative_norm, 4),
                ]
                for r in spectra.itertuples()
            ],
        )
    )
    predictors = predictors_table(runs)
    parts.append("\n### Does the last phase's update predict the upstream drop? (Spearman across runs)\n")
    parts.append(
        markdown_table(
            ["backbone", "family", "predictor", "runs", "Spearman rho", "permutation p"],
            [
                [r.backbone, r.family, r.predictor, str(r.runs), _f(r.spearman), _f(r.p, 4)]
                for r in predictors.itertuples()
            ],
        )
    )
    drift = drift_table_across(runs)
    parts.append("\n### Drift per unit after the last phase (linear CKA with the pretrained features)\n")
    by_setting = list(drift.groupby("setting", sort=False))
    for backbone in dict.fromkeys(setting.split(" ")[0] for setting, _ in by_setting):
        chosen = [(setting, rows) for setting, rows in by_setting if setting.split(" ")[0] == backbone]
        unit_names = list(chosen[0][1]["unit"])
        parts.append(
            markdown_table(
                ["setting", "runs", *unit_names],
                [[setting, str(rows["runs"].iloc[0]), *(_f(v, 3) for v in rows["cka"])] for setting, rows in chosen],
            )
            + "\n"
        )
    split = lost_misaligned_across(runs)
    parts.append("\n### The head's upstream drop: lost (k-NN) and misaligned, per phase, all and near/far classes\n")
    parts.append(
        markdown_table(
            ["setting", "phase", "classes", "runs", "head drop", "lost", "sd", "misaligned", "sd"],
            [
                [
                    r.setting,
                    str(r.phase),
                    r.group,
                    str(r.runs),
                    _f(r.head_drop_pp),
                    _f(r.lost_pp),
                    _f(r.lost_sd_pp),
                    _f(r.misaligned_pp),
                    _f(r.misaligned_sd_pp),
                ]
                for r in split.itertuples()
            ],
        )
    )
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs", help="the sweeps' out_dir (runs), where where.md goes")
    parser.add_argument("--images", type=int, default=500, help="upstream test images per explanation (--images)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of each sweep")
    parser.add_argument(
        "--explain-only", action="store_true", help="run no sweep: explain what exists, then the tables"
    )
    parser.add_argument("--tables-only", action="store_true", help="write where.md from what exists, run nothing")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.tables_only and not args.explain_only:
        print(f"sweeps: {run_sweeps(args.jobs):.0f} s", flush=True)
    if not args.tables_only:
        print(f"explanations: {explain_all(out, args.images):.0f} s", flush=True)
    text = tables(out)
    (out / "where.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
