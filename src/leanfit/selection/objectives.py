"""Validation objectives of a linear logistic model: value and gradient w.r.t. ``θ``.

Every objective is a **cost** ``f(θ)`` on a validation set (lower is better). With the
influence ``I(zᵢ) = ∇θℓ(zᵢ)ᵀ H⁻¹ ∇θf(θ̂) ≈ f(θ̂ without zᵢ) − f(θ̂)``, a positive
influence means that removing ``zᵢ`` would raise the cost: ``zᵢ`` is **beneficial**; a
negative influence marks a **harmful** sample.

All methods take ``theta`` (layout of :mod:`leanfit.selection.models`: ``[w]`` or
``[w, b]``), validation inputs ``X`` of shape ``(m, d)`` (model space, after
preprocessing), labels ``y`` (0/1, shape ``(m,)``) and, for fairness, group membership
``s`` (0/1, 1 = privileged, shape ``(m,)``). Gradients have shape ``(p,)``.

=====================  ==================================================================
objective              cost ``f``
=====================  ==================================================================
``Utility``            summed log-loss ``Σⱼ ℓ(xⱼ, yⱼ; θ)``
``DemographicParity``  ``mean σ(z) | s=1 − mean σ(z) | s=0`` (privileged minus unprivileged;
                       a cost while the privileged group is favoured), or its absolute value
``EqualOpportunity``   the same gap among validation points with ``y = 1``
``OvershootRobustness``  summed log-loss on the paper's attacked points ``x̃`` (fixed from
                       the trained model by :meth:`Objective.prepare`)
``WorstCaseRobustness``  summed log-loss of the worst-case margins in an L2 or L∞ ε-ball
=====================  ==================================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, TypeAlias

import numpy as np
from scipy.special import expit

from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection.attacks import (
    check_eps,
    check_norm,
    dual_norm,
    dual_norm_gradient,
    overshoot_attack,
)
from leanfit.selection.models import decision, log_loss_terms, pullback, residuals, split_theta


@dataclass(frozen=True, kw_only=True)
class Objective(ABC):
    """A differentiable validation cost ``f(θ)``; see the module docstring for the sign.

    Attributes
    ----------
    label : str, optional
        The column name of the objective in influence tables and trimming curves, instead of
        its default (:attr:`default_name`); e.g. ``DemographicParity(absolute=True,
        label="fairness")`` is the ``fairness`` column of ``leanfit select``.
    """

    #: Whether the objective needs the sensitive attribute ``s``.
    needs_sensitive: ClassVar[bool] = False

    label: str | None = None

    @property
    def name(self) -> str:
        """Column name used in influence tables: ``label`` if given, else the default."""
        return self.default_name if self.label is None else self.label

    @property
    @abstractmethod
    def default_name(self) -> str:
        """The column name of the objective without a ``label``."""

    def prepare(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> Objective:
        """Fix the parts of the objective that are held constant at the trained ``θ̂``.

        Returns ``self`` unless the objective depends on the trained model in a way that
        must not be differentiated (the overshoot attack points).
        """
        return self

    @abstractmethod
    def value(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> float:
        """``f(θ)`` on the validation set."""

    @abstractmethod
    def gradient(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> np.ndarray:
        """``∇θ f(θ)``, shape ``(p,)``."""


@dataclass(frozen=True)
class Utility(Objective):
    """Summed validation log-loss ``f = Σⱼ ℓ(xⱼ, yⱼ; θ)``; ``∇f = Σⱼ (σ(zⱼ) − yⱼ) x̃ⱼ``."""

    @property
    def default_name(self) -> str:
        return "utility"

    def value(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> float:
        return float(log_loss_terms(decision(theta, X), y).sum())

    def gradient(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> np.ndarray:
        return pullback(theta, X, residuals(decision(theta, X), y))


def _gap_weights(s: np.ndarray | None, subset: np.ndarray, what: str) -> np.ndarray:
    """Weights ``cⱼ`` with ``Σ cⱼ vⱼ = mean v | s=1 − mean v | s=0`` over ``subset``."""
    if s is None:
        raise BadInputError(
            f"sensitive_features is required for the {what} objective", param="sensitive_features"
        )
    privileged = subset & (s == 1)
    unprivileged = subset & (s == 0)
    if not privileged.any() or not unprivileged.any():
        raise BadInputError(
            f"sensitive_features must contain both groups among the validation points used "
            f"by the {what} objective; got {int(privileged.sum())} privileged and "
            f"{int(unprivileged.sum())} unprivileged",
            param="sensitive_features",
        )
    return privileged / privileged.sum() - unprivileged / unprivileged.sum()


@dataclass(frozen=True)
class _ProbabilityGap(Objective):
    """Gap of mean predicted probability between groups, over a subset of the validation set.

    ``f = Σⱼ cⱼ σ(zⱼ)`` with ``cⱼ = 1/n₁`` (privileged), ``−1/n₀`` (unprivileged), 0 outside
    the subset; ``∇f = Σⱼ cⱼ σ(zⱼ)(1 − σ(zⱼ)) x̃ⱼ``. With ``absolute=True``, ``f = |gap|``
    and ``∇f = sign(gap) ∇gap`` (not differentiable where the gap is exactly 0).
    """

    absolute: bool = False
    needs_sensitive: ClassVar[bool] = True

    @abstractmethod
    def _subset(self, y: np.ndarray) -> np.ndarray:
        """Boolean mask of the validation points the gap is taken over, shape ``(m,)``."""

    def _signed(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None
    ) -> tuple[float, np.ndarray]:
        weights = _gap_weights(s, self._subset(y), self.name)
        prob = expit(decision(theta, X))
        gap = float(weights @ prob)
        return gap, pullback(theta, X, weights * prob * (1.0 - prob))

    def value(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> float:
        gap, _ = self._signed(theta, X, y, s)
        return abs(gap) if self.absolute else gap

    def gradient(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> np.ndarray:
        gap, grad = self._signed(theta, X, y, s)
        return np.sign(gap) * grad if self.absolute else grad


@dataclass(frozen=True)
class DemographicParity(_ProbabilityGap):
    """Demographic parity gap ``mean σ(z) | s=1 − mean σ(z) | s=0`` (signed by default)."""

    @property
    def default_name(self) -> str:
        return "fairness_abs" if self.absolute else "fairness"

    def _subset(self, y: np.ndarray) -> np.ndarray:
        return np.ones(y.shape[0], dtype=bool)


@dataclass(frozen=True)
class EqualOpportunity(_ProbabilityGap):
    """Equal-opportunity gap: the demographic parity gap among points with ``y = 1``."""

    @property
    def default_name(self) -> str:
        return "eop_abs" if self.absolute else "eop"

    def _subset(self, y: np.ndarray) -> np.ndarray:
        return y == 1


@dataclass(frozen=True, eq=False)
class OvershootRobustness(Objective):
    """Summed log-loss on the paper's attacked points, ``f = Σⱼ ℓ(x̃ⱼ, yⱼ; θ)``.

    ``x̃ = x − factor · (ŵᵀx + b̂)/‖ŵ‖² · ŵ`` is computed from the *reference* parameters
    ``θ̂`` set by :meth:`prepare` and held fixed: the gradient does not differentiate
    through the attack (as in the paper). ``reference`` has the θ layout.
    """

    factor: float = 1.3
    reference: np.ndarray | None = None

    @property
    def default_name(self) -> str:
        return "robustness"

    def prepare(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> OvershootRobustness:
        if self.reference is not None:
            return self
        return replace(self, reference=np.array(theta, dtype=np.float64))

    def attacked(self, X: np.ndarray) -> np.ndarray:
        """The fixed attacked points ``x̃``, shape ``(m, d)``."""
        if self.reference is None:
            raise BadInputError(
                "reference must be set: call prepare(theta_hat, X, y) before evaluating the "
                "overshoot robustness objective"
            )
        coef, intercept = split_theta(self.reference, X.shape[1])
        return overshoot_attack(X, coef, intercept, self.factor)

    def value(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> float:
        return Utility().value(theta, self.attacked(X), y)

    def gradient(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> np.ndarray:
        return Utility().gradient(theta, self.attacked(X), y)


@dataclass(frozen=True)
class WorstCaseRobustness(Objective):
    """Summed log-loss of the worst-case margins in an ε-ball (exact for linear models).

    ``uⱼ = y±ⱼ zⱼ − ε‖w‖_*`` (``y± = 2y − 1``; dual norm L2 → L2, L∞ → L1),
    ``f = Σⱼ log(1 + e^{−uⱼ})``,
    ``∇f = Σⱼ −σ(−uⱼ) y±ⱼ x̃ⱼ + ε (Σⱼ σ(−uⱼ)) [∇‖w‖_*, 0]``.
    The attack is recomputed for every ``θ`` (no fixed points): the loss is the true robust
    loss, differentiable wherever ``‖w‖_*`` is (``w ≠ 0``; no zero weight for L∞).
    """

    eps: float = 0.1
    norm: str = "l2"

    def __post_init__(self) -> None:
        check_eps(self.eps)
        check_norm(self.norm)

    @property
    def default_name(self) -> str:
        return f"robustness_{self.norm}"

    def _margins(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        w, _ = split_theta(theta, X.shape[1])
        return (2.0 * y - 1.0) * decision(theta, X) - self.eps * dual_norm(w, self.norm)

    def value(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> float:
        return float(np.logaddexp(0.0, -self._margins(theta, X, y)).sum())

    def gradient(
        self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None
    ) -> np.ndarray:
        d = X.shape[1]
        slope = expit(-self._margins(theta, X, y))  # −∂f/∂uⱼ
        grad = pullback(theta, X, -slope * (2.0 * y - 1.0))
        grad[:d] += self.eps * slope.sum() * dual_norm_gradient(theta[:d], self.norm)
        return grad


#: Objectives reachable by name (``"dp"`` is an alias of ``"fairness"``).
OBJECTIVES = {
    "utility": Utility,
    "fairness": DemographicParity,
    "dp": DemographicParity,
    "eop": EqualOpportunity,
    "robustness": OvershootRobustness,
}


#: What the ``objective`` arguments accept: a name, an :class:`Objective`, or a list of them.
ObjectiveSpec: TypeAlias = str | Objective | Sequence[str | Objective]


def resolve_objectives(objective: ObjectiveSpec) -> list[Objective]:
    """Turn a name, an :class:`Objective`, or a list of them into a list of objectives.

    Names: ``"utility"``, ``"fairness"`` (alias ``"dp"``), ``"eop"``, ``"robustness"``.
    Column names must be distinct.
    """
    items = objective if isinstance(objective, list | tuple) else [objective]
    if not items:
        raise bad_value("objective", objective, "a non-empty list of objectives")
    resolved = []
    for item in items:
        if isinstance(item, Objective):
            resolved.append(item)
        elif isinstance(item, str) and item in OBJECTIVES:
            resolved.append(OBJECTIVES[item]())
        else:
            raise bad_value("objective", item, f"an Objective or one of {sorted(OBJECTIVES)}")
    names = [o.name for o in resolved]
    if len(set(names)) != len(names):
        raise bad_value("objective", names, "objectives with distinct names")
    return resolved
