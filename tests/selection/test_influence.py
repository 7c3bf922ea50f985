"""InfluenceSelector: influence against exact leave-one-out retraining on Adult, and the
mechanics (preprocessing, chunking, surrogate features, index alignment)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from leanfit.selection import (
    DemographicParity,
    EqualOpportunity,
    InfluenceSelector,
    LogisticRegressionL2,
    OvershootRobustness,
    Utility,
    WorstCaseRobustness,
)
from leanfit.selection.influence import make_preprocessor
from leanfit.selection.models import per_sample_gradients
from tests.selection.conftest import make_problem


def test_default_preprocessing_reproduces_the_papers_adult_features(adult):
    split, selector = adult
    # The authors' encoding: 5 numeric + one-hot of 8 categoricals (sex as one 0/1 column).
    assert len(split.train) == 30_162 and len(split.val) == len(split.test) == 7_530
    assert selector.model_.coef_.shape == (102,)
    assert selector.model_.intercept_ == 0.0
    names = list(selector.feature_names_out_)
    assert "sex_Male" in names and "sex_Female" not in names and "fnlwgt" not in names
    Z = selector.transform(split.train.X)
    # Standardized on the training rows: mean 0 and variance 1 up to rounding.
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(Z.std(0), 1, atol=1e-10)


def test_adult_baseline_matches_the_paper(adult):
    split, selector = adult
    pred = selector.predict(split.test.X)
    s = split.test.s.to_numpy()
    # Paper: test accuracy 0.826, DP 0.224 (reported to three decimals).
    assert np.mean(pred == split.test.y) == pytest.approx(0.826, abs=0.0015)
    assert pred[s == 1].mean() - pred[s == 0].mean() == pytest.approx(0.224, abs=0.0015)


def test_influence_predicts_leave_one_out_retraining_on_adult(adult):
    split, selector = adult
    theta = selector.model_.theta_
    objectives = [
        Utility(),
        DemographicParity(),
        OvershootRobustness().prepare(theta, None, None),  # attack fixed at θ̂ for every refit
        EqualOpportunity(),
        WorstCaseRobustness(eps=0.1, norm="linf"),
    ]
    val = (split.val.X, split.val.y)
    groups = {"sensitive_features": "sex", "privileged": "Male"}
    scores = selector.influence(*val, objective=objectives, **groups)
    base = selector.objective_values(*val, objective=objectives, **groups).to_numpy()
    # The points the influence ranks most harmful and most beneficial for the paper's three
    # objectives, plus random ones: 30 to 42 exact refits.
    n = len(scores)
    chosen = set(np.random.default_rng(0).choice(n, 12, replace=False).tolist())
    for name in ["utility", "fairness", "robustness"]:
        order = np.argsort(scores[name].to_numpy())
        chosen |= set(order[:5].tolist()) | set(order[-5:].tolist())
    chosen = sorted(chosen)
    actual = []
    for i in chosen:
        keep = np.ones(n, dtype=bool)
        keep[i] = False
        refit = selector.retrain(keep)  # Newton to 1e-10 from a warm start: exact retraining
        actual.append(refit.objective_values(*val, objective=objectives, **groups) - base)
    actual = pd.DataFrame(actual, columns=scores.columns)
    for name in scores.columns:
        predicted = scores[name].to_numpy()[chosen]
        r = np.corrcoef(predicted, actual[name])[0, 1]
        # The paper reports Pearson 0.99 (utility) and > 0.999 (fairness, robustness); the
        # first-order approximation ignores the change of H when a point is removed.
        assert r >= 0.99, (name, r)
        # Same sign convention: removing a beneficial point raises the cost.
        assert np.sign(predicted[np.argmax(np.abs(predicted))]) == np.sign(
            actual[name].to_numpy()[np.argmax(np.abs(predicted))]
        )


def test_influence_equals_the_dense_formula_and_does_not_depend_on_chunking():
    X, y, _ = make_problem(n=90, d=3, seed=3)
    Xv, yv, sv = make_problem(n=40, d=3, seed=4)
    small = InfluenceSelector(0.5, chunk_size=7).fit(X, y)
    large = InfluenceSelector(0.5, chunk_size=1000).fit(X, y)
    kwargs = {"sensitive_features": sv, "objective": ["utility", "fairness"]}
    chunked = small.influence(Xv, yv, **kwargs)
    whole = large.influence(Xv, yv, **kwargs)
    # Same numbers summed in the same order per row: exactly equal.
    pd.testing.assert_frame_equal(chunked, whole, check_exact=True)
    theta = small.model_.theta_
    grads = per_sample_gradients(theta, X, y)  # (n, p)
    hess = small.model_.hessian(X)
    dense = grads @ np.linalg.solve(hess, Utility().gradient(theta, Xv, yv))
    np.testing.assert_allclose(chunked["utility"], dense, rtol=1e-9, atol=1e-12)


def test_dataframe_index_and_surrogate_features():
    X, y, _ = make_problem(n=70, d=3, seed=8)
    frame = pd.DataFrame(X, columns=["a", "b", "c"], index=[f"row{i}" for i in range(70)])
    selector = InfluenceSelector(1.0).fit(frame, y)
    scores = selector.influence(frame, y)
    assert list(scores.index) == list(frame.index) and list(scores.columns) == ["utility"]

    def embed(rows):
        return np.column_stack([np.tanh(rows), np.asarray(rows)[:, :1] ** 2])

    surrogate = InfluenceSelector(1.0, features=embed).fit(X, y)
    direct = InfluenceSelector(1.0).fit(embed(X), y)
    # Same matrices fed to the same solver: identical results.
    np.testing.assert_allclose(surrogate.influence(X, y), direct.influence(embed(X), y))
    assert surrogate.transform(X).shape == (70, 4)


def test_custom_preprocessor_is_cloned_and_used(adult):
    split, _ = adult
    frame = split.val.X.iloc[:800]
    y = split.val.y.iloc[:800]
    preprocessor = make_preprocessor(frame, drop=["native_country", "education"])
    selector = InfluenceSelector(2.0, preprocessor=preprocessor).fit(frame, y)
    assert not hasattr(preprocessor, "transformers_")  # the argument itself stays unfitted
    names = set(selector.feature_names_out_)
    assert "education_num" in names and "age" in names
    assert "education_Bachelors" not in names and "native_country_Mexico" not in names
    assert selector.influence(frame, y).shape == (800, 1)


def test_retrain_keeps_preprocessing_and_equals_a_fit_on_the_kept_rows():
    X, y, _ = make_problem(n=100, d=3, seed=9)
    selector = InfluenceSelector(0.7).fit(X, y)
    keep = np.arange(100) % 4 != 0
    retrained = selector.retrain(keep)
    direct = LogisticRegressionL2(0.7, fit_intercept=True).fit(X[keep], y[keep])
    # Two Newton solves to 1e-10 of the same strictly convex problem.
    np.testing.assert_allclose(retrained.model_.theta_, direct.theta_, rtol=1e-8, atol=1e-10)
    assert list(retrained.train_index_) == list(np.flatnonzero(keep))
    assert selector.model_.theta_ is not retrained.model_.theta_


def test_prepared_objectives_keep_the_attack_points_of_the_fitted_model():
    X, y, _ = make_problem(n=100, d=3, seed=9)
    Xv, yv, sv = make_problem(n=50, d=3, seed=10)
    selector = InfluenceSelector(0.7).fit(X, y)
    args = {"sensitive_features": sv, "objective": ["fairness", "robustness"]}
    fairness, robustness = selector.prepare_validation(Xv, yv, **args).objectives
    assert fairness == DemographicParity()  # nothing to fix: returned as is
    np.testing.assert_array_equal(robustness.reference, selector.model_.theta_)
    # At θ̂ the prepared objectives are the ones influence and objective_values use.
    pd.testing.assert_series_equal(
        selector.objective_values(Xv, yv, **args),
        selector.objective_values(Xv, yv, sensitive_features=sv, objective=[fairness, robustness]),
    )
    # After retraining, the prepared attack stays that of θ̂ (the cost the influence predicts);
    # the name alone prepares a new attack at the retrained model.
    retrained = selector.retrain(np.arange(100) % 3 != 0)
    fixed = retrained.objective_values(Xv, yv, objective=robustness).iloc[0]
    moved = retrained.objective_values(Xv, yv, objective="robustness").iloc[0]
    theta = retrained.model_.theta_
    assert fixed == robustness.value(theta, retrained.transform(Xv), yv)
    assert fixed != moved


def test_a_label_names_the_influence_column_and_changes_nothing_else():
    X, y, _ = make_problem(n=80, d=3, seed=11)
    Xv, yv, sv = make_problem(n=40, d=3, seed=12)
    selector = InfluenceSelector(1.0).fit(X, y)
    plain = [DemographicParity(absolute=True), EqualOpportunity(absolute=True)]
    labelled = [
        DemographicParity(absolute=True, label="fairness"),
        EqualOpportunity(absolute=True, label="eop"),
    ]
    before = selector.influence(Xv, yv, sensitive_features=sv, objective=plain)
    after = selector.influence(Xv, yv, sensitive_features=sv, objective=labelled)
    assert list(before.columns) == ["fairness_abs", "eop_abs"]
    assert list(after.columns) == ["fairness", "eop"]
    # The same computation: only the column names differ.
    np.testing.assert_array_equal(after.to_numpy(), before.to_numpy())


def test_scikit_learn_estimator_contract():
    preprocessor = make_preprocessor(pd.DataFrame({"a": [1.0, 2.0]}))
    params = {
        "l2_reg": 3.0,
        "fit_intercept": False,
        "preprocessor": preprocessor,
        "random_state": 5,
        "chunk_size": 11,
    }
    selector = InfluenceSelector(**params)
    # Parameters are stored untouched and survive clone; fitted attributes end in "_".
    assert selector.get_params()["preprocessor"] is preprocessor
    copy = clone(selector)
    assert {k: copy.get_params()[k] for k in params if k != "preprocessor"} == {
        k: v for k, v in params.items() if k != "preprocessor"
    }
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(selector))
