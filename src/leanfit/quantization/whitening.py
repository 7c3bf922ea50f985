"""Calibrated (activation-aware) low-rank fit: the whitened closed form of CLoQ / EoRA / QERA.

With calibration inputs ``X`` of a linear layer (``n × in``, one row per token), the LoRA
update ``L R`` (``out × in``) that matters is the one that best reproduces the layer's
*outputs* on those inputs, not its weights::

    min over rank-r L R of  ‖X (E − L R)ᵀ‖_F,   E = W − Q  (out × in).

With the input Gram matrix ``G = Xᵀ X = S Sᵀ`` (``in × in``),
``‖X Mᵀ‖_F² = tr(M G Mᵀ) = ‖M S‖_F²`` for any ``M``; so the problem is
``min ‖E S − (L R) S‖_F`` over rank-r ``(L R) S``, whose solution (Eckart–Young) is the
truncated SVD of ``E S``::

    E S ≈ U_r diag(σ_r) V_rᵀ,   L R = U_r diag(σ_r) V_rᵀ S⁻¹,
    L = U_r diag(√σ_r),  R = diag(√σ_r) V_rᵀ S⁻¹,
    ‖X (E − L R)ᵀ‖_F = sqrt(Σ_{i>r} σ_i²).

``S`` is the Cholesky factor of the damped Gram, ``G + λ I = S Sᵀ`` (S lower triangular),
with ``λ = damp · mean(diag G)``: a Gram of fewer tokens than inputs is singular, and
directions the calibration never excites would get an unbounded update; damping adds
``λ ‖E − L R‖_F²`` to the objective, which keeps them small. Any factor ``S Q`` (Q orthogonal)
gives the same ``L R``. For ``G = c I`` the fit is the plain truncated SVD of E.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from leanfit.exceptions import BadInputError, bad_value
from leanfit.quantization.lowrank import truncated_svd

DEFAULT_DAMP = 0.01


@dataclass(frozen=True)
class Whitening:
    """A factor ``S`` of a damped Gram matrix, ``S Sᵀ = G + λ I``, and its inverse.

    Attributes
    ----------
    root : Tensor
        S, (in × in) float32.
    inverse : Tensor
        S⁻¹, (in × in) float32.
    damping : float
        λ, added to the Gram's diagonal.
    """

    root: Tensor
    inverse: Tensor
    damping: float


def whiten(gram: Tensor, damp: float = DEFAULT_DAMP, *, name: str = "gram") -> Whitening:
    """Factor a damped Gram matrix: ``G + λ I = S Sᵀ`` with ``λ = damp · mean(diag G)``.

    Parameters
    ----------
    gram : Tensor
        G = XᵀX, (in × in), symmetric positive semi-definite (a Gram of calibration inputs);
        computed in float64.
    damp : float
        Relative damping (> 0). An all-zero G is damped by ``damp`` itself (S = √damp · I).
    name : str
        What error messages call the Gram matrix.

    Returns
    -------
    Whitening
        S: the Cholesky factor of ``G + λI`` (factorized in float64), and its inverse.

    Raises
    ------
    BadInputError
        G is not square, not finite, or not positive semi-definite (``G + λI`` has no
        Cholesky factor: G has an eigenvalue below −λ, which no Gram matrix has).
    """
    if not isinstance(gram, Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise bad_value(name, getattr(gram, "shape", type(gram)), "a square (in × in) tensor")
    if isinstance(damp, bool) or not isinstance(damp, int | float) or not 0 < damp < math.inf:
        raise bad_value("damp", damp, "a finite number > 0")
    g = gram.detach().double()
    if not bool(torch.isfinite(g).all()):
        raise BadInputError(f"{name} must be finite; it holds NaN or Inf values")
    g = (g + g.T) / 2
    mean_diag = float(g.diagonal().mean())
    if mean_diag < 0:
        raise BadInputError(f"{name} must be positive semi-definite; its mean diagonal is < 0")
    damping = damp * mean_diag if mean_diag > 0 else float(damp)
    damped = g + damping * torch.eye(len(g), dtype=g.dtype)
    root, info = torch.linalg.cholesky_ex(damped)
    if int(info) != 0:
        raise BadInputError(
            f"{name} must be positive semi-definite (a Gram matrix XᵀX); G + λI with "
            f"λ = {damping:.3g} has no Cholesky factor"
        )
    identity = torch.eye(len(g), dtype=g.dtype)
    inverse = torch.linalg.solve_triangular(root, identity, upper=False)
    return Whitening(root.float(), inverse.float(), damping)


def fit_whitened(
    residual: Tensor,
    whitening: Whitening,
    rank: int,
    *,
    svd: str = "randomized",
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    power_iters: int = 6,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The rank-r ``L R`` minimizing ``‖(E − L R) S‖_F`` (the calibrated output error).

    Parameters
    ----------
    residual : Tensor
        E = W − Q, (out × in).
    whitening : Whitening
        From :func:`whiten` of the layer's input Gram (in × in).
    rank : int
        r, 1 <= r <= min(out, in).
    svd, init, generator, power_iters
        The truncated SVD of ``E S`` (:func:`leanfit.quantization.truncated_svd`); ``init``
        warm-starts it with a basis of the whitened space (the previous ``basis``).

    Returns
    -------
    (left, right, basis)
        ``left = U_r diag(√σ_r)`` (out × r), ``right = diag(√σ_r) V_rᵀ S⁻¹`` (r × in), and
        ``V_r`` (in × r, randomized SVD only, else None) to warm-start the next fit.
    """
    if residual.dim() != 2 or residual.shape[1] != whitening.root.shape[0]:
        raise BadInputError(
            f"the Gram matrix must be (in × in) with in = {residual.shape[-1]} (the weight's "
            f"columns); got {tuple(whitening.root.shape)}"
        )
    root = whitening.root.to(residual.device)
    u, s, vh = truncated_svd(
        residual @ root, rank, svd, init=init, generator=generator, power_iters=power_iters
    )
    scale = s.sqrt()
    right = (scale[:, None] * vh) @ whitening.inverse.to(residual.device)
    return u * scale, right, vh.T if svd == "randomized" else None


def output_error(matrix: Tensor, whitening: Whitening) -> float:
    """``‖M S‖_F = sqrt(‖X Mᵀ‖_F² + λ ‖M‖_F²)``: the (damped) output error of a weight error M."""
    return float(torch.linalg.norm(matrix @ whitening.root.to(matrix.device)))
