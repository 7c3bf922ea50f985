"""Trimming for one objective that protects utility: constrained and Pareto selections.

Plain trimming (:func:`leanfit.selection.trim`) removes the samples most harmful to one
objective, e.g. fairness, whatever they do for utility; some of them are among the most
useful samples for accuracy. The selections here use two columns of an influence table
(:meth:`InfluenceSelector.influence`): the *objective* column ``I_f`` (fairness,
robustness, …) and the *utility* column ``I_u``.

Sign conventions and the first-order model
------------------------------------------
For a validation cost ``f`` (lower is better), ``I_f(zᵢ) ≈ f(θ̂ without zᵢ) − f(θ̂)``:
negative = removing ``zᵢ`` lowers the cost (``zᵢ`` is harmful), positive = beneficial.
For utility the cost is the summed validation log-loss, so ``I_u(zᵢ) > 0`` means that
removing ``zᵢ`` *loses* utility. To first order the changes of a removal set ``S`` add up:

    Δf(S) ≈ F(S) = Σ_{i∈S} I_f(zᵢ),        Δu(S) ≈ U(S) = Σ_{i∈S} I_u(zᵢ),

``F(S) < 0`` is a predicted gain in the objective, ``U(S) > 0`` a predicted utility loss.
The approximation degrades as ``S`` grows, and for utility it can be far off: samples
harmful to fairness share feature patterns, and removing hundreds of them moves the model
well beyond one Newton step, so the real utility loss may be much larger than ``U(S)``.
A budget on the sum ``U(S)`` (:func:`pareto_trim`) is therefore weaker than it looks;
the per-sample condition of :func:`constrained_trim` does not rely on additivity. Retrain
to measure the real effect.

Selections
----------
Candidates are always the samples harmful to the objective (``I_f < 0``); at most
``k`` (the budget) are removed.

* :func:`constrained_trim` — per-sample constraint: among candidates with
  ``I_u ≤ τ``, remove the ``k`` most harmful (most negative ``I_f``).
* :func:`scalarized_trim` — Lagrangian scalarization: minimize ``F(S) + μ·U(S)`` over
  candidate sets with ``|S| ≤ k``; the solution removes the (up to ``k``) candidates with
  the most negative score ``I_f + μ·I_u``, keeping only negative scores. ``μ`` is given
  through a weight ``w ∈ [0, 1]`` on normalized influences (see :func:`scalarized_trim`).
  ``w = 0`` is plain trimming restricted to harmful samples.
* :func:`pareto_trim` — budgeted utility loss: maximize the objective gain subject to
  ``U(S) ≤ B`` and ``|S| ≤ k``, a knapsack with a count constraint. It is solved by its
  Lagrangian relaxation: the smallest weight whose scalarized selection satisfies
  ``U ≤ B`` (bisection). The result is optimal among all candidate sets of at most ``k``
  samples with the same or a lower predicted utility change (a supported Pareto point),
  though its ``U`` may stay below ``B`` where the front jumps. Unlike a greedy by
  ratio ``−I_f / I_u``, it does not spend the count budget on samples with tiny gain
  and tinier cost.
* :func:`tradeoff_front` — the predicted ``(U, F)`` of :func:`scalarized_trim` over a grid
  of weights: ``U`` is non-increasing and ``F`` non-decreasing in the weight (for
  ``μ₁ < μ₂`` optimality gives ``F₁ + μ₁U₁ ≤ F₂ + μ₁U₂`` and ``F₂ + μ₂U₂ ≤ F₁ + μ₂U₁``;
  adding, ``(μ₂ − μ₁)(U₁ − U₂) ≥ 0``).

All functions are pure: they read the influence table and return a boolean *keep* mask
(``True`` = keep the row) or a new table; the input is never modified.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from leanfit.checks import check_fraction, check_number
from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection.influence import check_keep_mask
from leanfit.selection.policies.trimming import resolve_budget

#: Bisection steps of :func:`pareto_trim` on the weight in [0, 1] (float64 resolution).
_BISECTION_STEPS = 60


def _columns(
    influence: pd.DataFrame, objective: str, utility: str
) -> tuple[np.ndarray, np.ndarray]:
    """The objective and utility influences as float64 arrays of shape ``(n,)``."""
    if not isinstance(influence, pd.DataFrame):
        raise bad_value(
            "influence", type(influence).__name__, "a DataFrame from InfluenceSelector.influence"
        )
    if objective == utility:
        raise bad_value("objective", objective, f"a column other than utility={utility!r}")
    for name, column in [("objective", objective), ("utility", utility)]:
        if column not in influence.columns:
            raise bad_value(name, column, f"a column of influence ({list(influence.columns)})")
    values = []
    for column in (objective, utility):
        array = pd.to_numeric(influence[column], errors="coerce").to_numpy(dtype=np.float64)
        if array.size < 2 or not np.all(np.isfinite(array)):
            raise bad_value(
                "influence",
                f"column {column!r} with {array.size} rows",
                "at least two finite numbers per column",
            )
        values.append(array)
    return values[0], values[1]


def _remove_first(order: np.ndarray, count: int, n: int) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[order[:count]] = False
    return keep


def constrained_trim(
    influence: pd.DataFrame,
    budget: int | float,
    *,
    objective: str = "fairness",
    utility: str = "utility",
    tolerance: float = 0.0,
) -> np.ndarray:
    """Remove the most objective-harmful samples whose removal does not cost utility.

    Candidates: ``I_f(zᵢ) < 0`` (harmful to the objective) and ``I_u(zᵢ) ≤ τ`` (removing
    the sample raises the validation log-loss by at most ``τ``, to first order). The
    ``budget`` candidates with the most negative ``I_f`` are removed; fewer if there are
    not enough candidates.

    Parameters
    ----------
    influence : DataFrame, n rows
        Influence table with columns ``objective`` and ``utility`` (positive =
        beneficial, negative = harmful). Not modified.
    budget : int or float
        Count in ``[1, n − 1]`` or fraction in ``(0, 1)`` of the ``n`` rows
        (:meth:`leanfit.selection.Budget.of`).
    objective, utility : str
        Column names of ``I_f`` and ``I_u``.
    tolerance : float, default 0.0
        ``τ``, in units of the utility column (summed validation log-loss). ``0``: only
        samples that are neutral or harmful for utility; ``+inf`` is refused (use
        :func:`leanfit.selection.trim` with ``only_harmful=True``).

    Returns
    -------
    ndarray of bool, shape (n,)
        ``True`` for the rows to keep. Ties broken by position.
    """
    harm, cost = _columns(influence, objective, utility)
    tau = check_number("tolerance", tolerance)
    count = resolve_budget(budget, harm.size)
    candidates = np.flatnonzero((harm < 0) & (cost <= tau))
    order = candidates[np.argsort(harm[candidates], kind="stable")]
    return _remove_first(order, count, harm.size)


def _scale(values: np.ndarray) -> float:
    """Mean absolute value, or 1 for an all-zero column (nothing to normalize)."""
    scale = float(np.mean(np.abs(values)))
    return scale if scale > 0 else 1.0


def _scalarized_order(harm: np.ndarray, cost: np.ndarray, weight: float) -> np.ndarray:
    """Candidates with a negative normalized score, most negative first."""
    score = (1.0 - weight) * harm / _scale(harm) + weight * cost / _scale(cost)
    candidates = np.flatnonzero((harm < 0) & (score < 0))
    return candidates[np.argsort(score[candidates], kind="stable")]


def scalarized_trim(
    influence: pd.DataFrame,
    budget: int | float,
    *,
    utility_weight: float,
    objective: str = "fairness",
    utility: str = "utility",
) -> np.ndarray:
    """Remove the samples minimizing ``F(S) + μ·U(S)``: objective gain vs. utility loss.

    With normalized influences ``Ĩ_f = I_f / mean|I_f|`` and ``Ĩ_u = I_u / mean|I_u|``
    (means over all ``n`` rows), each candidate (``I_f < 0``) gets the score

        sᵢ = (1 − w)·Ĩ_f(zᵢ) + w·Ĩ_u(zᵢ),

    and the (up to ``budget``) candidates with the most negative scores ``sᵢ < 0`` are
    removed. This minimizes ``Σ_S sᵢ`` over candidate sets with ``|S| ≤ k``, i.e.
    ``F(S) + μ·U(S)`` with ``μ = (w / (1 − w))·mean|I_f| / mean|I_u|``. A sample whose
    removal is predicted to *improve* utility (``I_u < 0``) is favoured, one whose
    removal loses utility is penalized in proportion to the loss.

    Parameters
    ----------
    influence : DataFrame, n rows
        Influence table with columns ``objective`` and ``utility``. Not modified.
    budget : int or float
        Maximum number (or fraction) of rows removed.
    utility_weight : float in [0, 1]
        ``w``: ``0`` = plain trimming of the harmful samples by ``I_f``; ``1`` = among
        the samples harmful to the objective, remove those most harmful to utility.
    objective, utility : str
        Column names of ``I_f`` and ``I_u``.

    Returns
    -------
    ndarray of bool, shape (n,)
        ``True`` for the rows to keep.
    """
    harm, cost = _columns(influence, objective, utility)
    weight = check_fraction("utility_weight", utility_weight)
    count = resolve_budget(budget, harm.size)
    return _remove_first(_scalarized_order(harm, cost, weight), count, harm.size)


def _predicted(
    harm: np.ndarray, cost: np.ndarray, order: np.ndarray, count: int
) -> tuple[float, float, int]:
    chosen = order[:count]
    return float(harm[chosen].sum()), float(cost[chosen].sum()), int(chosen.size)


def pareto_trim(
    influence: pd.DataFrame,
    budget: int | float,
    *,
    max_utility_loss: float = 0.0,
    objective: str = "fairness",
    utility: str = "utility",
) -> np.ndarray:
    """Largest predicted objective gain with a predicted utility loss of at most ``B``.

    Solves ``min F(S)`` subject to ``U(S) ≤ B`` and ``|S| ≤ k`` over sets of samples
    harmful to the objective by its Lagrangian relaxation: the smallest weight ``w`` of
    :func:`scalarized_trim` whose selection satisfies ``U ≤ B`` (``U`` is non-increasing
    in ``w``), found by bisection on ``[0, 1]``. If plain trimming of the harmful
    samples (``w = 0``) already satisfies the constraint, that is the result.

    Parameters
    ----------
    influence : DataFrame, n rows
        Influence table with columns ``objective`` and ``utility``. Not modified.
    budget : int or float
        Maximum number (or fraction) of rows removed.
    max_utility_loss : float, default 0.0
        ``B``, in units of the utility column (summed validation log-loss): ``0`` =
        the removals together must not be predicted to raise the validation loss;
        negative = require a predicted utility gain.
    objective, utility : str
        Column names of ``I_f`` and ``I_u``.

    Returns
    -------
    ndarray of bool, shape (n,)
        ``True`` for the rows to keep.

    Raises
    ------
    BadInputError
        If no selection reaches ``U ≤ B`` (possible only for ``B < 0``).
    """
    harm, cost = _columns(influence, objective, utility)
    limit = check_number("max_utility_loss", max_utility_loss)
    count = resolve_budget(budget, harm.size)

    def utility_change(weight: float) -> tuple[float, np.ndarray]:
        order = _scalarized_order(harm, cost, weight)
        return _predicted(harm, cost, order, count)[1], order

    low_value, order = utility_change(0.0)
    if low_value <= limit:
        return _remove_first(order, count, harm.size)
    high_value, best = utility_change(1.0)
    if high_value > limit:
        raise BadInputError(
            f"max_utility_loss={limit!r} cannot be met with at most {count} removals: the "
            f"lowest predicted utility change reachable is {high_value:.6g}"
        )
    low, high = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        value, order = utility_change(middle)
        if value <= limit:
            high, best = middle, order
        else:
            low = middle
    return _remove_first(best, count, harm.size)


def predicted_change(influence: pd.DataFrame, keep: ArrayLike) -> pd.Series:
    """First-order predicted change of every cost when the rows with ``keep = False`` go.

    Parameters
    ----------
    influence : DataFrame, n rows
        Influence table (numeric columns). Not modified.
    keep : array-like of bool, shape (n,)

    Returns
    -------
    Series
        ``Σ_{i removed} I_c(zᵢ)`` per column ``c``: negative = the cost is predicted to
        fall (improve); for ``utility``, positive = predicted utility loss.
    """
    if not isinstance(influence, pd.DataFrame):
        raise bad_value("influence", type(influence).__name__, "a DataFrame")
    mask = check_keep_mask(keep, len(influence))
    return influence.loc[~mask].sum(axis=0, numeric_only=True)


def tradeoff_front(
    influence: pd.DataFrame,
    budget: int | float,
    *,
    weights: ArrayLike | None = None,
    objective: str = "fairness",
    utility: str = "utility",
) -> pd.DataFrame:
    """The predicted utility–objective trade-off of :func:`scalarized_trim` over weights.

    Parameters
    ----------
    influence : DataFrame, n rows
        Influence table with columns ``objective`` and ``utility``. Not modified.
    budget : int or float
        Maximum number (or fraction) of rows removed at every weight.
    weights : sequence of float in [0, 1], optional
        Utility weights ``w``; default 21 evenly spaced values from 0 to 1.
    objective, utility : str
        Column names of ``I_f`` and ``I_u``.

    Returns
    -------
    DataFrame
        One row per weight (sorted by weight) with ``utility_weight``, ``n_removed``,
        ``objective_change`` ``F(S) = Σ I_f`` (≤ 0: predicted objective gain) and
        ``utility_change`` ``U(S) = Σ I_u`` (> 0: predicted utility loss). ``F`` is
        non-decreasing and ``U`` non-increasing down the rows (see the module docstring).
    """
    harm, cost = _columns(influence, objective, utility)
    count = resolve_budget(budget, harm.size)
    grid = np.linspace(0.0, 1.0, 21) if weights is None else np.asarray(weights, dtype=object)
    if grid.ndim != 1 or grid.size == 0:
        raise bad_value("weights", weights, "a non-empty 1-D sequence of numbers in [0, 1]")
    rows = []
    for weight in sorted(check_fraction("weights", w) for w in grid):
        change, loss, removed = _predicted(harm, cost, _scalarized_order(harm, cost, weight), count)
        rows.append(
            {
                "utility_weight": weight,
                "n_removed": removed,
                "objective_change": change,
                "utility_change": loss,
            }
        )
    return pd.DataFrame(rows)
