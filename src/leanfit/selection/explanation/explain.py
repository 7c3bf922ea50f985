"""Explaining influence with readable rules: a regression tree with hierarchical shrinkage.

Algorithm 1 of Chhabra et al. (ICLR 2024): fit a regression tree with the training features as
inputs and the influence of each training sample as target, regularize it with hierarchical
shrinkage (Agarwal et al., ICML 2022, "Hierarchical Shrinkage: improving the accuracy and
interpretability of tree-based methods"), and read its leaves as rules such as
"relationship = Husband and hours_per_week > 45.5 → harmful".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import KFold
from sklearn.tree import DecisionTreeRegressor

from leanfit.checks import check_int
from leanfit.exceptions import BadInputError, bad_value
from leanfit.reports.plots import new_figure
from leanfit.selection._validation import (
    EstimatorNotFittedError,
    NotNumericError,
    reject_sparse,
    require_2d,
    target_vector,
)

DEFAULT_LAMBDAS = (0.0, 0.1, 1.0, 10.0, 50.0, 100.0, 500.0)
"""The grid of shrinkage strengths λ searched by cross-validation (imodels' default grid)."""


class _Missing:
    """The category of missing values of a categorical column."""

    def __repr__(self) -> str:
        return "(missing)"


MISSING = _Missing()
"""Missing categorical values form their own category, which reads "(missing)" in rules."""

HARMFUL_COLOR = "#e8837c"
BENEFICIAL_COLOR = "#7fb2e5"
_SPLIT_COLOR = "#eeeeee"


class TreeArrays(Protocol):
    """What :func:`shrunk_node_values` reads of a tree (sklearn's ``Tree`` provides it)."""

    children_left: np.ndarray
    children_right: np.ndarray
    value: np.ndarray
    weighted_n_node_samples: np.ndarray


def shrunk_node_values(tree: TreeArrays, lambdas: ArrayLike) -> np.ndarray:
    """Node values of a regression tree after hierarchical shrinkage.

    For a node t reached by the path t₀ (root) → t₁ → … → t_L = t,

    .. math::

        \\hat y_\\lambda(t) = E_{t_0}[y]
            + \\sum_{l=1}^{L} \\frac{E_{t_l}[y] - E_{t_{l-1}}[y]}{1 + \\lambda / N(t_{l-1})},

    where E_t[y] is the mean target of the training samples in node t (the unshrunk node
    value) and N(t) their number (their total weight when the tree was fitted with weights).
    Each step from a parent to a child is shrunk by the factor N(parent) / (N(parent) + λ):
    steps out of small nodes are shrunk most. λ = 0 gives the tree's own values; λ → ∞ gives
    the root mean everywhere. This is equation (1) of Agarwal et al. (2022) and the
    ``node_based`` scheme of imodels' ``HSTreeRegressor``.

    Parameters
    ----------
    tree : sklearn.tree._tree.Tree or similar
        A fitted single-output regression tree: ``children_left`` / ``children_right`` (node
        ids, −1 at leaves), ``value`` (mean target per node, shape (n_nodes, 1, 1) or
        (n_nodes,)) and ``weighted_n_node_samples`` (shape (n_nodes,)). Not modified.
    lambdas : float or array-like, shape (n_lambdas,)
        Shrinkage strengths λ ≥ 0.

    Returns
    -------
    numpy.ndarray, shape (n_lambdas, n_nodes)
        Shrunk value of every node (leaves and internal nodes) for every λ.
    """
    lam = np.atleast_1d(np.asarray(lambdas, dtype=float))
    if lam.ndim != 1 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise bad_value("lambdas", lambdas, "finite numbers >= 0")
    raw = np.asarray(tree.value, dtype=float).reshape(len(tree.children_left))
    count = np.asarray(tree.weighted_n_node_samples, dtype=float)
    out = np.empty((lam.size, raw.size))
    out[:, 0] = raw[0]
    stack = [0]
    while stack:
        parent = stack.pop()
        for child in (tree.children_left[parent], tree.children_right[parent]):
            if child < 0:
                continue
            factor = 1.0 / (1.0 + lam / count[parent])
            out[:, child] = out[:, parent] + (raw[child] - raw[parent]) * factor
            stack.append(child)
    return out


@dataclass(frozen=True)
class _Encoding:
    """How the original columns map to the numeric columns the tree is fitted on.

    A numeric column is kept as it is; a categorical column becomes one 0/1 column per
    category seen in fit (``MISSING`` for missing values). A split of a 0/1 column reads
    "column = category" (right child) or "column ≠ category" (left child). Categories not
    seen in fit have all their 0/1 columns at 0, so they follow every "≠" branch.
    """

    columns: list[str]
    categories: dict[str, list[object]]
    sources: list[tuple[str, object]]  # (original column, category or None) per encoded column

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> _Encoding:
        categories: dict[str, list[object]] = {}
        sources: list[tuple[str, object]] = []
        for col in frame.columns:
            values = frame[col]
            if _is_categorical(values):
                cats = sorted(pd.unique(values.dropna()), key=str)
                if values.isna().any():
                    cats.append(MISSING)
                categories[col] = cats
                sources += [(col, c) for c in cats]
            else:
                sources.append((col, None))
        return cls(list(frame.columns), categories, sources)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        parts = []
        for col in self.columns:
            values = frame[col]
            if col in self.categories:
                obj = values.astype(object)
                for cat in self.categories[col]:
                    hit = obj.isna() if cat is MISSING else (obj == cat) & obj.notna()
                    parts.append(hit.to_numpy(dtype=float))
            else:
                if _is_categorical(values):
                    raise bad_value(f"X[{col!r}]", str(values.dtype), "numeric, as in fit")
                numbers = values.to_numpy(dtype=float)
                if not np.all(np.isfinite(numbers)):
                    raise bad_value(
                        f"X[{col!r}]", "missing or infinite values", "finite numbers (impute)"
                    )
                parts.append(numbers)
        return np.column_stack(parts)


def _is_categorical(values: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values)


def _format_number(x: float) -> str:
    """Shortest decimal that identifies a threshold at the tree's float32 precision."""
    return np.format_float_positional(np.float32(x), trim="-")


@dataclass
class _Clause:
    """The conditions a path puts on one original column, merged."""

    column: str
    low: float = -np.inf  # column > low
    high: float = np.inf  # column ≤ high
    equal: object = None  # column = equal
    excluded: list[object] = field(default_factory=list)  # column ∉ excluded

    def text(self) -> str:
        if self.equal is not None:
            return f"{self.column} = {self.equal}"
        if self.excluded:
            if len(self.excluded) == 1:
                return f"{self.column} ≠ {self.excluded[0]}"
            return f"{self.column} ∉ {{{', '.join(sorted(map(str, self.excluded)))}}}"
        if np.isfinite(self.low) and np.isfinite(self.high):
            return f"{_format_number(self.low)} < {self.column} ≤ {_format_number(self.high)}"
        if np.isfinite(self.low):
            return f"{self.column} > {_format_number(self.low)}"
        return f"{self.column} ≤ {_format_number(self.high)}"


def _leaf_rules(tree: Any, encoding: _Encoding) -> dict[int, str]:
    """Rule text of every leaf: the merged conditions of its path, root first."""
    rules: dict[int, str] = {}
    stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
    while stack:
        node, path = stack.pop()
        left, right = tree.children_left[node], tree.children_right[node]
        if left < 0:
            rules[node] = _merge(path, tree, encoding)
            continue
        stack.append((right, [*path, (node, True)]))
        stack.append((left, [*path, (node, False)]))
    return rules


def _merge(path: list[tuple[int, bool]], tree: Any, encoding: _Encoding) -> str:
    clauses: dict[str, _Clause] = {}  # insertion order = first appearance on the path
    for node, went_right in path:
        column, category = encoding.sources[tree.feature[node]]
        clause = clauses.setdefault(column, _Clause(column))
        threshold = float(tree.threshold[node])
        if column not in encoding.categories:
            if went_right:
                clause.low = max(clause.low, threshold)
            else:
                clause.high = min(clause.high, threshold)
        elif went_right:
            clause.equal = category
        else:
            clause.excluded.append(category)
    for clause in clauses.values():
        if clause.equal is not None:
            clause.excluded = []  # "= a" implies every "≠ b" on the same column
    return " and ".join(c.text() for c in clauses.values()) or "(all samples)"


def _split_text(tree: Any, node: int, encoding: _Encoding) -> str:
    """The question an internal node asks; "yes" goes to the right child."""
    column, category = encoding.sources[tree.feature[node]]
    if column in encoding.categories:
        return f"{column}\n= {category}?"
    return f"{column}\n> {_format_number(float(tree.threshold[node]))}?"


class InfluenceTree(RegressorMixin, BaseEstimator):
    """Regression tree explaining influence values by readable rules, with hierarchical shrinkage.

    The tree is fitted on the original features: numeric columns as they are, string (or
    boolean, or categorical) columns one-hot encoded internally, so that every split reads
    "column = value" / "column ≠ value" or "column > t" / "column ≤ t". The target is the
    influence of each training sample; positive influence means the sample is beneficial to
    the objective, negative means harmful.

    After a CART tree (``sklearn.tree.DecisionTreeRegressor``, squared error) is grown, its
    node values are replaced by their hierarchically shrunk values (see
    :func:`shrunk_node_values`):

    .. math::

        \\hat y_\\lambda(x) = E_{t_0}[y]
            + \\sum_{l=1}^{L} \\frac{E_{t_l}[y] - E_{t_{l-1}}[y]}{1 + \\lambda / N(t_{l-1})}

    along the path t₀ → … → t_L from the root to the leaf of x. λ is chosen from ``lambdas``
    by K-fold cross-validation: on each fold the tree is grown on the other folds and the
    mean squared error of the shrunk predictions is measured for every λ (shrinkage does not
    change the tree, so one tree per fold serves the whole grid); the λ with the smallest
    mean error wins (the smallest λ among exact ties). The final tree is then grown on all
    samples and shrunk with that λ.

    Parameters
    ----------
    max_leaf_nodes : int or None, default 20
        Grow the tree best-first up to this many leaves (rules).
    max_depth : int or None, default None
        Maximum number of conditions on a path.
    min_samples_leaf : int, default 1
        Minimum number of samples in a leaf.
    lambdas : sequence of float, default (0, 0.1, 1, 10, 50, 100, 500)
        Candidate shrinkage strengths λ ≥ 0 (in units of samples). One value skips the
        cross-validation.
    cv : int, default 5
        Number of cross-validation folds (shuffled).
    random_state : int, RandomState or None, default None
        Seeds the fold assignment and the tree's tie-breaking between equally good splits.

    Attributes
    ----------
    estimator_ : sklearn.tree.DecisionTreeRegressor
        The tree grown on all samples (on the encoded features), with its unshrunk values.
    node_values_ : numpy.ndarray, shape (n_nodes,)
        Shrunk value of every node with ``lambda_``; predictions are those of the leaves.
    lambda_ : float
        The chosen λ.
    lambdas_ : numpy.ndarray, shape (n_lambdas,)
        The candidate λ, sorted and without duplicates.
    cv_mse_ : numpy.ndarray, shape (n_lambdas,)
        Cross-validated mean squared error for each of ``lambdas_`` (NaN with a single λ).
    feature_names_in_ : numpy.ndarray of str, shape (n_features,)
        Original column names (``x0``, ``x1``, … when fitted on an array).
    n_features_in_ : int
        Number of original columns.

    Examples
    --------
    >>> tree = InfluenceTree(max_leaf_nodes=8, random_state=0).fit(X, influence)
    >>> tree.rules().head(3)  # the most harmful rules first
    """

    def __init__(
        self,
        *,
        max_leaf_nodes: int | None = 20,
        max_depth: int | None = None,
        min_samples_leaf: int = 1,
        lambdas: Sequence[float] = DEFAULT_LAMBDAS,
        cv: int = 5,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.max_leaf_nodes = max_leaf_nodes
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.lambdas = lambdas
        self.cv = cv
        self.random_state = random_state

    # ----------------------------------------------------------------- validation
    def _validated_lambdas(self) -> np.ndarray:
        try:
            lam = np.unique(np.asarray(self.lambdas, dtype=float).ravel())
        except (TypeError, ValueError) as err:
            raise bad_value("lambdas", self.lambdas, "a sequence of numbers >= 0") from err
        if lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
            raise bad_value("lambdas", self.lambdas, "a non-empty sequence of finite numbers >= 0")
        return lam

    def _check_params(self, n_samples: int) -> None:
        if self.max_leaf_nodes is not None:
            check_int("max_leaf_nodes", self.max_leaf_nodes, low=2)
        if self.max_depth is not None:
            check_int("max_depth", self.max_depth, low=1)
        check_int("min_samples_leaf", self.min_samples_leaf, low=1)
        check_int("cv", self.cv, low=2, high=n_samples)

    def _as_frame(self, X: Any, fitting: bool) -> pd.DataFrame:
        reject_sparse(X, "X")
        if isinstance(X, pd.DataFrame):
            frame = X.rename(columns=str)
        else:
            array = np.asarray(X)
            if array.dtype.kind == "c":
                raise BadInputError(
                    "X holds complex numbers: Complex data not supported", param="X"
                )
            require_2d(array.shape, "X")
            if not fitting and array.shape[1] != self.n_features_in_:
                raise BadInputError(
                    f"X has {array.shape[1]} features, but InfluenceTree is expecting "
                    f"{self.n_features_in_} features as input (the columns it was fitted on)",
                    param="X",
                )
            frame = pd.DataFrame(array, columns=[f"x{j}" for j in range(array.shape[1])])
            frame = frame.infer_objects()
        require_2d(frame.shape, "X")
        if frame.columns.duplicated().any():
            raise bad_value("X", list(frame.columns), "a table with distinct column names")
        if fitting:
            return frame
        missing = [c for c in self.feature_names_in_ if c not in frame.columns]
        if missing:
            raise bad_value("X", list(frame.columns), f"a table with the fitted columns {missing}")
        return frame[list(self.feature_names_in_)]

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise EstimatorNotFittedError(
                "this InfluenceTree is not fitted yet; call fit(X, influence)"
            )

    # ----------------------------------------------------------------- fitting
    def _grow(self, Z: np.ndarray, y: np.ndarray) -> DecisionTreeRegressor:
        return DecisionTreeRegressor(
            max_leaf_nodes=self.max_leaf_nodes,
            max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf,
            random_state=self.random_state,
        ).fit(Z, y)

    def _cross_validate(self, Z: np.ndarray, y: np.ndarray, lam: np.ndarray) -> np.ndarray:
        folds = KFold(n_splits=self.cv, shuffle=True, random_state=self.random_state)
        errors = []
        for train, test in folds.split(Z):
            fitted = self._grow(Z[train], y[train])
            values = shrunk_node_values(fitted.tree_, lam)  # (n_lambdas, n_nodes)
            predictions = values[:, fitted.apply(Z[test])]
            errors.append(np.mean((predictions - y[test]) ** 2, axis=1))
        return np.mean(errors, axis=0)

    def fit(self, X: pd.DataFrame | ArrayLike, y: ArrayLike) -> InfluenceTree:
        """Grow the tree on ``X`` with the influence values ``y`` as target; choose λ by CV.

        Parameters
        ----------
        X : pandas.DataFrame or array-like, shape (n_samples, n_features)
            Original training features. Non-numeric (and boolean) columns are categorical;
            their missing values form a category of their own. Numeric columns must be
            finite.
        y : array-like, shape (n_samples,)
            Influence of each sample (positive = beneficial, negative = harmful).

        Returns
        -------
        InfluenceTree
            ``self``, fitted.
        """
        frame = self._as_frame(X, fitting=True)
        target = target_vector(y, "y").astype(float)
        if target.shape != (len(frame),) or not np.all(np.isfinite(target)):
            raise bad_value(
                "y", f"shape {target.shape}", f"{len(frame)} finite influence values, one per row"
            )
        if len(frame) < 2:
            raise BadInputError(
                "X must hold at least 2 rows to grow a tree; got 1 sample", param="X"
            )
        lam = self._validated_lambdas()
        self._check_params(len(frame))
        try:
            encoding = _Encoding.fit(frame)
        except TypeError as err:  # a cell pandas cannot hash as a category (a dict, a list)
            raise NotNumericError(
                f"X must hold a string or a number in every cell (argument must be a string "
                f"or a number); {err}"
            ) from err
        Z = encoding.transform(frame)
        cv_mse = self._cross_validate(Z, target, lam) if lam.size > 1 else np.full(1, np.nan)
        self.lambdas_ = lam
        self.cv_mse_ = cv_mse
        self.lambda_ = float(lam[int(np.argmin(cv_mse))]) if lam.size > 1 else float(lam[0])
        self.estimator_ = self._grow(Z, target)
        self.node_values_ = shrunk_node_values(self.estimator_.tree_, self.lambda_)[0]
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        self.n_features_in_ = frame.shape[1]
        self._encoding = encoding
        return self

    # ----------------------------------------------------------------- using
    def apply(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Leaf (node id, as in ``rules()["leaf"]``) of each row, shape (n_samples,)."""
        self._check_fitted()
        Z = self._encoding.transform(self._as_frame(X, fitting=False))
        return np.asarray(self.estimator_.apply(Z))

    def predict(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Shrunk influence predicted for each row, shape (n_samples,).

        Rows may be new (e.g. unlabelled points in active learning); a category not seen in
        fit follows the "≠" branches.
        """
        leaves = self.apply(X)
        return self.node_values_[leaves]

    def rules(self) -> pd.DataFrame:
        """One row per leaf, the most harmful first.

        Returns
        -------
        pandas.DataFrame
            Columns ``leaf`` (node id), ``rule`` (the conditions of the path, merged per
            column: "a < x ≤ b", "x = v", "x ≠ v", "x ∉ {u, v}"), ``shrunk_mean`` (the leaf's
            prediction), ``raw_mean`` (mean influence of its training samples), ``n_samples``
            and ``label`` ("harmful" when ``shrunk_mean`` < 0, else "beneficial"), sorted by
            ``shrunk_mean`` ascending.
        """
        self._check_fitted()
        tree = self.estimator_.tree_
        texts = _leaf_rules(tree, self._encoding)
        leaves = np.asarray(sorted(texts), dtype=int)
        frame = pd.DataFrame(
            {
                "leaf": leaves,
                "rule": [texts[leaf] for leaf in leaves],
                "shrunk_mean": self.node_values_[leaves],
                "raw_mean": tree.value[leaves, 0, 0],
                "n_samples": tree.n_node_samples[leaves].astype(int),
            }
        )
        frame["label"] = np.where(frame["shrunk_mean"] < 0, "harmful", "beneficial")
        return frame.sort_values(["shrunk_mean", "leaf"], kind="stable", ignore_index=True)

    def plot(self, ax: Axes | None = None, *, fontsize: float = 8.0) -> Figure:
        """Draw the tree; leaves are coloured by the sign of their shrunk influence.

        Internal nodes show their question ("column = value?" or "column > t?") and sample
        count; the left edge is "no", the right edge "yes". Leaves show the shrunk mean, the
        raw mean and the count, red when harmful (< 0) and blue when beneficial.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Draw there; by default a new figure sized to the tree.
        fontsize : float, default 8

        Returns
        -------
        matplotlib.figure.Figure
        """
        self._check_fitted()
        tree = self.estimator_.tree_
        x, depth = _layout(tree)
        n_leaves = int(np.sum(tree.children_left < 0))
        if ax is None:
            fig, ax = new_figure((max(6.0, 1.6 * n_leaves), max(3.0, 1.3 * (depth.max() + 1))))
        else:
            root = ax.figure
            fig = root if isinstance(root, Figure) else root.figure
        for node in range(tree.node_count):
            edges = ((tree.children_left[node], "no"), (tree.children_right[node], "yes"))
            for child, word in edges:
                if child < 0:
                    continue
                ax.plot([x[node], x[child]], [-depth[node], -depth[child]], color="grey", lw=0.8)
                ax.text(
                    (x[node] + x[child]) / 2, -(depth[node] + depth[child]) / 2, word,
                    fontsize=fontsize - 1, ha="center", va="center", color="dimgrey",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none"},
                )  # fmt: skip
        for node in range(tree.node_count):
            n = int(tree.n_node_samples[node])
            if tree.children_left[node] < 0:
                value = self.node_values_[node]
                text = f"shrunk {value:+.3g}\nraw {tree.value[node, 0, 0]:+.3g}\nn={n:,}"
                color = HARMFUL_COLOR if value < 0 else BENEFICIAL_COLOR
            else:
                text = f"{_split_text(tree, node, self._encoding)}\nn={n:,}"
                color = _SPLIT_COLOR
            ax.text(
                x[node], -depth[node], text, fontsize=fontsize, ha="center", va="center",
                bbox={"boxstyle": "round,pad=0.3", "fc": color, "ec": "grey"},
            )  # fmt: skip
        ax.set_xlim(-0.6, n_leaves - 0.4)
        ax.set_ylim(-depth.max() - 0.6, 0.6)
        ax.set_axis_off()
        ax.legend(
            handles=[
                Patch(fc=HARMFUL_COLOR, ec="grey", label="harmful (shrunk mean < 0)"),
                Patch(fc=BENEFICIAL_COLOR, ec="grey", label="beneficial (shrunk mean ≥ 0)"),
            ],
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncols=2,
            fontsize=fontsize,
        )
        ax.set_title(f"Influence tree (hierarchical shrinkage, λ = {self.lambda_:g})")
        return fig


def _layout(tree: Any) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal position and depth of each node: leaves at 0, 1, … from left to right,
    each internal node centred above its two children."""
    x = np.zeros(tree.node_count)
    depth = np.zeros(tree.node_count, dtype=int)
    next_leaf = 0

    def place(node: int, level: int) -> None:
        nonlocal next_leaf
        depth[node] = level
        left, right = tree.children_left[node], tree.children_right[node]
        if left < 0:
            x[node] = next_leaf
            next_leaf += 1
            return
        place(left, level + 1)
        place(right, level + 1)
        x[node] = (x[left] + x[right]) / 2

    place(0, 0)
    return x, depth
