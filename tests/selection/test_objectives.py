"""Every validation objective: gradient against finite differences, value against its
definition, attack closed forms against explicit perturbations."""

import numpy as np
import pytest
from scipy.special import expit

from leanfit.exceptions import BadInputError
from leanfit.selection import (
    DemographicParity,
    EqualOpportunity,
    OvershootRobustness,
    Utility,
    WorstCaseRobustness,
)
from leanfit.selection.attacks import overshoot_attack, worst_case_margins
from leanfit.selection.objectives import resolve_objectives
from tests.selection.conftest import make_problem
from tests.selection.test_models import FD_RTOL, numerical_gradient

OBJECTIVES = [
    Utility(),
    DemographicParity(),
    DemographicParity(absolute=True),
    EqualOpportunity(),
    EqualOpportunity(absolute=True),
    OvershootRobustness(),
    WorstCaseRobustness(eps=0.3, norm="l2"),
    WorstCaseRobustness(eps=0.3, norm="linf"),
]


@pytest.fixture(params=[False, True], ids=["no-intercept", "intercept"])
def validation(request):
    X, y, s = make_problem(n=80, d=5, seed=4)
    theta = np.random.default_rng(5).normal(scale=0.6, size=X.shape[1] + int(request.param))
    return X, y, s, theta


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_gradient_matches_finite_differences(objective, validation):
    X, y, s, theta = validation
    # The overshoot points are fixed at a reference θ̂; differentiate only through θ.
    prepared = objective.prepare(theta + 0.1, X, y, s)
    analytic = prepared.gradient(theta, X, y, s)
    numeric = numerical_gradient(lambda t: prepared.value(t, X, y, s), theta)
    assert analytic.shape == theta.shape
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=FD_RTOL * np.abs(numeric).max())


def test_values_follow_their_definitions(validation):
    X, y, s, theta = validation
    w, b = theta[: X.shape[1]], (theta[-1] if theta.size > X.shape[1] else 0.0)
    p = expit(X @ w + b)
    dp = p[s == 1].mean() - p[s == 0].mean()
    eop = p[(s == 1) & (y == 1)].mean() - p[(s == 0) & (y == 1)].mean()
    log_loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum()
    # Same quantities computed two ways (stable logaddexp vs. direct logs): rounding only.
    assert Utility().value(theta, X, y) == pytest.approx(log_loss, rel=1e-12)
    assert DemographicParity().value(theta, X, y, s) == pytest.approx(dp, rel=1e-12)
    assert DemographicParity(absolute=True).value(theta, X, y, s) == pytest.approx(abs(dp))
    assert EqualOpportunity().value(theta, X, y, s) == pytest.approx(eop, rel=1e-12)


def test_overshoot_attack_flips_the_reference_decisions():
    X, _, _ = make_problem(n=50)
    w, b = np.array([0.5, -1.0, 2.0, 0.1]), 0.3
    attacked = overshoot_attack(X, w, b, factor=1.3)
    # wᵀx̃ + b = (1 − 1.3)(wᵀx + b) exactly, up to rounding.
    np.testing.assert_allclose(attacked @ w + b, -0.3 * (X @ w + b), atol=1e-12)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_worst_case_margin_is_attained_by_the_explicit_perturbation(norm):
    X, y, _ = make_problem(n=50)
    w, b, eps = np.array([0.5, -1.0, 2.0, 0.1]), 0.3, 0.25
    sign = 2 * y - 1
    direction = w / np.linalg.norm(w) if norm == "l2" else np.sign(w)
    # The minimizer of y±·wᵀδ over the ball: δ = −ε·y±·direction (it lies on the sphere).
    delta = -eps * sign[:, None] * direction
    ball = np.linalg.norm(delta, 2 if norm == "l2" else np.inf, axis=1)
    np.testing.assert_allclose(ball, eps)
    explicit = sign * ((X + delta) @ w + b)
    np.testing.assert_allclose(worst_case_margins(X, y, w, b, eps, norm), explicit, atol=1e-12)
    # No random point of the ball does better than the closed form.
    rng = np.random.default_rng(0)
    for _ in range(20):
        other = rng.normal(size=X.shape)
        other *= eps / np.linalg.norm(other, 2 if norm == "l2" else np.inf, axis=1)[:, None]
        assert np.all(sign * ((X + other) @ w + b) >= explicit - 1e-12)


def test_overshoot_needs_a_reference_and_fairness_needs_groups():
    X, y, s = make_problem()
    theta = np.ones(X.shape[1])
    with pytest.raises(BadInputError, match="reference"):
        OvershootRobustness().value(theta, X, y)
    with pytest.raises(BadInputError, match="sensitive_features"):
        DemographicParity().value(theta, X, y, None)
    with pytest.raises(BadInputError, match="both groups"):
        EqualOpportunity().value(theta, X, y, np.where(y == 1, 1, s))


def test_resolve_objectives_by_name_and_rejects_unknown_or_duplicates():
    names = [o.name for o in resolve_objectives(["utility", "fairness", "eop", "robustness"])]
    assert names == ["utility", "fairness", "eop", "robustness"]
    with pytest.raises(BadInputError, match="objective"):
        resolve_objectives("accuracy")
    with pytest.raises(BadInputError, match="distinct"):
        resolve_objectives(["fairness", "dp"])
    with pytest.raises(BadInputError, match="eps"):
        WorstCaseRobustness(eps=-1.0)
