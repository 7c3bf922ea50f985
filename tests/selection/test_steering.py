"""Strategies and the budget chosen on validation (leanfit.selection.policies.steering)."""

import numpy as np
import pandas as pd
import pytest

from leanfit.exceptions import BadInputError
from leanfit.selection import constrained_trim, pareto_trim, trim
from leanfit.selection.policies.steering import (
    AUTO_FRACTIONS,
    auto_counts,
    choose_budget,
    gap_standard_error,
    strategy_keep,
)


def curve(rows):
    """A validation curve from (count, accuracy, dp) triples; n = 1,000 training rows."""
    frame = pd.DataFrame(rows, columns=["n_removed", "accuracy", "dp"])
    return frame.assign(
        budget=frame.n_removed / 1000, rows_removed=frame.n_removed, dp_abs=frame.dp.abs()
    )


# Untrimmed: accuracy 0.80, DP 0.20. The gap falls with the budget, and accuracy with it.
CURVE = curve(
    [
        (0, 0.80, 0.20),
        (10, 0.800, 0.15),
        (20, 0.795, 0.08),
        (40, 0.790, 0.05),  # drop 0.01 exactly: admissible at max_accuracy_drop=0.01
        (80, 0.770, -0.01),
        (160, 0.740, -0.10),
    ]
)


def test_lowest_gap_within_the_accuracy_limit():
    choice = choose_budget(CURVE, max_accuracy_drop=0.01)
    assert (choice.n_removed, choice.rule) == (40, "lowest-gap")
    assert list(choice.curve.admissible) == [False, True, True, True, False, False]
    assert list(choice.curve.chosen) == [False, False, False, True, False, False]
    assert "0.2000 → 0.0500" in choice.reason and "0.010" in choice.reason
    # A larger allowance reaches the smallest gap, 0.01 at 80 rows (not -0.10 at 160: |DP|).
    assert choose_budget(CURVE, max_accuracy_drop=0.1).n_removed == 80


def test_target_gap_takes_the_smallest_budget_reaching_it():
    choice = choose_budget(CURVE, max_accuracy_drop=0.05, target_dp=0.1)
    assert (choice.n_removed, choice.rule) == (20, "target")
    # Out of reach within the limit: the lowest gap there, and the report says so.
    missed = choose_budget(CURVE, max_accuracy_drop=0.01, target_dp=0.02)
    assert (missed.n_removed, missed.rule) == (40, "target-missed")
    assert "no budget on the grid reaches the target" in missed.reason
    # Already met untrimmed: nothing is removed.
    assert choose_budget(CURVE, target_dp=0.25).n_removed == 0


def test_nothing_removed_when_no_budget_helps():
    worse = curve([(0, 0.8, 0.05), (10, 0.79, 0.06), (20, 0.75, 0.01)])
    choice = choose_budget(worse, max_accuracy_drop=0.01)
    assert (choice.n_removed, choice.rule) == (0, "none")
    assert choice.curve.chosen.tolist() == [True, False, False]


def test_ties_go_to_the_smaller_budget_and_rows_may_come_unsorted():
    tied = curve([(30, 0.8, 0.05), (0, 0.8, 0.2), (10, 0.8, 0.05)])
    assert choose_budget(tied).n_removed == 10


def test_another_criterion_is_lowered_by_the_same_rule():
    # A cost in its own column (here an error rate under attack), the gap left aside: the
    # admissible count with the lowest cost, ties to the smaller count, 0 if none helps.
    costs = CURVE.assign(attacked_error=[0.40, 0.35, 0.30, 0.30, 0.10, 0.05])
    choice = choose_budget(costs, max_accuracy_drop=0.01, criterion="attacked_error")
    assert (choice.n_removed, choice.rule) == (20, "lowest-gap")
    assert "attacked_error 0.4000 → 0.3000" in choice.reason and "|DP|" not in choice.reason
    assert list(choice.curve.columns[:5]) == [
        "n_removed",
        "budget",
        "rows_removed",
        "accuracy",
        "dp",
    ]
    assert choose_budget(costs, max_accuracy_drop=0.05, criterion="attacked_error").n_removed == 80
    assert choose_budget(costs, max_accuracy_drop=0.1, criterion="attacked_error").n_removed == 160
    # The target applies to the criterion.
    reached = choose_budget(
        costs, max_accuracy_drop=0.05, target_dp=0.3, criterion="attacked_error"
    )
    assert (reached.n_removed, reached.rule) == (20, "target")
    flat = CURVE.assign(attacked_error=0.4)
    assert choose_budget(flat, criterion="attacked_error").rule == "none"
    with pytest.raises(BadInputError, match="criterion must be a column of curve"):
        choose_budget(CURVE, criterion="attacked_error")


def test_rows_with_the_same_count_keep_their_order():
    # Two requested fractions may round to the same count (same rows, same metrics): both
    # are marked chosen, in the order given, so that a caller can take the first.
    twice = curve([(0, 0.8, 0.2), (10, 0.8, 0.05), (10, 0.8, 0.05)]).assign(budget=[0, 0.01, 0.011])
    choice = choose_budget(twice)
    assert choice.n_removed == 10 and list(choice.curve.budget[choice.curve.chosen]) == [
        0.01,
        0.011,
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_accuracy_drop": 1.5}, r"max_accuracy_drop must be a number in \[0, 1\]; got 1.5"),
        ({"max_accuracy_drop": True}, "max_accuracy_drop must be a number"),
        ({"target_dp": -0.1}, r"target_dp must be a number in \[0, 1\]"),
    ],
)
def test_bad_limits(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        choose_budget(CURVE, **kwargs)


def test_curve_must_start_untrimmed():
    with pytest.raises(BadInputError, match="counts starting at 0"):
        choose_budget(CURVE.iloc[1:])


def test_auto_counts():
    counts = auto_counts(1000)
    assert counts == sorted(set(counts)) and counts[0] >= 1 and counts[-1] <= 999
    assert counts == [round(f * 1000) for f in AUTO_FRACTIONS]  # all distinct at n = 1,000
    assert auto_counts(20) == [1, 2, 3, 4]  # rounded to at least one row, deduplicated


@pytest.fixture
def influence():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"fairness": rng.normal(size=200), "utility": rng.normal(size=200)})


def test_strategies_are_the_python_selections(influence):
    np.testing.assert_array_equal(
        strategy_keep(influence, "fairness", 20, "plain"), trim(influence["fairness"], 20)
    )
    np.testing.assert_array_equal(
        strategy_keep(influence, "fairness", 20, "constrained"),
        constrained_trim(influence, 20, objective="fairness"),
    )
    np.testing.assert_array_equal(
        strategy_keep(influence, "fairness", 20, "pareto"),
        pareto_trim(influence, 20, objective="fairness"),
    )
    assert strategy_keep(influence, "fairness", 0, "pareto").all()  # count 0: keep every row
    removed = ~strategy_keep(influence, "fairness", 20, "constrained")
    assert (influence.utility[removed] <= 0).all() and (influence.fairness[removed] < 0).all()


def test_unknown_strategy(influence):
    with pytest.raises(BadInputError, match=r"strategy must be one of \['plain', 'constrained'"):
        strategy_keep(influence, "fairness", 5, "greedy")


def test_gap_standard_error():
    predicted = np.array([1, 1, 0, 0, 1, 0, 0, 0])
    groups = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    # Rates 0.5 and 0.25 over 4 rows each: sqrt(0.25 / 4 + 0.1875 / 4).
    assert gap_standard_error(predicted, groups) == pytest.approx(np.sqrt(0.109375), rel=1e-15)


def test_masks_curve_retrains_each_mask_once(adult, monkeypatch):
    from leanfit.selection import InfluenceSelector, retrain_and_evaluate
    from leanfit.selection.policies.steering import masks_curve

    split, selector = adult
    n = selector.train_index_.shape[0]
    removed = np.random.default_rng(0).choice(n, 300, replace=False)
    masks = {0: np.ones(n, dtype=bool), 300: ~np.isin(np.arange(n), removed)}
    retrains = []
    original = InfluenceSelector.retrain
    monkeypatch.setattr(
        InfluenceSelector, "retrain", lambda self, keep: retrains.append(1) or original(self, keep)
    )
    val = split.val
    curve = masks_curve(selector, masks, val.X, val.y, val.s.to_numpy(), "fairness")
    assert len(retrains) == len(masks)
    # The same figures as evaluating each retrained model on its own.
    expected = retrain_and_evaluate(selector, masks[300], val.X, val.y, sensitive_features=val.s)
    row = curve.set_index("n_removed").loc[300]
    assert row["rows_removed"] == expected.pop("n_removed") == 300
    assert all(row[name] == value for name, value in expected.items())
