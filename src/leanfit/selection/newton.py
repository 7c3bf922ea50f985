"""Damped Newton minimization of a smooth, strictly convex objective: the one solver behind
:class:`~leanfit.selection.LogisticRegressionL2` (rows in memory) and
:func:`~leanfit.selection.scale.newton_fit` (sums over chunks of rows).

Iteration: ``Δ = H(θ)⁻¹ ∇L(θ)`` by Cholesky; stop when ``‖Δ‖∞ ≤ tol · max(1, ‖θ‖∞)``. The
full step ``θ − Δ`` is taken once the Newton decrement ``∇Lᵀ H⁻¹ ∇L`` (≈ 2 (L(θ) − min L)) is
below 1e-2, where the quadratic model is exact to rounding; before that, backtracking halves
the step until the Armijo condition ``L(θ − tΔ) ≤ L(θ) − 1e-4 · t · decrement`` holds.

Chord steps. With the Cholesky factor of a Hessian ``H₀`` taken near the current iterate
(that of the previous Newton step, or of a warm start's optimum passed as ``chord``: a refit
after removing a few rows), steps ``Δₖ = H₀⁻¹ ∇L(θₖ)`` need a gradient each and no new
Hessian (a Hessian costs about ``p/2`` gradients). Near the optimum ``θ*`` they contract the
error linearly, ``θₖ₊₁ − θ* ≈ (I − H₀⁻¹ H*)(θₖ − θ*)``, at a rate ``ρ ≈ ‖I − H₀⁻¹ H*‖``; the
ratio ``q = ‖Δₖ‖ / ‖Δₖ₋₁‖`` of successive steps measures it. Chord steps are taken before
every Newton step while they shrink by half (``q ≤ 1/2``) and lower the objective (while
that is still above rounding); then Newton computes a new Hessian, whose factor serves the
next chord steps (Shamanskii's variant of Newton). The chord steps stop *converged* when a
step that shrank by half meets the tolerance: the step is taken, and the error left, at most
``q/(1 − q) ‖Δₖ‖ ≤ ‖Δₖ‖`` for a contraction with ``q ≤ 1/2``, is within the tolerance, as
after Newton's last step. The Hessian at the final θ is then factored only if
``factor=True`` (a refit that is only evaluated does not need it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

from leanfit.exceptions import LeanfitError

ValueAndGradient = Callable[[np.ndarray], tuple[float, np.ndarray]]
"""``θ (p,) ↦ (L(θ), ∇L(θ) (p,))``."""

Hessian = Callable[[np.ndarray], np.ndarray]
"""``θ (p,) ↦ ∇²L(θ) (p, p)``, symmetric positive definite."""

FULL_STEP_DECREMENT = 1e-2
"""Below this Newton decrement the full step is taken without a line search."""

ARMIJO = 1e-4
"""Fraction of the predicted decrease a backtracked step must achieve."""

MAX_CHORD_STEPS = 50
"""Chord steps at most before Newton takes over (each costs one gradient)."""


@dataclass(frozen=True)
class NewtonResult:
    """The minimizer found and how.

    Attributes
    ----------
    theta : ndarray of shape (p,)
    factor : tuple or None
        ``scipy.linalg.cho_factor`` of the Hessian at ``theta``; None when chord steps
        converged and ``minimize`` was called with ``factor=False``.
    n_iter : int
        Newton steps taken, i.e. Hessians computed before the last (chord steps not
        counted).
    converged : bool
        False when ``max_iter`` Newton steps did not meet the tolerance.
    """

    theta: np.ndarray
    factor: Any
    n_iter: int
    converged: bool


def hessian_factor(hessian: np.ndarray) -> Any:
    """``cho_factor`` of a Hessian; a ``LeanfitError`` if it is not positive definite."""
    try:
        return cho_factor(hessian)
    except LinAlgError as err:
        raise LeanfitError("the Hessian is not positive definite; increase l2_reg") from err


def _small(step: np.ndarray, theta: np.ndarray, tol: float) -> bool:
    return bool(np.max(np.abs(step)) <= tol * max(1.0, float(np.max(np.abs(theta)))))


def _chord(
    value_and_gradient: ValueAndGradient,
    theta: np.ndarray,
    loss: float,
    grad: np.ndarray,
    chord: Any,
    tol: float,
) -> tuple[np.ndarray, tuple[float, np.ndarray] | None]:
    """Chord steps from ``theta`` while they lower the objective and shrink by half.

    Returns the last iterate and its ``(L, ∇L)``, or None in their place when it meets the
    tolerance (converged; its objective is then not evaluated).
    """
    previous = np.inf
    for _ in range(MAX_CHORD_STEPS):
        step = cho_solve(chord, grad)
        size = float(np.max(np.abs(step)))
        if size > 0.5 * previous:
            break
        candidate = theta - step
        if np.isfinite(previous) and _small(step, candidate, tol):
            return candidate, None  # a contraction (q ≤ 1/2): the error left is ≤ this step
        if _small(step, theta, tol):
            break
        new_loss, new_grad = value_and_gradient(candidate)
        # Near the optimum the change of L is rounding: the shrinking step is the check there.
        if not (new_loss <= loss or float(grad @ step) < FULL_STEP_DECREMENT):
            break
        theta, loss, grad, previous = candidate, new_loss, new_grad, size
    return theta, (loss, grad)


def minimize(
    value_and_gradient: ValueAndGradient,
    hessian: Hessian,
    theta: np.ndarray,
    *,
    tol: float,
    max_iter: int,
    chord: Any = None,
    factor: bool = True,
    reuse: bool = True,
) -> NewtonResult:
    """Minimize ``L`` from ``theta`` (see the module docstring for the iteration).

    Parameters
    ----------
    value_and_gradient, hessian
        The objective's value and gradient, and its Hessian, at any θ.
    theta : ndarray of shape (p,)
        Starting point (not modified).
    tol : float
        Stop when ``‖Δθ‖∞ ≤ tol · max(1, ‖θ‖∞)``.
    max_iter : int
        Newton steps at most.
    chord : tuple, optional
        ``cho_factor`` of a Hessian near the optimum (a warm start's): chord steps first.
    reuse : bool, default True
        Chord steps with the factor of every Newton step; False when a gradient costs as
        much as a Hessian (one pass over chunked data yields both).
    factor : bool, default True
        Return the Cholesky factor of the Hessian at the minimizer even when chord steps
        converged (one more Hessian); with False, ``NewtonResult.factor`` is then None.

    Raises
    ------
    LeanfitError
        A Hessian is not positive definite.
    """
    loss, grad = value_and_gradient(theta)
    factored = chord
    for iteration in range(max_iter + 1):
        if factored is not None:
            theta, state = _chord(value_and_gradient, theta, loss, grad, factored, tol)
            if state is None and not factor:
                return NewtonResult(theta, None, iteration, True)
            loss, grad = value_and_gradient(theta) if state is None else state
        factored = hessian_factor(hessian(theta))
        step = cho_solve(factored, grad)
        if _small(step, theta, tol):
            return NewtonResult(theta, factored, iteration, True)
        if iteration == max_iter:
            return NewtonResult(theta, factored, iteration, False)
        decrement = float(grad @ step)
        t = 1.0
        while True:
            candidate = theta - t * step
            new_loss, new_grad = value_and_gradient(candidate)
            full = decrement < FULL_STEP_DECREMENT
            if full or new_loss <= loss - ARMIJO * t * decrement or t < 1e-12:
                break
            t *= 0.5
        theta, loss, grad = candidate, new_loss, new_grad
        if not reuse:
            factored = None
    raise AssertionError("unreachable: the loop returns at max_iter")  # pragma: no cover
