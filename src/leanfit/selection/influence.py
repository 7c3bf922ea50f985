"""Influence of each training sample on validation utility, fairness and robustness.

For a model ``θ̂`` minimizing ``L(θ) = Σᵢ ℓ(zᵢ; θ) + (λ/2)‖w‖²`` and a validation cost
``f`` (see :mod:`leanfit.selection.objectives`), the influence of training sample ``zᵢ`` is

    I_f(zᵢ) = ∇θℓ(zᵢ; θ̂)ᵀ H⁻¹ ∇θf(θ̂)  ≈  f(θ̂ without zᵢ) − f(θ̂),

because removing ``zᵢ`` moves the optimum by ``θ̂₋ᵢ − θ̂ ≈ H⁻¹ ∇θℓ(zᵢ; θ̂)`` (one Newton
step from ``θ̂`` on ``L − ℓᵢ``). **Positive influence = removing the sample would raise the
cost = the sample is beneficial; negative = harmful.** ``H⁻¹∇f`` is solved once per
objective (Cholesky); the training samples are then scored in chunks, so the extra memory
is ``chunk_size × p`` whatever the number of samples.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils import Tags, TransformerTags
from tqdm.auto import tqdm

from leanfit.checks import check_int, is_int
from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection._validation import (
    binary_groups,
    check_binary_labels,
    check_fitted,
    check_length,
    check_matrix,
    reject_sparse,
    require_2d,
    target_vector,
)
from leanfit.selection.defaults import MAX_CATEGORIES
from leanfit.selection.models import LogisticRegressionL2, per_sample_gradients
from leanfit.selection.newton import hessian_factor
from leanfit.selection.objectives import Objective, ObjectiveSpec, resolve_objectives


def check_cardinality(X: pd.DataFrame, max_categories: int | None, name: str = "X") -> None:
    """Refuse a categorical (non-numeric) column of ``X`` with more than ``max_categories``
    distinct values; ``None`` means no limit.

    One-hot encoding gives one feature per value: an identifier-like column (a user id, a
    free-text field) with a million values would make a million features, a Hessian of
    10¹² entries and a model that merely memorizes rows. The error is about
    ``max_categories``.

    Raises
    ------
    BadInputError
        Naming the column, its number of values and the ways out.
    """
    if max_categories is None:
        return
    if not is_int(max_categories) or max_categories < 1:
        raise bad_value("max_categories", max_categories, "an int >= 1, or None")
    limit = int(max_categories)
    for column in X.columns:
        if pd.api.types.is_numeric_dtype(X[column]):
            continue
        distinct = X[column].nunique(dropna=False)
        if distinct > max_categories:
            raise BadInputError(
                f"categorical column {column!r} of {name} has {distinct:,} distinct values, "
                f"more than the limit of {limit:,} (one-hot encoding would make {distinct:,} "
                "features); drop the column, group its values into fewer categories, or raise "
                "the limit (or lift it)",
                param="max_categories",
                value=max_categories,
            )


def make_preprocessor(
    X: pd.DataFrame, *, drop: Collection[Hashable] = (), max_categories: int | None = MAX_CATEGORIES
) -> ColumnTransformer:
    """The default preprocessing, built from the column dtypes of ``X``.

    * string / categorical columns → one-hot (a two-valued column becomes a single 0/1
      column, the first category alphabetically being the reference), then standardized;
    * numeric (and boolean) columns → standardized (zero mean, unit variance on the data
      the preprocessor is fitted on);
    * columns in ``drop`` are left out.

    This is the paper's preprocessing of Adult when ``fnlwgt`` is dropped: 102 columns,
    all standardized. Categories unseen at fit time are encoded as all zeros. Missing
    values are not handled: drop or impute them first (or pass your own pipeline).

    A categorical column with more than ``max_categories`` distinct values is refused
    (:func:`check_cardinality`); ``max_categories=None`` lifts the limit.

    Returns
    -------
    ColumnTransformer
        Unfitted; change or replace it freely and pass it as ``preprocessor=``.
    """
    if not isinstance(X, pd.DataFrame):
        raise bad_value("X", type(X).__name__, "a pandas DataFrame")
    unknown = [c for c in drop if c not in X.columns]
    if unknown:
        raise bad_value("drop", unknown, f"columns of X ({list(X.columns)[:10]}…)")
    kept = [c for c in X.columns if c not in set(drop)]
    check_cardinality(X[kept], max_categories)
    numeric = [c for c in kept if pd.api.types.is_numeric_dtype(X[c])]
    categorical = [c for c in kept if c not in set(numeric)]
    one_hot = OneHotEncoder(drop="if_binary", handle_unknown="ignore", sparse_output=False)
    return ColumnTransformer(
        [
            (
                "categorical",
                Pipeline([("onehot", one_hot), ("scale", StandardScaler())]),
                categorical,
            ),
            ("numeric", StandardScaler(), numeric),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )


def _check_no_missing(X: pd.DataFrame) -> None:
    """The default preprocessing does not impute: refuse missing and infinite values,
    naming columns."""
    missing = [c for c in X.columns if X[c].isna().any()]
    if missing:
        raise BadInputError(
            f"X has missing values in columns {missing[:10]}; drop or impute them, or pass a "
            "preprocessor that imputes",
            param="X",
        )
    numeric = [c for c in X.columns if pd.api.types.is_float_dtype(X[c])]
    infinite = [c for c in numeric if np.isinf(X[c].to_numpy(dtype=np.float64)).any()]
    if infinite:
        raise BadInputError(
            f"X has infinite values in columns {infinite[:10]}; drop, clip or impute them",
            param="X",
        )


def resolve_sensitive(
    X: pd.DataFrame | ArrayLike,
    sensitive_features: str | ArrayLike | None,
    privileged: object,
    *,
    n: int,
    name: str = "X_val",
) -> np.ndarray | None:
    """Group membership as int64 0/1 (1 = privileged), shape ``(n,)``, or None.

    ``sensitive_features`` is None, an array-like with one entry per row, or the name of a
    column of the DataFrame ``X`` (called ``name`` in error messages).
    """
    if sensitive_features is None:
        return None
    if isinstance(sensitive_features, str):
        if not isinstance(X, pd.DataFrame) or sensitive_features not in X.columns:
            raise bad_value(
                "sensitive_features",
                sensitive_features,
                f"a column of {name} (a DataFrame) or an array with one entry per row",
            )
        sensitive_features = X[sensitive_features].to_numpy()
    return binary_groups(sensitive_features, "sensitive_features", n=n, privileged=privileged)


# X: Any in these helpers, as the rows given to fit may be anything features(X) accepts;
# only their number is needed (and _n_rows reports an X without one).
def _row_index(X: Any) -> pd.Index:
    if isinstance(X, pd.DataFrame | pd.Series):
        return X.index
    return pd.RangeIndex(_n_rows(X, "X"))


def _n_rows(X: Any, name: str) -> int:
    try:
        return len(X)
    except TypeError:
        pass
    try:
        return int(np.asarray(X).shape[0])  # array-likes without len (NumPy's __array__)
    except (TypeError, ValueError, IndexError) as err:
        raise bad_value(name, type(X).__name__, "an array-like of rows") from err


def _n_columns(X: Any) -> int:
    """Columns of a table or 2-D array-like (1 for a 1-D one)."""
    shape = X.shape if isinstance(X, pd.DataFrame) else np.asarray(X).shape
    return int(shape[1]) if len(shape) == 2 else 1


class PreparedValidation(NamedTuple):
    """A validation set ready for the objectives: ``objectives`` prepared at ``θ̂``, ``Z``
    (n_val, p) the rows in the model's space, ``y`` (n_val,) 0/1 labels, ``s`` (n_val,) 0/1
    groups or None."""

    objectives: list[Objective]
    Z: np.ndarray
    y: np.ndarray
    s: np.ndarray | None


class InfluenceSelector(ClassifierMixin, BaseEstimator):
    """Fit an L2 logistic regression and score each training sample by its influence.

    Pipeline: ``X → features(X) (optional) → preprocessor → LogisticRegressionL2``. The
    influence is computed in the preprocessed feature space, where the model is linear.

    Parameters
    ----------
    l2_reg : float, default 1.0
        λ of the summed objective ``Σᵢ ℓᵢ + (λ/2)‖w‖²`` (scikit-learn's ``C = 1/λ``).
        The paper uses λ = 2.2622 on Adult.
    fit_intercept : bool, default True
        Fit an unpenalized intercept (the paper's Adult model has none: pass False).
    preprocessor : "auto", None or transformer, default "auto"
        ``"auto"``: for a DataFrame, :func:`make_preprocessor` (one-hot + standardize,
        built from the dtypes); for an array, no preprocessing. ``None``: no
        preprocessing (numbers only). A scikit-learn transformer (e.g. a
        ``ColumnTransformer``) is cloned and fitted on the training data.
    features : callable, optional
        Surrogate mode: ``features(X)`` returns an ``(n, k)`` array of embeddings (e.g. the
        last layer of a network) on which the convex model is fitted. Applied before
        ``preprocessor``.
    tol, max_iter
        Newton tolerance and iteration limit (:class:`LogisticRegressionL2`).
    chunk_size : int, default 4096
        Training samples scored per chunk.
    max_categories : int or None, default 1000
        With ``preprocessor="auto"``, refuse a categorical column with more distinct
        values (:func:`check_cardinality`); None: no limit.
    random_state : int or None
        Seed of the random-removal baseline (:func:`leanfit.selection.trimming_curve`).
    verbose : bool, default False
        Show progress bars.

    Attributes
    ----------
    model_ : LogisticRegressionL2
        The fitted convex model (``theta_``, ``coef_``, ``intercept_``).
    preprocessor_ : transformer or None
        The fitted preprocessing.
    feature_names_out_ : ndarray of str
        Names of the model's input columns.
    train_index_ : pandas.Index
        Index of the training rows (``X.index`` for a DataFrame); influence tables use it.
    n_features_in_ : int
        Number of columns entering the preprocessor.
    classes_ : ndarray ``[0, 1]``
    """

    def __init__(
        self,
        l2_reg: float = 1.0,
        *,
        fit_intercept: bool = True,
        preprocessor: str | BaseEstimator | None = "auto",
        features: Callable[[Any], ArrayLike] | None = None,
        tol: float = 1e-10,
        max_iter: int = 100,
        chunk_size: int = 4096,
        max_categories: int | None = MAX_CATEGORIES,
        random_state: int | None = None,
        verbose: bool = False,
    ):
        self.l2_reg = l2_reg
        self.fit_intercept = fit_intercept
        self.preprocessor = preprocessor
        self.features = features
        self.tol = tol
        self.max_iter = max_iter
        self.chunk_size = chunk_size
        self.max_categories = max_categories
        self.random_state = random_state
        self.verbose = verbose

    # -- fitting ---------------------------------------------------------------------------

    def _new_model(self) -> LogisticRegressionL2:
        return LogisticRegressionL2(
            self.l2_reg, fit_intercept=self.fit_intercept, tol=self.tol, max_iter=self.max_iter
        )

    def _apply_features(self, X: pd.DataFrame | ArrayLike) -> pd.DataFrame | ArrayLike:
        if self.features is None:
            return X
        if not callable(self.features):
            raise bad_value("features", self.features, "a callable X -> (n, k) array or None")
        return check_matrix(self.features(X), "features(X)")

    def _resolve_preprocessor(self, X: pd.DataFrame | ArrayLike) -> BaseEstimator | None:
        if isinstance(self.preprocessor, str):
            if self.preprocessor != "auto":
                raise bad_value("preprocessor", self.preprocessor, '"auto", None or a transformer')
            if not isinstance(X, pd.DataFrame):
                return None
            return make_preprocessor(X, max_categories=self.max_categories)
        if self.preprocessor is None:
            return None
        if not hasattr(self.preprocessor, "fit_transform"):
            raise bad_value("preprocessor", self.preprocessor, '"auto", None or a transformer')
        return clone(self.preprocessor)

    def _to_matrix(self, X: pd.DataFrame | ArrayLike, *, fit: bool) -> np.ndarray:
        reject_sparse(X, "X")
        X = self._apply_features(X)
        if fit:
            self.preprocessor_ = self._resolve_preprocessor(X)
            self.n_features_in_ = _n_columns(X)
        if isinstance(self.preprocessor, str) and isinstance(X, pd.DataFrame):
            _check_no_missing(X)
        if self.preprocessor_ is not None:
            X = self.preprocessor_.fit_transform(X) if fit else self.preprocessor_.transform(X)
            if scipy.sparse.issparse(X):
                X = X.toarray()
        return check_matrix(X, "X")

    def fit(self, X: pd.DataFrame | ArrayLike, y: ArrayLike) -> InfluenceSelector:
        """Preprocess ``X`` (n rows) and fit the model on 0/1 labels ``y`` (n,).

        Raises
        ------
        BadInputError
            Mismatched lengths, missing or non-numeric values (after preprocessing), labels
            other than 0/1 or a single class, bad parameters.
        """
        check_int("chunk_size", self.chunk_size, low=1)
        reject_sparse(X, "X")
        check_length(target_vector(y, "y"), "y", _n_rows(X, "X"))
        Z = _owned(self._to_matrix(X, fit=True), X)
        y = check_binary_labels(target_vector(y, "y"), "y", n=Z.shape[0], require_both=True)
        self.model_ = self._new_model().fit(Z, y)
        self._Z, self._y = Z, y
        self.train_index_ = _row_index(X)
        self.classes_ = self.model_.classes_
        names = getattr(self.preprocessor_, "get_feature_names_out", None)
        self.feature_names_out_ = (
            np.asarray(names(), dtype=object)
            if names is not None
            else np.array([f"x{j}" for j in range(Z.shape[1])], dtype=object)
        )
        return self

    def transform(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Model-space features ``features(X) → preprocessor``, shape ``(n, d)`` float64."""
        check_fitted(self, "model_")
        if not isinstance(X, pd.DataFrame):
            require_2d(np.asarray(X).shape, "X")
        columns = _n_columns(X)
        if self.features is None and columns != self.n_features_in_:
            raise BadInputError(
                f"X has {columns} features, but InfluenceSelector is expecting "
                f"{self.n_features_in_} features as input (the columns it was fitted on)",
                param="X",
            )
        Z = self._to_matrix(X, fit=False)
        if Z.shape[1] != self.model_.n_features_in_:
            raise BadInputError(
                f"X has {Z.shape[1]} features after preprocessing, but InfluenceSelector is "
                f"expecting {self.model_.n_features_in_} features as input (as in fit)",
                param="X",
            )
        return Z

    def fit_transform(self, X: pd.DataFrame | ArrayLike, y: ArrayLike) -> np.ndarray:
        """:meth:`fit`, then the model-space features of ``X`` (:meth:`transform`)."""
        return self.fit(X, y).transform(X)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # 0/1 labels, 1 = the favourable outcome
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags

    def decision_function(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Decision values ``z = wᵀx + b`` in model space, shape ``(n,)``."""
        Z = self.transform(X)
        return self.model_.decision_function(Z)

    def predict_proba(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Probabilities ``[1 − σ(z), σ(z)]``, shape ``(n, 2)``."""
        Z = self.transform(X)
        return self.model_.predict_proba(Z)

    def predict(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Labels ``1[z > 0]``, shape ``(n,)``."""
        Z = self.transform(X)
        return self.model_.predict(Z)

    @property
    def n_iter_(self) -> int:
        """Newton iterations of the fitted model (:class:`LogisticRegressionL2`)."""
        check_fitted(self, "model_")
        return int(self.model_.n_iter_)

    def retrain(self, keep: ArrayLike) -> InfluenceSelector:
        """A new selector fitted on the kept training rows, preprocessing held fixed.

        The preprocessor is *not* refitted (the feature space, and hence the robustness
        attack points, stay comparable). The model is refitted to the same tolerance from
        a warm start at the current ``θ̂``, by chord steps on the current Hessian factor
        (:mod:`leanfit.selection.newton`; a gradient each): when the removed rows move the
        optimum little, that is all; when they move it far (removing the rows most harmful
        to utility can), Newton steps follow, and each new factor serves further chord steps.
        The optimum is unique, so the result equals training from scratch to the tolerance.
        The Hessian at the new optimum is factored when :meth:`influence` first needs it
        (``model_.hessian_cholesky_`` may be None until then).

        Parameters
        ----------
        keep : array-like of bool, shape (n_train,)
            ``True`` for the training rows to keep (as returned by
            :func:`leanfit.selection.trim`).
        """
        check_fitted(self, "model_")
        keep = check_keep_mask(keep, self._Z.shape[0])
        new = clone(self)
        new.preprocessor_ = self.preprocessor_
        new.n_features_in_ = self.n_features_in_
        new.feature_names_out_ = self.feature_names_out_
        new._Z, new._y = self._Z[keep], self._y[keep]
        self._hessian_factor()  # the chord steps' matrix (a retrained selector may lack it)
        model = copy.deepcopy(self.model_).set_params(warm_start=True)
        new.model_ = model._fit(new._Z, new._y, None, factor=False).set_params(warm_start=False)
        new.train_index_ = self.train_index_[keep]
        new.classes_ = self.classes_
        return new

    def _hessian_factor(self) -> Any:
        """The Cholesky factor of the training Hessian at ``θ̂``, computed once."""
        if self.model_.hessian_cholesky_ is None:
            self.model_.hessian_cholesky_ = hessian_factor(self.model_.hessian(self._Z))
        return self.model_.hessian_cholesky_

    # -- influence --------------------------------------------------------------------------

    def _validation_set(
        self,
        X_val: pd.DataFrame | ArrayLike,
        y_val: ArrayLike,
        sensitive_features: str | ArrayLike | None,
        privileged: object,
        objectives: Sequence[Objective],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        check_fitted(self, "model_")
        n_val = _n_rows(X_val, "X_val")
        y = check_binary_labels(y_val, "y_val", n=n_val)
        s = resolve_sensitive(X_val, sensitive_features, privileged, n=n_val)
        needing = [o.name for o in objectives if o.needs_sensitive]
        if needing and s is None:
            raise BadInputError(
                f"sensitive_features is required for objectives {needing}",
                param="sensitive_features",
            )
        return self.transform(X_val), y, s

    def prepare_validation(
        self,
        X_val: pd.DataFrame | ArrayLike,
        y_val: ArrayLike,
        *,
        sensitive_features: str | ArrayLike | None = None,
        objective: ObjectiveSpec = "utility",
        privileged: object = None,
    ) -> PreparedValidation:
        """The validation set in the model's space and its objectives with their parts held
        fixed at the fitted ``θ̂`` (:meth:`Objective.prepare`; same arguments as
        :meth:`influence`).

        The overshoot robustness objective keeps the attack points of ``θ̂``: evaluated at the
        parameters of a retrained model, ``objective.value(θ, Z, y, s)`` is the validation
        cost the influence was computed for. The other objectives come back unchanged.
        """
        objectives = resolve_objectives(objective)
        Z, y, s = self._validation_set(X_val, y_val, sensitive_features, privileged, objectives)
        theta = self.model_.theta_
        return PreparedValidation([o.prepare(theta, Z, y, s) for o in objectives], Z, y, s)

    def influence(
        self,
        X_val: pd.DataFrame | ArrayLike,
        y_val: ArrayLike,
        *,
        sensitive_features: str | ArrayLike | None = None,
        objective: ObjectiveSpec = "utility",
        privileged: object = None,
    ) -> pd.DataFrame:
        """Influence of every training sample on each validation objective.

        Parameters
        ----------
        X_val : DataFrame or array-like, m rows
            Validation inputs (raw, like the training ``X``).
        y_val : array-like of shape (m,)
            0/1 validation labels.
        sensitive_features : str or array-like of shape (m,), optional
            Group of each validation point, or the name of a column of ``X_val``; required
            by the fairness objectives. Two groups; see ``privileged``.
        objective : str, Objective or list of them, default "utility"
            ``"utility"``, ``"fairness"`` (demographic parity, signed), ``"eop"``,
            ``"robustness"`` (the paper's overshoot attack) or
            :class:`~leanfit.selection.objectives.Objective` instances such as
            ``WorstCaseRobustness(eps=0.1, norm="linf")`` or
            ``DemographicParity(absolute=True)``.
        privileged : optional
            Value of ``sensitive_features`` for the privileged group (not needed for 0/1).

        Returns
        -------
        DataFrame of shape (n_train, n_objectives)
            Index ``train_index_``, one column per objective (its ``name``). Positive =
            beneficial (removal would raise the cost), negative = harmful.
        """
        objectives, Z, y, s = self.prepare_validation(
            X_val,
            y_val,
            sensitive_features=sensitive_features,
            privileged=privileged,
            objective=objective,
        )
        theta = self.model_.theta_
        gradients = np.column_stack([o.gradient(theta, Z, y, s) for o in objectives])
        self._hessian_factor()  # a retrained selector's model may not have it yet
        directions = self.model_.solve_hessian(gradients)  # H⁻¹∇f, shape (p, k)
        scores = np.empty((self._Z.shape[0], len(objectives)))
        starts = range(0, self._Z.shape[0], self.chunk_size)
        for start in tqdm(starts, desc="influence", disable=not self.verbose):
            rows = slice(start, start + self.chunk_size)
            scores[rows] = per_sample_gradients(theta, self._Z[rows], self._y[rows]) @ directions
        return pd.DataFrame(scores, index=self.train_index_, columns=[o.name for o in objectives])

    def objective_values(
        self,
        X_val: pd.DataFrame | ArrayLike,
        y_val: ArrayLike,
        *,
        sensitive_features: str | ArrayLike | None = None,
        objective: ObjectiveSpec = "utility",
        privileged: object = None,
    ) -> pd.Series:
        """The costs ``f(θ̂)`` on the validation set, one entry per objective (same
        arguments as :meth:`influence`)."""
        objectives, Z, y, s = self.prepare_validation(
            X_val,
            y_val,
            sensitive_features=sensitive_features,
            privileged=privileged,
            objective=objective,
        )
        theta = self.model_.theta_
        return pd.Series(
            [o.value(theta, Z, y, s) for o in objectives], index=[o.name for o in objectives]
        )


def _owned(Z: np.ndarray, X: object) -> np.ndarray:
    """``Z``, or a copy of it when it may be (a view of) the caller's ``X``: the selector
    keeps its training matrix, which the caller must stay free to change."""
    if Z.flags.owndata and not (isinstance(X, np.ndarray) and np.may_share_memory(Z, X)):
        return Z
    return Z.copy()


def check_keep_mask(keep: ArrayLike, n: int) -> np.ndarray:
    """Return ``keep`` as a boolean array of shape ``(n,)``; raise naming ``keep``."""
    array = np.asarray(keep)
    if array.dtype != bool or array.shape != (n,):
        raise bad_value(
            "keep",
            f"array of dtype {array.dtype} and shape {array.shape}",
            f"a boolean mask of shape ({n},)",
        )
    return array
