"""Input checks shared by the selection modules; every error names the argument."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.sparse import issparse
from sklearn.exceptions import DataConversionWarning
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from leanfit.exceptions import BadInputError, NotFittedError, bad_value


class NotNumericError(BadInputError, TypeError):
    """An input holds values of a type it cannot take, such as a dict where a number is due
    (a ``TypeError`` too, as NumPy raises)."""


class EstimatorNotFittedError(NotFittedError, SklearnNotFittedError):
    """An estimator of leanfit used before ``fit``: both leanfit's and scikit-learn's
    ``NotFittedError``, so that ``except`` of either catches it."""


def check_fitted(estimator: object, attribute: str) -> None:
    """scikit-learn's ``check_is_fitted``, raising :class:`EstimatorNotFittedError`."""
    try:
        check_is_fitted(estimator, attribute)
    except SklearnNotFittedError as err:
        raise EstimatorNotFittedError(str(err)) from err


def reject_sparse(X: object, name: str) -> None:
    """Refuse a SciPy sparse matrix or array (the estimators work on dense rows)."""
    if issparse(X):
        raise BadInputError(
            f"{name} is a sparse matrix: sparse input is not supported; pass {name}.toarray()",
            param=name,
        )


def require_2d(shape: tuple[int, ...], name: str) -> None:
    """Refuse any ``shape`` but a table's of at least one row and one column (in the words
    of scikit-learn's own checks)."""
    if len(shape) != 2:
        raise BadInputError(
            f"{name} must be a non-empty 2-D array; got shape {shape}. Reshape your data "
            "with reshape(-1, 1) if it has a single feature, reshape(1, -1) if a single sample",
            param=name,
        )
    for axis, what in ((0, "sample"), (1, "feature")):
        if shape[axis] == 0:
            raise BadInputError(
                f"{name} must be a non-empty 2-D array; found 0 {what}(s) (shape={shape}) "
                "while a minimum of 1 is required.",
                param=name,
            )


def target_vector(y: ArrayLike | None, name: str) -> np.ndarray:
    """``y`` as a 1-D array: refused when None, raveled with a ``DataConversionWarning`` when a
    column vector (n, 1), as scikit-learn's estimators do."""
    if y is None:
        raise BadInputError(
            f"this estimator requires y to be passed, but the target {name} is None",
            param=name,
        )
    array = np.asarray(y)
    if array.ndim == 2 and array.shape[1] == 1:
        warnings.warn(
            f"A column-vector {name} was passed when a 1d array was expected; it is raveled",
            DataConversionWarning,
            stacklevel=4,
        )
        array = array.ravel()
    if array.ndim != 1:
        raise BadInputError(f"{name} must be 1-D; got shape {array.shape}", param=name)
    return array


def check_matrix(X: ArrayLike, name: str) -> np.ndarray:
    """Return ``X`` as a finite float64 array of shape ``(n, d)`` with ``n, d >= 1``.

    A float64 array is returned as is, not copied: callers only read it.
    """
    if isinstance(X, pd.DataFrame):
        bad = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        if bad:
            raise BadInputError(
                f"{name} must be numeric here; columns {bad[:5]} are not (pass a DataFrame "
                "to InfluenceSelector, whose preprocessor one-hot encodes them)",
                param=name,
            )
    reject_sparse(X, name)
    try:
        raw = np.asarray(X)
        if raw.dtype.kind == "c":
            raise BadInputError(
                f"{name} holds complex numbers: Complex data not supported", param=name
            )
        array = raw.astype(np.float64, copy=False)
    except TypeError as err:
        raise NotNumericError(f"{name} must hold numbers only; {err}") from err
    except ValueError as err:
        if isinstance(err, BadInputError):
            raise
        raise BadInputError(f"{name} must hold numbers only; {err}", param=name) from err
    require_2d(array.shape, name)
    if not np.all(np.isfinite(array)):
        rows = np.flatnonzero(~np.all(np.isfinite(array), axis=1))
        raise BadInputError(
            f"{name} must be finite; {len(rows)} rows hold NaN or infinity (first rows "
            f"{rows[:5].tolist()}); drop or impute them",
            param=name,
        )
    return array


def check_length(values: np.ndarray, name: str, n: int | None, other: str = "X") -> None:
    """Raise if ``values`` does not have ``n`` entries (``n = None``: no check)."""
    if n is not None and values.shape[0] != n:
        raise BadInputError(
            f"{name} must have one entry per row of {other} ({n}); got {values.shape[0]}",
            param=name,
        )


def check_binary_labels(
    y: ArrayLike, name: str, *, n: int | None = None, require_both: bool = False
) -> np.ndarray:
    """Return 0/1 labels as float64 of shape ``(n,)`` (1 = favourable outcome)."""
    array = np.asarray(y)
    if array.ndim != 1:
        raise BadInputError(f"{name} must be 1-D; got shape {array.shape}", param=name)
    check_length(array, name, n)
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not pd.api.types.is_numeric_dtype(array.dtype):
        raise BadInputError(
            f"Unknown label type: {array.dtype}; "
            f"{name} must hold 0/1 labels (1 = favourable outcome); got dtype {array.dtype} "
            f"with values {sorted(map(str, pd.unique(array)))[:5]}",
            param=name,
        )
    values = set(np.unique(array[~pd.isna(array)]).tolist()) if array.size else set()
    if pd.isna(array).any() or not values <= {0, 1}:
        finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array[:0]
        continuous = bool((finite % 1 != 0).any())
        prefix = (
            "Unknown label type: continuous; "
            if continuous
            else "Only binary classification is supported; "
            if len(values) > 2
            else ""
        )
        raise BadInputError(
            prefix + f"{name} must hold 0/1 labels (1 = favourable outcome); got values "
            f"{sorted(map(str, pd.unique(array)))[:5]}",
            param=name,
        )
    if require_both and values != {0, 1}:
        raise BadInputError(
            f"{name} must contain both classes 0 and 1; got only 1 class: {sorted(values)}",
            param=name,
        )
    return array.astype(np.float64)


def two_classes(y: ArrayLike | None, name: str, *, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, encoded)`` of a classifier's labels ``y`` (n,): the two sorted classes
    (``[0, 1]`` for 0/1 or boolean labels) and float64 ``1[yᵢ = classes[1]]``, as
    scikit-learn's binary classifiers encode them (the larger label is the positive class)."""
    array = target_vector(y, name)
    check_length(array, name, n)
    numeric = pd.api.types.is_numeric_dtype(array.dtype) and not pd.isna(array).any()
    if array.dtype == bool or numeric:
        kind = type_of_target(array)
        if kind not in ("binary", "multiclass"):
            raise BadInputError(
                f"Unknown label type: {kind}; {name} must hold two classes", param=name
            )
    classes = np.unique(array.astype(np.int64) if array.dtype == bool else array)
    if classes.shape[0] != 2:
        raise BadInputError(
            f"{name} must hold exactly two classes: Only binary classification is supported; "
            f"got {classes.shape[0]} class(es): {sorted(map(str, classes))[:5]}",
            param=name,
        )
    if set(classes.tolist()) == {0, 1}:
        classes = np.array([0, 1])
    return classes, (array == classes[1]).astype(np.float64)


def binary_groups(
    sensitive: ArrayLike, name: str, *, n: int | None = None, privileged: object = None
) -> np.ndarray:
    """Map a binary sensitive attribute to int64 0/1 (1 = privileged), shape ``(n,)``.

    ``privileged`` names the privileged value; it may be omitted when the values are 0/1 or
    booleans (then 1 / ``True`` is privileged). Both groups must be present.
    """
    array = np.asarray(sensitive, dtype=object)
    if array.ndim != 1:
        raise BadInputError(f"{name} must be 1-D; got shape {array.shape}", param=name)
    check_length(array, name, n)
    missing = pd.isna(array)
    if missing.any():
        raise BadInputError(
            f"{name} must not have missing values; {int(missing.sum())} are missing",
            param=name,
        )
    distinct = list(pd.unique(array))
    if len(distinct) != 2:
        raise BadInputError(
            f"{name} must have exactly two groups (both present); got {len(distinct)}: "
            f"{sorted(map(str, distinct))[:5]}",
            param=name,
        )
    if privileged is None:
        if set(distinct) <= {0, 1}:  # also matches True/False
            privileged = 1
        else:
            raise BadInputError(
                f"privileged is needed: {name} has values {sorted(map(str, distinct))}; say "
                "which one is the privileged group",
                param="privileged",
            )
    if privileged not in set(distinct):
        raise bad_value("privileged", privileged, f"one of {sorted(map(str, distinct))}")
    return (array == privileged).astype(np.int64)
