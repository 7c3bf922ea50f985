"""run_selection end to end on German credit, and the splits it is fed with."""

import copy
import json
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leanfit import __version__
from leanfit.datasets import load_adult, load_german
from leanfit.exceptions import BadInputError
from leanfit.selection import (
    Budget,
    DemographicParity,
    EqualOpportunity,
    InfluenceSelector,
    SelectionConfig,
    evaluate,
    retrain_and_evaluate,
    run_selection,
    split_csv,
    split_dataset,
    trim,
)
from leanfit.selection.config import resolve_objective_names
from leanfit.selection.protocols import split_halves
from leanfit.selection.workflow import curve_budgets, min_rule_rows

OBJECTIVES = ["utility", "fairness", "eop", "robustness"]
BUDGET = 0.05


@pytest.fixture(scope="module")
def german():
    return split_dataset("german")


@pytest.fixture(scope="module")
def run(german, tmp_path_factory):
    """One run on German credit, all objectives, with copies of the inputs taken before."""
    before = copy.deepcopy(german)
    out = tmp_path_factory.mktemp("selection") / "german"
    result = run_selection(
        german.train,
        german.val,
        german.test,
        SelectionConfig(budget=Budget(fraction=BUDGET), seeds=2),
        out_dir=out,
        progress=False,
        description=german.description,
    )
    return result, before


def test_split_dataset_is_stratified_60_20_20(german):
    full = load_german()
    parts = [german.train, german.val, german.test]
    assert [len(p) for p in parts] == [600, 200, 200]
    index = np.concatenate([p.frame.index for p in parts])
    assert sorted(index) == list(range(1000))  # disjoint, complete, original row numbers
    pd.testing.assert_frame_equal(german.train.frame, full.frame.loc[german.train.frame.index])
    # Stratified by label × group: each stratum's share matches the whole table to within
    # one row of rounding per part.
    strata = full.y.astype(str) + full.s.astype(str)
    for part in parts:
        counts = strata.loc[part.frame.index].value_counts()
        expected = strata.value_counts() * len(part) / 1000
        assert np.all(np.abs(counts - expected.loc[counts.index]) <= 1)


def test_adult_protocol_rows_keep_their_row_number_in_the_file(adult):
    split, _ = adult
    raw = load_adult("train").frame
    pd.testing.assert_frame_equal(
        split.train.frame, raw.loc[split.train.frame.index, split.train.frame.columns]
    )
    assert len(split.train) == 30162 and split.train.frame.index.is_unique


def test_files_and_their_contents(run, german):
    result, _ = run
    out = result.out_dir
    names = {p.name for p in out.iterdir()}
    expected = {"report.md", "config.json", "influence.csv", "removed.csv", "metrics.csv"}
    expected |= {"trimming_curve.csv", "influence_by_group.png", "trimming_curves.png"}
    for name in OBJECTIVES:
        expected |= {f"trimmed_train_{name}.csv", f"rules_{name}.csv", f"rules_{name}.md"}
        expected |= {f"tree_{name}.png"}
    assert names == expected  # nothing else (no temporary left behind)

    # influence.csv: the training rows by their index, equal to an independent fit.
    influence = pd.read_csv(out / "influence.csv", index_col="row")
    assert list(influence.columns) == OBJECTIVES
    assert list(influence.index) == list(german.train.frame.index)
    selector = InfluenceSelector(1.0).fit(german.train.X, german.train.y)
    absolute = [DemographicParity(absolute=True), EqualOpportunity(absolute=True)]
    direct = selector.influence(
        german.val.X,
        german.val.y,
        sensitive_features=german.val.s,
        objective=["utility", *absolute, "robustness"],
    ).set_axis(OBJECTIVES, axis=1)
    # The same computation; the CSV round trip keeps 17 significant digits.
    np.testing.assert_allclose(influence.to_numpy(), direct.to_numpy(), rtol=1e-12, atol=0)

    count = round(BUDGET * 600)
    assert result.n_removed == count
    removed = pd.read_csv(out / "removed.csv")
    for name in OBJECTIVES:
        keep = trim(direct[name], count)
        np.testing.assert_array_equal(result.keep[name], keep)
        trimmed = pd.read_csv(out / f"trimmed_train_{name}.csv")
        assert list(trimmed.columns) == list(german.train.frame.columns)  # a drop-in train file
        expected_rows = german.train.frame.loc[keep].reset_index(drop=True)
        # Compared as text: CSV reads the table's "True"/"False" strings back as booleans.
        pd.testing.assert_frame_equal(trimmed.astype(str), expected_rows.astype(str))
        mine = removed[removed.objective == name]
        assert set(mine.row) == set(german.train.frame.index[~keep])
        assert mine.influence.is_monotonic_increasing and (mine.influence.iloc[0] < 0)

    config = json.loads((out / "config.json").read_text())
    assert config["leanfit_version"] == __version__
    assert config["objectives"] == OBJECTIVES and config["n_removed"] == count
    assert config["budget"] == BUDGET and config["l2_reg"] == 1.0 and config["fit_intercept"]
    assert config["data"]["sensitive"] == "sex" and config["data"]["privileged"] == "male"
    assert config["data"]["n_train"] == 600 and config["curve_budgets"] == [15, 30, 45, 60]


def test_metrics_equal_the_python_api(run, german):
    result, _ = run
    selector = InfluenceSelector(1.0).fit(german.train.X, german.train.y)
    groups = {"sensitive_features": german.test.s.to_numpy()}
    table = result.metrics.set_index("model")
    untrimmed = evaluate(
        selector.model_, selector.transform(german.test.X), german.test.y, **groups
    )
    for metric, value in untrimmed.items():
        assert table.loc["untrimmed", metric] == pytest.approx(value, abs=1e-12)
    for name in OBJECTIVES:
        direct = retrain_and_evaluate(
            selector, result.keep[name], german.test.X, german.test.y, **groups
        )
        for metric, value in direct.items():
            # Two fits of the same model to Newton precision (tol 1e-10): identical predictions
            # on 200 test rows, so the metrics agree exactly up to float rounding.
            assert table.loc[f"{name} influence", metric] == pytest.approx(value, abs=1e-12)
    random = result.curve[(result.curve.method == "random") & (result.curve.n_removed == 30)]
    assert table.loc["random", "n_seeds"] == 2 and len(random) == 2
    assert table.loc["random", "dp"] == pytest.approx(random.dp.mean(), abs=1e-12)
    assert table.loc["random", "dp_std"] == pytest.approx(random.dp.std(), abs=1e-12)
    # The fairness objective does its job on the test set, random removal does much less.
    assert abs(table.loc["fairness influence", "dp"]) < 0.5 * abs(table.loc["untrimmed", "dp"])
    pd.testing.assert_frame_equal(pd.read_csv(result.out_dir / "metrics.csv"), result.metrics)


def test_report_shows_the_table_figures_and_rules(run):
    result, _ = run
    text = result.report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| fairness influence"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    table = result.metrics.set_index("model")
    assert cells[2:] == [
        f"{table.loc['fairness influence', m]:.4f}"
        for m in ["accuracy", "dp", "dp_abs", "eop", "eop_abs", "robust_acc"]
    ]
    assert "stratified by label × sex" in text
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(images) == 2 + len(OBJECTIVES)
    for image in images:
        with Image.open(result.out_dir / image) as png:
            assert png.format == "PNG" and min(png.size) > 300
    for name in OBJECTIVES:
        rules = pd.read_csv(result.out_dir / f"rules_{name}.csv")
        pd.testing.assert_frame_equal(rules, result.rules[name], check_dtype=False)
        assert rules.shrunk_mean.is_monotonic_increasing
        assert (rules.n_samples >= min_rule_rows(600)).all() and rules.n_samples.sum() == 600
        # Rules read in the original columns ("sex = female"), not one-hot names.
        columns = set(load_german().X.columns)
        for rule in rules.rule:
            assert any(column in rule for column in columns)
        assert rules.rule.iloc[0] in text  # the most harmful rule is quoted in the report
    assert "report:" in result.summary() and str(result.report) in result.summary()


def test_fairness_does_not_depend_on_which_group_is_called_privileged(run, german, tmp_path):
    # The fairness objectives are absolute gaps: calling the other group privileged flips the
    # sign of every signed gap but leaves the influence, hence the rows trimmed, unchanged.
    result, _ = run
    flipped = [replace(getattr(german, p), privileged="female") for p in ("train", "val", "test")]
    config = SelectionConfig(objectives=("fairness", "eop"), seeds=0)
    other = run_selection(*flipped, config, out_dir=tmp_path / "o", progress=False)
    # Same computation with the group labels swapped: equal up to float rounding.
    np.testing.assert_allclose(
        other.influence.to_numpy(), result.influence[["fairness", "eop"]].to_numpy(), rtol=1e-9
    )
    np.testing.assert_array_equal(other.keep["fairness"], result.keep["fairness"])
    table, mine = other.metrics.set_index("model"), result.metrics.set_index("model")
    assert table.loc["fairness influence", "dp"] == pytest.approx(
        -mine.loc["fairness influence", "dp"], abs=1e-12
    )


def test_inputs_are_not_modified(run, german):
    _, before = run
    for part in ("train", "val", "test"):
        pd.testing.assert_frame_equal(getattr(german, part).frame, getattr(before, part).frame)


def test_an_existing_output_is_refused_and_kept(german, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(BadInputError, match="exists; pass --overwrite"):
        run_selection(german.train, german.val, german.test, out_dir=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objectives": ("speed",)}, "objectives must be one of"),
        ({"objectives": ()}, "objectives must be a non-empty list"),
        ({"budget": Budget(count=0)}, "budget must be"),
        ({"budget": 1.5}, "budget must be"),
        ({"budget": 600}, r"budget must be a count in \[1, 599\]"),
        ({"seeds": -1}, "seeds must be an int >= 0"),
        ({"max_rules": 1}, "max_rules must be an int >= 2"),
    ],
)
def test_bad_parameters_are_named(german, tmp_path, kwargs, message):
    # Checked when the config is built, except a count, checked against the training rows.
    with pytest.raises(BadInputError, match=message):
        config = SelectionConfig(**kwargs)
        run_selection(german.train, german.val, german.test, config, out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_tables_must_agree(german, tmp_path):
    other = german.val.frame.drop(columns=["age"])
    val = type(german.val)(other, "credit", "good", "sex", "male")
    with pytest.raises(BadInputError, match="val must have the feature columns of train"):
        run_selection(german.train, val, german.test, out_dir=tmp_path / "o")
    flipped = type(german.test)(german.test.frame, "credit", "good", "sex", "female")
    with pytest.raises(BadInputError, match="test.privileged must equal train.privileged"):
        run_selection(german.train, german.val, flipped, out_dir=tmp_path / "o")


def test_objective_names_and_curve_grid():
    assert resolve_objective_names("all") == tuple(OBJECTIVES)
    assert resolve_objective_names(["robustness", "utility", "utility"]) == (
        "utility",
        "robustness",
    )
    assert curve_budgets(30, 600) == [15, 30, 45, 60]
    assert curve_budgets(30, 600, points=3) == [20, 30, 40, 60]  # the budget itself is kept
    assert curve_budgets(400, 600) == [200, 400, 599]  # capped at n − 1


def test_split_csv_with_and_without_validation_file(tmp_path, german):
    paths = {}
    for part in ("train", "val", "test"):
        frame = getattr(german, part).frame.assign(
            sex=lambda f: (f["sex"] == "male").astype(int)  # a numeric-coded sensitive column
        )
        paths[part] = tmp_path / f"{part}.csv"
        frame.to_csv(paths[part], index=False)
    common = {"target": "credit", "sensitive": "sex", "positive": "good", "privileged": "1"}
    split = split_csv(paths["train"], paths["test"], paths["val"], **common)
    assert split.train.privileged == 1  # "1" as typed names the number 1
    assert [len(split.train), len(split.val), len(split.test)] == [600, 200, 200]
    assert list(split.train.frame.index) == list(range(600))  # the data row in the file
    halves = split_csv(
        paths["train"], paths["test"], categorical=["installment_rate", "sex"], **common
    )
    test_file = pd.read_csv(paths["test"])
    expected_test, expected_val = split_halves(test_file, 42000)
    assert list(halves.test.frame.index) == list(expected_test.index)
    assert list(halves.val.frame.index) == list(expected_val.index)
    assert "halves of test.csv" in halves.description
    # Forced categories: text values, the privileged value follows.
    assert halves.train.frame["installment_rate"].dtype == "string"
    assert "installment_rate" in halves.train.categorical and halves.train.privileged == "1"
    assert halves.train.s.sum() == split.train.s.sum()
    with pytest.raises(BadInputError, match="categorical"):
        split_csv(paths["train"], paths["test"], categorical=["nope"], **common)
    with pytest.raises(BadInputError, match="categorical must be feature columns"):
        split_csv(paths["train"], paths["test"], categorical=["credit"], **common)
    pd.DataFrame({"a": [1, 2]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(BadInputError, match="target 'credit' is not a column"):
        split_csv(paths["train"], tmp_path / "other.csv", **common)


def test_a_budget_that_overshoots_is_reported(run, tmp_path, caplog):
    # Bank: 14 validation rows under 25, 3 of them positive, so the equal-opportunity gap
    # swings past zero long before 100 rows are removed; the validation cost then rises.
    bank = split_dataset("bank")
    config = SelectionConfig(objectives=("eop",), budget=Budget(count=100), seeds=0, curve_points=2)
    result = run_selection(
        bank.train, bank.val, bank.test, config, out_dir=tmp_path / "bank", progress=False
    )
    cost = result.curve.set_index("n_removed")["val_objective"]
    assert cost.loc[100] > cost.loc[0]
    assert len(result.notes) == 1 and "raised the validation eop cost" in result.notes[0]
    assert result.notes[0] in caplog.text
    assert f"**Warning**: {result.notes[0]}." in result.report.read_text()
    # German at 5 %: a note exactly for the objectives whose validation cost rose. The
    # validation DP gap (0.066) crosses zero after about 8 of the 30 rows, so fairness has one.
    german, _ = run
    costs = german.curve.groupby(["method", "n_removed"])["val_objective"].first()
    rose = {n for n in OBJECTIVES if costs[f"influence:{n}", 30] > costs[f"influence:{n}", 0]}
    assert {note.split(" influence")[0].split()[-1] for note in german.notes} == rose
    assert "fairness" in rose and "utility" not in rose
