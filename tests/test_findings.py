"""The report's findings (issue 13, part 4): sentences with numbers, from stored matrices only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from forgetlab.analysis.findings import bootstrap_interval, rank_findings, spearman
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

    def config_key(self, *ignored):
        return "the same config but for rank and seed"


def test_spearman_and_its_bootstrap_interval_match_hand_values():
    assert spearman([1, 2, 3, 4], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4]) == pytest.approx(0.8)  # one swapped pair: 1 - 6*2/(4*15)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    low, high = bootstrap_interval([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    assert low == pytest.approx(-1.0) and high == pytest.approx(-1.0)


def test_the_rank_finding_states_the_correlation_interval_and_endpoints():
    runs = [FakeRun("vit", r, a) for r, a in ((1, 0.80), (1, 0.78), (4, 0.60), (4, 0.62), (16, 0.30), (16, 0.35))]
    runs += [FakeRun("resnet", r, 0.85) for r in (1, 4)]  # two runs: too few for a finding
    (sentence,) = rank_findings(runs)
    assert sentence.startswith("On vit, a higher LoRA rank forgets more of the upstream task")
    rho = spearman([1, 1, 4, 4, 16, 16], [0.80, 0.78, 0.60, 0.62, 0.30, 0.35])
    assert f"{rho:+.2f}" in sentence and "6 runs" in sentence
    assert f"{100 * np.mean([0.80, 0.78]):.1f} % at rank 1" in sentence and f"{100 * np.mean([0.30, 0.35]):.1f} % at rank 16" in sentence
