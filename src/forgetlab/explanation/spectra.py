"""The spectra of weight updates: what shape each task's change of a matrix has.

Every function takes plain float64 NumPy matrices (a convolution's kernel is read as its
``out x (in kh kw)`` matrix, :func:`as_matrix`) and returns plain numbers, so each is checked against a
hand-made matrix with a known answer (tests/test_explain.py) and, for the intruder count, against PEFT.

* :func:`numerical_rank`: singular values above ``max(m, n) * eps * s_max`` (``numpy.linalg.matrix_rank``'s
  tolerance, float64's ``eps``); a LoRA update of rank ``r`` has numerical rank ``<= r``.
* :func:`effective_rank`: Roy & Vetterli (2007), "The effective rank: a measure of effective
  dimensionality", EUSIPCO: ``exp(H(p))`` with ``p_i = s_i / sum(s)`` (Shannon entropy, natural log);
  ``n`` equal singular values give ``n``, a rank-1 matrix gives 1.
* :func:`stable_rank`: ``||dW||_F^2 / ||dW||_2^2 = sum(s_i^2) / s_max^2`` (Rudelson & Vershynin, 2007).
* :func:`relative_norm`: ``||dW||_F / ||W0||_F``.
* :func:`subspace_overlap`: Hu et al. (2021), LoRA, section 7.2: ``||U_i^T U_j||_F^2 / min(r_i, r_j)``
  on the top ``r_i`` and ``r_j`` left singular vectors (the output space) of two updates; 1 when one
  space contains the other, 0 when they are orthogonal.
* :func:`intruder_count`: Shuttleworth et al. (2024), "LoRA vs Full Fine-tuning: An Illusion of
  Equivalence": among the top ``k`` left singular vectors of ``W0 + dW``, those whose largest absolute
  cosine with every left singular vector of ``W0`` is below ``epsilon``. The defaults ``k = 10``,
  ``epsilon = 0.5`` are PEFT's ``reduce_intruder_dimension`` (``peft/tuners/lora/intruders.py``), which
  computes exactly this count and is the parity reference.

The decompositions are torch's (``torch.linalg.svd`` in float64), which keeps to the threads forgetlab
gives torch; NumPy's bundled OpenBLAS starts a thread per host core and, on a machine whose cores are
shared, was measured 350 times slower on a 384 x 128 matrix. Imports nothing of forgetlab.
"""

from __future__ import annotations

import math

import numpy as np
import torch

INTRUDER_TOP_K = 10
INTRUDER_EPSILON = 0.5


def as_matrix(weight) -> np.ndarray:
    """A weight (linear ``out x in`` or convolution ``out x in x kh x kw``) as a float64 ``out x (in kh kw)`` matrix."""
    array = np.asarray(weight, dtype=np.float64)
    return array.reshape(array.shape[0], -1)


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """Singular values, largest first (float64)."""
    return torch.linalg.svdvals(torch.as_tensor(matrix, dtype=torch.float64)).numpy()


def left_vectors(matrix: np.ndarray) -> np.ndarray:
    """The left singular vectors of ``matrix`` (``m x min(m, n)``, by decreasing singular value)."""
    return torch.linalg.svd(torch.as_tensor(matrix, dtype=torch.float64), full_matrices=False)[0].numpy()


def numerical_rank(values: np.ndarray, shape: tuple[int, int]) -> int:
    """How many of ``values`` (the singular values of a ``shape`` matrix) exceed ``max(m, n) * eps * s_max``."""
    if len(values) == 0 or values[0] == 0:
        return 0
    tolerance = max(shape) * np.finfo(np.float64).eps * values[0]
    return int((values > tolerance).sum())


def effective_rank(values: np.ndarray) -> float:
    """Roy & Vetterli (2007): ``exp(-sum p_i log p_i)``, ``p_i = s_i / sum(s)``; 0 for a zero matrix."""
    total = float(np.sum(values))
    if total == 0:
        return 0.0
    p = np.asarray(values, dtype=np.float64) / total
    p = p[p > 0]
    return float(math.exp(-np.sum(p * np.log(p))))


def stable_rank(values: np.ndarray) -> float:
    """``sum(s_i^2) / s_max^2``; 0 for a zero matrix."""
    if len(values) == 0 or values[0] == 0:
        return 0.0
    return float(np.sum(np.square(values)) / values[0] ** 2)


def relative_norm(update: np.ndarray, pretrained: np.ndarray) -> float:
    """``||dW||_F / ||W0||_F``."""
    return float(np.linalg.norm(update) / np.linalg.norm(pretrained))


def top_left_vectors(matrix: np.ndarray, rank: int) -> np.ndarray:
    """The top ``rank`` left singular vectors of ``matrix`` (``m x rank``)."""
    return left_vectors(matrix)[:, :rank]


def subspace_overlap(first: np.ndarray, second: np.ndarray) -> float:
    """Hu et al. (2021), section 7.2: ``||U_i^T U_j||_F^2 / min(r_i, r_j)`` of two orthonormal bases
    (``m x r_i`` and ``m x r_j``); NaN when either is empty."""
    smaller = min(first.shape[1], second.shape[1])
    if smaller == 0:
        return math.nan
    return float(np.linalg.norm(first.T @ second) ** 2 / smaller)


def intruder_count(
    pretrained: np.ndarray,
    updated: np.ndarray,
    *,
    top_k: int = INTRUDER_TOP_K,
    epsilon: float = INTRUDER_EPSILON,
    base: np.ndarray | None = None,
) -> int:
    """Shuttleworth et al. (2024): how many of the top ``top_k`` left singular vectors of ``updated``
    (``W0 + dW``) have ``max_j |cos(u_i, u0_j)| < epsilon`` over every left singular vector ``u0_j`` of
    ``pretrained`` (``W0``); PEFT's ``reduce_intruder_dimension`` counts the same. ``base``: the left
    singular vectors of ``pretrained`` when already computed."""
    if base is None:
        base = left_vectors(pretrained)
    merged = left_vectors(updated)
    similarity = np.abs(merged.T @ base).max(axis=1)
    return int((similarity[:top_k] < epsilon).sum())


def describe_update(update: np.ndarray, pretrained: np.ndarray, base: np.ndarray | None = None) -> dict:
    """One row of ``explain/spectra.csv`` for an update ``dW`` (float64 matrices): its ranks, its size
    relative to the pretrained ``W0``, and the intruders of ``W0 + dW`` against ``W0`` (``base``: the left
    singular vectors of ``W0`` when already computed). A zero ``W0`` (an output projection block expansion
    inserted as zero) has no size to compare with and no singular vectors: NaN for both."""
    values = singular_values(update)
    zero = not np.any(pretrained)
    return {
        "numerical_rank": numerical_rank(values, update.shape),
        "effective_rank": effective_rank(values),
        "stable_rank": stable_rank(values),
        "relative_norm": math.nan if zero else relative_norm(update, pretrained),
        "top_singular_value": float(values[0]) if len(values) else 0.0,
        "intruders": math.nan if zero else intruder_count(pretrained, pretrained + update, base=base),
        "singular_values": values,
    }
