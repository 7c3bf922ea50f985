"""Truncated SVD: exact, or randomized (Halko, Martinsson & Tropp 2011) with a warm start."""

from __future__ import annotations

import torch
from torch import Tensor

from leanfit.exceptions import BadInputError, bad_value
from leanfit.quantization.spec import SVD_METHODS


def _check_matrix(matrix: object) -> Tensor:
    if not isinstance(matrix, Tensor) or not matrix.is_floating_point() or matrix.dim() != 2:
        raise bad_value(
            "matrix", getattr(matrix, "shape", type(matrix)), "a 2-D floating-point tensor"
        )
    if matrix.numel() == 0:
        raise bad_value("matrix", tuple(matrix.shape), "a non-empty 2-D tensor")
    return matrix.detach().float()


# Directions of Y = A·basis (float32) weaker than this fraction of the strongest are rounding
# noise: Y is orthonormalized by Cholesky only when its factor's diagonal stays above it, and
# the eigen-decomposition fallback drops the directions below it.
_WELL_CONDITIONED = 1e-4


def _descending_eigh(symmetric: Tensor) -> tuple[Tensor, Tensor]:
    values, vectors = torch.linalg.eigh(symmetric)
    return values.flip(0), vectors.flip(1)


def power_step(matrix: Tensor, basis: Tensor) -> Tensor:
    """One subspace (power) iteration: an orthonormal basis of ``Aᵀ A · basis`` (n × ℓ).

    ``W = (A · basis)ᵀ A`` transposed, orthonormalized by Cholesky QR (``WᵀW = L Lᵀ`` in
    float64, ``W L⁻ᵀ``): two passes over A and no ℓ × ℓ eigen-decomposition. Falls back to the
    right Ritz vectors of :func:`subspace_svd` when W is too ill-conditioned for that.
    """
    w = ((matrix @ basis).T @ matrix).T
    chol, info = torch.linalg.cholesky_ex((w.T @ w).double())
    diagonal = chol.diagonal()
    if int(info) or not bool(diagonal.min() > _WELL_CONDITIONED * diagonal.max()):
        return subspace_svd(matrix, basis, 1)[2]
    return torch.linalg.solve_triangular(chol.T.to(w.dtype), w, upper=True, left=False)


def subspace_svd(matrix: Tensor, basis: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """One step of subspace iteration with Rayleigh–Ritz extraction.

    With ``Y = A · basis`` (m × ℓ) and ``Q`` an orthonormal basis of its columns, this is the
    exact SVD of the projection ``Q Qᵀ A = U · diag(S) · Vᵀ``; its leading r triplets
    approximate those of A, better the closer ``basis`` is to A's leading right subspace,
    and ``V`` (the right Ritz vectors) is the basis for the next step. Two passes over A
    (``A · basis`` and ``Z = Yᵀ A``, 2·m·n·ℓ multiply-adds, in float32); Q is never formed: with
    the Gram matrix ``G = YᵀY = L Lᵀ`` (Cholesky in float64), ``Q = Y L⁻ᵀ`` and
    ``B = Qᵀ A = L⁻¹ Z``, whose SVD ``B = Ũ S Vᵀ`` comes from the eigen-decomposition
    ``B Bᵀ = L⁻¹ (Z Zᵀ) L⁻ᵀ = Ũ S² Ũᵀ`` (ℓ × ℓ, float64; B itself is never formed either). With
    ``X = L⁻ᵀ Ũ``: ``U = Q Ũ = Y X`` and ``V = Bᵀ Ũ S⁻¹ = Zᵀ X S⁻¹``.
    If Y is rank-deficient (a diagonal entry of L below 1e-4 times the largest),
    ``G = P Λ Pᵀ`` and ``Q = Y P Λ^(−1/2)`` over the directions with ``λ > 1e-8 · max λ``.

    Because ``U_r diag(S_r) V_rᵀ = U_r U_rᵀ A`` is an orthogonal projection,
    ``‖A − U_r diag(S_r) V_rᵀ‖_F² = ‖A‖_F² − Σ_{i<=r} S_i²``.

    Parameters
    ----------
    matrix : Tensor
        A, (m × n) float32.
    basis : Tensor
        (n × ℓ) float32, full column rank in exact arithmetic (orthonormal is best).
    rank : int
        r <= ℓ: how many left singular vectors to form.

    Returns
    -------
    U : Tensor
        (m × r) float32, orthonormal columns (zero columns past the rank of Y).
    S : Tensor
        (k,) float32, non-increasing, k <= ℓ the rank of Y.
    V : Tensor
        (n × k) float32, orthonormal columns (the right Ritz vectors).
    """
    y = matrix @ basis
    z = y.T @ matrix
    gram = (y.T @ y).double()
    chol, info = torch.linalg.cholesky_ex(gram)
    diagonal = chol.diagonal()
    if int(info) == 0 and bool(diagonal.min() > _WELL_CONDITIONED * diagonal.max()):
        # Y has full column rank, far from float32 rounding: Q = Y L⁻ᵀ with G = L Lᵀ
        zd = z.double()
        half = torch.linalg.solve_triangular(chol, zd @ zd.T, upper=False)  # L⁻¹ Z Zᵀ
        mu, ut = _descending_eigh(torch.linalg.solve_triangular(chol, half.T, upper=False))
        x = torch.linalg.solve_triangular(chol.T, ut, upper=True)  # X = L⁻ᵀ Ũ
    else:  # rank-deficient Y: whiten with the eigenvectors of G, dropping null directions
        lam, p = torch.linalg.eigh(gram)
        keep = lam > _WELL_CONDITIONED**2 * lam[-1].clamp(min=torch.finfo(torch.float64).tiny)
        whiten = p[:, keep] * lam[keep].rsqrt()  # Q = Y · whiten
        b = whiten.T @ z.double()
        mu, ut = _descending_eigh(b @ b.T)
        x = whiten @ ut
    s = mu.clamp(min=0).sqrt()
    inverse = torch.where(s > 0, 1 / s.clamp(min=torch.finfo(torch.float64).tiny), 0)
    x = x.to(y.dtype)
    v = (z.T @ x) * inverse.to(y.dtype)
    u = y @ x[:, :rank]
    if u.shape[1] < rank:
        u = torch.cat([u, u.new_zeros(u.shape[0], rank - u.shape[1])], dim=1)
    return u, s.to(y.dtype), v


def pad_columns(values: Tensor, length: int) -> Tensor:
    """The first ``length`` entries (or columns) of a tensor, zero-filled past its end."""
    short = length - values.shape[-1]
    if short <= 0:
        return values[..., :length]
    return torch.cat([values, values.new_zeros(*values.shape[:-1], short)], dim=-1)


def _sketch(
    n: int, width: int, init: Tensor | None, generator: torch.Generator | None, like: Tensor
) -> Tensor:
    """Test matrix Ω (n × width): the columns of ``init`` first, Gaussian columns after."""
    given = like.new_zeros(n, 0) if init is None else init.detach().to(like)[:, :width]
    extra = torch.randn(
        n, width - given.shape[1], generator=generator, device=like.device, dtype=like.dtype
    )
    return torch.cat([given, extra], dim=1)


def truncated_svd(
    matrix: Tensor,
    rank: int,
    method: str = "randomized",
    *,
    init: Tensor | None = None,
    oversample: int = 16,
    power_iters: int = 6,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The leading ``rank`` singular triplets of a matrix: ``matrix ≈ U · diag(S) · Vh``.

    Parameters
    ----------
    matrix : Tensor
        (m × n), floating point; computed in float32 on its device.
    rank : int
        r, 1 <= r <= min(m, n).
    method : {"randomized", "exact"}
        ``"exact"``: :func:`torch.linalg.svd`, truncated. ``"randomized"``: range finder
        with subspace iteration. With the test matrix Ω (n × ℓ, ℓ = min(r + oversample,
        m, n)): ``Q = orth(A Ω)``, then ``power_iters`` times ``Q = orth(A · orth(Aᵀ Q))``;
        finally the exact SVD of the small ``Qᵀ A`` (ℓ × n) gives ``U = Q Ũ``, S, Vh.
        Cost O(m n ℓ (2 · power_iters + 2)) instead of O(m n min(m, n)).
    init : Tensor, optional
        Warm start (randomized only): an (n × k) basis, e.g. ``Vh.T`` from the SVD of a
        nearby matrix (the previous LoftQ iteration). Its first ℓ columns open Ω; Gaussian
        columns fill the rest.
    oversample : int
        Extra sketch columns beyond r (>= 0).
    power_iters : int
        Subspace iterations (>= 0); each sharpens the subspace when the spectrum decays slowly.
    generator : torch.Generator, optional
        For the Gaussian columns; on the matrix's device. Default: the global generator.

    Returns
    -------
    U : Tensor
        (m × r), orthonormal columns.
    S : Tensor
        (r,), non-increasing, non-negative.
    Vh : Tensor
        (r × n), orthonormal rows.
    """
    a = _check_matrix(matrix)
    m, n = a.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(m, n):
        raise bad_value("rank", rank, f"an int in [1, min(m, n) = {min(m, n)}]")
    if method not in SVD_METHODS:
        raise bad_value("method", method, f"one of {SVD_METHODS}")
    for name, value in (("oversample", oversample), ("power_iters", power_iters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad_value(name, value, "an int >= 0")
    if init is not None and (
        not isinstance(init, Tensor) or init.dim() != 2 or init.shape[0] != n or init.shape[1] < 1
    ):
        raise BadInputError(
            f"init must be an (n × k) tensor with n = {n} and k >= 1; "
            f"got {getattr(init, 'shape', type(init))}"
        )
    if method == "exact":
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    basis = _sketch(n, min(rank + oversample, m, n), init, generator, a)
    for _ in range(power_iters):
        basis = power_step(a, basis)
    u, s, v = subspace_svd(a, basis, rank)
    return u, pad_columns(s, rank), pad_columns(v, rank).T
