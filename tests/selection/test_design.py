"""The structured Gram of :mod:`leanfit.selection.design` against the dense ``Z̃ᵀ diag(a) Z̃``.

Tolerance: both sides are float64 sums of the same products in different orders (rank-one
corrections with ``lo``, ``Iᵀa`` and ``Σa`` instead of row by row), and ``lo + δ`` may
differ from the column's other value by an ulp; the difference is a few ulps of the sums of
``|aᵢ zᵢⱼ zᵢₖ|``, so 1e-12 relative to the largest entry.
"""

import numpy as np
import pytest

from leanfit.selection.design import dense_design, design
from leanfit.selection.models import objective_hessian

RTOL = 1e-12


def dense_gram(X: np.ndarray, a: np.ndarray, intercept: bool) -> np.ndarray:
    Z = np.column_stack([X, np.ones(len(X))]) if intercept else X
    return Z.T @ (a[:, None] * Z)


def mixed_matrix(rng: np.random.Generator, n: int = 300) -> np.ndarray:
    """Standardized one-hot columns (minority 1s), a majority-1s column, a constant one,
    a two-valued column with arbitrary values, and continuous columns."""
    codes = rng.integers(0, 4, size=n)
    one_hot = np.eye(4)[codes]
    one_hot = (one_hot - one_hot.mean(0)) / one_hot.std(0)
    majority = (rng.random(n) < 0.8).astype(float)
    constant = np.full(n, 2.5)
    odd = np.where(rng.random(n) < 0.3, -1.7, 0.3)
    continuous = rng.normal(size=(n, 3))
    return np.column_stack([continuous[:, 0], one_hot, majority, constant, odd, continuous[:, 1:]])


def test_detects_the_two_valued_columns():
    X = mixed_matrix(np.random.default_rng(0))
    found = design(X, pair_cost=0)
    assert found.binary.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert found.dense.tolist() == [0, 8, 9]
    assert found.jump[5] == 0.0  # the constant column has no indicator
    assert found.indicator[:, [5]].nnz == 0
    # the 1s mark the minority value: at most half of the rows in every column
    assert (found.indicator.sum(axis=0) <= len(X) / 2).all()
    rebuilt = found.base + found.indicator.toarray() * found.jump
    np.testing.assert_allclose(rebuilt, X[:, found.binary], rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("intercept", [False, True])
@pytest.mark.parametrize("case", ["mixed", "all_dense", "all_binary"])
def test_gram_equals_the_dense_product(intercept, case):
    rng = np.random.default_rng(1)
    X = mixed_matrix(rng)
    if case == "all_dense":
        X = X[:, [0, 8, 9]]
    elif case == "all_binary":
        X = X[:, 1:8]
    a = rng.random(len(X)) * 0.25  # σ(1 − σ) times sample weights, some near 0
    a[::7] = 0.0  # rows with zero sample weight
    gram = design(X, pair_cost=0).gram(a, intercept=intercept)
    expected = dense_gram(X, a, intercept)
    np.testing.assert_allclose(gram, expected, rtol=0, atol=RTOL * np.abs(expected).max())
    np.testing.assert_array_equal(gram, gram.T)


def test_dense_design_is_the_blas_gram():
    rng = np.random.default_rng(2)
    X = mixed_matrix(rng)
    a = rng.random(len(X))
    expected = dense_gram(X, a, True)
    gram = dense_design(X).gram(a, intercept=True)
    np.testing.assert_allclose(gram, expected, rtol=0, atol=RTOL * np.abs(expected).max())


def test_falls_back_to_dense_when_the_structure_does_not_pay():
    """One binary column among six: 5² + c·(1/2)² ≥ 6² for the default pair cost."""
    X = np.random.default_rng(3).normal(size=(50, 6))
    X[:, 0] = np.arange(50) % 2
    assert design(X, pair_cost=0).binary.tolist() == [0]
    assert design(X).binary.size == 0


@pytest.mark.parametrize("intercept", [False, True])
def test_objective_hessian_with_structure_and_sample_weights(intercept):
    rng = np.random.default_rng(4)
    X = mixed_matrix(rng)
    theta = rng.normal(size=X.shape[1] + int(intercept))
    weights = rng.random(len(X)) * 2
    structured = objective_hessian(theta, X, 0.5, weights, structure=design(X, pair_cost=0))
    dense = objective_hessian(theta, X, 0.5, weights)
    np.testing.assert_allclose(structured, dense, rtol=0, atol=RTOL * np.abs(dense).max())
