"""L2-regularized logistic regression with exact gradients, Hessian and Hessian solves.

Conventions used throughout :mod:`leanfit.selection`
---------------------------------------------------

* Inputs ``X`` have shape ``(n, d)`` (float64), labels ``y`` shape ``(n,)`` with values in
  ``{0, 1}``; 1 is the favourable (positive) class.
* The parameter vector is ``theta = [w_1 … w_d]`` without an intercept and
  ``theta = [w_1 … w_d, b]`` with one: length ``p = d`` or ``p = d + 1``. The pure functions
  below infer the layout from ``len(theta)`` (``d + 1`` means "last entry is the intercept").
* Decision value ``z = Xw + b`` (``b = 0`` without intercept), probability ``σ(z)`` of class 1.
* Per-sample loss ``ℓ(x, y; θ) = log(1 + exp(z)) − y z`` (the log-loss, natural log).
* Training objective, summed over samples (not averaged), intercept unregularized::

      L(θ) = Σᵢ sᵢ ℓ(xᵢ, yᵢ; θ) + (λ/2) ‖w‖²

  with optional sample weights ``sᵢ ≥ 0`` (1 by default).
* ``∇θ ℓᵢ = (σ(zᵢ) − yᵢ) x̃ᵢ`` with ``x̃ᵢ = [xᵢ, 1]`` (intercept) or ``xᵢ``.
* ``H = ∇²L = Σᵢ sᵢ σ(zᵢ)(1 − σ(zᵢ)) x̃ᵢ x̃ᵢᵀ + λ·diag(1, …, 1[, 0])``, positive definite for
  ``λ > 0`` (the intercept's block is positive as soon as one probability is in (0, 1)).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.linalg import cho_solve
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import Tags

from leanfit.exceptions import BadInputError, LeanfitError, bad_value
from leanfit.selection._validation import check_fitted, check_matrix, two_classes
from leanfit.selection.design import Design, dense_design, design
from leanfit.selection.newton import NewtonResult, minimize

# ---------------------------------------------------------------------------------------
# Pure functions of theta
# ---------------------------------------------------------------------------------------


def has_intercept(theta: np.ndarray, n_features: int) -> bool:
    """Whether ``theta`` (length ``d`` or ``d + 1``) carries an intercept as its last entry."""
    if theta.shape == (n_features,):
        return False
    if theta.shape == (n_features + 1,):
        return True
    raise BadInputError(
        f"theta must have length {n_features} or {n_features + 1} for X with "
        f"{n_features} columns; got shape {theta.shape}"
    )


def split_theta(theta: np.ndarray, n_features: int) -> tuple[np.ndarray, float]:
    """Split ``theta`` into weights ``w`` of shape ``(d,)`` and intercept ``b`` (0.0 if none)."""
    if has_intercept(theta, n_features):
        return theta[:n_features], float(theta[n_features])
    return theta, 0.0


def decision(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Decision values ``z = Xw + b``, shape ``(n,)``."""
    w, b = split_theta(theta, X.shape[1])
    return X @ w + b


def pullback(theta: np.ndarray, X: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. ``theta`` of ``Σⱼ cⱼ zⱼ(θ)`` (``c`` held fixed), shape ``(p,)``.

    Every objective of a linear model is a function of the decision values, so its gradient
    is ``Σⱼ (∂f/∂zⱼ) x̃ⱼ``: this helper applies that chain rule.
    """
    grad_w = X.T @ c
    if has_intercept(theta, X.shape[1]):
        return np.append(grad_w, c.sum())
    return grad_w


def log_loss_terms(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample log-loss ``log(1 + e^z) − y z`` from decision values, shape ``(n,)``.

    Computed as ``logaddexp(0, z) − y z``, accurate for large ``|z|``.
    """
    return np.logaddexp(0.0, z) - y * z


def residuals(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``σ(z) − y`` for 0/1 labels, shape ``(n,)``.

    Computed as ``−σ(−z)`` where ``y = 1``, so that confidently correct points keep a
    tiny non-zero residual instead of rounding to exactly 0.
    """
    return np.where(y == 1, -expit(-z), expit(z))


def _weights(sample_weight: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n) if sample_weight is None else sample_weight


def objective(
    theta: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    l2_reg: float,
    sample_weight: np.ndarray | None = None,
) -> float:
    """Training objective ``L(θ) = Σᵢ sᵢ ℓᵢ + (λ/2)‖w‖²`` (intercept not penalized)."""
    w, _ = split_theta(theta, X.shape[1])
    s = _weights(sample_weight, X.shape[0])
    return float(s @ log_loss_terms(decision(theta, X), y) + 0.5 * l2_reg * (w @ w))


def objective_gradient(
    theta: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    l2_reg: float,
    sample_weight: np.ndarray | None = None,
) -> np.ndarray:
    """``∇L(θ) = Σᵢ sᵢ (σ(zᵢ) − yᵢ) x̃ᵢ + λ [w, 0]``, shape ``(p,)``."""
    d = X.shape[1]
    s = _weights(sample_weight, X.shape[0])
    grad = pullback(theta, X, s * residuals(decision(theta, X), y))
    grad[:d] += l2_reg * theta[:d]
    return grad


def objective_value_and_gradient(
    theta: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    l2_reg: float,
    sample_weight: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """``(L(θ), ∇L(θ))`` as :func:`objective` and :func:`objective_gradient` compute them,
    the decision values ``z = Xw + b`` computed once for both."""
    d = X.shape[1]
    s = _weights(sample_weight, X.shape[0])
    z = decision(theta, X)
    w = theta[:d]
    grad = pullback(theta, X, s * residuals(z, y))
    grad[:d] += l2_reg * w
    return float(s @ log_loss_terms(z, y) + 0.5 * l2_reg * (w @ w)), grad


def objective_hessian(
    theta: np.ndarray,
    X: np.ndarray,
    l2_reg: float,
    sample_weight: np.ndarray | None = None,
    *,
    structure: Design | None = None,
) -> np.ndarray:
    """``H = Σᵢ sᵢ σᵢ(1 − σᵢ) x̃ᵢ x̃ᵢᵀ + λ diag(1…1[, 0])``, shape ``(p, p)``, symmetric.

    The data term is the Gram ``Z̃ᵀ diag(a) Z̃`` of :meth:`Design.gram`: with ``structure``
    (:func:`~leanfit.selection.design.design` of this ``X``, built once for the several
    Hessians of a fit) two-valued columns are summed as sparse indicators; without it, by
    the dense BLAS product.
    """
    n, d = X.shape
    prob = expit(decision(theta, X))
    a = _weights(sample_weight, n) * prob * (1.0 - prob)
    gram = (dense_design(X) if structure is None else structure).gram(
        a, intercept=has_intercept(theta, d)
    )
    gram[np.arange(d), np.arange(d)] += l2_reg
    return gram


def per_sample_gradients(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradients ``∇θ ℓ(xᵢ, yᵢ; θ) = (σ(zᵢ) − yᵢ) x̃ᵢ``, shape ``(n, p)``.

    The regularizer is not attributed to any sample (it is not part of ``ℓᵢ``).
    """
    residual = residuals(decision(theta, X), y)
    grads = residual[:, None] * X
    if has_intercept(theta, X.shape[1]):
        return np.column_stack([grads, residual])
    return grads


# ---------------------------------------------------------------------------------------
# Estimator
# ---------------------------------------------------------------------------------------


class LogisticRegressionL2(ClassifierMixin, BaseEstimator):
    """Binary logistic regression minimizing ``Σᵢ sᵢ ℓᵢ + (λ/2)‖w‖²`` to Newton precision.

    Same optimum as scikit-learn's ``LogisticRegression(C=1/λ)`` (summed loss), but solved
    by damped Newton with a Cholesky factorization, so that the optimum is exact enough for
    influence functions and leave-one-out checks, and the factorization is kept for
    :meth:`solve_hessian`. See the module docstring for the conventions (θ layout, signs).

    Parameters
    ----------
    l2_reg : float, default 1.0
        λ > 0, the L2 penalty on the weights (not on the intercept).
    fit_intercept : bool, default False
        Fit an unpenalized intercept ``b`` (then ``θ = [w, b]``).
    tol : float, default 1e-10
        Stop when the Newton step satisfies ``‖Δθ‖∞ ≤ tol · max(1, ‖θ‖∞)``; the iterate is
        then within about ``tol`` (relative) of the optimum, and much closer since Newton
        converges quadratically.
    max_iter : int, default 100
        Maximum number of Newton iterations (a ``ConvergenceWarning`` if reached).
    warm_start : bool, default False
        Start from the current ``coef_``/``intercept_`` when refitting (same shapes), with
        chord steps on the current Hessian factor first (:mod:`leanfit.selection.newton`):
        a refit after removing a few rows then needs about one new Hessian.

    Attributes
    ----------
    coef_ : ndarray of shape (d,)
        Weights ``w``.
    intercept_ : float
        Intercept ``b`` (0.0 when ``fit_intercept=False``).
    theta_ : ndarray of shape (p,)
        ``[w]`` or ``[w, b]``.
    classes_ : ndarray ``[0, 1]``
    n_features_in_ : int
    n_iter_ : int
        Newton iterations used.
    hessian_cholesky_ : tuple or None
        ``scipy.linalg.cho_factor`` of the training Hessian at ``theta_`` (None only in
        models refitted for evaluation by :meth:`InfluenceSelector.retrain`, until needed).
    """

    def __init__(
        self,
        l2_reg: float = 1.0,
        *,
        fit_intercept: bool = False,
        tol: float = 1e-10,
        max_iter: int = 100,
        warm_start: bool = False,
    ):
        self.l2_reg = l2_reg
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start

    def _check_params(self) -> None:
        if isinstance(self.l2_reg, bool) or not (
            isinstance(self.l2_reg, int | float) and np.isfinite(self.l2_reg) and self.l2_reg > 0
        ):
            raise bad_value("l2_reg", self.l2_reg, "a finite number > 0")
        if not (isinstance(self.tol, int | float) and self.tol > 0):
            raise bad_value("tol", self.tol, "a number > 0")
        if isinstance(self.max_iter, bool) or not (
            isinstance(self.max_iter, int | np.integer) and self.max_iter >= 1
        ):
            raise bad_value("max_iter", self.max_iter, "an integer >= 1")

    def fit(
        self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
    ) -> LogisticRegressionL2:
        """Minimize ``L(θ)`` on ``X`` (n, d) and 0/1 labels ``y`` (n,).

        Raises
        ------
        BadInputError
            Non-numeric or non-finite ``X``, labels other than 0/1, a single class,
            mismatched lengths, negative or non-finite ``sample_weight``.
        """
        return self._fit(X, y, sample_weight, factor=True)

    def _fit(
        self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None, *, factor: bool
    ) -> LogisticRegressionL2:
        """:meth:`fit`; with ``factor=False`` (a refit only evaluated), chord steps reuse
        every Hessian factor (:mod:`leanfit.selection.newton`) and, when they converge,
        ``hessian_cholesky_`` is None (no Hessian at the new ``theta_``)."""
        self._check_params()
        X = check_matrix(X, "X")
        classes, y = two_classes(y, "y", n=X.shape[0])
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if (
                sample_weight.shape != (X.shape[0],)
                or not np.all(np.isfinite(sample_weight) & (sample_weight >= 0))
                or not sample_weight.any()
            ):
                raise BadInputError(
                    f"sample_weight must be {X.shape[0]} finite non-negative numbers, not all "
                    f"zero; got shape {sample_weight.shape}"
                )
        p = X.shape[1] + int(self.fit_intercept)
        theta, chord = np.zeros(p), None
        if self.warm_start and hasattr(self, "theta_") and self.theta_.shape == (p,):
            theta, chord = self.theta_.copy(), getattr(self, "hessian_cholesky_", None)

        def value_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
            return objective_value_and_gradient(theta, X, y, self.l2_reg, sample_weight)

        structure: list[Design] = []  # the two-valued columns, found for the first Hessian

        def hessian(theta: np.ndarray) -> np.ndarray:
            if not structure:
                structure.append(design(X))
            return objective_hessian(theta, X, self.l2_reg, sample_weight, structure=structure[0])

        found = minimize(
            value_and_gradient,
            hessian,
            theta,
            tol=self.tol,
            max_iter=self.max_iter,
            chord=chord,
            factor=factor,
            # A fit whose Hessian factor serves influence stays Newton to the end (quadratic
            # convergence, far below the tolerance); a refit only evaluated reuses factors.
            reuse=not factor,
        )
        return self._set_solution(found, X.shape[1], classes)

    def _set_solution(
        self, found: NewtonResult, n_features: int, classes: np.ndarray | None = None
    ) -> LogisticRegressionL2:
        """Store the minimizer ``found`` (warning if Newton did not converge) and the two
        ``classes`` (default ``[0, 1]``)."""
        if not found.converged:
            warnings.warn(
                f"Newton did not converge in max_iter={self.max_iter} iterations; "
                "increase max_iter",
                ConvergenceWarning,
                stacklevel=3,
            )
        self._set_theta(found.theta, n_features)
        self.hessian_cholesky_ = found.factor
        self.n_iter_ = found.n_iter
        self.classes_ = np.array([0, 1]) if classes is None else classes
        self.n_features_in_ = n_features
        return self

    def _set_theta(self, theta: np.ndarray, n_features: int) -> None:
        self.theta_ = theta
        w, b = split_theta(theta, n_features)
        self.coef_ = w
        self.intercept_ = b

    def _check_X(self, X: ArrayLike) -> np.ndarray:
        check_fitted(self, "theta_")
        X = check_matrix(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise BadInputError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (the columns it was fitted on)"
            )
        return X

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Decision values ``z = Xw + b``, shape ``(n,)``; positive means class 1."""
        X = self._check_X(X)
        return decision(self.theta_, X)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities, shape ``(n, 2)``: columns ``[1 − σ(z), σ(z)]``."""
        prob = expit(self.decision_function(X))
        return np.column_stack([1.0 - prob, prob])

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Labels ``classes_[1[z > 0]]``, shape ``(n,)`` (a tie ``z = 0`` gives ``classes_[0]``,
        as scikit-learn)."""
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(np.int64)]

    def loss(self, X: ArrayLike, y: ArrayLike, sample_weight: np.ndarray | None = None) -> float:
        """Training objective ``L(θ)`` at the fitted θ (summed log-loss + penalty)."""
        X = self._check_X(X)
        return objective(self.theta_, X, self._encoded(y, X.shape[0]), self.l2_reg, sample_weight)

    def per_sample_gradients(self, X: ArrayLike, y: ArrayLike) -> np.ndarray:
        """``∇θ ℓ(xᵢ, yᵢ; θ̂)`` for each row, shape ``(n, p)`` (no regularizer)."""
        X = self._check_X(X)
        return per_sample_gradients(self.theta_, X, self._encoded(y, X.shape[0]))

    def _encoded(self, y: ArrayLike, n: int) -> np.ndarray:
        """``1[yᵢ = classes_[1]]`` as float64, shape ``(n,)``; labels outside ``classes_`` are
        refused."""
        array = np.asarray(y)
        if array.ndim != 1 or array.shape[0] != n or not np.isin(array, self.classes_).all():
            raise BadInputError(
                f"y must hold {n} labels among classes_ {self.classes_.tolist()}; got "
                f"{sorted(map(str, pd.unique(array.ravel())))[:5]}"
            )
        return (array == self.classes_[1]).astype(np.float64)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # a binary classifier
        return tags

    def hessian(self, X: ArrayLike, sample_weight: np.ndarray | None = None) -> np.ndarray:
        """Hessian of ``L`` at the fitted θ on the given data, shape ``(p, p)``."""
        X = self._check_X(X)
        return objective_hessian(self.theta_, X, self.l2_reg, sample_weight, structure=design(X))

    def solve_hessian(self, v: ArrayLike) -> np.ndarray:
        """``H⁻¹ v`` with the training Hessian at ``theta_`` (kept Cholesky factor).

        ``v`` has shape ``(p,)`` or ``(p, k)``; the result has the same shape.
        """
        check_fitted(self, "hessian_cholesky_")
        if self.hessian_cholesky_ is None:
            raise LeanfitError(
                "hessian_cholesky_ is None: this model was refitted for evaluation only "
                "(InfluenceSelector.retrain); call fit to get the Hessian factor"
            )
        v = np.asarray(v, dtype=np.float64)
        if v.shape[0] != self.theta_.shape[0] or v.ndim not in (1, 2):
            raise BadInputError(
                f"v must have shape ({self.theta_.shape[0]},) or ({self.theta_.shape[0]}, k); "
                f"got {v.shape}"
            )
        return cho_solve(self.hessian_cholesky_, v)
