"""The report's first screen: what the runs show, in sentences with numbers, derived from the stored
matrices and the contextual-forgetting tests only (never recomputed in a figure).

Every finding compares only runs that differ in the compared key(s) and the seed
(:mod:`forgetlab.analysis.groups`); groups that differ in anything else get their own sentence,
labelled with what differs. Every sentence states its n, and gives an interval or a test only where
one means something (the minimums below), saying so otherwise.

* **Rank and forgetting** (paper 1): per group of finished merged-LoRA runs that differ only in
  ``method.rank`` and the seed, Spearman's correlation between the rank and the final upstream
  accuracy, and the mean upstream accuracy at the lowest and the highest rank. From
  :data:`MIN_RUNS_FOR_TEST` runs on, an exact (or, past 7 runs, 9,999-resample) two-sided permutation
  test of the correlation (``scipy.stats.permutation_test``); only a test with p < 0.05 lets the
  sentence say which way rank goes. From :data:`MIN_RUNS_FOR_INTERVAL` runs on, a 95 % bootstrap
  interval over runs (2,000 resamples, seeded).
* **Contextual forgetting** (paper 1): per group of runs that differ only in the seed and the LoRA
  rank, after the first task, in how many runs the forgotten upstream images are closer to the task's
  domain than the test set (one-sided permutation p < 0.05), with the range of the mean similarity
  difference. A run that forgot fewer than :data:`MIN_FORGOTTEN_IMAGES` images is not tested.
* **Methods** (paper 2): per context (the same config but for the method's sections and the seed,
  every task done), the method with the best mean of final downstream and upstream accuracy. It is
  called best only when it beats every other method by more than the seed spread (the gap exceeds
  the sum of the two standard deviations over seeds, both with at least 2 seeds) or a paired t-test
  over at least :data:`MIN_PAIRED_SEEDS` shared seeds gives p < 0.05 (``scipy.stats.ttest_rel``);
  otherwise the leaders are called indistinguishable.

Imports ``analysis.groups`` (which runs may be compared) and reads the runs, tables and tests the
report hands it; it writes nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from forgetlab.analysis.groups import duplicates, group_labels, identity_key, method_family, rank_groups

MIN_RUNS_FOR_TEST = 5  # with 4 runs the exact permutation test cannot go below p = 2/24 = 0.083
MIN_RUNS_FOR_INTERVAL = 10  # a bootstrap over fewer points mostly resamples the same few values
MIN_FORGOTTEN_IMAGES = 20  # a mean similarity of fewer forgotten images says little, and the test has no power
MIN_PAIRED_SEEDS = 3  # a paired t-test needs at least 2 degrees of freedom
ALPHA = 0.05


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


def spearman_permutation_p(x, y, resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided p-value of Spearman's correlation under random pairing of ``y`` with ``x``: exact
    over every ordering when there are at most ``resamples`` of them (7 points or fewer), else over
    ``resamples`` random ones (``scipy.stats.permutation_test``, ``permutation_type='pairings'``)."""
    from scipy.stats import permutation_test, rankdata

    x, y = np.asarray(x, float), np.asarray(y, float)
    centred_x = rankdata(x) - rankdata(x).mean()

    def correlation(values, axis=-1):
        ranks = rankdata(values, axis=axis)
        ranks = ranks - ranks.mean(axis=axis, keepdims=True)
        return (ranks * centred_x).sum(axis=axis) / np.sqrt((ranks**2).sum(axis=axis) * (centred_x**2).sum())

    result = permutation_test(
        (y,),
        correlation,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        random_state=seed,
    )
    return float(result.pvalue)


def _seeds(counts: list[int]) -> str:
    """'one seed each', '2 seeds each', '1 to 3 seeds each'."""
    low, high = min(counts), max(counts)
    if high == 1:
        return "one seed each"
    return f"{low} seeds each" if low == high else f"{low} to {high} seeds each"


def rank_findings(runs) -> list[str]:
    sentences = []
    for group in rank_groups(runs):
        ranks = group.ranks
        if len(ranks) < 2:
            continue  # the rank-curve figure's caption names these groups
        pairs = group.points(0)
        x, y = zip(*pairs)
        n, per_rank = len(pairs), group.seeds_per_rank()
        counted = f"{n} runs at {len(ranks)} ranks, {_seeds(per_rank)}"
        at = {r: 100 * np.mean([a for rank, a in pairs if rank == r]) for r in (ranks[0], ranks[-1])}
        endpoints = (
            f"upstream accuracy {at[ranks[0]]:.1f} % at rank {ranks[0]} and {at[ranks[-1]]:.1f} % at rank {ranks[-1]}"
        )
        if np.ptp(y) == 0:
            sentences.append(
                f"On {group.label}, final upstream accuracy is the same at every LoRA rank ({counted}): {endpoints}."
            )
            continue
        if n < 3:
            sentences.append(
                f"On {group.label}, too few runs to tell how LoRA rank changes forgetting ({counted}: no correlation, "
                f"interval or test); {endpoints}."
            )
            continue
        rho = spearman(x, y)
        p = spearman_permutation_p(x, y) if n >= MIN_RUNS_FOR_TEST else math.nan
        if math.isnan(p):
            evidence = f"{counted}: no interval or test, which need at least {MIN_RUNS_FOR_TEST} runs"
        elif n >= MIN_RUNS_FOR_INTERVAL:
            low, high = bootstrap_interval(x, y)
            evidence = f"{counted}; permutation test p = {p:.2g}; 95 % bootstrap interval {low:+.2f} to {high:+.2f}"
        else:
            evidence = f"{counted}; permutation test p = {p:.2g}; no interval below {MIN_RUNS_FOR_INTERVAL} runs"
        if p < ALPHA:
            direction = "forgets more of the upstream task" if rho < 0 else "forgets less of the upstream task"
            claim = f"a higher LoRA rank {direction}"
        elif math.isnan(p):
            claim = "too few runs to tell how LoRA rank changes forgetting"
        else:
            claim = "no trend of forgetting with LoRA rank is established"
        sentences.append(
            f"On {group.label}, {claim}: Spearman's correlation of rank and final upstream accuracy is {rho:+.2f} "
            f"({evidence}); {endpoints}."
        )
    return sentences


def _contextual_groups(rows) -> list[tuple[str, list]]:
    """First-task rows grouped by run config without the seed and ``method.rank`` (a rank sweep's
    runs are pooled), labelled by backbone and method and what differs from the groups sharing them.
    Rows of runs with a duplicate (same identity and seed) are in no group."""
    twice = {
        id(run) for members in duplicates(list({id(row.run): row.run for row in rows}.values())) for run in members
    }
    groups = defaultdict(list)
    for row in rows:
        if id(row.run) in twice:
            continue
        if row.run.matrix.phases and row.task == row.run.matrix.phases[0]:
            groups[(f"{row.run.backbone} {method_family(row.run)}", identity_key(row.run, "method.rank"))].append(row)
    labels = group_labels(sorted(groups))
    return [(labels[key], groups[key]) for key in sorted(groups)]


def contextual_findings(rows, mode: str = "") -> list[str]:
    """``mode``: what produced the rows (``--after sequence, --similarity synset``), named in each sentence."""
    sentences = []
    for label, members in _contextual_groups(rows):
        first = members[0]
        tested = [r for r in members if r.test.forgotten >= MIN_FORGOTTEN_IMAGES]
        few = [r for r in members if r.test.forgotten < MIN_FORGOTTEN_IMAGES]
        where = (
            f"Contextual forgetting on {label} after its first task "
            f"({first.task}, domain {first.domain}{'; ' + mode if mode else ''})"
        )
        if not tested:
            most = max(r.test.forgotten for r in few)
            if most == 0:
                what = (
                    f"no upstream image was forgotten in "
                    f"{'any of its ' + str(len(few)) + ' runs' if len(few) > 1 else 'its one run'}"
                )
            else:
                who = f"each of its {len(few)} runs forgot at most" if len(few) > 1 else "its one run forgot"
                what = (
                    f"{who} {most} upstream image{'s' if most != 1 else ''}, "
                    f"fewer than the {MIN_FORGOTTEN_IMAGES} a test needs"
                )
            sentences.append(f"{where}: no test: {what}.")
            continue
        significant = [r for r in tested if r.test.p_value < ALPHA and r.test.difference > 0]
        differences = [r.test.difference for r in tested]
        if len(tested) == 1:
            spread = f"is {differences[0]:+.3f} (one run)"
        elif f"{min(differences):+.3f}" == f"{max(differences):+.3f}":
            spread = f"is {differences[0]:+.3f} in each"
        else:
            spread = f"ranges from {min(differences):+.3f} to {max(differences):+.3f}"
        forgotten = sorted(r.test.forgotten for r in tested)
        sentence = (
            f"{where}: the forgotten upstream images are closer to the domain than the test set "
            f"(one-sided permutation p < {ALPHA}) in {len(significant)} of {len(tested)} runs "
            f"({forgotten[0]}{f' to {forgotten[-1]}' if forgotten[-1] != forgotten[0] else ''} "
            f"forgotten images each); the mean similarity difference {spread}."
        )
        if few:
            sentence += (
                f" {len(few)} more run{'s' if len(few) > 1 else ''} forgot fewer than {MIN_FORGOTTEN_IMAGES} images: "
                "not tested."
            )
        sentences.append(sentence)
    return sentences


def _percent(cell) -> str:
    """A :class:`~forgetlab.analysis.metrics.SeedStats` of fractions in percent, with its seeds."""
    if cell.seeds > 1:
        return f"{100 * cell.mean:.2f} ± {100 * cell.std:.2f} % ({cell.seeds} seeds)"
    return f"{100 * cell.mean:.2f} % (one seed)"


def _beats(top: dict, other: dict) -> str | None:
    """Why ``top`` is better than ``other`` beyond the seeds' noise, or None when it is not shown."""
    mine, theirs = top["mean"], other["mean"]
    shared = sorted(set(top["per_seed"]) & set(other["per_seed"]))
    if len(shared) >= MIN_PAIRED_SEEDS:
        from scipy.stats import ttest_rel

        a, b = [top["per_seed"][s] for s in shared], [other["per_seed"][s] for s in shared]
        if np.allclose(np.subtract(a, b), np.subtract(a, b)[0]):  # a constant gap: the t statistic is undefined
            if a[0] > b[0]:
                return f"higher on each of {len(shared)} shared seeds"
        else:
            p = float(ttest_rel(a, b).pvalue)
            if p < ALPHA and mine.mean > theirs.mean:
                return f"paired t-test over {len(shared)} seeds p = {p:.2g}"
    if mine.seeds >= 2 and theirs.seeds >= 2 and mine.mean - theirs.mean > mine.std + theirs.std:
        return "the gap exceeds the seed spread"
    return None


def method_findings(table: list[dict]) -> list[str]:
    contexts = defaultdict(list)
    for row in table:
        if row["completed"] == row["total"] and not math.isnan(row["mean"].mean):
            contexts[row["context"]].append(row)
    sentences = []
    for members in contexts.values():
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda r: -r["mean"].mean)
        top, others = members[0], members[1:]
        setting = f" ({top['setting']})" if top["setting"] else ""
        where = f"Of {len(members)} methods on {top['backbone']}{setting}"
        reasons = [_beats(top, other) for other in others]
        tied = [other for other, reason in zip(others, reasons) if reason is None]
        if not tied:
            runner_up = others[0]
            sentences.append(
                f"{where}, {top['method']} keeps the best balance: mean of final downstream and upstream "
                f"accuracy {_percent(top['mean'])} (downstream {100 * top['downstream'].mean:.1f} %, "
                f"upstream {100 * top['upstream'].mean:.1f} %), against {_percent(runner_up['mean'])} "
                f"for {runner_up['method']}, the next ({reasons[0]})."
            )
            continue
        one_seed = all(row["mean"].seeds == 1 for row in [top, *tied])
        why = (
            "one seed each, no interval"
            if one_seed
            else (
                f"the gaps are within the seed spread and no paired test "
                f"over {MIN_PAIRED_SEEDS}+ shared seeds says otherwise"
            )
        )
        leaders = ", ".join(f"{row['method']} {_percent(row['mean'])}" for row in [top, *tied])
        sentences.append(
            f"{where}, the best balance of final downstream and upstream accuracy is not settled: {leaders} "
            f"are indistinguishable ({why})."
        )
    return sentences


def findings(runs, contextual_rows, paper2_table, mode: str = "") -> list[str]:
    """Every finding sentence, rank first; ``mode`` names how the contextual rows were made."""
    return rank_findings(runs) + contextual_findings(contextual_rows, mode) + method_findings(paper2_table)
