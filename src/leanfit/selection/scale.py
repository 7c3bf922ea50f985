"""Influence on data too large for memory: Newton fitting and scoring over chunks of rows.

:class:`~leanfit.selection.InfluenceSelector` keeps the preprocessed training matrix
(n × d float64) and builds ``√a ⊙ X`` (another n × d) for the Hessian. Here the rows are
only ever seen a chunk at a time, so memory is O(chunk · d + p²) whatever n:

* every Newton iteration is one pass over the chunks accumulating the summed loss, gradient
  and Hessian of the data terms (:func:`chunk_statistics`; the sums are exact
  decompositions of the full-data ones, the regularizer is added once);
* the influence of every row is ``∇θℓ(zᵢ; θ̂)ᵀ H⁻¹ ∇θf(θ̂)`` (same maths, sign and summed-loss
  convention as :mod:`leanfit.selection.influence`), yielded chunk by chunk.

The Newton loop (:func:`newton_fit`) only needs a function ``θ ↦ Σ chunk statistics``, so the
same code runs on a Dask cluster (:mod:`leanfit.selection.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from leanfit.exceptions import BadInputError
from leanfit.selection._validation import binary_groups, check_binary_labels, check_matrix
from leanfit.selection.models import (
    LogisticRegressionL2,
    decision,
    log_loss_terms,
    objective_hessian,
    per_sample_gradients,
    pullback,
    residuals,
)
from leanfit.selection.newton import minimize
from leanfit.selection.objectives import ObjectiveSpec, resolve_objectives

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class ChunkStats:
    """Sums over a set of rows of the data terms at one θ (no regularizer).

    Attributes
    ----------
    loss : float
        ``Σᵢ ℓᵢ``.
    gradient : ndarray (p,)
        ``Σᵢ (σ(zᵢ) − yᵢ) x̃ᵢ``.
    hessian : ndarray (p, p)
        ``Σᵢ σᵢ(1 − σᵢ) x̃ᵢ x̃ᵢᵀ``.
    n_rows, n_positive : int
        Rows seen and rows with y = 1.
    """

    loss: float
    gradient: np.ndarray
    hessian: np.ndarray
    n_rows: int
    n_positive: int

    def __add__(self, other: ChunkStats) -> ChunkStats:
        return ChunkStats(
            self.loss + other.loss,
            self.gradient + other.gradient,
            self.hessian + other.hessian,
            self.n_rows + other.n_rows,
            self.n_positive + other.n_positive,
        )


def _check_chunk(X: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    X = check_matrix(X, "X chunk")
    return X, check_binary_labels(y, "y chunk", n=X.shape[0])


def chunk_statistics(theta: np.ndarray, X: ArrayLike, y: ArrayLike) -> ChunkStats:
    """:class:`ChunkStats` of the rows ``X`` (k, d), ``y`` (k,) at ``theta`` (p,)."""
    X, y = _check_chunk(X, y)
    z = decision(theta, X)
    hessian = objective_hessian(theta, X, 0.0)  # λ = 0: data terms only
    return ChunkStats(
        float(log_loss_terms(z, y).sum()),
        pullback(theta, X, residuals(z, y)),
        hessian,
        int(X.shape[0]),
        int(y.sum()),
    )


def newton_fit(
    statistics: Callable[[np.ndarray], ChunkStats],
    n_features: int,
    *,
    l2_reg: float = 1.0,
    fit_intercept: bool = False,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> LogisticRegressionL2:
    """Damped Newton on ``L(θ) = Σᵢ ℓᵢ + (λ/2)‖w‖²`` given the data sums at any θ.

    The solver of :class:`LogisticRegressionL2` (:func:`leanfit.selection.newton.minimize`),
    so both reach the same optimum to the tolerance. Each call of ``statistics`` is one pass
    over the data; the Hessian at a point comes from the pass that gave its gradient.

    Parameters
    ----------
    statistics : callable
        ``θ (p,) ↦ ChunkStats`` summed over all training rows.
    n_features : int
        d; ``p = d + fit_intercept``.

    Returns
    -------
    LogisticRegressionL2
        Fitted: ``theta_``, ``coef_``, ``intercept_``, ``hessian_cholesky_``, ``n_iter_``,
        so ``solve_hessian`` and ``predict`` work as after ``fit``.
    """
    model = LogisticRegressionL2(l2_reg, fit_intercept=fit_intercept, tol=tol, max_iter=max_iter)
    model._check_params()
    penalty = np.ones(n_features + int(fit_intercept))
    penalty[n_features:] = 0.0  # the intercept is not penalized
    last: dict[str, tuple[np.ndarray, ChunkStats]] = {}

    def stats_at(theta: np.ndarray) -> ChunkStats:
        """One pass over the data at ``theta`` (the last pass is reused for its Hessian)."""
        if "pass" not in last or not np.array_equal(last["pass"][0], theta):
            last["pass"] = (theta.copy(), statistics(theta))
        return last["pass"][1]

    def value_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        stats = stats_at(theta)
        loss = stats.loss + 0.5 * l2_reg * float(penalty @ theta**2)
        return loss, stats.gradient + l2_reg * penalty * theta

    def hessian(theta: np.ndarray) -> np.ndarray:
        return stats_at(theta).hessian + np.diag(l2_reg * penalty)

    theta = np.zeros(n_features + int(fit_intercept))
    stats = stats_at(theta)
    if stats.n_positive in (0, stats.n_rows):
        raise BadInputError(
            f"y must contain both classes 0 and 1; got {stats.n_positive} ones in "
            f"{stats.n_rows} rows"
        )
    # One pass gives the gradient and the Hessian: chord steps would save nothing.
    found = minimize(value_and_gradient, hessian, theta, tol=tol, max_iter=max_iter, reuse=False)
    return model._set_solution(found, n_features)


def _first_width(chunks: Chunks) -> int:
    for X, _ in chunks():
        return check_matrix(X, "X chunk").shape[1]
    raise BadInputError("chunks() yielded no rows")


def fit_chunks(
    chunks: Chunks,
    *,
    l2_reg: float = 1.0,
    fit_intercept: bool = False,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> LogisticRegressionL2:
    """Fit the L2 logistic regression on rows streamed in chunks.

    Parameters
    ----------
    chunks : callable
        ``chunks()`` returns a fresh iterable of ``(X_chunk (k, d), y_chunk (k,))`` covering
        the training rows, in the same order at every call (it is called once per Newton
        pass), e.g. a generator reading a file piece by piece.
    """

    def statistics(theta: np.ndarray) -> ChunkStats:
        total = None
        for X, y in chunks():
            part = chunk_statistics(theta, X, y)
            total = part if total is None else total + part
        if total is None:
            raise BadInputError("chunks() yielded no rows")
        return total

    return newton_fit(
        statistics,
        _first_width(chunks),
        l2_reg=l2_reg,
        fit_intercept=fit_intercept,
        tol=tol,
        max_iter=max_iter,
    )


def influence_directions(
    model: LogisticRegressionL2,
    X_val: ArrayLike,
    y_val: ArrayLike,
    *,
    objective: ObjectiveSpec = "utility",
    sensitive: ArrayLike | None = None,
) -> tuple[np.ndarray, list[str]]:
    """``H⁻¹ ∇θf(θ̂)`` for each objective, shape (p, k), and the objective names.

    ``X_val`` (m, d) is in model space (already preprocessed), ``sensitive`` 0/1 (m,)
    when a fairness objective needs it.
    """
    X_val = check_matrix(X_val, "X_val")
    y_val = check_binary_labels(y_val, "y_val", n=X_val.shape[0])
    s = None if sensitive is None else binary_groups(sensitive, "sensitive", n=X_val.shape[0])
    objectives = resolve_objectives(objective)
    theta = model.theta_
    prepared = [o.prepare(theta, X_val, y_val, s) for o in objectives]
    gradients = np.column_stack([o.gradient(theta, X_val, y_val, s) for o in prepared])
    return model.solve_hessian(gradients), [o.name for o in objectives]


def influence_chunks(
    model: LogisticRegressionL2,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    directions: ArrayLike,
) -> Iterator[np.ndarray]:
    """Influence of every training row, chunk by chunk: ``∇θℓ(zᵢ; θ̂)ᵀ H⁻¹∇f``, shape (k, n_obj).

    Positive = beneficial (removing the row would raise the cost), as in
    :meth:`InfluenceSelector.influence`.
    """
    directions = np.asarray(directions, dtype=np.float64)
    for X, y in chunks:
        X, y = _check_chunk(X, y)
        yield per_sample_gradients(model.theta_, X, y) @ directions
