"""Input checks shared by the selection modules; every error names the argument."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted

from leanfit.exceptions import BadInputError, NotFittedError


def check_fitted(estimator, attribute: str) -> None:
    """scikit-learn's ``check_is_fitted``, raising leanfit's :class:`NotFittedError`."""
    try:
        check_is_fitted(estimator, attribute)
    except SklearnNotFittedError as err:
        raise NotFittedError(str(err)) from err


def check_matrix(X, name: str) -> np.ndarray:
    """Return ``X`` as a finite float64 array of shape ``(n, d)`` with ``n, d >= 1``."""
    if isinstance(X, pd.DataFrame):
        bad = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        if bad:
            raise BadInputError(
                f"{name} must be numeric here; columns {bad[:5]} are not (pass a DataFrame "
                "to InfluenceSelector, whose preprocessor one-hot encodes them)"
            )
    try:
        array = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise BadInputError(f"{name} must hold numbers only; {err}") from err
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadInputError(f"{name} must be a non-empty 2-D array; got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        rows = np.flatnonzero(~np.all(np.isfinite(array), axis=1))
        raise BadInputError(
            f"{name} must be finite; {len(rows)} rows hold NaN or infinity (first rows "
            f"{rows[:5].tolist()}); drop or impute them"
        )
    return array


def check_length(values: np.ndarray, name: str, n: int | None, other: str = "X") -> None:
    """Raise if ``values`` does not have ``n`` entries (``n = None``: no check)."""
    if n is not None and values.shape[0] != n:
        raise BadInputError(
            f"{name} must have one entry per row of {other} ({n}); got {values.shape[0]}"
        )


def check_binary_labels(
    y, name: str, *, n: int | None = None, require_both: bool = False
) -> np.ndarray:
    """Return 0/1 labels as float64 of shape ``(n,)`` (1 = favourable outcome)."""
    array = np.asarray(y)
    if array.ndim != 1:
        raise BadInputError(f"{name} must be 1-D; got shape {array.shape}")
    check_length(array, name, n)
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not pd.api.types.is_numeric_dtype(array.dtype):
        raise BadInputError(
            f"{name} must hold 0/1 labels (1 = favourable outcome); got dtype {array.dtype} "
            f"with values {sorted(map(str, pd.unique(array)))[:5]}"
        )
    values = set(np.unique(array[~pd.isna(array)]).tolist()) if array.size else set()
    if pd.isna(array).any() or not values <= {0, 1}:
        raise BadInputError(
            f"{name} must hold 0/1 labels (1 = favourable outcome); got values "
            f"{sorted(map(str, pd.unique(array)))[:5]}"
        )
    if require_both and values != {0, 1}:
        raise BadInputError(f"{name} must contain both classes 0 and 1; got only {sorted(values)}")
    return array.astype(np.float64)


def binary_groups(sensitive, name: str, *, n: int | None = None, privileged=None) -> np.ndarray:
    """Map a binary sensitive attribute to int64 0/1 (1 = privileged), shape ``(n,)``.

    ``privileged`` names the privileged value; it may be omitted when the values are 0/1 or
    booleans (then 1 / ``True`` is privileged). Both groups must be present.
    """
    array = np.asarray(sensitive, dtype=object)
    if array.ndim != 1:
        raise BadInputError(f"{name} must be 1-D; got shape {array.shape}")
    check_length(array, name, n)
    missing = pd.isna(array)
    if missing.any():
        raise BadInputError(
            f"{name} must not have missing values; {int(missing.sum())} are missing"
        )
    distinct = list(pd.unique(array))
    if len(distinct) != 2:
        raise BadInputError(
            f"{name} must have exactly two groups (both present); got {len(distinct)}: "
            f"{sorted(map(str, distinct))[:5]}"
        )
    if privileged is None:
        if set(distinct) <= {0, 1}:  # also matches True/False
            privileged = 1
        else:
            raise BadInputError(
                f"{name} has values {sorted(map(str, distinct))}; pass privileged= to say "
                "which one is the privileged group"
            )
    if privileged not in set(distinct):
        raise BadInputError(
            f"privileged must be one of {sorted(map(str, distinct))}; got {privileged!r}"
        )
    return (array == privileged).astype(np.int64)
