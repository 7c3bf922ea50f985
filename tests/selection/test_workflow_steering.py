"""run_selection with a strategy and the budget chosen on validation, on the Arrests table."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from leanfit.datasets import load_arrests
from leanfit.exceptions import BadInputError
from leanfit.selection import (
    Budget,
    DemographicParity,
    InfluenceSelector,
    SelectionConfig,
    constrained_trim,
    retrain_and_evaluate,
    run_selection,
    split_csv,
    split_dataset,
    trim,
)

METRICS = ["accuracy", "dp", "dp_abs", "eop", "eop_abs", "robust_acc"]


@pytest.fixture(scope="module")
def arrests():
    return split_dataset("arrests")


def steered(split, out, test=None):
    return run_selection(
        split.train,
        split.val,
        split.test if test is None else test,
        SelectionConfig(
            objectives=("fairness",), budget=Budget.of("auto"), strategy="constrained", seeds=1
        ),
        out_dir=out,
        progress=False,
        description=split.description,
    )


@pytest.fixture(scope="module")
def run(arrests, tmp_path_factory):
    return steered(arrests, tmp_path_factory.mktemp("steering") / "arrests")


@pytest.fixture(scope="module")
def direct(arrests):
    """Selector and influence computed independently of the workflow."""
    split = arrests
    selector = InfluenceSelector(1.0).fit(split.train.X, split.train.y)
    influence = selector.influence(
        split.val.X,
        split.val.y,
        sensitive_features=split.val.s,
        objective=[DemographicParity(absolute=True), "utility"],
    ).set_axis(["fairness", "utility"], axis=1)
    return selector, influence


def test_the_budget_is_chosen_on_validation(run, arrests, direct):
    selector, influence = direct
    choice = run.budget_choice
    count = run.n_removed
    assert count == choice.n_removed == run.record.n_removed and count > 0
    keep = constrained_trim(influence, count)
    np.testing.assert_array_equal(run.keep["fairness"], keep)
    # The chosen point of the validation curve is the constrained selection evaluated on the
    # validation rows; the same computation, so equal to rounding.
    point = choice.curve[choice.curve.chosen].iloc[0]
    val = retrain_and_evaluate(
        selector, keep, arrests.val.X, arrests.val.y, sensitive_features=arrests.val.s
    )
    assert point.n_removed == count
    assert point.accuracy == pytest.approx(val["accuracy"], abs=1e-12)
    assert point.dp_abs == pytest.approx(val["dp_abs"], abs=1e-12)
    # The rule: the lowest validation gap among budgets within the default accuracy drop.
    admissible = choice.curve[choice.curve.admissible]
    assert (admissible.accuracy_drop <= 0.01 + 1e-12).all()
    assert point.dp_abs == admissible.dp_abs.min() and choice.rule == "lowest-gap"


def test_the_test_set_plays_no_part_in_the_choice(run, arrests, tmp_path):
    # Labels of the test rows flipped: every test metric changes, the choice must not.
    flipped = arrests.test.frame.assign(
        released=arrests.test.frame.released.map({"Yes": "No", "No": "Yes"})
    )
    other = steered(arrests, tmp_path / "flipped", test=replace(arrests.test, frame=flipped))
    pd.testing.assert_frame_equal(other.budget_choice.curve, run.budget_choice.curve)
    assert other.n_removed == run.n_removed
    assert other.metrics.accuracy.iloc[0] == pytest.approx(1 - run.metrics.accuracy.iloc[0])


def test_the_table_compares_the_strategy_with_plain_and_random(run, arrests, direct):
    selector, influence = direct
    count = run.n_removed
    table = run.metrics.set_index("model")
    assert list(table.index) == [
        "untrimmed",
        "fairness influence (constrained)",
        "fairness influence (plain)",
        "random",
    ]
    test = {"sensitive_features": arrests.test.s}
    selections = {
        "fairness influence (constrained)": constrained_trim(influence, count),
        "fairness influence (plain)": trim(influence["fairness"], count),
    }
    for label, keep in selections.items():
        expected = retrain_and_evaluate(selector, keep, arrests.test.X, arrests.test.y, **test)
        assert table.loc[label, "n_removed"] == expected["n_removed"]
        # The same computation in the same order: equal to rounding.
        np.testing.assert_allclose(
            table.loc[label, METRICS].to_numpy(float),
            [expected[m] for m in METRICS],
            rtol=0,
            atol=1e-12,
        )
    assert table.loc["random", "n_removed"] == count


def test_report_and_config_show_the_choice(run):
    out = run.out_dir
    text = (out / "report.md").read_text()
    assert "## Budget chosen on the validation set" in text
    assert f"**Chosen: {run.n_removed:,} rows** (lowest-gap)" in text
    assert "![budget chosen on validation](budget_choice.png)" in text
    assert (out / "budget_choice.png").stat().st_size > 10_000
    assert "selected by the **constrained** strategy" in text
    config = json.loads((out / "config.json").read_text())
    assert config["budget"] == "auto" and config["strategy"] == "constrained"
    assert config["max_accuracy_drop"] == 0.01 and config["target_dp"] is None
    recorded = config["budget_choice"]
    assert recorded["n_removed"] == run.n_removed and recorded["rule"] == "lowest-gap"
    chosen = [row for row in recorded["validation_curve"] if row["chosen"]]
    assert [row["n_removed"] for row in chosen] == [run.n_removed]
    curve = pd.read_csv(out / "trimming_curve.csv")
    assert {"influence:fairness", "constrained:fairness", "random"} == set(curve.method)
    assert run.n_removed in set(curve.n_removed)  # the chosen point is on the test curves


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": "auto", "objectives": ("utility",)}, "a list with 'fairness'"),
        ({"budget": "most"}, r"budget must be auto, a fraction in \(0, 1\) or a whole count"),
        ({"target_dp": 0.05}, "target_dp chooses the budget: use it with the budget 'auto'"),
        ({"budget": "auto", "max_accuracy_drop": 2.0}, r"max_accuracy_drop must be .*\[0, 1\]"),
        ({"strategy": "greedy"}, "strategy must be one of"),
    ],
)
def test_bad_steering_parameters(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        SelectionConfig(**kwargs)


@pytest.fixture(scope="module")
def arrests_csv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrests-csv")
    frame = load_arrests().frame
    frame.iloc[:4000].to_csv(folder / "train.csv", index=False)
    frame.iloc[4000:].to_csv(folder / "test.csv", index=False)
    return folder


def test_conventional_values_are_assumed_and_stated(arrests_csv):
    split = split_csv(
        arrests_csv / "train.csv",
        arrests_csv / "test.csv",
        target="released",
        sensitive="colour",
        assume_conventions=True,
    )
    assert (split.train.positive, split.train.privileged) == ("Yes", "White")
    assert split.test.positive == "Yes" and split.val.privileged == "White"
    first, second = split.train.assumptions
    assert first.startswith("target `released`: Yes taken as the favourable outcome")
    assert first.endswith("give positive to choose")
    rates = (
        load_arrests()
        .frame.iloc[:4000]
        .groupby("colour")
        .released.apply(lambda r: (r == "Yes").mean())
    )
    assert rates["White"] > rates["Black"]
    assert f"({rates['White']:.3f} vs {rates['Black']:.3f} for Black)" in second


def test_without_conventions_the_python_api_still_asks(arrests_csv):
    with pytest.raises(BadInputError, match="positive is needed: .* say which one counts as 1"):
        split_csv(
            arrests_csv / "train.csv",
            arrests_csv / "test.csv",
            target="released",
            sensitive="colour",
        )


def test_an_unconventional_target_is_an_error_about_positive(arrests_csv, tmp_path):
    frame = pd.read_csv(arrests_csv / "train.csv")
    frame["released"] = frame.released.map({"Yes": "summons", "No": "held"})
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(BadInputError, match=r"neither is favourable .* \(e\.g\. summons\)") as info:
        split_csv(
            tmp_path / "train.csv",
            arrests_csv / "test.csv",
            target="released",
            sensitive="colour",
            assume_conventions=True,
        )
    assert info.value.param == "positive"
