"""Adaptive evasion attacks: trim by robustness influence, then face an attacker who adapts.

The deployed model is a linear classifier ``z = wᵀx + b`` in the model's feature space (after
preprocessing). At test time an attacker perturbs a fraction of the test points, each within
an ε-ball, in the worst direction *for the model actually deployed* (the attack is recomputed
for every model: it adapts to trimming). For a linear model the worst case is closed form:

    x̃ = x − ε · y± · u,   u = w / ‖w‖₂ (L2 ball)  or  u = sign(w) (L∞ ball),   y± = 2y − 1,

which lowers the signed margin ``y± z`` by exactly ``ε ‖w‖_*`` (dual norm: L2 → L2,
L∞ → L1), the worst case of :class:`~leanfit.selection.objectives.WorstCaseRobustness`.

Compared: the original model, the model retrained without the training samples with the most
negative influence on the worst-case robust loss over validation data (budget chosen on the
validation data), and the model retrained without as many random samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from leanfit.checks import check_choice, check_fraction
from leanfit.datasets import TabularDataset
from leanfit.exceptions import bad_value
from leanfit.selection.attacks import check_eps, check_norm, worst_case_margins
from leanfit.selection.influence import InfluenceSelector
from leanfit.selection.metrics import linear_parameters
from leanfit.selection.objectives import WorstCaseRobustness
from leanfit.selection.policies.trimming import random_trim, trim
from leanfit.selection.scenarios._common import (
    ScenarioConfig,
    choose_budget_on_validation,
    fit_selector,
    influence_scores,
    model_settings,
    tabular_splits,
)

ADAPTIVE_DATASETS = ("adult", "german", "compas", "bank")


def worst_case_perturbation(
    X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float, eps: float, norm: str
) -> np.ndarray:
    """Worst-case points ``x̃ = x − ε y± u`` in the ε-ball for a linear model, shape ``(n, d)``.

    ``u = w/‖w‖₂`` for ``norm="l2"`` and ``u = sign(w)`` for ``norm="linf"``; the signed
    margin of every point drops by ``ε ‖w‖_*``, so the margins of ``x̃`` equal
    :func:`leanfit.selection.attacks.worst_case_margins` of ``x``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Points in the model's feature space.
    y : ndarray of shape (n,)
        0/1 labels.
    coef, intercept
        ``w`` of shape ``(d,)`` and ``b`` of the attacked model (``b`` does not enter ``x̃``).
    eps : float
        Radius ``ε ≥ 0``.
    norm : {"l2", "linf"}
    """
    w = np.asarray(coef, dtype=np.float64).ravel()
    eps = check_eps(eps)
    if check_norm(norm) == "l2":
        length = np.linalg.norm(w)
        u = w / length if length > 0 else np.zeros_like(w)
    else:
        u = np.sign(w)
    sign = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    return X - eps * np.outer(sign, u)


def attacked_accuracy(
    model: object, X: np.ndarray, y: np.ndarray, attacked: np.ndarray, eps: float, norm: str
) -> float:
    """Accuracy of a linear ``model`` when the rows in ``attacked`` (boolean mask) are moved
    to their worst case against that same model (an adaptive attacker)."""
    w, b = linear_parameters(model)
    margins = (2.0 * y - 1.0) * (X @ w + b)
    margins[attacked] = worst_case_margins(X[attacked], y[attacked], w, b, eps, norm)
    return float(np.mean(margins > 0))


def attacked_error(
    eps: float, norm: str
) -> Callable[[InfluenceSelector, object, TabularDataset], float]:
    """Validation cost: the error rate when every validation point is attacked (one minus
    :func:`attacked_accuracy`)."""

    def cost(selector: InfluenceSelector, model: object, val: TabularDataset) -> float:
        Z, y = selector.transform(val.X), val.y.to_numpy(dtype=float)
        return 1.0 - attacked_accuracy(model, Z, y, np.ones(len(y), dtype=bool), eps, norm)

    return cost


@dataclass(frozen=True)
class AdaptiveConfig(ScenarioConfig):
    """Settings of the adaptive-attack scenario (see :func:`run_adaptive`).

    ``eps`` and ``norm``: the attacker's ball, in the model's (standardized) feature space.
    ``fractions``: fractions of the test points attacked. ``budgets``: candidate trimming
    budgets, one chosen on validation data (``max_accuracy_drop``: constraint on its clean
    validation accuracy). ``n_train``: training rows used (all if None).
    """

    dataset: str = "adult"
    norm: str = "l2"
    eps: float = 0.25
    fractions: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25)
    budgets: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)
    max_accuracy_drop: float = 0.02
    n_train: int | None = None

    QUICK: ClassVar[dict[str, object]] = {"n_train": 8000}

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, ADAPTIVE_DATASETS)
        check_norm(self.norm)
        check_eps(self.eps)
        for f in self.fractions:
            check_fraction("fractions", f, ends="(]")
        for b in self.budgets:
            check_fraction("budgets", b, ends="()")
        if not self.fractions:
            raise bad_value("fractions", self.fractions, "at least one fraction")


def run_adaptive(config: AdaptiveConfig, seed: int = 0) -> pd.DataFrame:
    """One run of the adaptive-attack scenario.

    Fit the model; score the training samples by their influence on the worst-case robust
    log-loss (``WorstCaseRobustness(eps, norm)``) over the validation data; trim at the
    budget with the best all-attacked validation accuracy (clean validation accuracy at most
    ``max_accuracy_drop`` below the original's), or at random with the same budget; then for
    each fraction, attack that fraction of the test points (the same random points for every
    model, nested across fractions) against each deployed model.

    Returns
    -------
    DataFrame
        One row per (method, fraction): ``method`` in ``original``, ``influence``,
        ``random``; ``seed``; ``fraction`` attacked (0 = clean accuracy); ``budget`` removed;
        ``accuracy`` on the whole test set.
    """
    rng = np.random.default_rng([seed, 3])
    train, val, test = tabular_splits(config.dataset, rng, n_train=config.n_train)
    selector = fit_selector(train, model_settings(config.dataset))
    scores = influence_scores(selector, val, WorstCaseRobustness(eps=config.eps, norm=config.norm))
    keeps = {b: trim(scores, b) for b in config.budgets}
    budget = choose_budget_on_validation(
        selector, keeps, val, cost=attacked_error(config.eps, config.norm),
        max_accuracy_drop=config.max_accuracy_drop,
    )  # fmt: skip
    models = {"original": selector.model_}
    if budget:
        models["influence"] = selector.retrain(keeps[budget]).model_
        models["random"] = selector.retrain(
            random_trim(len(train), budget, random_state=rng)
        ).model_
    else:  # nothing beat the original model on validation: both trimmed models are it
        models["influence"] = models["random"] = selector.model_
    Z, y = selector.transform(test.X), test.y.to_numpy(dtype=float)
    order = rng.permutation(len(y))
    rows = []
    for fraction in (0.0, *config.fractions):
        attacked = np.zeros(len(y), dtype=bool)
        attacked[order[: round(fraction * len(y))]] = True
        for method, model in models.items():
            rows.append({
                "method": method, "seed": seed, "fraction": fraction,
                "budget": 0.0 if method == "original" else budget,
                "accuracy": attacked_accuracy(model, Z, y, attacked, config.eps, config.norm),
            })  # fmt: skip
    return pd.DataFrame(rows)
