"""Fairness metrics against fairlearn; robust accuracy against explicit attacks."""

import fairlearn.metrics as fm
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from leanfit.exceptions import BadInputError
from leanfit.selection import (
    LogisticRegressionL2,
    accuracy,
    demographic_parity_difference,
    equal_opportunity_difference,
    evaluate,
    robust_accuracy,
)
from leanfit.selection.attacks import overshoot_attack
from tests.selection.conftest import make_problem


@pytest.fixture
def predictions():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 2, 500)
    y_pred = np.where(rng.random(500) < 0.8, y_true, 1 - y_true)
    groups = rng.choice(np.array(["a", "b", "c"]), 500)
    return y_true, y_pred, groups


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (demographic_parity_difference, fm.demographic_parity_difference),
        (equal_opportunity_difference, fm.equal_opportunity_difference),
    ],
)
@pytest.mark.parametrize("n_groups", [2, 3])
def test_absolute_differences_equal_fairlearn(ours, theirs, n_groups, predictions):
    y_true, y_pred, groups = predictions
    groups = np.where(groups == "c", "a", groups) if n_groups == 2 else groups
    # Both compute the same group means: identical up to rounding.
    assert ours(y_true, y_pred, sensitive_features=groups) == pytest.approx(
        theirs(y_true, y_pred, sensitive_features=groups), abs=1e-12
    )


def test_signed_differences_are_privileged_minus_unprivileged(predictions):
    y_true, y_pred, groups = predictions
    s = (groups == "a").astype(int)
    dp = y_pred[s == 1].mean() - y_pred[s == 0].mean()
    positive = y_true == 1
    eop = y_pred[positive & (s == 1)].mean() - y_pred[positive & (s == 0)].mean()
    assert demographic_parity_difference(y_true, y_pred, sensitive_features=s, signed=True) == (
        pytest.approx(dp)
    )
    assert equal_opportunity_difference(y_true, y_pred, sensitive_features=s, signed=True) == (
        pytest.approx(eop)
    )
    # Naming the privileged group reverses the sign when it is the other one.
    named = np.where(s == 1, "x", "y")
    flipped = demographic_parity_difference(
        y_true, y_pred, sensitive_features=named, signed=True, privileged="y"
    )
    assert flipped == pytest.approx(-dp)
    assert accuracy(y_true, y_pred) == pytest.approx(np.mean(y_true == y_pred))


def test_signed_difference_needs_a_privileged_value_for_non_binary_labels(predictions):
    y_true, y_pred, groups = predictions
    with pytest.raises(BadInputError, match="privileged"):
        demographic_parity_difference(
            y_true, y_pred, sensitive_features=np.where(groups == "a", "a", "b"), signed=True
        )


@pytest.fixture
def fitted():
    X, y, s = make_problem(n=300, d=4, seed=2)
    return LogisticRegressionL2(1.0, fit_intercept=True).fit(X, y), X, y, s


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_worst_case_robust_accuracy_matches_the_explicit_attack(norm, fitted):
    model, X, y, _ = fitted
    eps = 0.2
    sign = 2 * y - 1
    w = model.coef_
    direction = w / np.linalg.norm(w) if norm == "l2" else np.sign(w)
    attacked = X - eps * sign[:, None] * direction
    explicit = np.mean(model.predict(attacked) == y)
    assert robust_accuracy(model, X, y, attack=norm, eps=eps) == pytest.approx(explicit)
    # eps = 0 is plain accuracy; a larger ball can only hurt.
    assert robust_accuracy(model, X, y, attack=norm, eps=0.0) == pytest.approx(model.score(X, y))
    assert robust_accuracy(model, X, y, attack=norm, eps=2 * eps) <= explicit


def test_overshoot_robust_accuracy_of_the_reference_is_its_error_rate(fitted):
    model, X, y, _ = fitted
    # The attack flips every decision of the reference model (z̃ = −0.3 z).
    assert robust_accuracy(model, X, y) == pytest.approx(1 - model.score(X, y))
    # scikit-learn's coef_ (1, d) / intercept_ (1,) shapes are accepted as well.
    ref = LogisticRegression(C=1.0).fit(X, y)
    assert robust_accuracy(ref, X, y) == pytest.approx(1 - ref.score(X, y))
    # Another model is evaluated on the points attacked from the reference.
    other = LogisticRegressionL2(50.0, fit_intercept=True).fit(X, y)
    attacked = overshoot_attack(X, model.coef_, model.intercept_)
    expected = np.mean(other.predict(attacked) == y)
    assert robust_accuracy(other, X, y, reference=model) == pytest.approx(expected)


def test_evaluate_collects_every_metric(fitted):
    model, X, y, s = fitted
    result = evaluate(model, X, y, sensitive_features=s, eps=0.1)
    assert set(result) == {
        "accuracy",
        "dp",
        "dp_abs",
        "eop",
        "eop_abs",
        "robust_acc",
        "robust_acc_l2",
        "robust_acc_linf",
    }
    assert result["dp_abs"] == pytest.approx(abs(result["dp"]))
    assert result["accuracy"] == pytest.approx(model.score(X, y))
    with pytest.raises(BadInputError, match="attack"):
        robust_accuracy(model, X, y, attack="l1", eps=0.1)
    with pytest.raises(BadInputError, match="eps"):
        robust_accuracy(model, X, y, attack="l2")
