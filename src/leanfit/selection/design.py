"""Weighted Gram matrices ``Z̃ᵀ diag(a) Z̃`` of a design whose columns mostly take two values.

The default preprocessing of :class:`~leanfit.selection.InfluenceSelector` one-hot encodes the
categorical columns and then standardizes them, so most columns of its matrix ``Z`` (n, d)
hold exactly two values. Such a column is ``Z_j = lo_j 1 + δ_j I_j`` with ``I_j`` a 0/1
indicator; taking the *minority* value as the 1s (``lo_j`` is the value of most rows) makes
``I`` sparse. A constant column is the case ``δ_j = 0``, ``I_j = 0``.

Decomposition. Split the columns into the ``k`` others, ``X_D`` (n, k), and the ``m``
two-valued ones, ``Z_B = 1 loᵀ + I Δ`` with ``I`` (n, m) sparse and ``Δ = diag(δ)``.
With the intercept, the column of ones joins ``B`` with ``lo = 1``, ``δ = 0``. For
weights ``a`` (n,), ``A = diag(a)``, ``s = Σᵢ aᵢ``, ``u = Iᵀ a`` (m,), ``g = X_Dᵀ a`` (k,)::

    X_Dᵀ A X_D                                        dense, n k² (BLAS)
    X_Dᵀ A Z_B = g loᵀ + (X_Dᵀ A I) Δ                 sparse, nnz(I) k
    Z_Bᵀ A Z_B = s lo loᵀ + lo (Δu)ᵀ + (Δu) loᵀ + Δ (Iᵀ A I) Δ

``Iᵀ A I`` is a sparse product costing about ``n r²`` for ``r`` ones per row, instead of
``n d²`` for the dense ``Zᵀ A Z``. The result equals the dense formula up to float64
rounding in a different summation order (and ``lo + δ`` may differ from the other value by
an ulp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

BLOCK_ROWS = 32768
"""Rows per block when scanning ``X`` and in the dense products (scratch: this many rows)."""

SPARSE_PAIR_COST = 200.0
"""Cost of one pair of ones in the sparse product ``Iᵀ A I``, in dense multiply-adds of the
BLAS Gram (measured: a sparse product handles ~10⁸ pairs/s, a BLAS Gram ~10¹⁰ flops/s)."""


@dataclass(frozen=True)
class Design:
    """A dense matrix ``X`` (n, d) with its two-valued columns as sparse indicators.

    Build it with :func:`design`; see the module docstring for the decomposition.

    Attributes
    ----------
    X : ndarray of shape (n, d)
        The matrix itself (not copied).
    dense : ndarray of int, shape (k,)
        Columns taking more than two values.
    binary : ndarray of int, shape (m,)
        Columns taking one or two values.
    base : ndarray of shape (m,)
        ``lo_j``: the value of the binary column ``j`` in most rows.
    jump : ndarray of shape (m,)
        ``δ_j``: the other value minus ``lo_j`` (0 for a constant column).
    indicator : scipy.sparse.csr_array of shape (n, m)
        ``I``: 1 where the binary column holds its minority value ``lo_j + δ_j``.
    """

    X: np.ndarray
    dense: np.ndarray
    binary: np.ndarray
    base: np.ndarray
    jump: np.ndarray
    indicator: scipy.sparse.csr_array

    def gram(self, a: np.ndarray, *, intercept: bool) -> np.ndarray:
        """``Z̃ᵀ diag(a) Z̃`` with ``Z̃ = [X, 1]`` (``intercept``) or ``X``, shape (p, p).

        ``a`` (n,) are the row weights, ``a ≥ 0``. Exactly symmetric; equal to the dense
        product to float64 rounding.
        """
        d = self.X.shape[1]
        p = d + int(intercept)
        base = np.append(self.base, 1.0) if intercept else self.base
        jump = np.append(self.jump, 0.0) if intercept else self.jump
        binary = np.append(self.binary, d) if intercept else self.binary
        total = float(a.sum())
        ones = scipy.sparse.csr_array(
            (
                self.indicator.data * a[_rows(self.indicator)],
                self.indicator.indices,
                self.indicator.indptr,
            ),
            shape=self.indicator.shape,
        )  # A I
        u = np.append(ones.sum(axis=0), 0.0) if intercept else ones.sum(axis=0)
        pairs = (self.indicator.T @ ones).toarray()  # Iᵀ A I (m, m)
        if intercept:
            pairs = np.pad(pairs, ((0, 1), (0, 1)))
        du = jump * u
        binary_block = total * np.outer(base, base) + np.outer(base, du) + np.outer(du, base)
        binary_block += jump[:, None] * pairs * jump[None, :]
        hess = np.empty((p, p))
        hess[np.ix_(binary, binary)] = binary_block
        if self.dense.size:
            X_D = self.X if self.dense.size == d else self.X[:, self.dense]
            weighted = a[:, None] * X_D
            g = weighted.sum(axis=0)
            cross = np.outer(g, base)
            cross[:, : self.binary.size] += (ones.T @ X_D).T * self.jump[None, :]
            hess[np.ix_(self.dense, binary)] = cross
            hess[np.ix_(binary, self.dense)] = cross.T
            hess[np.ix_(self.dense, self.dense)] = _dense_gram(X_D, a)
        return (hess + hess.T) / 2  # exactly symmetric (Iᵀ A I is up to rounding)


def _rows(matrix: scipy.sparse.csr_array) -> np.ndarray:
    """Row index of every stored entry of a CSR matrix, shape (nnz,)."""
    return np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))


def _dense_gram(X: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``Xᵀ diag(a) X`` (k, k) for ``a ≥ 0`` as ``(√a ⊙ X)ᵀ(√a ⊙ X)``, a block of rows at a
    time (exactly symmetric)."""
    root = np.sqrt(a)
    gram = np.zeros((X.shape[1], X.shape[1]))
    for start in range(0, X.shape[0], BLOCK_ROWS):
        scaled = root[start : start + BLOCK_ROWS, None] * X[start : start + BLOCK_ROWS]
        gram += scaled.T @ scaled
    return gram


def design(X: np.ndarray, *, pair_cost: float = SPARSE_PAIR_COST) -> Design:
    """Detect the two-valued columns of ``X`` (n, d) and build their indicators.

    Two passes for each column's minimum and maximum, then one pass (a block of rows at a
    time) checking that every value equals one of them and counting each, and one building
    the sparse indicator ``I`` of the minority values. ``X`` is not copied.

    Falls back to :func:`dense_design` when the structured Gram would not be cheaper: per
    row ``k² + c r² ≥ d²`` for ``k`` other columns, ``r`` ones, and ``c = pair_cost``
    (:data:`SPARSE_PAIR_COST`; 0 keeps the structure whenever a column is two-valued).
    """
    n, d = X.shape
    low, high = X.min(axis=0, initial=np.inf), X.max(axis=0, initial=-np.inf)
    two_valued = np.ones(d, dtype=bool)
    at_high = np.zeros(d, dtype=np.int64)
    for start in range(0, n, BLOCK_ROWS):
        block = X[start : start + BLOCK_ROWS]
        high_here = block == high
        two_valued &= (high_here | (block == low)).all(axis=0)
        at_high += high_here.sum(axis=0)
    binary, dense = np.flatnonzero(two_valued), np.flatnonzero(~two_valued)
    minority_high = 2 * at_high[binary] <= n
    base = np.where(minority_high, low[binary], high[binary])
    other = np.where(minority_high, high[binary], low[binary])
    jump = other - base
    target = np.full(d, np.nan)  # the value marked by I; NaN (never equal) elsewhere
    target[binary[jump != 0]] = other[jump != 0]
    position = np.zeros(d, dtype=np.int64)
    position[binary] = np.arange(binary.size)
    rows, columns = [], []
    for start in range(0, n, BLOCK_ROWS):
        row, column = np.nonzero(X[start : start + BLOCK_ROWS] == target)  # row-major order
        rows.append(row + start)
        columns.append(position[column])
    row_index = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_index, minlength=n), out=indptr[1:])
    indices = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
    r = indices.size / max(n, 1)  # ones per row
    if not binary.size or dense.size**2 + pair_cost * r * r >= d * d:
        return dense_design(X)  # the BLAS Gram is cheaper
    indicator = scipy.sparse.csr_array(
        (np.ones(indices.size), indices, indptr), shape=(n, binary.size)
    )
    return Design(X, dense, binary, base, jump, indicator)


def dense_design(X: np.ndarray) -> Design:
    """``X`` (n, d) with every column treated as dense: :meth:`Design.gram` is then the BLAS
    Gram ``(√a ⊙ X)ᵀ(√a ⊙ X)`` (and the intercept's row ``Xᵀa``, ``Σa``)."""
    n, d = X.shape
    none = np.zeros(0)
    empty = scipy.sparse.csr_array((n, 0))
    return Design(X, np.arange(d), np.zeros(0, dtype=np.int64), none, none, empty)
