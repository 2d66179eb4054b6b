"""The report's first screen: what the runs show, in sentences with numbers, derived from the stored
matrices and the contextual-forgetting tests only (never recomputed in a figure).

* **Rank and forgetting** (paper 1): per backbone (and regulariser), over every finished merged-LoRA
  run, Spearman's correlation between the LoRA rank and the final upstream accuracy, with a 95 %
  bootstrap interval over runs (2,000 resamples, seeded), and the mean upstream accuracy at the lowest
  and the highest rank.
* **Contextual forgetting** (paper 1): per backbone, after the first task, in how many runs the
  forgotten upstream images are closer to the task's domain than the test set (one-sided permutation
  p < 0.05), with the range of the mean similarity difference.
* **Methods** (paper 2): the method with the best mean of final downstream and upstream accuracy per
  backbone.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def bootstrap_interval(x, y, statistic=spearman, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of ``statistic`` over resamples of the (x, y) pairs."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, float), np.asarray(y, float)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(x), len(x))
        value = statistic(x[pick], y[pick])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def rank_findings(runs) -> list[str]:
    groups = defaultdict(list)  # (backbone, variant, the rest of the config) -> [(rank, final upstream accuracy)]
    for run in runs:
        method = run.config["method"]
        if method["name"] != "lora" or method.get("policy") == "keep" or run.completed < run.matrix.num_tasks:
            continue
        variant = " ".join(run.method.split(" ")[2:])
        # Only runs that differ in rank and seed alone are compared (as the rank curves do).
        groups[(run.backbone, variant, run.config_key("method.rank"))].append((method["rank"], float(run.matrix.as_array()[-1, 0])))
    sentences = []
    for (backbone, variant, _), pairs in sorted(groups.items()):
        ranks = sorted({rank for rank, _ in pairs})
        if len(ranks) < 2 or len(pairs) < 3:
            continue
        x, y = zip(*pairs)
        rho = spearman(x, y)
        low, high = bootstrap_interval(x, y)
        at = {r: 100 * np.mean([a for rank, a in pairs if rank == r]) for r in (ranks[0], ranks[-1])}
        direction = "forgets more of the upstream task" if rho < 0 else "forgets less of the upstream task" if rho > 0 else "changes nothing"
        sentences.append(
            f"On {backbone}{' ' + variant if variant else ''}, a higher LoRA rank {direction}: Spearman's correlation of rank and "
            f"final upstream accuracy is {rho:+.2f} (95 % bootstrap interval {low:+.2f} to {high:+.2f}, {len(pairs)} runs); "
            f"upstream accuracy {at[ranks[0]]:.1f} % at rank {ranks[0]} and {at[ranks[-1]]:.1f} % at rank {ranks[-1]}."
        )
    return sentences


def contextual_findings(rows) -> list[str]:
    by_backbone = defaultdict(list)
    for row in rows:
        if row.run.matrix.phases and row.task == row.run.matrix.phases[0] and row.test.forgotten:
            by_backbone[row.run.backbone].append(row)
    sentences = []
    for backbone, members in sorted(by_backbone.items()):
        significant = [r for r in members if r.test.p_value < 0.05 and r.test.difference > 0]
        differences = [r.test.difference for r in members]
        sentences.append(
            f"Contextual forgetting on {backbone}: after its first task ({members[0].task}, domain {members[0].domain}) the forgotten "
            f"upstream images are closer to the domain than the test set (one-sided permutation p < 0.05) in {len(significant)} "
            f"of {len(members)} runs; the mean similarity difference ranges from {min(differences):+.3f} to {max(differences):+.3f}."
        )
    return sentences


def method_findings(table: list[dict]) -> list[str]:
    best = {}
    for row in table:
        mean = row["mean"][0]
        if not math.isnan(mean) and (row["backbone"] not in best or mean > best[row["backbone"]]["mean"][0]):
            best[row["backbone"]] = row
    methods = defaultdict(int)
    for row in table:
        methods[row["backbone"]] += 1
    return [
        f"Of {methods[backbone]} methods on {backbone}, {row['method']} keeps the best balance: mean of final downstream and upstream "
        f"accuracy {100 * row['mean'][0]:.1f} % (downstream {100 * row['downstream'][0]:.1f} %, upstream {100 * row['upstream'][0]:.1f} %)."
        for backbone, row in sorted(best.items())
        if methods[backbone] >= 2
    ]


def findings(runs, contextual_rows, paper2_table) -> list[str]:
    """Every finding sentence, rank first."""
    return rank_findings(runs) + contextual_findings(contextual_rows) + method_findings(paper2_table)
