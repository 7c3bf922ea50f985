"""Steering fairness trimming: which rows a strategy removes, and a budget chosen on validation.

Strategies (for an objective column ``I_f`` and the utility column ``I_u`` of an influence
table, both "positive = beneficial"; see :mod:`leanfit.selection.policies.pareto`):

* ``"plain"`` — the ``k`` rows with the most negative ``I_f`` (:func:`leanfit.selection.trim`);
* ``"constrained"`` — the same among rows whose removal is not predicted to cost utility,
  ``I_u ≤ 0`` (:func:`leanfit.selection.constrained_trim`, τ = 0); may remove fewer than ``k``;
* ``"pareto"`` — the largest predicted objective gain whose summed utility influence is at most
  zero, ``Σ I_u ≤ 0`` (:func:`leanfit.selection.pareto_trim`, B = 0).

Budget chosen on the validation set (:func:`choose_budget`): the strategy's selection is
retrained at every count of a grid (:func:`auto_counts`) and evaluated on the *validation*
rows. With ``a(k)`` the validation accuracy and ``d(k)`` the validation cost to lower after
removing ``k`` rows (``k = 0``: untrimmed), a count is *admissible* when
``a(0) − a(k) ≤ max_accuracy_drop`` (a drop equal to the limit is admissible). The chosen
count is

* with a target ``t``: the smallest admissible ``k`` with ``d(k) ≤ t`` (``0`` if the
  untrimmed cost already is); if none reaches it, the admissible ``k`` with the lowest ``d(k)``;
* without a target: the admissible ``k`` with the lowest ``d(k)`` (ties: the smallest ``k``);

and ``0`` (nothing removed) when no admissible count lowers the cost. The cost is a column of
the validation curve, the ``criterion`` of :func:`choose_budget`: by default the absolute
demographic-parity gap ``dp_abs`` (what ``leanfit select --budget auto`` lowers); the
scenarios (:mod:`leanfit.selection.scenarios`) choose among their candidate budgets by the
same rule, some with another cost (e.g. the validation error under attack). The test set
plays no part in the choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from leanfit.checks import check_choice, check_fraction
from leanfit.exceptions import bad_value
from leanfit.selection.defaults import DEFAULT_MAX_ACCURACY_DROP, STRATEGIES
from leanfit.selection.influence import InfluenceSelector
from leanfit.selection.metrics import evaluate
from leanfit.selection.policies.pareto import constrained_trim, pareto_trim
from leanfit.selection.policies.trimming import evaluation_set, trim

#: Fractions of the training rows tried by the automatic budget.
AUTO_FRACTIONS = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2)


def strategy_keep(
    influence: pd.DataFrame, objective: str, count: int, strategy: str, utility: str = "utility"
) -> np.ndarray:
    """Keep-mask of ``strategy`` removing at most ``count`` rows for ``objective``.

    Parameters
    ----------
    influence : DataFrame, n rows
        Influence table with the column ``objective`` (and ``utility`` unless ``"plain"``).
    objective : str
        The column to improve.
    count : int
        Rows to remove, ``0 ≤ count ≤ n − 1`` (``0`` keeps every row).
    strategy : {"plain", "constrained", "pareto"}
    utility : str
        The utility column protected by ``"constrained"`` and ``"pareto"``.

    Returns
    -------
    ndarray of bool, shape (n,)
        ``True`` for the rows kept.
    """
    check_choice("strategy", strategy, STRATEGIES)
    if count == 0:
        return np.ones(len(influence), dtype=bool)
    if strategy == "plain":
        return trim(influence[objective], count)
    if strategy == "constrained":
        return constrained_trim(influence, count, objective=objective, utility=utility)
    return pareto_trim(influence, count, objective=objective, utility=utility)


def auto_counts(n: int, fractions: Iterable[float] = AUTO_FRACTIONS) -> list[int]:
    """The counts ``max(1, round(f·n))`` of the automatic budget, below ``n``, sorted."""
    return sorted({min(n - 1, max(1, round(f * n))) for f in fractions})


def masks_curve(
    selector: InfluenceSelector,
    masks: Mapping[int, np.ndarray],
    X: pd.DataFrame | ArrayLike,
    y: ArrayLike,
    s: str | ArrayLike,
    method: str,
    progress: bool = False,
) -> pd.DataFrame:
    """Metrics of the model retrained on each keep-mask (preprocessing fixed).

    Parameters
    ----------
    selector : fitted InfluenceSelector
    masks : mapping of int to ndarray of bool, shape (n_train,)
        The requested count of each selection and its keep-mask.
    X, y, s
        The rows to evaluate on (features, 0/1 labels, 0/1 groups).
    method : str
        Value of the ``method`` column.

    Returns
    -------
    DataFrame
        One row per mask: ``method``, ``seed`` (NA), ``budget`` (requested fraction),
        ``n_removed`` (requested count), ``rows_removed`` (rows the selection removed; fewer
        for ``"constrained"`` when candidates run out), the metrics of
        :func:`leanfit.selection.evaluate` and ``dp_se``, the standard error of the DP gap on
        these rows (:func:`gap_standard_error`).
    """
    n = selector.train_index_.shape[0]
    Z, labels, groups = evaluation_set(selector, X, y, s)
    rows = []
    for count, keep in tqdm(masks.items(), desc=method, disable=not progress):
        model = selector.retrain(keep).model_  # each mask is retrained once
        metrics = evaluate(model, Z, labels, sensitive_features=groups, reference=selector.model_)
        rows.append(
            {
                "method": method,
                "seed": pd.NA,
                "budget": count / n,
                "n_removed": count,
                "rows_removed": int(np.size(keep) - np.count_nonzero(keep)),
                **metrics,
                "dp_se": gap_standard_error(model.predict(Z), groups),
            }
        )
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


def gap_standard_error(predicted: np.ndarray, groups: np.ndarray) -> float:
    """Standard error of a demographic-parity gap measured on a sample.

    ``sqrt(r₁(1 − r₁)/n₁ + r₀(1 − r₀)/n₀)`` with ``r_g`` the rate of predicted 1 among the
    ``n_g`` rows of group ``g`` (independent binomial proportions); differences of gaps
    smaller than this are within the sampling noise of the evaluation rows.

    Parameters
    ----------
    predicted, groups : ndarray of 0/1, shape (n,)
        Hard predictions and group membership (1 = privileged); both groups present.
    """
    terms = []
    for group in (0, 1):
        chosen = predicted[groups == group]
        rate = float(np.mean(chosen))
        terms.append(rate * (1.0 - rate) / chosen.size)
    return float(np.sqrt(sum(terms)))


@dataclass(frozen=True)
class BudgetChoice:
    """The budget :func:`choose_budget` picked on the validation curve, and why.

    Attributes
    ----------
    n_removed : int
        The chosen count (``0``: nothing removed).
    rule : str
        ``"target"`` (smallest count reaching the target gap), ``"target-missed"`` (the target
        is out of reach within the accuracy limit: lowest gap), ``"lowest-gap"`` (no target) or
        ``"none"`` (no admissible count lowers the gap).
    reason : str
        One or two sentences for the report.
    curve : DataFrame
        The validation curve: ``n_removed``, ``budget``, ``rows_removed``, ``accuracy``,
        ``accuracy_drop``, ``dp``, ``dp_abs``, ``admissible``, ``chosen``.
    max_accuracy_drop : float
    target_dp : float or None
    """

    n_removed: int
    rule: str
    reason: str
    curve: pd.DataFrame
    max_accuracy_drop: float
    target_dp: float | None

    def as_dict(self) -> dict:
        """JSON-ready: the choice, the rule, the reason and the validation curve."""
        return {
            "n_removed": self.n_removed,
            "rule": self.rule,
            "reason": self.reason,
            "max_accuracy_drop": self.max_accuracy_drop,
            "target_dp": self.target_dp,
            "validation_curve": self.curve.to_dict(orient="records"),
        }


def choose_budget(
    curve: pd.DataFrame,
    *,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    target_dp: float | None = None,
    criterion: str = "dp_abs",
) -> BudgetChoice:
    """Pick the count on a validation curve (the rule is in the module docstring).

    Parameters
    ----------
    curve : DataFrame
        Validation metrics per requested count, one row per count, ``0`` included: columns
        ``n_removed``, ``budget``, ``rows_removed``, ``accuracy``, ``criterion`` and
        optionally ``dp``, ``dp_abs`` and ``dp_se``, quoted in the reason (as
        :func:`masks_curve` returns them). Rows with the same ``n_removed`` are kept in
        their order.
    max_accuracy_drop : float in [0, 1]
        Largest admissible loss of validation accuracy (``0.01``: one point).
    target_dp : float in [0, 1], optional
        Value of ``criterion`` to reach (by default the absolute DP gap).
    criterion : str, default "dp_abs"
        The column of ``curve`` holding the validation cost to lower: the absolute
        demographic-parity gap, or another cost such as an error rate under attack.

    Returns
    -------
    BudgetChoice
    """
    limit = check_fraction("max_accuracy_drop", max_accuracy_drop)
    target = None if target_dp is None else check_fraction("target_dp", target_dp)
    if criterion not in curve.columns:
        raise bad_value("criterion", criterion, f"a column of curve ({list(curve.columns)})")
    table = curve.sort_values("n_removed", kind="stable").reset_index(drop=True)
    columns = ["n_removed", "budget", "rows_removed", "accuracy", "dp", "dp_abs", "dp_se"]
    columns += [] if criterion in columns else [criterion]
    table = table[[c for c in columns if c in table.columns]].copy()
    if table.n_removed.iloc[0] != 0:
        raise bad_value("curve", list(table.n_removed), "counts starting at 0 (untrimmed)")
    base = table.iloc[0]
    table["accuracy_drop"] = base.accuracy - table.accuracy
    # 1e-12: accuracies are ratios of counts; a drop equal to the limit is admissible.
    table["admissible"] = (table.n_removed > 0) & (table.accuracy_drop <= limit + 1e-12)
    admissible = table[table.admissible]
    lowest = admissible.sort_values([criterion, "n_removed"], kind="stable").head(1)
    drop_text = f"validation accuracy drop of at most {limit:.3f}"
    cost = "|DP|" if criterion == "dp_abs" else criterion
    if target is not None and base[criterion] <= target:
        count, rule = 0, "target"
        reason = (
            f"the untrimmed validation {cost} {base[criterion]:.4f} is already at most the "
            f"target {target:.4f}: nothing is removed."
        )
    elif target is not None and (admissible[criterion] <= target).any():
        point = admissible[admissible[criterion] <= target].iloc[0]
        count, rule = int(point.n_removed), "target"
        reason = (
            f"the smallest budget on the grid whose validation {cost} ({point[criterion]:.4f}) "
            f"is at most the target {target:.4f} with a {drop_text}: "
            f"{count:,} rows, validation accuracy {point.accuracy:.4f} "
            f"({-point.accuracy_drop:+.4f})."
        )
    elif len(lowest) and lowest[criterion].iloc[0] < base[criterion]:
        point = lowest.iloc[0]
        count = int(point.n_removed)
        rule = "lowest-gap" if target is None else "target-missed"
        missed = (
            ""
            if target is None
            else f"no budget on the grid reaches the target {cost} {target:.4f} within the "
            "accuracy limit; "
        )
        reason = (
            f"{missed}the budget with the lowest validation {cost} among those with a "
            f"{drop_text}: {count:,} rows, {cost} {base[criterion]:.4f} → "
            f"{point[criterion]:.4f}, accuracy {base.accuracy:.4f} → {point.accuracy:.4f}."
        )
        if "dp_se" in table.columns and criterion == "dp_abs" and target is None:
            reason += (
                f" Differences of validation |DP| below its standard error ({point.dp_se:.4f} "
                "here) are within sampling noise: a target gap stops at the first budget "
                "reaching it."
            )
    else:
        count, rule = 0, "none"
        reason = (
            f"no budget on the grid lowers the validation {cost} ({base[criterion]:.4f}) with "
            f"a {drop_text}: nothing is removed; allow a larger drop to trade accuracy for "
            f"{'fairness' if criterion == 'dp_abs' else criterion}."
        )
    table["chosen"] = table.n_removed == count
    return BudgetChoice(count, rule, reason, table, limit, target)
