"""Trimming: budgets, keep-masks, retraining, curves, iterative mode."""

import numpy as np
import pandas as pd
import pytest

from leanfit.exceptions import BadInputError
from leanfit.selection import (
    InfluenceSelector,
    OvershootRobustness,
    iterative_trim,
    random_trim,
    retrain_and_evaluate,
    trim,
    trimming_curve,
)
from leanfit.selection.policies.trimming import resolve_budget, summarize_curve
from tests.selection.conftest import make_problem


@pytest.mark.parametrize(("budget", "count"), [(3, 3), (0.25, 5), (0.01, 1), (19, 19)])
def test_budget_is_a_count_or_a_fraction(budget, count):
    assert resolve_budget(budget, 20) == count


@pytest.mark.parametrize("budget", [0, 20, 25, -1, 0.0, 1.0, 1.5, -0.2, True, "5", None])
def test_budget_outside_the_allowed_range_is_refused(budget):
    with pytest.raises(BadInputError, match="budget"):
        resolve_budget(budget, 20)


def test_trim_removes_the_most_negative_values_without_modifying_input():
    influence = pd.Series([0.5, -2.0, 0.1, -0.3, -1.0, 2.0], index=list("abcdef"))
    before = influence.copy()
    keep = trim(influence, 2)
    np.testing.assert_array_equal(keep, [True, False, True, True, False, True])
    pd.testing.assert_series_equal(influence, before)
    assert keep.dtype == bool
    # only_harmful never removes a beneficial sample, even with a larger budget.
    np.testing.assert_array_equal(~trim(influence, 5, only_harmful=True), influence.to_numpy() < 0)
    with pytest.raises(BadInputError, match="one column"):
        trim(pd.DataFrame({"a": influence, "b": influence}), 2)
    with pytest.raises(BadInputError, match="influence"):
        trim(np.array([1.0, np.nan, 2.0]), 1)


def test_random_trim_is_seeded_and_removes_the_budget():
    keep = random_trim(100, 0.1, random_state=4)
    assert keep.sum() == 90
    np.testing.assert_array_equal(keep, random_trim(100, 0.1, random_state=4))


@pytest.fixture
def fitted():
    X, y, s = make_problem(n=470, d=3, seed=11)
    parts = np.split(np.arange(470), [200, 320])  # train, validation, test
    selector = InfluenceSelector(1.0, random_state=0).fit(X[parts[0]], y[parts[0]])
    return selector, *((X[p], y[p], s[p]) for p in parts[1:])


def test_retrain_and_evaluate_reports_the_removed_count(fitted):
    selector, (Xv, yv, _), (Xt, yt, st) = fitted
    scores = selector.influence(Xv, yv, objective="utility")
    keep = trim(scores, 10)
    result = retrain_and_evaluate(selector, keep, Xt, yt, sensitive_features=st, eps=0.1)
    assert result["n_removed"] == 10
    assert {"accuracy", "dp", "robust_acc", "robust_acc_linf"} <= set(result)
    # Removing the points that most raise the validation loss lowers it (first order is
    # accurate for a few points out of 200).
    retrained = selector.retrain(keep)
    assert retrained.objective_values(Xv, yv).iloc[0] < selector.objective_values(Xv, yv).iloc[0]


def test_trimming_curve_is_tidy_and_random_rows_are_seeded(fitted):
    selector, (Xv, yv, sv), (Xt, yt, st) = fitted
    kwargs = {"sensitive_features_val": sv, "sensitive_features_test": st, "progress": False}
    curve = trimming_curve(
        selector,
        Xv,
        yv,
        Xt,
        yt,
        budgets=[0.05, 10],
        n_random=3,
        objective=["fairness", "utility"],
        **kwargs,
    )
    assert set(curve["method"]) == {"influence:fairness", "influence:utility", "random"}
    assert sorted(set(curve["n_removed"])) == [0, 10]  # 0.05 · 200 = 10 = the count
    assert curve["seed"].notna().sum() == 3 * 2
    assert curve.loc[curve.method == "random", "val_objective"].isna().all()
    again = trimming_curve(selector, Xv, yv, Xt, yt, budgets=[10], n_random=3, **kwargs)
    np.testing.assert_array_equal(
        curve.loc[curve.method == "random", "accuracy"],
        again.loc[again.method == "random", "accuracy"],
    )
    summary = summarize_curve(curve)
    random_rows = summary[summary.method == "random"]
    assert list(random_rows["n_seeds"]) == [3, 3]
    assert random_rows["accuracy_std"].iloc[0] == 0  # budget 0: the same model every time


def test_stop_at_zero_ends_the_curve_once_the_validation_gap_changes_sign(fitted):
    selector, (Xv, yv, sv), (Xt, yt, st) = fitted
    start = selector.objective_values(Xv, yv, sensitive_features=sv, objective="fairness")
    curve = trimming_curve(
        selector,
        Xv,
        yv,
        Xt,
        yt,
        budgets=list(range(5, 100, 5)),
        objective="fairness",
        sensitive_features_val=sv,
        sensitive_features_test=st,
        n_random=0,
        stop_at_zero=True,
        progress=False,
    )
    gaps = curve["val_objective"].to_numpy()
    assert np.sign(gaps[0]) == np.sign(start.iloc[0])
    # Every point but the last keeps the initial sign; the last crossed zero (removing up
    # to half the data by fairness influence does close a gap this size).
    assert np.all(np.sign(gaps[:-1]) == np.sign(gaps[0]))
    assert np.sign(gaps[-1]) != np.sign(gaps[0])
    assert curve["n_removed"].max() < 95


def test_iterative_trim_with_one_step_equals_one_shot_trim(fitted):
    selector, (Xv, yv, _), _ = fitted
    one_shot = trim(selector.influence(Xv, yv), 12)
    np.testing.assert_array_equal(iterative_trim(selector, Xv, yv, 12, step=12), one_shot)
    stepped = iterative_trim(selector, Xv, yv, 12, step=4)
    assert stepped.sum() == 200 - 12
    with pytest.raises(BadInputError, match="step"):
        iterative_trim(selector, Xv, yv, 12, step=0)


def test_precomputed_influence_gives_the_curve_of_trim(fitted):
    selector, (Xv, yv, sv), (Xt, yt, st) = fitted
    kwargs = {
        "budgets": [7, 15],
        "objective": ["utility", "fairness"],
        "sensitive_features_val": sv,
        "sensitive_features_test": st,
        "n_random": 0,
        "progress": False,
    }
    scores = selector.influence(Xv, yv, sensitive_features=sv, objective=["utility", "fairness"])
    given = trimming_curve(selector, Xv, yv, Xt, yt, influence=scores, **kwargs)
    computed = trimming_curve(selector, Xv, yv, Xt, yt, **kwargs)
    # The same scores up to the rounding of one Hessian solve with one or two right-hand
    # sides; no ties on continuous data, so the removal orders and the retrained models match.
    pd.testing.assert_frame_equal(given, computed, rtol=1e-9)
    point = given[(given.method == "influence:fairness") & (given.n_removed == 15)].iloc[0]
    direct = retrain_and_evaluate(
        selector, trim(scores["fairness"], 15), Xt, yt, sensitive_features=st
    )
    assert {k: point[k] for k in direct} == direct  # one computation, not a re-estimate
    with pytest.raises(BadInputError, match="influence"):
        trimming_curve(selector, Xv, yv, Xt, yt, influence=scores[["utility"]], **kwargs)
    with pytest.raises(BadInputError, match="iterative_step"):
        trimming_curve(selector, Xv, yv, Xt, yt, influence=scores, iterative_step=5, **kwargs)


def test_robustness_curve_keeps_the_attack_of_the_untrimmed_model(fitted):
    selector, (Xv, yv, _), (Xt, yt, st) = fitted
    curve = trimming_curve(
        selector, Xv, yv, Xt, yt, budgets=[20], objective="robustness", n_random=0,
        sensitive_features_test=st, progress=False,
    )  # fmt: skip
    fixed = OvershootRobustness().prepare(selector.model_.theta_, None, None)
    keep = trim(selector.influence(Xv, yv, objective="robustness"), 20)
    retrained = selector.retrain(keep)
    expected = retrained.objective_values(Xv, yv, objective=fixed).iloc[0]
    moving = retrained.objective_values(Xv, yv, objective="robustness").iloc[0]
    # The same computation; the attack re-aimed at the retrained model gives another value.
    assert curve["val_objective"].iloc[-1] == pytest.approx(expected, rel=1e-12)
    assert abs(moving - expected) > 1e-3 * expected
    # Removing the 20 most harmful points lowers the cost the influence was computed for.
    assert expected < curve["val_objective"].iloc[0]
