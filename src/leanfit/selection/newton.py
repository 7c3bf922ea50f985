"""Damped Newton minimization of a smooth, strictly convex objective: the one solver behind
:class:`~leanfit.selection.LogisticRegressionL2` (rows in memory) and
:func:`~leanfit.selection.scale.newton_fit` (sums over chunks of rows).

Iteration: ``Δ = H(θ)⁻¹ ∇L(θ)`` by Cholesky; stop when ``‖Δ‖∞ ≤ tol · max(1, ‖θ‖∞)``. The
full step ``θ − Δ`` is taken once the Newton decrement ``∇Lᵀ H⁻¹ ∇L`` (≈ 2 (L(θ) − min L)) is
below 1e-2, where the quadratic model is exact to rounding; before that, backtracking halves
the step until the Armijo condition ``L(θ − tΔ) ≤ L(θ) − 1e-4 · t · decrement`` holds.

Warm start (a refit after removing a few rows) may pass the Cholesky factor of the old
Hessian as ``chord``: steps ``Δ = H₀⁻¹ ∇L(θ)`` then need a gradient each and no new Hessian.
They converge linearly, at a rate of about ``‖I − H₀⁻¹ H‖``, small when few rows changed; the
chord steps stop as soon as a step fails to shrink by half, or to lower the objective while
that is still above rounding, and Newton continues from there. Either way the result is
Newton's: the same stopping rule, and the factor returned is that of the Hessian at the
final θ.
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
    factor : tuple
        ``scipy.linalg.cho_factor`` of the Hessian at ``theta``.
    n_iter : int
        Newton steps taken (chord steps not counted).
    converged : bool
        False when ``max_iter`` Newton steps did not meet the tolerance.
    """

    theta: np.ndarray
    factor: Any
    n_iter: int
    converged: bool


def _factor(hessian: np.ndarray) -> Any:
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
) -> tuple[np.ndarray, float, np.ndarray]:
    """Chord steps from ``theta`` while they lower the objective and shrink by half."""
    previous = np.inf
    for _ in range(MAX_CHORD_STEPS):
        step = cho_solve(chord, grad)
        size = float(np.max(np.abs(step)))
        if _small(step, theta, tol) or size > 0.5 * previous:
            break
        candidate = theta - step
        new_loss, new_grad = value_and_gradient(candidate)
        # Near the optimum the change of L is rounding: the shrinking step is the check there.
        if not (new_loss <= loss or float(grad @ step) < FULL_STEP_DECREMENT):
            break
        theta, loss, grad, previous = candidate, new_loss, new_grad, size
    return theta, loss, grad


def minimize(
    value_and_gradient: ValueAndGradient,
    hessian: Hessian,
    theta: np.ndarray,
    *,
    tol: float,
    max_iter: int,
    chord: Any = None,
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

    Raises
    ------
    LeanfitError
        A Hessian is not positive definite.
    """
    loss, grad = value_and_gradient(theta)
    if chord is not None:
        theta, loss, grad = _chord(value_and_gradient, theta, loss, grad, chord, tol)
    for iteration in range(max_iter + 1):
        factor = _factor(hessian(theta))
        step = cho_solve(factor, grad)
        if _small(step, theta, tol):
            return NewtonResult(theta, factor, iteration, True)
        if iteration == max_iter:
            return NewtonResult(theta, factor, iteration, False)
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
    raise AssertionError("unreachable: the loop returns at max_iter")  # pragma: no cover
