"""Warm-started retraining (chord steps from the full-data optimum) against retraining from
scratch: same parameters to the solver's tolerance, same curves, same chosen rows."""

import numpy as np
import pandas as pd
import pytest

from leanfit.selection import InfluenceSelector, SelectionConfig, run_selection, trimming_curve
from leanfit.selection.policies.trimming import evaluation_set
from leanfit.selection.protocols import split_dataset

# Both fits stop within the solver's tolerance of the unique optimum: Newton when its step
# is ≤ tol·max(1, ‖θ‖∞) (tol = 1e-10), the chord steps when a step that shrank by half is
# (the error left is then at most that step). Two such points differ by at most 2e-10 of
# max(1, ‖θ‖∞); 1e-8 leaves a hundredfold margin for these first-order bounds.
THETA_RTOL = 1e-8
# Test metrics count predictions (accuracy, group rates): equal as long as no test point
# lies within the parameters' difference of the decision boundary (checked below).
BOUNDARY_MARGIN = 1e-6
# Continuous curve values (validation costs) move by the gradient times the parameters'
# difference: relative changes far below 1e-6.
CURVE_RTOL = 1e-6


def cold_retrain(self: InfluenceSelector, keep: np.ndarray) -> InfluenceSelector:
    """``InfluenceSelector.retrain`` with the model fitted again from θ = 0 (Newton only)."""
    new = WARM_RETRAIN(self, keep)
    new.model_ = self._new_model().fit(new._Z, new._y)
    return new


WARM_RETRAIN = InfluenceSelector.retrain


def curve_masks(n: int, scores: np.ndarray) -> list[np.ndarray]:
    """Keep-masks of the default curve: the 2.5 … 10 % most harmful rows, 10 % at random."""
    order = np.argsort(scores, kind="stable")
    random_order = np.random.default_rng(0).permutation(n)
    result = []
    for removed in (order[: round(f * n)] for f in (0.025, 0.05, 0.075, 0.1)):
        result.append(~np.isin(np.arange(n), removed))
    result.append(~np.isin(np.arange(n), random_order[: n // 10]))
    return result


def test_warm_retrain_equals_a_fit_from_scratch_on_adult(adult):
    split, selector = adult
    scores = selector.influence(
        split.val.X, split.val.y, objective="fairness", sensitive_features=split.val.s
    )
    Z, _, _ = evaluation_set(selector, split.test.X, split.test.y, split.test.s.to_numpy())
    for keep in curve_masks(len(scores), scores.iloc[:, 0].to_numpy()):
        warm = selector.retrain(keep).model_
        cold = cold_retrain(selector, keep).model_
        scale = max(1.0, np.max(np.abs(cold.theta_)))
        assert np.max(np.abs(warm.theta_ - cold.theta_)) <= THETA_RTOL * scale
        assert warm.n_iter_ <= cold.n_iter_  # Newton steps (Hessians) from the warm start
        assert np.min(np.abs(cold.decision_function(Z))) > BOUNDARY_MARGIN
        np.testing.assert_array_equal(warm.predict(Z), cold.predict(Z))


def test_influence_after_a_warm_retrain_factors_the_new_hessian(adult):
    split, selector = adult
    keep = np.ones(len(split.train), dtype=bool)
    keep[::20] = False
    warm, cold = selector.retrain(keep), cold_retrain(selector, keep)
    args = (split.val.X, split.val.y)
    kwargs = {"objective": ["utility", "fairness"], "sensitive_features": split.val.s}
    # Influence is linear in θ's derivatives; θ agrees to THETA_RTOL, so do the scores.
    np.testing.assert_allclose(
        warm.influence(*args, **kwargs),
        cold.influence(*args, **kwargs),
        rtol=CURVE_RTOL,
        atol=CURVE_RTOL * 1e-3,
    )
    assert warm.model_.hessian_cholesky_ is not None


def test_trimming_curve_is_the_same_with_cold_retrains(adult, monkeypatch):
    split, selector = adult
    monkeypatch.setattr(selector, "random_state", 0)  # the same random removals twice
    kwargs = {
        "budgets": [0.025, 0.05, 0.075, 0.1],
        "objective": ["utility", "fairness"],
        "sensitive_features_val": split.val.s.to_numpy(),
        "sensitive_features_test": split.test.s.to_numpy(),
        "n_random": 1,
        "progress": False,
    }
    data = (selector, split.val.X, split.val.y, split.test.X, split.test.y)
    warm = trimming_curve(*data, **kwargs)
    monkeypatch.setattr(InfluenceSelector, "retrain", cold_retrain)
    cold = trimming_curve(*data, **kwargs)
    pd.testing.assert_frame_equal(warm, cold, rtol=CURVE_RTOL)


@pytest.mark.parametrize("dataset", ["arrests", "german"])
def test_automatic_budget_chooses_the_same_rows_with_cold_retrains(dataset, tmp_path, monkeypatch):
    split = split_dataset(dataset)

    def run(out):
        return run_selection(
            split.train,
            split.val,
            split.test,
            SelectionConfig(objectives=("fairness", "utility"), budget="auto", seeds=1),
            out_dir=tmp_path / out,
            progress=False,
        )

    warm = run("warm")
    monkeypatch.setattr(InfluenceSelector, "retrain", cold_retrain)
    cold = run("cold")
    assert warm.n_removed == cold.n_removed
    for name in warm.config.objectives:
        np.testing.assert_array_equal(warm.keep[name], cold.keep[name])
    pd.testing.assert_frame_equal(warm.metrics, cold.metrics, rtol=CURVE_RTOL)
    pd.testing.assert_frame_equal(warm.curve, cold.curve, rtol=CURVE_RTOL)
