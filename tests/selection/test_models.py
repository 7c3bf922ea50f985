"""LogisticRegressionL2: derivatives against finite differences, optimum against scikit-learn."""

import numpy as np
import pytest
from scipy.linalg import cho_solve
from scipy.special import expit
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from leanfit.exceptions import NotFittedError
from leanfit.selection import InfluenceSelector, InfluenceTree, LogisticRegressionL2
from leanfit.selection.models import (
    objective,
    objective_gradient,
    objective_hessian,
    per_sample_gradients,
)
from tests.selection.conftest import make_problem

L2 = 0.8
# Central differences have truncation error O(h²·f''') and rounding error O(ε·|f|/h); with
# h = 1e-5 on losses of size ~50 both are below 1e-7, so 1e-6 (relative to the largest
# entry) separates a correct derivative from any real mistake (which is O(1)).
STEP = 1e-5
FD_RTOL = 1e-6


def numerical_gradient(f, theta):
    grad = np.empty_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = STEP
        grad[j] = (f(theta + e) - f(theta - e)) / (2 * STEP)
    return grad


def numerical_jacobian(g, theta):
    return np.column_stack(
        [numerical_gradient(lambda t, k=k: g(t)[k], theta) for k in range(theta.size)]
    ).T


@pytest.fixture(params=[False, True], ids=["no-intercept", "intercept"])
def problem(request):
    X, y, _ = make_problem()
    rng = np.random.default_rng(1)
    theta = rng.normal(scale=0.5, size=X.shape[1] + int(request.param))
    weights = rng.uniform(0.5, 2.0, size=X.shape[0])
    return X, y, theta, weights


def test_gradient_matches_finite_differences(problem):
    X, y, theta, weights = problem
    analytic = objective_gradient(theta, X, y, L2, weights)
    numeric = numerical_gradient(lambda t: objective(t, X, y, L2, weights), theta)
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=FD_RTOL * np.abs(numeric).max())


def test_hessian_matches_finite_differences_of_gradient(problem):
    X, y, theta, weights = problem
    analytic = objective_hessian(theta, X, L2, weights)
    numeric = numerical_jacobian(lambda t: objective_gradient(t, X, y, L2, weights), theta)
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=FD_RTOL * np.abs(numeric).max())
    np.testing.assert_array_equal(analytic, analytic.T)


def test_per_sample_gradients_sum_to_the_unregularized_gradient(problem):
    X, y, theta, _ = problem
    d = X.shape[1]
    grads = per_sample_gradients(theta, X, y)
    assert grads.shape == (X.shape[0], theta.size)
    penalty = np.zeros_like(theta)
    penalty[:d] = L2 * theta[:d]  # the intercept is not penalized
    # Same floating-point sums in a different order: agreement to rounding.
    np.testing.assert_allclose(
        grads.sum(0) + penalty, objective_gradient(theta, X, y, L2), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_fit_reaches_the_same_optimum_as_scikit_learn(fit_intercept):
    X, y, _ = make_problem(n=200, d=6)
    ours = LogisticRegressionL2(L2, fit_intercept=fit_intercept).fit(X, y)
    # scikit-learn minimizes C·Σℓ + ½‖w‖², i.e. our objective divided by λ when C = 1/λ.
    ref = LogisticRegression(
        C=1 / L2, fit_intercept=fit_intercept, tol=1e-12, max_iter=10_000, solver="newton-cholesky"
    ).fit(X, y)
    # Both solvers converge to 1e-10 or better; 1e-7 leaves room for scikit-learn's
    # own stopping rule on a gradient scaled by 1/n.
    np.testing.assert_allclose(ours.coef_, ref.coef_.ravel(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(
        ours.intercept_, ref.intercept_[0] if fit_intercept else 0.0, atol=1e-8
    )
    grad = objective_gradient(ours.theta_, X, y, L2)
    assert np.abs(grad).max() < 1e-8  # stationarity at Newton precision


def test_unpenalized_intercept_matches_mean_prediction_to_mean_label():
    # ∂L/∂b = Σ(σ(zᵢ) − yᵢ) = 0 at the optimum only if b is not penalized.
    X, y, _ = make_problem(n=150)
    model = LogisticRegressionL2(5.0, fit_intercept=True).fit(X, y)
    assert model.predict_proba(X)[:, 1].sum() == pytest.approx(y.sum(), abs=1e-8)


def test_solve_hessian_and_prediction_conventions():
    X, y, _ = make_problem(n=120)
    model = LogisticRegressionL2(L2, fit_intercept=True).fit(X, y)
    v = np.random.default_rng(3).normal(size=(X.shape[1] + 1, 3))
    # Cholesky and LU solves of a well-conditioned 5×5 system agree to rounding.
    np.testing.assert_allclose(
        model.solve_hessian(v), np.linalg.solve(model.hessian(X), v), rtol=1e-10
    )
    proba = model.predict_proba(X)
    z = model.decision_function(X)
    np.testing.assert_allclose(proba[:, 1], expit(X @ model.coef_ + model.intercept_))
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(model.predict(X), (z > 0).astype(int))
    assert model.score(X, y) == np.mean(model.predict(X) == y)


def test_warm_start_converges_to_the_same_optimum_in_fewer_steps():
    X, y, _ = make_problem(n=300)
    cold = LogisticRegressionL2(L2).fit(X, y)
    warm = clone(cold).set_params(warm_start=True)
    warm.theta_ = cold.theta_.copy()
    warm.fit(X[1:], y[1:])
    fresh = LogisticRegressionL2(L2).fit(X[1:], y[1:])
    np.testing.assert_allclose(warm.theta_, fresh.theta_, rtol=1e-9, atol=1e-12)
    assert warm.n_iter_ < fresh.n_iter_


def test_unfitted_model_raises_not_fitted():
    with pytest.raises(NotFittedError):
        LogisticRegressionL2().predict(np.zeros((2, 2)))


def test_refit_after_removing_rows_needs_one_hessian(monkeypatch):
    """Chord steps on the old Hessian factor reach the new optimum; only the factor at the
    end is new (what influence functions then use)."""
    from leanfit.selection import models

    X, y, _ = make_problem(n=400)
    model = LogisticRegressionL2(L2).fit(X, y)
    hessians = []
    original = models.objective_hessian
    monkeypatch.setattr(
        models, "objective_hessian", lambda *a, **k: hessians.append(1) or original(*a, **k)
    )
    keep = np.arange(400) >= 8  # 2 % of the rows removed
    model.set_params(warm_start=True).fit(X[keep], y[keep])
    assert len(hessians) == 1 and model.n_iter_ == 0
    fresh = LogisticRegressionL2(L2).fit(X[keep], y[keep])
    # Both stop at ‖Δθ‖∞ ≤ 1e-10 · max(1, ‖θ‖∞): equal to that tolerance.
    np.testing.assert_allclose(model.theta_, fresh.theta_, rtol=1e-9, atol=1e-10)
    # The factor is of the Hessian at θ, which moved by ~1e-10: the inverses agree far
    # beyond 1e-7 (a stale factor, of the 400-row Hessian, is off by up to 17 %).
    inverse = cho_solve(model.hessian_cholesky_, np.eye(X.shape[1]))
    expected = cho_solve(fresh.hessian_cholesky_, np.eye(X.shape[1]))
    np.testing.assert_allclose(inverse, expected, rtol=1e-7)


#: InfluenceSelector's labels are 0/1 with 1 the favourable outcome: its fairness objectives
#: need to know which label is favourable, so it refuses others rather than guess. These
#: checks train on labels {1, 2} or {"one", "two"}; every other check passes.
SELECTOR_LABEL_CHECKS = {
    name: "labels must be 0/1 (1 = favourable outcome); this check uses other labels"
    for name in (
        "check_estimators_dtypes",
        "check_classifier_data_not_an_array",
        "check_classifiers_classes",
        "check_fit2d_1feature",
    )
}


def expected_failures(estimator):
    return SELECTOR_LABEL_CHECKS if isinstance(estimator, InfluenceSelector) else {}


@parametrize_with_checks(
    [LogisticRegressionL2(), InfluenceTree(), InfluenceSelector()],
    expected_failed_checks=expected_failures,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_unfitted_model_raises_scikit_learns_not_fitted_error_too():
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    with pytest.raises(SklearnNotFittedError):
        LogisticRegressionL2().decision_function(np.zeros((2, 2)))


def test_any_two_labels_are_classes_and_0_1_labels_stay_integers():
    X, y, _ = make_problem(n=200)
    named = np.where(y == 1, "granted", "denied")
    by_name = LogisticRegressionL2(L2).fit(X, named)
    by_code = LogisticRegressionL2(L2).fit(X, y)
    # "granted" sorts after "denied": it is the positive class, as 1 is.
    np.testing.assert_array_equal(by_name.theta_, by_code.theta_)
    assert by_name.classes_.tolist() == ["denied", "granted"]
    assert by_code.classes_.tolist() == [0, 1] and by_code.predict(X).dtype == np.int64
    np.testing.assert_array_equal(by_name.predict(X) == "granted", by_code.predict(X) == 1)
