"""Mechanics of the scenarios on tiny or closed-form inputs: shift builder, reweighing, the
anchoring attack, the batch stream, worst-case perturbations, MLP features, query order."""

import numpy as np
import pandas as pd
import pytest
from sklearn.neural_network import MLPClassifier

from leanfit.datasets import TabularDataset
from leanfit.exceptions import BadInputError
from leanfit.selection.attacks import worst_case_margins
from leanfit.selection.objectives import DemographicParity
from leanfit.selection.policies.trimming import trim
from leanfit.selection.scenarios._common import (
    choose_budget_on_validation,
    evaluate_model,
    fit_selector,
    influence_scores,
    load_table,
    model_settings,
    random_split,
    with_frame,
)
from leanfit.selection.scenarios.active import seed_rows, top_k
from leanfit.selection.scenarios.adaptive import attacked_accuracy, worst_case_perturbation
from leanfit.selection.scenarios.online import batch_stream, flip_labels
from leanfit.selection.scenarios.poisoning import (
    advantaged_group,
    anchoring_attack,
    ball_offsets,
    detection_scores,
    most_popular,
    standardized_numeric,
)
from leanfit.selection.scenarios.shift import make_shift, reweighing_weights
from leanfit.selection.scenarios.surrogate import mlp_hidden_features


@pytest.fixture(scope="module")
def german():
    """German credit with a ``row_id`` column to trace rows through splits."""
    ds = load_table("german")
    return with_frame(ds, ds.frame.assign(row_id=np.arange(len(ds))))


def ids(ds):
    return set(ds.frame["row_id"])


def toy_table(n=200, seed=0):
    """Two numeric features, one categorical, a binary group g (a privileged) and label."""
    rng = np.random.default_rng(seed)
    g = rng.choice(["a", "b"], size=n, p=[0.6, 0.4])
    x1 = rng.normal(size=n)
    label = np.where(rng.random(n) < np.where(g == "a", 0.7, 0.3), "yes", "no")
    frame = pd.DataFrame({
        "x1": x1, "x2": rng.normal(5.0, 2.0, size=n), "c": rng.choice(["u", "v"], size=n),
        "g": g, "label": label,
    })  # fmt: skip
    return TabularDataset(frame, "label", "yes", "g", "a", name="toy")


# --------------------------------------------------------------------------- reweighing
def test_reweighing_weights_match_the_closed_form():
    # P(s=1) = 3/4, P(y=1) = 1/2; cells (1,1): 2/4, (1,0): 1/4, (0,0): 1/4
    s = np.array([1, 1, 1, 0])
    y = np.array([1, 1, 0, 0])
    expected = [3 / 4 * 1 / 2 / (2 / 4)] * 2 + [3 / 4 * 1 / 2 / (1 / 4), 1 / 4 * 1 / 2 / (1 / 4)]
    # a handful of float operations: exact to rounding
    np.testing.assert_allclose(reweighing_weights(y, s), expected, rtol=1e-15)


def test_reweighing_makes_label_and_group_independent():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 2, 1000)
    y = (rng.random(1000) < np.where(s == 1, 0.8, 0.2)).astype(int)
    w = reweighing_weights(y, s)
    assert w.sum() == pytest.approx(1000, rel=1e-12)  # the total weight is n (float sums)
    for a in (0, 1):
        for b in (0, 1):
            cell = (s == a) & (y == b)
            # Σ_cell w / n = P(s=a) P(y=b) exactly, up to float rounding of the sums
            assert w[cell].sum() / 1000 == pytest.approx(np.mean(s == a) * np.mean(y == b),
                                                         rel=1e-12)  # fmt: skip


def test_reweighing_refuses_mismatched_shapes():
    with pytest.raises(BadInputError, match="s must be"):
        reweighing_weights([0, 1, 1], [0, 1])


# --------------------------------------------------------------------------- shift builder
def test_make_shift_gives_disjoint_parts_of_the_stated_sizes(german):
    train, val, test = make_shift(german, kind="age", strength=2.0, seed=3)
    assert not (ids(train) & ids(val) or ids(train) & ids(test) or ids(val) & ids(test))
    # halves of 500 rows, half of each drawn: 250 source rows and 250 target rows, 20 % val
    assert (len(train), len(val), len(test)) == (250, 50, 200)
    again = make_shift(german, kind="age", strength=2.0, seed=3)
    pd.testing.assert_frame_equal(again.test.frame, test.frame)  # the seed fixes everything


def test_make_shift_tilts_age_and_group_in_opposite_directions(german):
    # exp(±2·z) changes the odds of a row by e⁴ ≈ 55 between one standard deviation below
    # and above the mean age; even drawing half of each pool, the target is older by
    # several years. A margin of 3 years (about a quarter of the age std of 11.4) is safe.
    train, val, test = make_shift(german, kind="age", strength=2.0, seed=0)
    target_age = pd.concat([val.frame, test.frame])["age"].mean()
    assert target_age > train.frame["age"].mean() + 3.0
    # group tilt: the target has fewer privileged (male) people; odds change by e² ≈ 7.4,
    # so a share gap above 0.15 is conservative (same reasoning).
    train, val, test = make_shift(german, kind="group", strength=2.0, seed=0)
    target_share = pd.concat([val.frame, test.frame])["sex"].eq("male").mean()
    assert target_share < train.s.mean() - 0.15


def test_make_shift_without_strength_draws_from_the_same_distribution(german):
    # strength 0: both parts are uniform samples; the mean ages differ by sampling noise only
    # (std of a difference of means of 250 rows ≈ 11.4·√(2/250) ≈ 1.0; 4 std allowed)
    train, val, test = make_shift(german, kind="age", strength=0.0, seed=0)
    target_age = pd.concat([val.frame, test.frame])["age"].mean()
    assert abs(target_age - train.frame["age"].mean()) < 4.0


def test_make_shift_rejects_bad_arguments(german):
    with pytest.raises(BadInputError, match="kind"):
        make_shift(german, kind="height")
    with pytest.raises(BadInputError, match="native_country"):
        make_shift(german, kind="country")
    with pytest.raises(BadInputError, match="dataset"):
        make_shift("mnist")
    with pytest.raises(BadInputError, match="val_fraction"):
        make_shift(german, val_fraction=1.5)


# --------------------------------------------------------------------------- anchoring attack
def test_most_popular_picks_the_centre_of_the_densest_cluster():
    points = np.array([[0.0], [0.1], [0.2], [5.0], [10.0]])
    assert most_popular(points) == 1


def test_ball_offsets_stay_in_the_ball():
    offsets = ball_offsets(500, 3, 0.7, np.random.default_rng(0))
    norms = np.linalg.norm(offsets, axis=1)
    assert norms.max() <= 0.7 + 1e-12  # rounding of a product of floats
    # uniform in a 3-ball: P(‖δ‖ < τ/2) = 1/8, so some points must be in the inner half
    assert 0 < np.mean(norms < 0.35) < 0.3


@pytest.mark.parametrize("method", ["random", "non-random"])
def test_anchoring_attack_places_opposite_labels_near_the_targets(method):
    train = toy_table()
    attack = anchoring_attack(train, fraction=0.1, method=method, tau=0.5, seed=0)
    poison = attack.data.frame[attack.is_poison]
    assert attack.is_poison.sum() == 20 and not attack.is_poison[: len(train)].any()
    pd.testing.assert_frame_equal(attack.data.frame.iloc[: len(train)], train.frame)
    advantaged = advantaged_group(train)
    assert advantaged == 1  # group a has the higher positive rate (0.7 vs 0.3 by design)
    neg_target, pos_target = (train.frame.iloc[t] for t in attack.targets)
    assert neg_target["label"] == "no" and neg_target["g"] == "a"
    assert pos_target["label"] == "yes" and pos_target["g"] == "b"
    # inverse class balance: favourable poison = round(20 · P(y = 0))
    favourable = poison["label"] == "yes"
    assert favourable.sum() == round(20 * np.mean(train.y == 0))
    columns, _, std = standardized_numeric(train)
    for rows, target in ((poison[favourable], neg_target), (poison[~favourable], pos_target)):
        assert (rows["g"] == target["g"]).all() and (rows["c"] == target["c"]).all()
        assert (rows["label"] != target["label"]).all()
        moved = (rows[columns].to_numpy(float) - target[columns].to_numpy(float)) / std
        # float columns are not rounded; clipping to a box holding the target only shrinks
        # the offset: the distance bound holds up to rounding
        assert np.linalg.norm(moved, axis=1).max() <= 0.5 + 1e-9


def test_anchoring_attack_with_zero_radius_copies_the_targets():
    train = toy_table()
    attack = anchoring_attack(train, fraction=0.05, tau=0.0, seed=1)
    poison = attack.data.frame[attack.is_poison]
    for target in attack.targets:
        source = train.frame.iloc[target]
        copies = poison[poison["g"] == source["g"]]
        assert len(copies) > 0
        assert (copies[["x1", "x2", "c"]] == source[["x1", "x2", "c"]]).all().all()


def test_anchoring_attack_rejects_bad_arguments():
    with pytest.raises(BadInputError, match="method"):
        anchoring_attack(toy_table(), method="greedy")
    with pytest.raises(BadInputError, match="fraction"):
        anchoring_attack(toy_table(), fraction=0.0)
    with pytest.raises(BadInputError, match="tau"):
        anchoring_attack(toy_table(), tau=-1.0)


def test_detection_scores():
    removed = np.array([True, True, False, False])
    poison = np.array([True, False, True, False])
    assert detection_scores(removed, poison) == {"precision": 0.5, "recall": 0.5}


# --------------------------------------------------------------------------- batch stream
def test_batch_stream_partitions_the_rows_and_flips_the_stated_share(german):
    stream = batch_stream(german, 10, 0.35, np.random.default_rng(0))
    assert len(stream) == 10
    seen = [ids(batch) for batch, _ in stream]
    assert set().union(*seen) == ids(german) and sum(map(len, seen)) == len(german)
    truth = german.frame.set_index("row_id")["credit"]
    for batch, flipped in stream:
        assert flipped.sum() == round(0.35 * len(batch))
        original = truth.loc[batch.frame["row_id"]].to_numpy()
        changed = batch.frame["credit"].to_numpy() != original
        np.testing.assert_array_equal(changed, flipped)


def test_flip_labels_on_a_numeric_target_with_positive_zero():
    compas = load_table("compas")
    flipped = flip_labels(compas, np.arange(len(compas)) < 10)
    np.testing.assert_array_equal(flipped.y[:10], 1 - compas.y[:10])
    np.testing.assert_array_equal(flipped.y[10:], compas.y[10:])


# --------------------------------------------------------------------------- adaptive attack
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_worst_case_perturbation_realizes_the_closed_form_margins(norm):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 2, 50).astype(float)
    w, b = rng.normal(size=4), 0.3
    moved = worst_case_perturbation(X, y, w, b, 0.2, norm)
    margins = (2 * y - 1) * (moved @ w + b)
    # the same closed form evaluated two ways: equal to float rounding
    np.testing.assert_allclose(margins, worst_case_margins(X, y, w, b, 0.2, norm), atol=1e-12)
    size = np.linalg.norm(moved - X, axis=1) if norm == "l2" else np.abs(moved - X).max(axis=1)
    np.testing.assert_allclose(size, 0.2, rtol=1e-12)  # every point uses the whole ball


def test_attacked_accuracy_interpolates_between_clean_and_worst_case():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(100, 3)), rng.integers(0, 2, 100).astype(float)
    model = type("M", (), {"coef_": rng.normal(size=3), "intercept_": 0.1})()
    none, every = np.zeros(100, dtype=bool), np.ones(100, dtype=bool)
    clean = np.mean(((X @ model.coef_ + 0.1) > 0) == y)
    assert attacked_accuracy(model, X, y, none, 0.5, "l2") == clean
    worst = np.mean(worst_case_margins(X, y, model.coef_, 0.1, 0.5, "l2") > 0)
    assert attacked_accuracy(model, X, y, every, 0.5, "l2") == worst < clean


# --------------------------------------------------------------------------- surrogate
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # not the point
def test_mlp_hidden_features_reproduce_the_network_output():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int)
    mlp = MLPClassifier((6, 5), max_iter=300, random_state=0).fit(X, y)
    H = mlp_hidden_features(mlp, X)
    assert H.shape == (200, 5)
    logits = H @ mlp.coefs_[-1][:, 0] + mlp.intercepts_[-1][0]
    # the output layer applied to our features gives scikit-learn's probabilities (rounding)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), mlp.predict_proba(X)[:, 1], atol=1e-12)


# --------------------------------------------------------------------------- active learning
def test_top_k_breaks_ties_at_random_but_respects_the_order():
    values = np.array([1.0, 3.0, 3.0, 3.0, 2.0])
    picks = {tuple(top_k(values, 2, np.random.default_rng(s))) for s in range(20)}
    assert all(set(p) <= {1, 2, 3} for p in picks) and len(picks) > 1
    assert list(top_k(values, 5, np.random.default_rng(0)))[3:] == [4, 0]


def test_seed_rows_contain_both_labels():
    ds = toy_table()
    rows = seed_rows(ds, 10, np.random.default_rng(0))
    assert len(rows) == len(set(rows)) == 10
    assert set(ds.y.to_numpy()[rows]) == {0, 1}


# --------------------------------------------------------------------------- budget choice


def test_scenarios_choose_their_budget_by_the_rule_of_select():
    train, val = random_split(load_table("german"), [0.6, 0.4], np.random.default_rng(0))
    selector = fit_selector(train, model_settings("german"))
    scores = influence_scores(selector, val, DemographicParity(absolute=True))
    keeps = {b: trim(scores, b) for b in (0.01, 0.02, 0.05, 0.1, 0.2)}
    base = evaluate_model(selector, selector.model_, val)
    after = {b: evaluate_model(selector, selector.retrain(k).model_, val) for b, k in keeps.items()}

    def expected(cost, limit):
        """The rule written out: the lowest cost among the budgets within the accuracy
        limit (ties: the smaller budget), if lower than the untrimmed model's; else 0."""
        within = [b for b in keeps if base["accuracy"] - after[b]["accuracy"] <= limit + 1e-12]
        best = min(within, key=lambda b: (cost(after[b]), b), default=None)
        return best if best is not None and cost(after[best]) < cost(base) else 0.0

    for limit in (0.0, 0.02, 0.1):
        chosen = choose_budget_on_validation(selector, keeps, val, max_accuracy_drop=limit)
        assert chosen == expected(lambda m: m["dp_abs"], limit)
    assert choose_budget_on_validation(selector, keeps, val, max_accuracy_drop=0.1) > 0

    # Another cost (here the validation error) is lowered by the same rule.
    def error(selector, model, val):
        return 1.0 - evaluate_model(selector, model, val)["accuracy"]

    chosen = choose_budget_on_validation(selector, keeps, val, cost=error, max_accuracy_drop=0.1)
    assert chosen == expected(lambda m: 1.0 - m["accuracy"], 0.1)
