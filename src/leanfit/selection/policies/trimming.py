"""Budgeted trimming (paper Algorithm 2): remove the most harmful samples, retrain, evaluate.

A *budget* is either a count ``1 ≤ b < n`` of samples to remove or a fraction in
``(0, 1)`` of the ``n`` training samples (``round(fraction · n)``, at least one). Trimming
removes the ``b`` samples with the most negative influence (the most harmful ones). The
influence is first-order: accurate for single samples, not additive for large groups, so
:func:`iterative_trim` re-scores after each chunk. Inputs are never modified; trimming
returns a boolean *keep* mask over the training rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection._validation import check_binary_labels
from leanfit.selection.influence import InfluenceSelector, resolve_sensitive
from leanfit.selection.metrics import evaluate
from leanfit.selection.models import LogisticRegressionL2
from leanfit.selection.objectives import Objective, ObjectiveSpec, resolve_objectives
from leanfit.selection.policies.budget import Budget

METRIC_COLUMNS = ("accuracy", "dp", "dp_abs", "eop", "eop_abs", "robust_acc")


def resolve_budget(budget: object, n: int, name: str = "budget") -> int:
    """Number of samples a budget removes out of ``n``.

    ``budget`` is an integer count in ``[1, n − 1]`` or a float fraction in ``(0, 1)``
    (``max(1, round(budget · n))``), or a :class:`~leanfit.selection.policies.budget.Budget`.
    """
    return Budget.of(budget, name).rows(n, name)


def _influence_values(influence: pd.DataFrame | pd.Series | ArrayLike) -> np.ndarray:
    if isinstance(influence, pd.DataFrame):
        if influence.shape[1] != 1:
            raise bad_value(
                "influence",
                f"DataFrame with columns {list(influence.columns)}",
                "one column: select it first, e.g. influence['fairness']",
            )
        influence = influence.iloc[:, 0]
    values = np.asarray(influence, dtype=np.float64)
    if values.ndim != 1 or values.size < 2 or not np.all(np.isfinite(values)):
        raise bad_value(
            "influence", f"array of shape {values.shape}", "at least two finite values in 1-D"
        )
    return values


def _mask_without(order: np.ndarray, count: int, n: int) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[order[:count]] = False
    return keep


def trim(
    influence: pd.DataFrame | pd.Series | ArrayLike,
    budget: int | float,
    *,
    only_harmful: bool = False,
) -> np.ndarray:
    """Keep-mask removing the ``budget`` samples with the most negative influence.

    Parameters
    ----------
    influence : Series, 1-D array or one-column DataFrame, length n
        Influence values (positive = beneficial, negative = harmful), e.g. one column of
        :meth:`InfluenceSelector.influence`. Not modified.
    budget : int or float
        Count in ``[1, n − 1]`` or fraction in ``(0, 1)``.
    only_harmful : bool, default False
        Never remove a sample with influence ``≥ 0`` (may remove fewer than ``budget``).

    Returns
    -------
    ndarray of bool, shape (n,)
        ``True`` for the rows to keep. Ties are broken by position (stable sort).
    """
    values = _influence_values(influence)
    count = resolve_budget(budget, values.size)
    if only_harmful:
        count = min(count, int(np.sum(values < 0)))
    return _mask_without(np.argsort(values, kind="stable"), count, values.size)


def random_trim(
    n: int, budget: int | float, *, random_state: int | np.random.Generator | None = None
) -> np.ndarray:
    """Keep-mask removing ``budget`` samples chosen uniformly at random, shape ``(n,)``."""
    count = resolve_budget(budget, n)
    return _mask_without(np.random.default_rng(random_state).permutation(n), count, n)


def _one_objective(objective: ObjectiveSpec) -> Objective:
    objectives = resolve_objectives(objective)
    if len(objectives) != 1:
        raise bad_value("objective", objective, "a single objective")
    return objectives[0]


def _iterative_order(
    selector: InfluenceSelector,
    X_val: pd.DataFrame | ArrayLike,
    y_val: ArrayLike,
    total: int,
    step: int,
    objective: Objective,
    sensitive_features: str | ArrayLike | None,
    privileged: object,
    progress: bool,
) -> np.ndarray:
    """Removal order of ``total`` samples, re-scoring after every ``step`` removals."""
    n = selector.train_index_.shape[0]
    keep = np.ones(n, dtype=bool)
    order: list[int] = []
    current = selector
    with tqdm(total=total, desc="iterative trimming", disable=not progress) as bar:
        while len(order) < total:
            scores = (
                current.influence(
                    X_val,
                    y_val,
                    sensitive_features=sensitive_features,
                    objective=objective,
                    privileged=privileged,
                )
                .iloc[:, 0]
                .to_numpy()
            )
            count = min(step, total - len(order))
            chosen = np.flatnonzero(keep)[np.argsort(scores, kind="stable")[:count]]
            order.extend(chosen.tolist())
            keep[chosen] = False
            current = selector.retrain(keep)
            bar.update(count)
    return np.asarray(order)


def iterative_trim(
    selector: InfluenceSelector,
    X_val: pd.DataFrame | ArrayLike,
    y_val: ArrayLike,
    budget: int | float,
    *,
    step: int | float,
    objective: ObjectiveSpec = "utility",
    sensitive_features: str | ArrayLike | None = None,
    privileged: object = None,
    progress: bool = False,
) -> np.ndarray:
    """Keep-mask of iterative trimming: remove ``step`` samples, retrain, re-score, repeat.

    Parameters
    ----------
    selector : fitted InfluenceSelector
    X_val, y_val, sensitive_features, privileged
        Validation data, as for :meth:`InfluenceSelector.influence`.
    budget : int or float
        Total to remove (count or fraction of the training set).
    step : int or float
        Samples removed between two re-scorings (count or fraction).
    objective : str or Objective
        A single objective.
    """
    n = selector.train_index_.shape[0]
    total = resolve_budget(budget, n)
    order = _iterative_order(
        selector,
        X_val,
        y_val,
        total,
        resolve_budget(step, n, "step"),
        _one_objective(objective),
        sensitive_features,
        privileged,
        progress,
    )
    return _mask_without(order, total, n)


def evaluation_set(
    selector: InfluenceSelector,
    X_test: pd.DataFrame | ArrayLike,
    y_test: ArrayLike,
    sensitive_features: str | ArrayLike | None,
    privileged: object = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Z, y, s)``: the rows transformed by the selector's fixed preprocessing, their 0/1
    labels and 0/1 groups (checked), ready for :func:`leanfit.selection.metrics.evaluate`."""
    Z = selector.transform(X_test)
    y = check_binary_labels(y_test, "y_test", n=Z.shape[0])
    s = resolve_sensitive(X_test, sensitive_features, privileged, n=Z.shape[0], name="X_test")
    if s is None:
        raise BadInputError("sensitive_features is required to evaluate fairness on X_test")
    return Z, y, s


def retrain_and_evaluate(
    selector: InfluenceSelector,
    keep: ArrayLike,
    X_test: pd.DataFrame | ArrayLike,
    y_test: ArrayLike,
    *,
    sensitive_features: str | ArrayLike,
    privileged: object = None,
    eps: float | None = None,
) -> dict[str, float]:
    """Retrain on the kept rows (preprocessing fixed) and evaluate on test data.

    Parameters
    ----------
    selector : fitted InfluenceSelector
        The model before trimming; its overshoot attack defines the test attack points.
    keep : array-like of bool, shape (n_train,)
    X_test, y_test, sensitive_features, privileged
        Test data and its groups (a column name of ``X_test`` or an array).
    eps : float, optional
        Also report ``robust_acc_l2`` / ``robust_acc_linf`` in an ε-ball.

    Returns
    -------
    dict
        ``n_removed`` and the metrics of :func:`leanfit.selection.metrics.evaluate`.
    """
    Z, y, s = evaluation_set(selector, X_test, y_test, sensitive_features, privileged)
    retrained = selector.retrain(keep)
    metrics = evaluate(
        retrained.model_, Z, y, sensitive_features=s, reference=selector.model_, eps=eps
    )
    return {"n_removed": int(np.size(keep) - np.count_nonzero(keep)), **metrics}


def _check_precomputed(
    influence: pd.DataFrame,
    objectives: Sequence[Objective],
    n: int,
    iterative_step: int | float | None,
) -> None:
    if iterative_step is not None:
        raise BadInputError("influence and iterative_step exclude each other; pass one of them")
    names = [o.name for o in objectives]
    if not isinstance(influence, pd.DataFrame) or influence.shape[0] != n:
        raise bad_value(
            "influence", type(influence).__name__, f"a DataFrame with {n} rows (the training set)"
        )
    missing = [name for name in names if name not in influence.columns]
    if missing:
        raise bad_value("influence", list(influence.columns), f"a DataFrame with columns {names}")


def trimming_curve(
    selector: InfluenceSelector,
    X_val: pd.DataFrame | ArrayLike,
    y_val: ArrayLike,
    X_test: pd.DataFrame | ArrayLike,
    y_test: ArrayLike,
    *,
    budgets: Sequence[int | float] | np.ndarray,
    objective: ObjectiveSpec = "fairness",
    sensitive_features_val: str | ArrayLike | None = None,
    sensitive_features_test: str | ArrayLike | None = None,
    privileged: object = None,
    n_random: int = 5,
    iterative_step: int | float | None = None,
    influence: pd.DataFrame | None = None,
    stop_at_zero: bool = False,
    eps: float | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Test metrics after trimming by influence and at random, over a grid of budgets.

    For each objective, training samples are removed in order of increasing influence
    (most harmful first; re-scored every ``iterative_step`` removals if given); for the
    random baseline, ``n_random`` random orders seeded from ``selector.random_state``.
    Every point retrains with fixed preprocessing and is evaluated on the test set
    (overshoot attack points from the untrimmed model).

    Parameters
    ----------
    selector : fitted InfluenceSelector
    X_val, y_val, X_test, y_test
        Validation data (influence, stopping rule) and test data (metrics).
    budgets : sequence of int or float
        Counts or fractions (see :func:`resolve_budget`).
    objective : str, Objective or list, default "fairness"
        One influence curve per objective.
    sensitive_features_val, sensitive_features_test : str or array-like
        Groups of the validation and test points (column names or arrays).
    privileged : optional
        Privileged value of the sensitive attribute (not needed for 0/1).
    n_random : int, default 5
        Random-removal repetitions (0 for none).
    iterative_step : int or float, optional
        Re-score after this many removals (count or fraction); one-shot scoring if None.
    influence : DataFrame, optional
        One-shot scores already computed by ``selector.influence`` on the same validation
        data, one column per objective (its name); they are computed here if None. The
        influence curves then remove exactly the rows :func:`trim` removes from these columns.
        Not with ``iterative_step``.
    stop_at_zero : bool, default False
        Stop an influence curve after the first budget at which the signed validation
        objective has changed sign from its untrimmed value (e.g. the fairness gap crossed
        zero: trimming further would favour the other group).
    eps : float, optional
        Also report worst-case robust accuracy in L2 / L∞ balls of radius ``eps``.
    progress : bool, default True
        Show a progress bar.

    Returns
    -------
    DataFrame
        Tidy: one row per (method, seed, budget) with ``method`` (``"influence:<name>"``
        or ``"random"``), ``seed`` (random only), ``budget`` (fraction removed),
        ``n_removed``, the metrics of :func:`leanfit.selection.metrics.evaluate`, and
        ``val_objective`` (the validation cost after retraining, with the robustness attack
        points of the untrimmed model, as in the influence; influence rows only).
        Budget 0 (the untrimmed model) is included for every method and seed.
    """
    if isinstance(n_random, bool) or not (isinstance(n_random, int) and n_random >= 0):
        raise bad_value("n_random", n_random, "an integer >= 0")
    n = selector.train_index_.shape[0]
    counts = sorted({resolve_budget(b, n) for b in np.atleast_1d(np.asarray(budgets, object))})
    # Prepared at the untrimmed model: the robustness attack points stay those of θ̂, so
    # that ``val_objective`` measures the cost the influence was computed for.
    objectives, Z_val, labels_val, s_val = selector.prepare_validation(
        X_val,
        y_val,
        sensitive_features=sensitive_features_val,
        objective=objective,
        privileged=privileged,
    )
    Z, y, s = evaluation_set(selector, X_test, y_test, sensitive_features_test, privileged)
    val: dict[str, Any] = {"sensitive_features": sensitive_features_val, "privileged": privileged}
    if influence is not None:
        _check_precomputed(influence, objectives, n, iterative_step)

    def point(
        model: LogisticRegressionL2,
        method: str,
        seed: object,
        count: int,
        val_objective: float = np.nan,
    ) -> dict:
        metrics = evaluate(model, Z, y, sensitive_features=s, reference=selector.model_, eps=eps)
        return {
            "method": method,
            "seed": seed,
            "budget": count / n,
            "n_removed": count,
            **metrics,
            "val_objective": val_objective,
        }

    seeds = np.random.SeedSequence(selector.random_state).generate_state(n_random).tolist()
    bar = tqdm(
        total=len(counts) * (len(objectives) + n_random),
        desc="trimming curve",
        disable=not progress,
    )
    rows = []
    for obj in objectives:
        method = f"influence:{obj.name}"
        start = float(obj.value(selector.model_.theta_, Z_val, labels_val, s_val))
        rows.append(point(selector.model_, method, pd.NA, 0, start))
        if influence is not None:
            order = np.argsort(_influence_values(influence[obj.name]), kind="stable")
        elif iterative_step is None:
            scores = selector.influence(X_val, y_val, objective=obj, **val).iloc[:, 0]
            order = np.argsort(scores.to_numpy(), kind="stable")
        else:
            order = _iterative_order(
                selector,
                X_val,
                y_val,
                counts[-1],
                resolve_budget(iterative_step, n, "step"),
                obj,
                val["sensitive_features"],
                privileged,
                False,
            )
        for count in counts:
            # Only the model is kept: the retrained selector's rows are freed at once.
            model = selector.retrain(_mask_without(order, count, n)).model_
            now = float(obj.value(model.theta_, Z_val, labels_val, s_val))
            rows.append(point(model, method, pd.NA, count, now))
            bar.update()
            if stop_at_zero and np.sign(now) != np.sign(start):
                bar.update(len(counts) - counts.index(count) - 1)
                break
    for seed in seeds:
        rows.append(point(selector.model_, "random", seed, 0))
        order = np.random.default_rng(seed).permutation(n)
        for count in counts:
            rows.append(
                point(
                    selector.retrain(_mask_without(order, count, n)).model_, "random", seed, count
                )
            )
            bar.update()
    bar.close()
    curve = pd.DataFrame(rows)
    curve["seed"] = curve["seed"].astype("Int64")
    return curve


def summarize_curve(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every metric, per (method, budget).

    Returns a DataFrame with columns ``method``, ``budget``, ``n_removed``, ``n_seeds`` and
    ``<metric>_mean`` / ``<metric>_std`` (std is NaN for single runs).
    """
    required = {"method", "budget", "n_removed"}
    if not required <= set(curve.columns):
        raise bad_value("curve", list(curve.columns), f"a trimming curve with {sorted(required)}")
    metrics = [c for c in curve.columns if c not in {"method", "seed", "budget", "n_removed"}]
    grouped = curve.groupby(["method", "n_removed"], sort=True)
    summary = grouped[metrics].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "n_seeds", grouped.size())
    summary.insert(0, "budget", grouped["budget"].first())
    return summary.reset_index()
