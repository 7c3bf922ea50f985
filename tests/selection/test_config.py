"""SelectionConfig and ModelSettings: normalized and checked once, when built; run_json."""

import dataclasses

import pandas as pd
import pytest

from leanfit import __version__
from leanfit.exceptions import BadInputError
from leanfit.selection import Budget, ModelSettings, SelectionConfig
from leanfit.selection.config import DataSummary, RunRecord
from leanfit.selection.explanation.report import run_json
from leanfit.selection.policies.steering import choose_budget

ALL = ("utility", "fairness", "eop", "robustness")


def test_the_defaults_are_those_of_leanfit_select():
    config = SelectionConfig()
    assert config.objectives == ALL and config.budget == Budget(fraction=0.05)
    assert (config.strategy, config.max_accuracy_drop, config.target_dp) == ("plain", None, None)
    assert config.model == ModelSettings(1.0, True)
    assert (config.seeds, config.seed, config.curve_points, config.max_rules) == (3, 0, 4, 12)
    assert config.max_categories == 1000 and config.steered == ()


def test_fields_are_normalized_when_built():
    config = SelectionConfig(objectives=("robustness", "fairness", "robustness"), budget=0.1)
    assert config.objectives == ("fairness", "robustness")  # report order, no repeats
    assert config.budget == Budget(fraction=0.1)
    assert SelectionConfig(objectives=("eop", "all")).objectives == ALL
    assert SelectionConfig(budget=300).budget == Budget(count=300)
    # auto: the default accuracy drop is filled in; the strategy steers all but utility.
    auto = SelectionConfig(budget="auto", strategy="pareto", target_dp=0.05)
    assert auto.budget.is_auto and auto.max_accuracy_drop == 0.01 and auto.target_dp == 0.05
    assert auto.steered == ("fairness", "eop", "robustness")


def test_a_config_is_frozen_and_compares_by_value():
    config = SelectionConfig(budget=Budget.of("auto"), max_accuracy_drop=0.02)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seeds = 5  # type: ignore[misc]
    assert config == SelectionConfig(budget="auto", max_accuracy_drop=0.02)
    assert dataclasses.replace(config, seeds=1).seeds == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objectives": ("speed",)}, r"objectives must be one of \['utility'"),
        ({"objectives": ()}, "objectives must be a non-empty list"),
        ({"budget": "most"}, r"budget must be auto, a fraction in \(0, 1\) or a whole count"),
        ({"budget": 1.5}, r"budget must be a fraction in the open interval \(0, 1\)"),
        ({"strategy": "greedy"}, "strategy must be one of"),
        (
            {"target_dp": 0.05},
            "target_dp chooses the budget: use it with the budget 'auto'; got the budget 0.05",
        ),
        ({"max_accuracy_drop": 0.01}, "max_accuracy_drop chooses the budget"),
        ({"budget": "auto", "objectives": ("utility",)}, "a list with 'fairness'"),
        ({"budget": "auto", "max_accuracy_drop": 2.0}, r"max_accuracy_drop must be .*\[0, 1\]"),
        ({"budget": "auto", "target_dp": -0.1}, r"target_dp must be .*\[0, 1\]"),
        ({"model": {"l2_reg": 1.0}}, "model must be a ModelSettings"),
        ({"seeds": -1}, "seeds must be an int >= 0"),
        ({"seed": 1.5}, "seed must be an int >= 0"),
        ({"curve_points": 0}, "curve_points must be an int >= 1"),
        ({"max_rules": 1}, "max_rules must be an int >= 2"),
        ({"max_categories": 0}, "max_categories must be an int >= 1"),
        ({"seeds": True}, "seeds must be an int >= 0"),
    ],
)
def test_bad_fields_are_named(kwargs, message):
    with pytest.raises(BadInputError, match=message) as caught:
        SelectionConfig(**kwargs)
    # The error names the field whose value is wrong (the last one given, for the auto rule).
    assert caught.value.param == list(kwargs)[-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"l2_reg": 0.0}, "l2_reg must be a finite number > 0"),
        ({"l2_reg": float("inf")}, "l2_reg must be a finite number > 0"),
        ({"l2_reg": True}, "l2_reg must be a finite number > 0"),
        ({"fit_intercept": "yes"}, "fit_intercept must be True or False"),
    ],
)
def test_bad_model_settings_are_named(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        ModelSettings(**kwargs)


def test_run_json_reads_the_typed_values_under_the_keys_of_config_json():
    config = SelectionConfig(
        objectives=("fairness",), budget="auto", model=ModelSettings(2.5, False), seeds=1
    )
    data = DataSummary(
        name="toy", description="a toy", target="y", positive=1, sensitive="s", privileged=1,
        n_train=100, n_val=40, n_test=40, features=("a", "s"), categorical=(),
        assumptions=("target `y`: 1 taken as favourable",),
    )  # fmt: skip
    curve = pd.DataFrame(
        {"n_removed": [0, 5], "budget": [0.0, 0.05], "rows_removed": [0, 5],
         "accuracy": [0.8, 0.8], "dp": [0.2, 0.1], "dp_abs": [0.2, 0.1]}
    )  # fmt: skip
    choice = choose_budget(curve, max_accuracy_drop=config.max_accuracy_drop)
    record = RunRecord(data, 5, (1, 5), 5, {"fairness": 0.5}, choice)
    values = run_json(config, record)
    assert list(values) == [
        "leanfit_version", "data", "objectives", "budget", "n_removed", "strategy",
        "max_accuracy_drop", "target_dp", "assumptions", "l2_reg", "fit_intercept", "seeds",
        "seed", "curve_budgets", "max_rules", "max_categories", "min_rule_rows",
        "budget_choice", "tree_lambdas",
    ]  # fmt: skip
    assert values["leanfit_version"] == __version__ and values["budget"] == "auto"
    assert (values["n_removed"], values["curve_budgets"], values["max_accuracy_drop"]) == (
        5,
        [1, 5],
        0.01,
    )
    assert (values["l2_reg"], values["fit_intercept"], values["objectives"]) == (
        2.5,
        False,
        ["fairness"],
    )
    assert values["assumptions"] == ["target `y`: 1 taken as favourable"]
    assert values["data"]["features"] == ["a", "s"] and values["data"]["n_val"] == 40
    assert values["budget_choice"] == choice.as_dict()
    assert "budget_choice" not in run_json(
        SelectionConfig(), dataclasses.replace(record, budget_choice=None)
    )
