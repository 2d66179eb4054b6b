"""The LoRA-variants table: upstream change (points) by backbone, LoRA variant and rank, mean ± std over seeds,
with Spearman's correlation of rank and upstream change over every run of a (backbone, variant) and its
two-sided permutation p-value (scipy.stats.spearmanr with scipy.stats.permutation_test, 10,000 resamples).

    python benchmarks/lora_variants_table.py runs/lora-variants   # after: forgetlab sweep sweeps/lora_variants.yaml
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

import forgetlab


def variant_of(row) -> str:
    if str(row["config.method.dora"]) == "True":
        return "dora"
    return str(row["config.method.scaling"])


def spearman_with_p(ranks: np.ndarray, changes: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Spearman's rho of ``ranks`` and ``changes`` (one value per run) and its two-sided permutation p."""
    statistic = lambda x: stats.spearmanr(x, changes).statistic  # noqa: E731
    result = stats.permutation_test(
        (ranks,), statistic, permutation_type="pairings", n_resamples=10_000, alternative="two-sided", random_state=seed
    )
    return float(result.statistic), float(result.pvalue)


def table(sweep_folder: str) -> str:
    frame = forgetlab.load_sweep(sweep_folder)
    frame = frame[frame["completed_tasks"] == frame["total_tasks"]].copy()
    frame["variant"] = frame.apply(variant_of, axis=1)
    frame["rank"] = frame["config.method.rank"].astype(int)
    frame["change"] = frame["upstream_change_pp"].astype(float)
    ranks = sorted(frame["rank"].unique())
    lines = [
        "| backbone | variant | " + " | ".join(f"r={r}" for r in ranks) + " | Spearman (rank, change) | p | runs |",
        "|---|---|" + "---:|" * len(ranks) + "---:|---:|---:|",
    ]
    for (backbone, variant), group in frame.groupby(["backbone", "variant"], sort=True):
        cells = []
        for rank in ranks:
            values = group.loc[group["rank"] == rank, "change"]
            cells.append(
                f"{values.mean():+.1f} ± {values.std(ddof=1):.1f}"
                if len(values) > 1
                else (f"{values.mean():+.1f}" if len(values) else "-")
            )
        rho, p = spearman_with_p(group["rank"].to_numpy(float), group["change"].to_numpy(float))
        lines.append(f"| {backbone} | {variant} | " + " | ".join(cells) + f" | {rho:+.2f} | {p:.4f} | {len(group)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_folder")
    print(table(parser.parse_args().sweep_folder))


if __name__ == "__main__":
    main()
