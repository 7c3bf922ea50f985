"""InfluenceTree: hierarchical shrinkage (closed form, imodels), readable rules, planted rule."""

import copy
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from sklearn.base import clone
from sklearn.tree import DecisionTreeRegressor

from leanfit.datasets import load_adult
from leanfit.exceptions import BadInputError, NotFittedError
from leanfit.selection.explanation.explain import (
    HARMFUL_COLOR,
    MISSING,
    InfluenceTree,
    shrunk_node_values,
)


@pytest.fixture(scope="module")
def adult():
    return load_adult().X


def planted_influence(X, seed=0):
    """−1 for husbands working more than 45 hours a week, N(0, 0.1²) noise for everyone."""
    rng = np.random.default_rng(seed)
    rule = (X["relationship"] == "Husband") & (X["hours_per_week"] > 45)
    return np.where(rule, -1.0, 0.0) + rng.normal(0.0, 0.1, len(X))


# --------------------------------------------------------------------------- shrinkage
def tiny_tree():
    """Root (n=10, mean 1) → left leaf (n=4, mean 0), right node (n=6, mean 5/3) → leaves
    (n=3, mean 1) and (n=3, mean 7/3). Means are consistent: 10·1 = 4·0 + 6·5/3, 6·5/3 = 3 + 7."""
    return SimpleNamespace(
        children_left=np.array([1, -1, 3, -1, -1]),
        children_right=np.array([2, -1, 4, -1, -1]),
        value=np.array([1.0, 0.0, 5 / 3, 1.0, 7 / 3]).reshape(5, 1, 1),
        weighted_n_node_samples=np.array([10.0, 4.0, 6.0, 3.0, 3.0]),
    )


def test_shrinkage_equals_the_closed_form_on_a_hand_built_tree():
    # λ = 10: steps out of the root are halved (1/(1 + 10/10)), out of node 2 multiplied by
    # 1/(1 + 10/6) = 3/8. Node 1: 1 + (0 − 1)/2; node 2: 1 + (5/3 − 1)/2 = 4/3;
    # node 3: 4/3 + (1 − 5/3)·3/8 = 13/12; node 4: 4/3 + (7/3 − 5/3)·3/8 = 19/12.
    values = shrunk_node_values(tiny_tree(), [0.0, 10.0, 1e15])
    expected_10 = [1.0, 0.5, 4 / 3, 13 / 12, 19 / 12]
    # float64 rounding of a few additions and divisions: well below 1e-12
    np.testing.assert_allclose(values[0], [1.0, 0.0, 5 / 3, 1.0, 7 / 3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(values[1], expected_10, rtol=0, atol=1e-12)
    # λ = 1e15: every step is multiplied by at most 10/1e15, so all nodes sit at the root mean
    np.testing.assert_allclose(values[2], np.ones(5), rtol=0, atol=1e-12)


def test_shrinkage_rejects_negative_lambda():
    with pytest.raises(BadInputError, match="lambdas"):
        shrunk_node_values(tiny_tree(), [-1.0])


def test_shrinkage_equals_imodels_on_the_same_fitted_tree(adult):
    imodels = pytest.importorskip("imodels")
    X, y = adult.iloc[:4000], planted_influence(adult.iloc[:4000])
    for lam in (0.5, 7.0, 300.0):
        tree = InfluenceTree(lambdas=[lam], max_leaf_nodes=25, random_state=0).fit(X, y)
        reference = imodels.HSTreeRegressor(
            estimator_=copy.deepcopy(tree.estimator_), reg_param=lam
        )
        ref_values = reference.estimator_.tree_.value[:, 0, 0]
        # same sums in a different order: agreement to a few float64 ulps of values ≈ 1
        np.testing.assert_allclose(tree.node_values_, ref_values, rtol=0, atol=1e-12)
        np.testing.assert_allclose(tree.predict(X), ref_values[tree.apply(X)], rtol=0, atol=1e-12)


def test_zero_lambda_is_the_plain_tree_and_a_huge_one_the_mean(adult):
    X, y = adult.iloc[:3000], planted_influence(adult.iloc[:3000])
    plain = InfluenceTree(lambdas=[0.0], random_state=0).fit(X, y)
    cart = DecisionTreeRegressor(max_leaf_nodes=20, random_state=0).fit(
        plain._encoding.transform(X), y
    )
    # λ = 0 leaves every step unscaled: exactly the CART tree (same tree, same seed)
    np.testing.assert_allclose(plain.predict(X), cart.predict(plain._encoding.transform(X)))
    huge = InfluenceTree(lambdas=[1e15], random_state=0).fit(X, y)
    # every step is scaled by ≤ 3000/1e15: the prediction is the mean to ~1e-12
    np.testing.assert_allclose(huge.predict(X), y.mean(), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- λ by CV
def test_cross_validation_picks_the_best_lambda_and_large_lambda_on_noise(adult):
    X = adult.iloc[:5000]
    noise = np.random.default_rng(1).normal(size=len(X))
    tree = InfluenceTree(random_state=0).fit(X, noise)
    assert tree.lambda_ == tree.lambdas_[np.argmin(tree.cv_mse_)]
    # On pure noise every split is spurious: the CV error falls as λ grows, so the largest
    # λ of the grid wins (observed for several seeds; the gap 500 vs 0 is ~1 % of the MSE).
    assert tree.lambda_ == max(tree.lambdas_)
    assert tree.cv_mse_[-1] < tree.cv_mse_[0]


# --------------------------------------------------------------------------- rules
def test_planted_rule_is_found_on_adult(adult):
    y = planted_influence(adult)
    tree = InfluenceTree(max_leaf_nodes=12, random_state=0).fit(adult, y)
    rules = tree.rules()
    worst = rules.iloc[0]
    conditions = worst["rule"].split(" and ")
    assert "relationship = Husband" in conditions
    (hours,) = [c for c in conditions if c.startswith("hours_per_week > ")]
    # hours are integers, the rule is "> 45": any threshold in [45, 46) is the same split
    assert 45 <= float(hours.removeprefix("hours_per_week > ")) < 46
    assert worst["label"] == "harmful"
    truth = (adult["relationship"] == "Husband") & (adult["hours_per_week"] > 45)
    assert worst["n_samples"] == truth.sum()
    # raw mean = −1 + mean of 4,197 N(0, 0.1²) draws: within 5 standard errors (0.0075)
    assert worst["raw_mean"] == pytest.approx(-1.0, abs=0.0075)
    # shrinkage pulls toward the parent by at most λ/(N + λ) ≤ 500/7639 of the step
    assert -1.0 < worst["shrunk_mean"] < -0.9
    assert (rules["label"].iloc[1:] == "beneficial").sum() >= 1
    assert rules["n_samples"].sum() == len(adult)


CONDITION = re.compile(r"^(?:(?P<low>\S+) < )?(?P<col>\w+) (?P<op>=|≠|∉|>|≤) (?P<rhs>.+)$")


def rule_mask(rule: str, frame: pd.DataFrame) -> np.ndarray:
    """Evaluate a rule's text on the original table (an independent reading of the rule)."""
    mask = np.ones(len(frame), dtype=bool)
    for condition in rule.split(" and "):
        match = CONDITION.match(condition)
        assert match, condition
        column, op, rhs = frame[match["col"]], match["op"], match["rhs"]
        if op in (">", "≤"):
            hit = column > float(rhs) if op == ">" else column <= float(rhs)
            if match["low"] is not None:
                hit &= column > float(match["low"])
        else:
            values = rhs.strip("{}").split(", ") if op == "∉" else [rhs]
            inside = np.zeros(len(frame), dtype=bool)
            for value in values:
                inside |= column.isna() if value == repr(MISSING) else column == value
            hit = inside if op == "=" else ~inside
        mask &= np.asarray(hit, dtype=bool)
    return mask


def test_rule_text_selects_exactly_the_leaf_samples(adult):
    X = adult.iloc[:8000]
    rng = np.random.default_rng(3)
    y = (
        1.0 * X["occupation"].isin(["Exec-managerial", "Prof-specialty", "Sales"]).to_numpy()
        - 1.0 * X["workclass"].isna().to_numpy()
        + 0.5 * (X["age"] > 40).to_numpy()
        - 0.4 * (X["age"] > 60).to_numpy()
        + rng.normal(0, 0.1, len(X))
    )
    tree = InfluenceTree(max_leaf_nodes=30, random_state=0).fit(X, y)
    rules = tree.rules()
    text = " ".join(rules["rule"])
    # the target makes the tree use every kind of condition the parser checks
    assert "∉" in text and repr(MISSING) in text and re.search(r"\S+ < age ≤", text)
    leaves = tree.apply(X)
    for leaf, rule in zip(rules["leaf"], rules["rule"], strict=True):
        np.testing.assert_array_equal(rule_mask(rule, X), leaves == leaf, err_msg=rule)
    # a leaf's prediction is its shrunk mean
    predictions = pd.Series(tree.predict(X)).groupby(leaves).first()
    np.testing.assert_allclose(predictions[rules["leaf"]].to_numpy(), rules["shrunk_mean"])


def test_a_rule_merges_redundant_thresholds():
    # y steps down at x = 1, 2 and 3; the leaf x > 3 has the path x > 1, x > 2, x > 3
    x = np.repeat([0.0, 1.5, 2.5, 3.5], 50)
    y = np.repeat([0.0, -1.0, -2.0, -3.0], 50)
    frame = pd.DataFrame({"x": x, "c": np.tile(["a", "b"], 100)})
    tree = InfluenceTree(lambdas=[0.0], max_depth=3, random_state=0).fit(frame, y)
    assert set(tree.rules()["rule"]) == {"x ≤ 0.75", "0.75 < x ≤ 2", "2 < x ≤ 3", "x > 3"}


def test_root_only_tree_has_one_rule_for_all_samples():
    frame = pd.DataFrame({"x": np.arange(10.0)})
    tree = InfluenceTree(lambdas=[1.0], cv=2).fit(frame, np.full(10, 0.25))
    rules = tree.rules()
    assert rules["rule"].tolist() == ["(all samples)"] and rules["label"].tolist() == ["beneficial"]


# --------------------------------------------------------------------------- predict, API
def test_predict_on_new_rows_and_unseen_categories():
    frame = pd.DataFrame({"c": ["a", "b", "c", "d"] * 25, "x": np.arange(100.0)})
    y = np.where(frame["c"] == "a", -1.0, 1.0)
    tree = InfluenceTree(lambdas=[0.0], max_leaf_nodes=2, random_state=0).fit(frame, y)
    assert tree.rules()["rule"].tolist() == ["c = a", "c ≠ a"]
    new = pd.DataFrame({"x": [5.0, 5.0], "c": ["a", "never seen"]})  # other column order
    np.testing.assert_array_equal(tree.predict(new), [-1.0, 1.0])


def test_numpy_input_and_sklearn_contract():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = np.where(X[:, 1] > 0, 1.0, -1.0)
    tree = InfluenceTree(max_leaf_nodes=4, random_state=0)
    assert (
        tree.get_params()["max_leaf_nodes"] == 4 and clone(tree).get_params() == tree.get_params()
    )
    tree.fit(X, y)
    assert list(tree.feature_names_in_) == ["x0", "x1", "x2"] and tree.n_features_in_ == 3
    assert tree.rules()["rule"].str.contains("x1").all()
    # two clean leaves: R² on the training data is exactly 1 up to the slight shrinkage
    assert tree.score(X, y) > 0.99


def test_errors_name_the_parameter(adult):
    X, y = adult.iloc[:100], planted_influence(adult.iloc[:100])
    with pytest.raises(NotFittedError):
        InfluenceTree().predict(X)
    with pytest.raises(BadInputError, match="lambdas"):
        InfluenceTree(lambdas=[]).fit(X, y)
    with pytest.raises(BadInputError, match="max_leaf_nodes"):
        InfluenceTree(max_leaf_nodes=1).fit(X, y)
    with pytest.raises(BadInputError, match="cv"):
        InfluenceTree(cv=1).fit(X, y)
    with pytest.raises(BadInputError, match="y"):
        InfluenceTree().fit(X, y[:-1])
    bad = X.assign(age=X["age"].astype(float).where(X.index != X.index[0]))
    with pytest.raises(BadInputError, match="age"):
        InfluenceTree().fit(bad, y)
    tree = InfluenceTree(max_leaf_nodes=4, random_state=0).fit(X, y)
    with pytest.raises(BadInputError, match="relationship"):
        tree.predict(X.drop(columns=["relationship"]))


def test_plot_colours_leaves_by_sign(adult):
    X = adult.iloc[:5000]
    tree = InfluenceTree(max_leaf_nodes=8, random_state=0).fit(X, planted_influence(X))
    fig = tree.plot()
    ax = fig.axes[0]
    faces = [t.get_bbox_patch().get_facecolor() for t in ax.texts if t.get_bbox_patch()]
    rules = tree.rules()
    n_harmful = sum(np.allclose(f, to_rgba(HARMFUL_COLOR)) for f in faces)
    assert n_harmful == (rules["label"] == "harmful").sum() >= 1
    assert len(ax.lines) == 2 * (len(rules) - 1)  # one edge per child: 2 per split
