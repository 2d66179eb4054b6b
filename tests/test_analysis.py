"""Metrics, per-class and contextual forgetting on hand-made results, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forgetlab.analysis import metrics
from forgetlab.analysis.contextual import (
    class_similarities,
    contextual_forgetting,
    permutation_p_value,
    token_similarity,
)
from forgetlab.analysis.perclass import class_changes, most_forgotten

nan = math.nan
# Rows: pretrained, after t1, after t2, after t3. Columns: upstream, t1, t2, t3.
A = np.array(
    [
        [0.80, nan, nan, nan],
        [0.70, 0.60, nan, nan],
        [0.65, 0.50, 0.90, nan],
        [0.60, 0.55, 0.70, 0.40],
    ]
)


def test_metrics_equal_hand_computations():
    assert metrics.average_accuracy(A) == pytest.approx((0.55 + 0.70 + 0.40) / 3)
    # t1: best earlier 0.60 (after t1), final 0.55 -> 0.05; t2: 0.90 -> 0.70 -> 0.20.
    assert metrics.average_forgetting(A) == pytest.approx((0.05 + 0.20) / 2)
    assert metrics.backward_transfer(A) == pytest.approx(((0.55 - 0.60) + (0.70 - 0.90)) / 2)
    assert metrics.plasticity(A) == pytest.approx((0.60 + 0.90 + 0.40) / 3)
    assert metrics.upstream_change(A) == pytest.approx(0.60 - 0.80)  # negative: upstream accuracy was lost
    reference = [nan, 0.50, 0.95, 0.40]  # e.g. the linear probe's accuracies right after each task
    assert metrics.forward_transfer(A, reference) == pytest.approx((0.10 + -0.05 + 0.0) / 3)


def test_metrics_skip_empty_cells_and_are_nan_over_nothing():
    partial = A[:2]  # only task 1 done
    assert metrics.average_accuracy(partial) == pytest.approx(0.60)
    assert math.isnan(metrics.average_forgetting(partial)) and math.isnan(metrics.backward_transfer(partial))
    holey = A.copy()
    holey[3, 1] = nan  # a task whose final accuracy is missing is left out, not counted as 0
    assert metrics.average_accuracy(holey) == pytest.approx((0.70 + 0.40) / 2)
    assert metrics.average_forgetting(holey) == pytest.approx(0.20)
    assert math.isnan(metrics.average_accuracy(A[:1]))
    assert metrics.forward_transfer(A, [nan, nan, 0.80]) == pytest.approx(0.10)


def test_summaries_over_seeds_are_mean_and_sample_std():
    result = metrics.over_seeds([{"x": 1.0, "y": nan}, {"x": 3.0, "y": 2.0}])
    assert result["x"] == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert result["y"] == (2.0, 0.0, 1)


def test_per_class_counts_on_hand_made_predictions():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    before = np.array([0, 0, 1, 1, 1, 2, 0, 2])
    after = np.array([0, 1, 0, 0, 1, 1, 2, 1])
    changes = class_changes(before, after, labels, num_classes=4)
    assert changes.forgotten.tolist() == [1, 1, 2, 0]
    assert changes.retained.tolist() == [1, 1, 0, 0]
    assert changes.learned.tolist() == [1, 0, 1, 0]  # images 2 and 6
    assert changes.total.tolist() == [3, 2, 3, 0]
    assert most_forgotten(changes, k=2) == [(2, 2), (0, 1)]
    assert np.allclose(changes.forgotten_fraction[:3], [0.5, 0.5, 1.0]) and math.isnan(changes.forgotten_fraction[3])
    with pytest.raises(ValueError, match="differ in length"):
        class_changes(before[:3], after, labels, 4)


def test_permutation_test_finds_a_planted_effect_and_not_a_shuffled_one():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 20, size=4000) / 20  # 20 classes' similarities
    planted = values >= 0.8  # the most similar classes are forgotten
    planted &= rng.random(len(values)) < 0.3
    assert permutation_p_value(values, planted, permutations=2000, seed=1) < 0.001
    shuffled = rng.permutation(planted)
    assert permutation_p_value(values, shuffled, permutations=2000, seed=1) > 0.05
    assert permutation_p_value(values, np.zeros(len(values), bool), 100, seed=0) == 1.0


def test_contextual_forgetting_on_a_hand_made_prediction_set():
    similarity = np.array([0.9, 0.1, 0.5])
    labels = np.array([0, 0, 1, 1, 2, 2])
    before = np.array([0, 0, 1, 1, 2, 0])  # image 5 was wrong before: it cannot be forgotten
    after = np.array([1, 0, 1, 0, 2, 2])  # forgotten: image 0 (class 0) and image 3 (class 1)
    test = contextual_forgetting(before, after, labels, similarity, permutations=200)
    assert test.forgotten == 2
    assert test.forgotten_per_class.tolist() == [1, 1, 0]
    assert test.mean_forgotten == pytest.approx((0.9 + 0.1) / 2)
    assert test.mean_all == pytest.approx((0.9 * 2 + 0.1 * 2 + 0.5 * 2) / 6)
    assert test.mean_candidates == pytest.approx((0.9 * 2 + 0.1 * 2 + 0.5) / 5)
    assert test.difference == pytest.approx(0.5 - 0.5)
    assert 0 < test.p_value <= 1


def test_wordnet_similarities_of_classes_and_of_names():
    similarity = class_similarities("car.n.01", synsets=["sports_car.n.01", "n02958343", "dog.n.01"])
    assert similarity[0] == pytest.approx(0.96) and similarity[1] == pytest.approx(1.0)
    assert similarity[2] < 0.5
    # Paper 1's token matching: "sports car" averages its words' best senses over every part of speech
    # against every sense of the word "car" ("car" matches exactly); "," has no sense and is left out.
    assert token_similarity("sports car", "car") == pytest.approx(np.mean([best_sense("sports", "car"), 1.0]))
    assert token_similarity("Sports car,", "car") == token_similarity("sports car", "car")
    assert class_similarities("car.n.01", names=["Sports car"], mode="tokens")[0] == pytest.approx(
        token_similarity("sports car", "car")
    )
    # With synsets, every synonym of the class counts: sports_car.n.01 is "sports car" and "sport car".
    expected = np.mean([best_sense(t, "plane") for t in ("sports", "car", "sport", "car")])
    assert class_similarities("airplane.n.01", synsets=["sports_car.n.01"], mode="tokens", domain_word="plane")[
        0
    ] == pytest.approx(expected)
    # A token WordNet does not know scores 0 and is skipped, not averaged in.
    assert token_similarity("xqzt car", "car") == pytest.approx(1.0) and token_similarity("xqzt", "car") == 0.0


def best_sense(word: str, domain_word: str) -> float:
    from forgetlab import wordnet

    reader = wordnet.reader()
    return max(float(s.wup_similarity(d) or 0.0) for s in reader.synsets(word) for d in reader.synsets(domain_word))
