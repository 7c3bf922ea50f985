"""Chunked Newton fit and chunked influence against the in-memory InfluenceSelector."""

import numpy as np
import pytest

from leanfit.exceptions import BadInputError
from leanfit.selection import InfluenceSelector, LogisticRegressionL2
from leanfit.selection.models import objective_gradient, objective_hessian
from leanfit.selection.scale import (
    chunk_statistics,
    fit_chunks,
    influence_chunks,
    influence_directions,
)

from .conftest import make_problem


def chunked(X, y, size):
    return lambda: ((X[i : i + size], y[i : i + size]) for i in range(0, len(X), size))


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_chunk_sums_equal_the_full_data_terms(fit_intercept):
    X, y, _ = make_problem(n=50, d=3)
    theta = np.array([0.3, -0.2, 0.5, 0.1][: 3 + fit_intercept])
    parts = [chunk_statistics(theta, X[i : i + 7], y[i : i + 7]) for i in range(0, 50, 7)]
    total = sum(parts[1:], parts[0])
    # λ = 0 gives the data terms; sums in another order agree to rounding (1e-12 relative)
    np.testing.assert_allclose(total.gradient, objective_gradient(theta, X, y, 0.0), rtol=1e-12)
    np.testing.assert_allclose(total.hessian, objective_hessian(theta, X, 0.0), rtol=1e-12)
    assert total.n_rows == 50 and total.n_positive == int(y.sum())


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_chunked_fit_and_influence_match_the_selector(fit_intercept):
    X, y, _ = make_problem(n=300, d=5, seed=3)
    X_val, y_val, s_val = make_problem(n=80, d=5, seed=4)
    selector = InfluenceSelector(0.5, fit_intercept=fit_intercept, preprocessor=None).fit(X, y)
    model = fit_chunks(chunked(X, y, 64), l2_reg=0.5, fit_intercept=fit_intercept)
    # Both Newton runs stop at step <= 1e-10 of a strictly convex objective: same optimum up
    # to that tolerance and the rounding of differently ordered sums.
    np.testing.assert_allclose(model.theta_, selector.model_.theta_, rtol=1e-9, atol=1e-12)
    objectives = ["utility", "fairness"]
    directions, names = influence_directions(
        model, X_val, y_val, objective=objectives, sensitive=s_val
    )
    streamed = np.vstack(list(influence_chunks(model, chunked(X, y, 64)(), directions)))
    expected = selector.influence(X_val, y_val, sensitive_features=s_val, objective=objectives)
    assert names == list(expected.columns)
    np.testing.assert_allclose(streamed, expected.to_numpy(), rtol=1e-8, atol=1e-12)


def test_fitted_model_works_like_a_fitted_estimator():
    X, y, _ = make_problem(n=120, d=3, seed=1)
    model = fit_chunks(chunked(X, y, 50), l2_reg=1.0)
    reference = LogisticRegressionL2(1.0).fit(X, y)
    np.testing.assert_array_equal(model.predict(X), reference.predict(X))
    v = np.arange(3.0)
    # same Hessian up to the optimum's tolerance
    np.testing.assert_allclose(model.solve_hessian(v), reference.solve_hessian(v), rtol=1e-8)


def test_bad_chunks_are_rejected():
    X, y, _ = make_problem(n=40, d=2)
    with pytest.raises(BadInputError, match="both classes"):
        fit_chunks(chunked(X, np.zeros(40), 16))
    with pytest.raises(BadInputError, match="no rows"):
        fit_chunks(lambda: iter(()))
    with pytest.raises(BadInputError, match="y chunk"):
        fit_chunks(chunked(X, 2 * y, 16))
