"""Truncated SVD: exact, or randomized (Halko, Martinsson & Tropp 2011) with a warm start."""

from __future__ import annotations

import torch
from torch import Tensor

from leanfit.exceptions import BadInputError, bad_value

SVD_METHODS = ("randomized", "exact")


def _check_matrix(matrix: object) -> Tensor:
    if not isinstance(matrix, Tensor) or not matrix.is_floating_point() or matrix.dim() != 2:
        raise bad_value(
            "matrix", getattr(matrix, "shape", type(matrix)), "a 2-D floating-point tensor"
        )
    if matrix.numel() == 0:
        raise bad_value("matrix", tuple(matrix.shape), "a non-empty 2-D tensor")
    return matrix.detach().float()


def _orthonormal(matrix: Tensor) -> Tensor:
    return torch.linalg.qr(matrix).Q


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
    width = min(rank + oversample, m, n)
    q = _orthonormal(a @ _sketch(n, width, init, generator, a))
    for _ in range(power_iters):
        q = _orthonormal(a @ _orthonormal(a.T @ q))
    u_small, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ u_small)[:, :rank], s[:rank], vh[:rank]
