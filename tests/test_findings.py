"""The report's findings: sentences with numbers, from stored matrices only."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest

from forgetlab.analysis.findings import bootstrap_interval, rank_findings, spearman, spearman_permutation_p
from forgetlab.results import AccuracyMatrix


@dataclass
class FakeRun:
    backbone: str
    rank: int
    upstream: float
    method: str = "lora"

    @property
    def config(self):
        return {"method": {"name": "lora", "rank": self.rank, "policy": "merge"}}

    @property
    def completed(self):
        return 1

    @property
    def matrix(self):
        return AccuracyMatrix(columns=["upstream", "t"], values=[[0.9, None], [self.upstream, 0.5]])

    def __post_init__(self):
        self.method = f"lora r={self.rank}"
        self.seed = next(SEEDS)  # every fake run is another seed: none is a copy of another


SEEDS = itertools.count()


def test_spearman_and_its_bootstrap_interval_match_hand_values():
    assert spearman([1, 2, 3, 4], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4]) == pytest.approx(0.8)  # one swapped pair: 1 - 6*2/(4*15)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    low, high = bootstrap_interval([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    assert low == pytest.approx(-1.0) and high == pytest.approx(-1.0)


def test_the_rank_finding_states_its_n_and_claims_a_direction_only_when_a_test_says_so():
    runs = [FakeRun("vit", r, a) for r, a in ((1, 0.80), (1, 0.78), (4, 0.60), (4, 0.62), (16, 0.30), (16, 0.35))]
    runs += [FakeRun("vit-one-seed", r, a) for r, a in ((1, 0.80), (4, 0.60), (16, 0.30))]
    runs += [FakeRun("resnet", 4, 0.85)]  # one rank: no finding (the figure's caption names it)
    runs += [FakeRun("two", 1, 0.8), FakeRun("two", 4, 0.7)]  # two runs: no correlation at all
    two, sentence, one_seed = rank_findings(runs)  # sorted by backbone
    assert two == (
        "On two, too few runs to tell how LoRA rank changes forgetting (2 runs at 2 ranks, one seed each: no "
        "correlation, interval or test); upstream accuracy 80.0 % at rank 1 and 70.0 % at rank 4."
    )
    assert sentence.startswith("On vit, a higher LoRA rank forgets more of the upstream task")
    rho = spearman([1, 1, 4, 4, 16, 16], [0.80, 0.78, 0.60, 0.62, 0.30, 0.35])
    assert f"{rho:+.2f}" in sentence and "6 runs at 3 ranks, 2 seeds each" in sentence
    # The exact permutation test over the 720 orderings of 6 runs (ties in rank make it 16 of them as extreme).
    assert (
        f"permutation test p = {spearman_permutation_p([1, 1, 4, 4, 16, 16], [0.80, 0.78, 0.60, 0.62, 0.30, 0.35]):.2g}"
        in sentence
    )
    assert spearman_permutation_p([1, 1, 4, 4, 16, 16], [0.80, 0.78, 0.60, 0.62, 0.30, 0.35]) == pytest.approx(16 / 720)
    assert "no interval below 10 runs" in sentence and "bootstrap" not in sentence
    assert (
        f"{100 * np.mean([0.80, 0.78]):.1f} % at rank 1" in sentence
        and f"{100 * np.mean([0.30, 0.35]):.1f} % at rank 16" in sentence
    )
    # Three ranks with one seed each: a correlation of -1 but no claim, no interval, no test.
    assert one_seed.startswith("On vit-one-seed, too few runs to tell") and "-1.00" in one_seed
    assert "3 runs at 3 ranks, one seed each: no interval or test, which need at least 5 runs" in one_seed
    assert "forgets more" not in one_seed and "p =" not in one_seed
    # Ten runs with no trend: a test and an interval, and no direction claimed.
    flat = [
        FakeRun("flat", r, a)
        for r, a in zip([1, 2, 4, 8, 16] * 2, [0.5, 0.6, 0.4, 0.55, 0.45, 0.6, 0.4, 0.5, 0.45, 0.55])
    ]
    (sentence,) = rank_findings(flat)
    assert "no trend of forgetting with LoRA rank is established" in sentence and "95 % bootstrap interval" in sentence
