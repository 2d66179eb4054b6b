"""Linear CKA and its minibatch estimator against their definitions and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgetlab.analysis.cka import MinibatchCKA, linear_cka, minibatch_cka, unbiased_hsic


def _features(n: int = 300, p: int = 24, q: int = 16, noise: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q)) + noise * rng.normal(size=(n, q)))
    return x, y


def kornblith_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. 3-4 written out: HSIC(K, L) = tr(K H L H) / (n-1)^2 with the
    centring matrix H, linear kernels, CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_identical_features_give_one():
    x, _ = _features()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x.copy()) == pytest.approx(1.0, abs=1e-12)
    assert minibatch_cka(x, x, 50) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, p, q", [(300, 24, 16), (20, 64, 40)])  # the feature form and the Gram form
def test_equals_kornblith_formula(n, p, q):
    x, y = _features(n, p, q)
    value = linear_cka(x, y)
    assert value == pytest.approx(kornblith_cka(x, y), rel=1e-10)
    assert 0.0 < value < 1.0


def test_invariant_to_orthogonal_transform_and_isotropic_scaling():
    x, y = _features()
    rng = np.random.default_rng(1)
    q_x, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    q_y, _ = np.linalg.qr(rng.normal(size=(y.shape[1], y.shape[1])))
    reference = linear_cka(x, y)
    for transformed_x, transformed_y in [
        (x @ q_x, y),
        (x, y @ q_y),
        (3.7 * x, y),
        (x, 0.05 * y),
        (2.0 * x @ q_x, 9.0 * y @ q_y),
    ]:
        assert linear_cka(transformed_x, transformed_y) == pytest.approx(reference, rel=1e-10)
    # not invariant to an arbitrary invertible map: the invariances above are not vacuous
    stretch = np.diag(np.linspace(0.1, 10.0, x.shape[1]))
    assert abs(linear_cka(x @ stretch, y) - reference) > 1e-3


def test_accepts_torch_and_refuses_mismatched_rows():
    x, y = _features()
    assert linear_cka(torch.from_numpy(x).float(), torch.from_numpy(y)) == pytest.approx(linear_cka(x, y), rel=1e-6)
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, y[:-1])
    assert np.isnan(linear_cka(np.ones((10, 3)), y[:10]))  # a constant side has no alignment to speak of


def test_unbiased_hsic_is_unbiased():
    """The mean of HSIC_1 over many small independent batches matches the population value, which
    the biased estimator on one large sample approaches; for independent sides both are about 0."""
    rng = np.random.default_rng(2)
    values = []
    for _ in range(400):
        a, b = torch.from_numpy(rng.normal(size=(8, 3))), torch.from_numpy(rng.normal(size=(8, 3)))
        values.append(float(unbiased_hsic(a @ a.T, b @ b.T)))
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_single_batch_minibatch_is_the_unbiased_cka():
    x, y = _features(n=60)
    estimate = MinibatchCKA()
    estimate.update(x, y)
    k, l_ = torch.from_numpy(x @ x.T), torch.from_numpy(y @ y.T)
    expected = float(unbiased_hsic(k, l_) / torch.sqrt(unbiased_hsic(k, k) * unbiased_hsic(l_, l_)))
    assert estimate.value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("batch_size", [100, 250, 500])
def test_minibatch_within_tolerance_of_full(batch_size):
    """Tolerance 0.02 at 2,000 examples of 64- and 32-d features: the full estimator's O(p/n) bias
    (about 0.01 here) and the minibatch estimate's spread, measured over these batch sizes."""
    x, y = _features(n=2000, p=64, q=32, noise=1.0)
    assert minibatch_cka(x, y, batch_size) == pytest.approx(linear_cka(x, y), abs=0.02)
