"""Accuracy, fairness gaps and robust accuracy of hard predictions.

Fairness metrics follow fairlearn's signatures (``y_true, y_pred, *, sensitive_features``)
and, by default, its values: the absolute difference between the largest and the smallest
group rate (``method="between_groups"``). With ``signed=True`` they return the paper's
signed gap, privileged minus unprivileged (positive: the privileged group is favoured).

* demographic parity: selection rate ``P(ŷ = 1 | group)``;
* equal opportunity: true positive rate ``P(ŷ = 1 | y = 1, group)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection._validation import binary_groups, check_binary_labels, check_matrix
from leanfit.selection.attacks import (
    NORMS,
    check_eps,
    overshoot_attack,
    worst_case_margins,
)

ATTACKS = ("overshoot", *NORMS)


def _labels(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y_true = check_binary_labels(y_true, "y_true")
    y_pred = check_binary_labels(y_pred, "y_pred", n=y_true.shape[0])
    return y_true, y_pred


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of ``y_pred == y_true`` (0/1 labels, shape ``(n,)``)."""
    y_true, y_pred = _labels(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def _rate_difference(
    y_pred: np.ndarray,
    subset: np.ndarray,
    sensitive_features: ArrayLike,
    *,
    signed: bool,
    privileged: object,
    what: str,
) -> float:
    """Rate of ``ŷ = 1`` per group over ``subset``: signed gap or max − min."""
    if signed:
        groups = binary_groups(
            sensitive_features, "sensitive_features", n=y_pred.shape[0], privileged=privileged
        )
    else:
        groups = np.asarray(sensitive_features, dtype=object)
        if groups.shape != y_pred.shape:
            raise BadInputError(
                f"sensitive_features must have one entry per prediction ({y_pred.shape[0]}); "
                f"got shape {groups.shape}",
                param="sensitive_features",
            )
        if pd.isna(groups).any():
            raise BadInputError(
                "sensitive_features must not have missing values", param="sensitive_features"
            )
    rates = {}
    for group in pd.unique(groups):
        members = subset & (groups == group)
        if not members.any():
            raise BadInputError(
                f"sensitive_features group {group!r} has no points for {what}",
                param="sensitive_features",
            )
        rates[group] = float(y_pred[members].mean())
    if len(rates) < 2:
        raise BadInputError(
            f"sensitive_features must contain at least two groups; got {list(rates)}",
            param="sensitive_features",
        )
    if signed:
        return rates[1] - rates[0]
    return max(rates.values()) - min(rates.values())


def demographic_parity_difference(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    signed: bool = False,
    privileged: object = None,
) -> float:
    """Difference of selection rates ``P(ŷ=1 | group)`` between groups.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        0/1 labels (``y_true`` is only checked, as in fairlearn).
    sensitive_features : array-like of shape (n,)
        Group of each point. Any number of groups when ``signed=False``; exactly two
        when ``signed=True``.
    signed : bool, default False
        ``False``: ``max − min`` over groups (fairlearn's
        ``demographic_parity_difference``). ``True``: privileged minus unprivileged.
    privileged : optional
        The privileged group's value (needed for ``signed=True`` unless groups are 0/1).
    """
    _, y_pred = _labels(y_true, y_pred)
    everyone = np.ones(y_pred.shape[0], dtype=bool)
    return _rate_difference(
        y_pred,
        everyone,
        sensitive_features,
        signed=signed,
        privileged=privileged,
        what="demographic parity",
    )


def equal_opportunity_difference(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    signed: bool = False,
    privileged: object = None,
) -> float:
    """Difference of true positive rates ``P(ŷ=1 | y=1, group)`` between groups.

    Same conventions as :func:`demographic_parity_difference`; ``signed=False`` equals
    fairlearn's ``equal_opportunity_difference``. Every group needs a positive example.
    """
    y_true, y_pred = _labels(y_true, y_pred)
    return _rate_difference(
        y_pred,
        y_true == 1,
        sensitive_features,
        signed=signed,
        privileged=privileged,
        what="equal opportunity (points with y_true = 1)",
    )


def linear_parameters(model: object) -> tuple[np.ndarray, float]:
    """``(w, b)`` of a fitted linear model with ``coef_`` and ``intercept_`` (scikit-learn's
    shapes ``(1, d)`` and ``(1,)`` are accepted), ``w`` of shape ``(d,)``."""
    if not hasattr(model, "coef_"):
        raise bad_value("model", type(model).__name__, "a fitted linear model with coef_")
    w = np.asarray(model.coef_, dtype=np.float64).ravel()
    b = float(np.ravel(getattr(model, "intercept_", 0.0))[0])
    return w, b


def robust_accuracy(
    model: object,
    X: ArrayLike,
    y: ArrayLike,
    *,
    attack: str = "overshoot",
    eps: float | None = None,
    reference: object = None,
    factor: float = 1.3,
) -> float:
    """Accuracy of a linear model under an attack on its (preprocessed) inputs.

    Parameters
    ----------
    model
        Fitted linear model (``coef_``, ``intercept_``), decision ``z = wᵀx + b``,
        prediction ``1[z > 0]``.
    X : array-like of shape (n, d)
        Inputs in the model's feature space.
    y : array-like of shape (n,)
        0/1 labels.
    attack : {"overshoot", "l2", "linf"}
        ``"overshoot"``: the paper's points ``x̃`` computed from ``reference`` (default:
        ``model`` itself) and held fixed — evaluate retrained models against the attack on
        the original one. ``"l2"``/``"linf"``: the exact worst case in the ε-ball; a point
        counts as correct iff its worst-case margin ``(2y−1)z − ε‖w‖_*`` is ``> 0``.
    eps : float
        Radius of the ball (required for ``"l2"``/``"linf"``).
    reference : fitted linear model, optional
        Model the overshoot points are computed from.
    factor : float, default 1.3
        Overshoot factor.
    """
    X = check_matrix(X, "X")
    y = check_binary_labels(y, "y", n=X.shape[0])
    w, b = linear_parameters(model)
    if attack == "overshoot":
        ref_w, ref_b = linear_parameters(model if reference is None else reference)
        attacked = overshoot_attack(X, ref_w, ref_b, factor)
        return float(np.mean(((attacked @ w + b) > 0) == y))
    if attack not in NORMS:
        raise bad_value("attack", attack, f"one of {list(ATTACKS)}")
    if eps is None:
        raise BadInputError(f"eps is required for attack={attack!r}", param="eps")
    return float(np.mean(worst_case_margins(X, y, w, b, check_eps(eps), attack) > 0))


def evaluate(
    model: object,
    X: ArrayLike,
    y: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    privileged: object = None,
    reference: object = None,
    eps: float | None = None,
) -> dict[str, float]:
    """All metrics of a fitted linear model on one data set (inputs in model space).

    Returns
    -------
    dict
        ``accuracy``, ``dp`` / ``eop`` (signed, privileged − unprivileged), ``dp_abs`` /
        ``eop_abs`` (fairlearn), ``robust_acc`` (overshoot attack from ``reference``,
        default ``model``), and with ``eps`` given ``robust_acc_l2`` and
        ``robust_acc_linf``.
    """
    X = check_matrix(X, "X")
    y = check_binary_labels(y, "y", n=X.shape[0])
    w, b = linear_parameters(model)
    y_pred = ((X @ w + b) > 0).astype(np.float64)
    groups: dict[str, Any] = {"sensitive_features": sensitive_features, "privileged": privileged}
    result = {
        "accuracy": accuracy(y, y_pred),
        "dp": demographic_parity_difference(y, y_pred, signed=True, **groups),
        "dp_abs": demographic_parity_difference(y, y_pred, **groups),
        "eop": equal_opportunity_difference(y, y_pred, signed=True, **groups),
        "eop_abs": equal_opportunity_difference(y, y_pred, **groups),
        "robust_acc": robust_accuracy(model, X, y, reference=reference),
    }
    if eps is not None:
        for norm in NORMS:
            result[f"robust_acc_{norm}"] = robust_accuracy(model, X, y, attack=norm, eps=eps)
    return result
