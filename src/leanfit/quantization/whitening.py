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
gives the same ``L R``. For ``G = c I`` the fit is the plain truncated SVD of E. The fit
itself is :func:`leanfit.quantization.loftq.fit_whitened` (the plain low-rank step applied to
``E S``); this module holds the factor and the error measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from leanfit.exceptions import BadInputError, bad_value

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
    g.diagonal().add_(damping)  # G + λI, in the symmetrized copy
    root, info = torch.linalg.cholesky_ex(g)
    if int(info) != 0:
        raise BadInputError(
            f"{name} must be positive semi-definite (a Gram matrix XᵀX); G + λI with "
            f"λ = {damping:.3g} has no Cholesky factor"
        )
    identity = torch.eye(len(g), dtype=g.dtype, device=g.device)
    inverse = torch.linalg.solve_triangular(root, identity, upper=False)
    return Whitening(root.float(), inverse.float(), damping)


def output_error(matrix: Tensor, whitening: Whitening) -> float:
    """``‖M S‖_F = sqrt(‖X Mᵀ‖_F² + λ ‖M‖_F²)``: the (damped) output error of a weight error M."""
    return float(torch.linalg.norm(matrix @ whitening.root.to(matrix.device)))
