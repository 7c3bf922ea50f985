"""Bad input is refused with a BadInputError that names the argument."""

import numpy as np
import pandas as pd
import pytest

from leanfit.exceptions import BadInputError, NotFittedError
from leanfit.selection import InfluenceSelector, LogisticRegressionL2, trim
from tests.selection.conftest import make_problem


@pytest.fixture
def data():
    X, y, s = make_problem(n=50, d=3)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame["group"] = np.where(s == 1, "M", "F")
    return frame, y, s


@pytest.fixture
def selector(data):
    frame, y, _ = data
    return InfluenceSelector(1.0).fit(frame, y)


@pytest.mark.parametrize(
    ("mutate", "argument"),
    [
        (lambda X, y: (X, np.zeros_like(y)), "both classes"),
        (lambda X, y: (X, np.where(y == 1, 2, 0)), "y must hold 0/1"),
        (lambda X, y: (X, np.where(y == 1, "yes", "no")), "y must hold 0/1"),
        (lambda X, y: (X.iloc[:-3], y), "y must have one entry per row of X"),
        (lambda X, y: (X.assign(a=X["a"].where(X.index != 4)), y), "X has missing values"),
    ],
    ids=["single-class", "labels-not-0-1", "string-labels", "lengths", "nan"],
)
def test_fit_refuses(mutate, argument, data):
    frame, y, _ = data
    X_bad, y_bad = mutate(frame, y)
    with pytest.raises(BadInputError, match=argument):
        InfluenceSelector(1.0).fit(X_bad, y_bad)


def test_arrays_must_be_numeric_and_finite(data):
    frame, y, _ = data
    with pytest.raises(BadInputError, match="X must hold numbers"):
        InfluenceSelector(1.0).fit(frame.to_numpy(), y)  # object array with strings
    X = frame[["a", "b", "c"]].to_numpy(copy=True)
    X[2, 1] = np.inf
    with pytest.raises(BadInputError, match="X must be finite"):
        LogisticRegressionL2().fit(X, y)
    with pytest.raises(BadInputError, match="numeric"):
        InfluenceSelector(1.0, preprocessor=None).fit(frame, y)


@pytest.mark.parametrize(
    ("sensitive", "match"),
    [
        (None, "sensitive_features is required"),
        ("nonexistent", "sensitive_features must be a column of X_val"),
        (np.ones(50), "sensitive_features must have exactly two groups"),
        (np.r_[np.ones(25), np.full(25, np.nan)], "sensitive_features must not have missing"),
        (np.ones(49), "sensitive_features must have one entry per row"),
        ("group", "privileged"),  # "M"/"F" without saying which is privileged
    ],
    ids=["missing", "unknown-column", "constant", "nan", "length", "unnamed-privileged"],
)
def test_influence_refuses_bad_sensitive_features(sensitive, match, data, selector):
    frame, y, _ = data
    with pytest.raises(BadInputError, match=match):
        selector.influence(frame, y, sensitive_features=sensitive, objective="fairness")


def test_influence_refuses_bad_validation_data(data, selector):
    frame, y, _ = data
    with pytest.raises(BadInputError, match="y_val must have one entry per row"):
        selector.influence(frame, y[:-1])
    with pytest.raises(BadInputError, match="objective"):
        selector.influence(frame, y, objective="accuracy")
    with pytest.raises(BadInputError, match="privileged must be one of"):
        selector.influence(
            frame, y, sensitive_features="group", privileged="X", objective="fairness"
        )
    scores = selector.influence(
        frame, y, sensitive_features="group", privileged="M", objective="fairness"
    )
    assert scores.shape == (50, 1)


@pytest.mark.parametrize("budget", [0.0, 1.0, 1.2, -0.1, 0, 50, 51])
def test_trim_refuses_budgets_outside_the_range(budget):
    with pytest.raises(BadInputError, match="budget"):
        trim(np.linspace(-1, 1, 50), budget)


def test_bad_parameters_and_unfitted_use(data):
    frame, y, _ = data
    with pytest.raises(BadInputError, match="l2_reg"):
        InfluenceSelector(-1.0).fit(frame, y)
    with pytest.raises(BadInputError, match="preprocessor"):
        InfluenceSelector(preprocessor="standard").fit(frame, y)
    with pytest.raises(BadInputError, match="chunk_size"):
        InfluenceSelector(chunk_size=0).fit(frame, y)
    with pytest.raises(NotFittedError):
        InfluenceSelector().influence(frame, y)
    with pytest.raises(BadInputError, match="keep"):
        InfluenceSelector().fit(frame, y).retrain(np.ones(10, dtype=bool))
