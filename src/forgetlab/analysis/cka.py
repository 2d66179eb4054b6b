"""Linear centred kernel alignment (CKA): how alike two sets of features of the same examples are.

Kornblith et al. (ICML 2019, "Similarity of Neural Network Representations Revisited", eq. 5): for
features ``X`` ``[n, p]`` and ``Y`` ``[n, q]`` of the same ``n`` examples, centred per column,

    CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)

which equals HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for the linear kernels ``K = X Xᵀ``,
``L = Y Yᵀ``. It lies in [0, 1], is 1 for identical features, and is invariant to an orthogonal
transform and an isotropic scaling of either side (not to an arbitrary invertible linear map).

The minibatch estimator (Nguyen et al., ICLR 2021, "Do Wide and Deep Networks Learn the Same Things?",
eq. 3) sums the unbiased HSIC estimator of Song et al. (JMLR 2012), HSIC_1, over minibatches of the same
examples, so features never need to be held for all examples at once:

    CKA_mb = Σ_i HSIC_1(K_i, L_i) / sqrt(Σ_i HSIC_1(K_i, K_i) · Σ_i HSIC_1(L_i, L_i))

    HSIC_1(K, L) = [tr(K̃ L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((m-1)(m-2)) - 2/(m-2) · 1ᵀ K̃ L̃ 1] / (m (m-3))

with ``K̃``, ``L̃`` the kernels of a batch of ``m`` examples with their diagonals set to 0. It is
unbiased for the population HSIC, so it does not depend on the batch size in expectation, while the
full estimator above has an O(1/n) bias; the two agree to within a few hundredths on a few thousand
examples (tests/test_cka.py states the tolerance it checks).

Pure maths on tensors (computed in float64); imports nothing of forgetlab.
"""

from __future__ import annotations

import numpy as np
import torch


def _matrix(features) -> torch.Tensor:
    """``features`` as a float64 ``[n, d]`` tensor (higher-rank features are flattened per example)."""
    tensor = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    tensor = tensor.to(torch.float64)
    if tensor.ndim == 1:
        tensor = tensor[:, None]
    return tensor.reshape(len(tensor), -1)


def _check_pair(x: torch.Tensor, y: torch.Tensor, minimum: int) -> None:
    if len(x) != len(y):
        raise ValueError(f"CKA compares features of the same examples: got {len(x)} and {len(y)} rows")
    if len(x) < minimum:
        raise ValueError(f"CKA needs at least {minimum} examples, got {len(x)}")


def linear_cka(x, y) -> float:
    """Linear CKA of ``x`` ``[n, p]`` and ``y`` ``[n, q]`` (rows: the same ``n`` examples), in [0, 1]
    (Kornblith et al., 2019, eq. 5, the feature-space form). Uses ``Xᵀ X`` (``[p, p]``) or the
    ``n x n`` Gram matrices, whichever is smaller. NaN when either side is constant over the examples
    (its centred features are 0). Raises ``ValueError`` for different row counts or fewer than 2 rows."""
    x, y = _matrix(x), _matrix(y)
    y = y.to(x.device)
    _check_pair(x, y, 2)
    x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
    if len(x) < max(x.shape[1], y.shape[1]):  # the n x n kernels are the smaller products
        k, l_ = x @ x.T, y @ y.T
        cross, self_x, self_y = (k * l_).sum(), (k * k).sum(), (l_ * l_).sum()
    else:
        cross = (y.T @ x).square().sum()
        self_x, self_y = (x.T @ x).square().sum(), (y.T @ y).square().sum()
    denominator = (self_x * self_y).sqrt()
    return float(cross / denominator) if denominator > 0 else float("nan")


def unbiased_hsic(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """HSIC_1 (Song et al., 2012, eq. 5) of two ``[m, m]`` kernel matrices of the same ``m >= 4``
    examples; a float64 scalar tensor (may be slightly negative: it is unbiased, not clipped)."""
    m = len(k)
    if m < 4:
        raise ValueError(f"the unbiased HSIC needs batches of at least 4 examples, got {m}")
    k, l_ = k.clone(), l_.clone()
    k.fill_diagonal_(0)
    l_.fill_diagonal_(0)
    ones_k, ones_l = k.sum(), l_.sum()
    trace = (k * l_).sum()  # tr(K̃ L̃) for symmetric kernels
    middle = (k.sum(0) * l_.sum(1)).sum()  # 1ᵀ K̃ L̃ 1
    return (trace + ones_k * ones_l / ((m - 1) * (m - 2)) - 2 * middle / (m - 2)) / (m * (m - 3))


class MinibatchCKA:
    """The minibatch linear CKA of Nguyen et al. (2021): :meth:`update` with the features of each
    minibatch (the same examples on both sides, ``[m, p]`` and ``[m, q]``, ``m >= 4``), then
    :attr:`value`. With a single batch of all examples it is the unbiased CKA of those examples."""

    def __init__(self):
        self.cross = self.self_x = self.self_y = 0.0
        self.batches = 0

    def update(self, x, y) -> None:
        x, y = _matrix(x), _matrix(y)
        y = y.to(x.device)
        _check_pair(x, y, 4)
        k, l_ = x @ x.T, y @ y.T  # HSIC_1 needs no centring: the estimator removes the means itself
        self.cross += float(unbiased_hsic(k, l_))
        self.self_x += float(unbiased_hsic(k, k))
        self.self_y += float(unbiased_hsic(l_, l_))
        self.batches += 1

    @property
    def value(self) -> float:
        """The estimate so far; NaN before any batch or when a side has no variance."""
        denominator = self.self_x * self.self_y
        return self.cross / float(np.sqrt(denominator)) if self.batches and denominator > 0 else float("nan")


def minibatch_cka(x, y, batch_size: int, *, seed: int | None = 0) -> float:
    """:class:`MinibatchCKA` of ``x`` and ``y`` ``[n, d]`` over consecutive batches of ``batch_size``
    examples (shuffled first with ``seed``; None keeps the order). A last batch under 4 examples is
    dropped."""
    x, y = _matrix(x), _matrix(y)
    _check_pair(x, y, 4)
    order = (
        torch.arange(len(x)) if seed is None else torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    )
    estimate = MinibatchCKA()
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size]
        if len(index) >= 4:
            estimate.update(x[index], y[index.to(y.device)])
    return estimate.value
