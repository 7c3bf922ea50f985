"""Adversarial perturbations of inputs to a linear classifier ``z = wᵀx + b``.

Two attacks, both on the model's input space (after preprocessing):

* **overshoot** (the paper's): every point is moved along ``w`` across the boundary,
  ``x̃ = x − c · (wᵀx + b)/‖w‖² · w`` with ``c = 1.3``, so that ``z(x̃) = (1 − c) z(x)``:
  the sign of the decision flips for the model the attack was computed from. The points
  are computed once from a reference model and then held fixed.
* **worst case in a norm ball**: ``min_{‖δ‖ ≤ ε} y±·(wᵀ(x+δ) + b) = y±·z − ε‖w‖_*`` where
  ``y± = 2y − 1`` and ``‖·‖_*`` is the dual norm (L2 → L2, L∞ → L1). Closed form, exact for
  linear models.
"""

from __future__ import annotations

import numpy as np

from leanfit.checks import check_choice, check_number
from leanfit.exceptions import BadInputError

NORMS = ("l2", "linf")


def check_norm(norm: str) -> str:
    """Return ``norm`` if it is ``"l2"`` or ``"linf"``, else raise naming ``norm``."""
    return check_choice("norm", norm, NORMS)


def check_eps(eps: float) -> float:
    """Return ``eps`` as float if it is finite and >= 0, else raise naming ``eps``."""
    return check_number("eps", eps, low=0)


def dual_norm(w: np.ndarray, norm: str) -> float:
    """``‖w‖_*`` for the ball ``‖δ‖ ≤ ε``: ``‖w‖₂`` for ``"l2"``, ``‖w‖₁`` for ``"linf"``."""
    return float(np.linalg.norm(w, 2 if check_norm(norm) == "l2" else 1))


def dual_norm_gradient(w: np.ndarray, norm: str) -> np.ndarray:
    """Gradient of ``‖w‖_*``: ``w/‖w‖₂`` (L2) or ``sign(w)`` (L∞ ball, L1 dual), shape ``(d,)``.

    Not differentiable at ``w = 0`` (L2) or where a coordinate is 0 (L1); the subgradient
    0 is returned there.
    """
    if check_norm(norm) == "l2":
        length = np.linalg.norm(w)
        return w / length if length > 0 else np.zeros_like(w)
    return np.sign(w)


def overshoot_attack(
    X: np.ndarray, coef: np.ndarray, intercept: float = 0.0, factor: float = 1.3
) -> np.ndarray:
    """The paper's attack ``x̃ = x − factor · (wᵀx + b)/‖w‖² · w``, shape ``(n, d)``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    coef, intercept
        ``w`` of shape ``(d,)`` and ``b`` of the reference model.
    factor : float, default 1.3
        ``> 1`` crosses the boundary: ``z(x̃) = (1 − factor) z(x)`` for the reference model.
    """
    w = np.asarray(coef, dtype=np.float64).ravel()
    squared = float(w @ w)
    if squared == 0.0:
        raise BadInputError("coef must not be all zero for the overshoot attack")
    return X - np.outer(factor * (X @ w + intercept) / squared, w)


def worst_case_margins(
    X: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float, eps: float, norm: str
) -> np.ndarray:
    """Smallest signed margins ``(2y − 1)(wᵀx + b) − ε‖w‖_*`` over the ε-ball, shape ``(n,)``.

    A point is robustly correctly classified iff its worst-case margin is ``> 0``.
    """
    w = np.asarray(coef, dtype=np.float64).ravel()
    return (2.0 * y - 1.0) * (X @ w + intercept) - check_eps(eps) * dual_norm(w, norm)
