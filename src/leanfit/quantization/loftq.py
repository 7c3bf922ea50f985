"""LoftQ: quantize a weight and fit a LoRA initialization to the quantization error.

Li et al., "LoftQ: LoRA-Fine-Tuning-aware Quantization for Large Language Models",
ICLR 2024 (arXiv 2310.08659). For a weight W (out × in), find Q on the k-bit grid and
rank-r factors with ``Q + L R ≈ W`` by alternating, from ``L R = 0``::

    for t = 1 … T:
        Q = quantize(W − L R)                      # quantize first
        U, S, Vh = SVD_r(W − Q)
        L = U · diag(√S),  R = diag(√S) · Vh       # split √S between the factors

LoRA in PEFT computes ``W_eff = Q + s · lora_B @ lora_A`` with ``s = lora_alpha / r``;
the factors are returned divided by √s (as PEFT does for PiSSA) so that W_eff ≈ W for any
alpha: ``lora_B = L / √s`` (out × r), ``lora_A = R / √s`` (r × in). PEFT's own LoftQ
initialization omits this division (huggingface/peft issue 1982).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from leanfit.exceptions import BadInputError, bad_value
from leanfit.quantization.lowrank import (
    pad_columns,
    power_step,
    subspace_svd,
    truncated_svd,
)
from leanfit.quantization.quantizers import (
    GridPoint,
    QuantizedTensor,
    Workspace,
    quantize,
    quantize_to_grid,
)
from leanfit.quantization.spec import LoraSpec, QuantSpec, check_spec
from leanfit.quantization.whitening import DEFAULT_DAMP, Whitening, output_error, whiten

# Subspace (power) iterations of the randomized SVD, (first LoftQ step, later steps). The first
# step starts from a Gaussian sketch; every later step starts from the previous step's right
# Ritz basis (consecutive residuals share most of their leading subspace), so the steps of the
# LoftQ loop double as power iterations. Chosen on real weights (MiniLM, SmolLM2; rank 16 and
# 64, T = 5) to keep the total error within 0.5 % of the published algorithm's (exact SVD at
# every step, last iterate; measured in benchmarks/loftq_speed.py: at most 0.4 % above it): at
# 2 bits the loop's own steps suffice; at 3+ bits the LoftQ gain is smaller and more sensitive
# to the subspace, so every step runs one extra iteration. Against svd="exact" here (which
# also keeps the best iterate) the randomized path is up to 1.1 % worse
# (benchmarks/loftq_error.py).
POWER_ITERS = {2: (2, 0)}
POWER_ITERS_DEFAULT = (3, 1)


def oversample(rank: int) -> int:
    """Sketch columns beyond r: 16, and 8 from rank 64 on.

    The Ritz basis has ℓ = r + p columns and every step pays for ℓ × ℓ eigen-decompositions
    and ℓ-wide passes; at r >= 64 the narrower sketch is ~5 % faster on MiniLM and SmolLM2
    and raises the total LoftQ error by ~0.1 % (T = 5, 2 and 4 bits).
    """
    return 16 if rank < 64 else 8


@dataclass(frozen=True)
class LoftQResult:
    """Output of :func:`loftq_decompose`.

    Attributes
    ----------
    quantized : QuantizedTensor
        Q, of the weight's shape (out × in).
    lora_A : Tensor
        (r × in) float32, PEFT's ``lora_A.weight``.
    lora_B : Tensor
        (out × r) float32, PEFT's ``lora_B.weight``.
    scaling : float
        s = lora_alpha / r; ``Q + s · lora_B @ lora_A ≈ W``.
    errors : list of float
        ``‖W − Q_t − L_t R_t‖_F / ‖W‖_F`` after each iteration t that ran (empty for iters=0),
        computed without another pass over the matrix as
        ``sqrt(‖W − Q_t‖_F² − ‖L_t R_t‖_F²)`` (see :class:`LowRankFit`); with a calibration
        Gram, the relative output error instead (see ``gram``).
    qlora_error : float
        ``‖W − quantize(W)‖_F / ‖W‖_F``: the starting error of QLoRA (B = 0); with a Gram,
        relative output error.
    best_iter : int
        The iteration (1-based) whose Q and factors are kept; 0 for iters=0.
    """

    quantized: QuantizedTensor
    lora_A: Tensor
    lora_B: Tensor
    scaling: float
    errors: list[float]
    qlora_error: float
    best_iter: int

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    @property
    def error(self) -> float:
        """Relative error of the kept result (the QLoRA error when no iteration ran)."""
        return self.errors[self.best_iter - 1] if self.best_iter else self.qlora_error

    def effective_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``Q + s · lora_B @ lora_A``, the weight a LoRA model starts from."""
        q = self.quantized.dequantize(torch.float32, self.lora_A.device)
        return (q + self.scaling * (self.lora_B @ self.lora_A)).to(dtype)


@dataclass(frozen=True)
class LowRankFit:
    """``left @ right`` approximates a residual; ``basis`` warm-starts the next fit.

    ``captured = ‖left @ right‖_F² = Σ_{i<=r} S_i²``. As ``left @ right`` is the orthogonal
    projection of the residual onto span(U_r),
    ``‖residual − left @ right‖_F² = ‖residual‖_F² − captured``.
    """

    left: Tensor  # (out × r)
    right: Tensor  # (r × in)
    basis: Tensor | None  # (in × ℓ) or None
    captured: float


def fit_low_rank(
    residual: Tensor,
    rank: int,
    *,
    svd: str = "randomized",
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    power_iters: int = POWER_ITERS_DEFAULT[0],
) -> LowRankFit:
    """Best rank-r approximation of a residual (Eckart–Young), √S split between the factors.

    ``left = U_r · diag(√S_r)``, ``right = diag(√S_r) · Vh_r``; the error
    ``‖residual − left @ right‖_F`` equals ``sqrt(Σ_{i>r} S_i²)`` for the exact SVD. This is
    the step the calibrated variant applies to ``E S`` (:func:`fit_whitened`).

    ``svd="randomized"`` runs ``power_iters + 1`` steps of :func:`subspace_svd` from ``init``
    (in × k), completed by Gaussian columns to ℓ = min(r + oversample(r), out, in); ``basis``
    returns all ℓ right Ritz vectors (the warm start of the next fit).
    """
    if svd == "exact":
        u, s, vh = truncated_svd(residual, rank, "exact")
        basis = None
    else:
        m, n = residual.shape
        short = min(rank + oversample(rank), m, n) - (0 if init is None else init.shape[1])
        basis = init if init is not None else residual.new_zeros(n, 0)
        if short > 0:
            extra = torch.randn(n, short, generator=generator, device=residual.device)
            basis = torch.cat([basis, extra], dim=1)
        for _ in range(power_iters):
            basis = power_step(residual, basis)
        u, s, basis = subspace_svd(residual, basis, rank)
        s, vh = pad_columns(s, rank), pad_columns(basis, rank).T
    root = s.sqrt()
    captured = float(s.double().square().sum())
    return LowRankFit(u * root, root[:, None] * vh, basis, captured)


def fit_whitened(
    residual: Tensor,
    whitening: Whitening,
    rank: int,
    *,
    svd: str = "randomized",
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    power_iters: int = POWER_ITERS_DEFAULT[0],
) -> LowRankFit:
    """The rank-r ``L R`` minimizing the calibrated output error ``‖(E − L R) S‖_F``.

    :func:`fit_low_rank` of ``E S`` (:mod:`leanfit.quantization.whitening`), its right factor
    mapped back: ``left = U_r diag(√σ_r)`` (out × r), ``right = diag(√σ_r) V_rᵀ S⁻¹``
    (r × in); ``captured = Σ_{i<=r} σ_i²``, so ``‖(E − L R) S‖_F² = ‖E S‖_F² − captured``;
    ``basis`` lives in the whitened space (the warm start of the next whitened fit).
    """
    if residual.dim() != 2 or residual.shape[1] != whitening.root.shape[0]:
        raise BadInputError(
            f"the Gram matrix must be (in × in) with in = {residual.shape[-1]} (the weight's "
            f"columns); got {tuple(whitening.root.shape)}"
        )
    whitened = residual @ whitening.root.to(residual.device)
    fit = fit_low_rank(
        whitened, rank, svd=svd, init=init, generator=generator, power_iters=power_iters
    )
    return _unwhiten(fit, whitening)


def _unwhiten(fit: LowRankFit, whitening: Whitening) -> LowRankFit:
    """A fit of ``E S`` as a fit of E: the right factor times ``S⁻¹``."""
    inverse = whitening.inverse.to(fit.right.device)
    return LowRankFit(fit.left, fit.right @ inverse, fit.basis, fit.captured)


def _check_weight(weight: object, name: str) -> Tensor:
    if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() != 2:
        raise bad_value(name, getattr(weight, "shape", type(weight)), "a 2-D floating-point tensor")
    if weight.numel() == 0:
        raise bad_value(name, tuple(weight.shape), "a non-empty (out × in) tensor")
    return weight.detach().float()


def _frobenius_norm(w: Tensor, name: str) -> float:
    """‖W‖_F; raises unless W is finite (a NaN or Inf entry makes the norm non-finite, so the
    full element-wise scan runs only when something is wrong)."""
    norm = float(torch.linalg.norm(w))
    if math.isfinite(norm):
        return norm
    finite = torch.isfinite(w)
    if bool(finite.all()):
        raise BadInputError(f"{name}'s Frobenius norm overflows float32 ({norm})")
    bad = (~finite).nonzero()
    raise BadInputError(
        f"{name} must be finite in float32; got {bad.shape[0]:,} NaN or Inf values "
        f"(first at row {int(bad[0, 0])}, column {int(bad[0, 1])}); the checkpoint is "
        "damaged or overflowed: repair it or leave this weight out of the targets"
    )


def _check_int(name: str, value: object, low: int, high: float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bound = f"an int in [{low}, {high}]" if high < math.inf else f"an int >= {low}"
        raise bad_value(name, value, bound)
    return value


def _lora_a_init(rank: int, in_features: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """PEFT's default ``lora_A``: Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in)."""
    a = like.new_empty(rank, in_features)
    return torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)


def loftq_decompose(
    weight: Tensor,
    spec: QuantSpec,
    lora: LoraSpec,
    *,
    seed: int = 0,
    name: str = "weight",
    gram: Tensor | None = None,
    damp: float = DEFAULT_DAMP,
) -> LoftQResult:
    """LoftQ decomposition of one weight matrix: ``W ≈ Q + s · lora_B @ lora_A``.

    Parameters
    ----------
    weight : Tensor
        W, (out × in), floating point, finite; not modified. Callers reshape convolution
        kernels to (out × in·k…) and transpose GPT-2 ``Conv1D`` weights (stored in × out).
    spec : QuantSpec
        The quantizer, see :func:`leanfit.quantization.quantize`.
    lora : LoraSpec
        The LoRA setting. Its rank r must satisfy r < min(out, in); s = ``lora.scaling``
        (alpha / r). ``lora.iters`` = T alternating steps: the iterate with the lowest error
        is kept and the loop stops after the first step whose error rises, so the result is
        never worse than T = 1. T = 0 (``init="qlora"``) is QLoRA: Q = quantize(W),
        ``lora_B = 0`` and ``lora_A`` drawn like PEFT's default (Kaiming-uniform, seeded).
        ``lora.svd`` is the truncated SVD of each residual. ``"exact"``:
        :func:`torch.linalg.svd`. ``"randomized"``: subspace iteration with Rayleigh–Ritz
        extraction (:func:`leanfit.quantization.lowrank.subspace_svd`, sketch width r + 16,
        r + 8 from r = 64 on): from a Gaussian sketch at the first step, then warm-started
        from the previous step's right Ritz basis (``POWER_ITERS`` gives the iterations per
        step); the total error stays within 0.5 % of the published algorithm's (exact SVD
        every step, ``benchmarks/loftq_speed.py``) and up to 1.1 % above ``svd="exact"`` at
        T = 5.
    seed : int
        Seeds the randomized SVD and the T = 0 ``lora_A``.
    name : str, default "weight"
        What error messages call the weight (e.g. its checkpoint name).
    gram : Tensor, optional
        Calibrated LoftQ: the Gram matrix ``G = XᵀX`` (in × in) of the layer's calibration
        inputs. Each low-rank step then minimizes the output error ``‖X (W − Q − L R)ᵀ‖_F``
        (:func:`fit_whitened`) instead of the weight error,
        and ``errors``, ``qlora_error`` and the choice of the kept iterate use the relative
        output error ``‖(W − Q − L R) S‖_F / ‖W S‖_F`` with ``S Sᵀ = G + λI``.
    damp : float
        With ``gram``: λ = damp · mean(diag G) (:func:`leanfit.quantization.whitening.whiten`).

    Returns
    -------
    LoftQResult
        On the weight's device; factors in float32.
    """
    w = _check_weight(weight, name)
    spec = check_spec("spec", spec, QuantSpec)
    lora = check_spec("lora", lora, LoraSpec)
    out_features, in_features = w.shape
    limit = min(out_features, in_features) - 1
    if limit < 1:
        raise bad_value(name, tuple(w.shape), "a matrix with min(out, in) >= 2")
    rank = _check_int("rank", lora.rank, 1, limit)
    seed = _check_int("seed", seed, 0)
    generator = torch.Generator(device=w.device).manual_seed(seed)
    norm = _frobenius_norm(w, name) or 1.0  # an all-zero W has zero error, not 0/0
    whitening = None
    if gram is not None:
        if not isinstance(gram, Tensor) or tuple(gram.shape) != (in_features, in_features):
            raise bad_value(
                "gram", getattr(gram, "shape", type(gram)), f"an (in × in) = {in_features}² tensor"
            )
        whitening = whiten(gram.to(w.device), damp, name=f"gram of {name}")
        norm = output_error(w, whitening) or 1.0

    if lora.iters == 0:
        q = quantize(w, spec)
        error = w - q.dequantize()
        size = torch.linalg.norm(error) if whitening is None else output_error(error, whitening)
        qlora_error = float(size) / norm
        lora_a = _lora_a_init(rank, in_features, generator, w)
        lora_b = w.new_zeros(out_features, rank)
        return LoftQResult(q, lora_a, lora_b, lora.scaling, [], qlora_error, 0)

    errors: list[float] = []
    cold_iters, warm_iters = POWER_ITERS.get(spec.bits, POWER_ITERS_DEFAULT)
    target, residual = w, torch.empty_like(w)
    workspace = Workspace(-(-w.numel() // spec.block_size) * spec.block_size, w.device)
    spare: GridPoint | None = None  # the buffers of an iterate no longer needed
    basis = None
    best: tuple[int, GridPoint, LowRankFit] | None = None
    for step in range(1, lora.iters + 1):
        grid = quantize_to_grid(target.reshape(-1), spec, out=spare, workspace=workspace)
        torch.sub(w, grid.values.view_as(w), out=residual)
        # The matrix the low-rank step fits: W − Q, or (W − Q) S with a calibration Gram.
        fitted = residual if whitening is None else residual @ whitening.root
        fitted_sq = float(torch.linalg.vector_norm(fitted)) ** 2
        if step == 1:
            qlora_error = math.sqrt(fitted_sq) / norm
            target = torch.empty_like(w)
        power_iters = cold_iters if basis is None else warm_iters
        fit = fit_low_rank(
            fitted, rank, svd=lora.svd, init=basis, generator=generator, power_iters=power_iters
        )
        if whitening is not None:
            fit = _unwhiten(fit, whitening)
        # ‖F − fit‖² = ‖F‖² − captured: the fit projects F orthogonally (LowRankFit)
        errors.append(math.sqrt(max(fitted_sq - fit.captured, 0.0)) / norm)
        basis = fit.basis
        if best is None or errors[-1] < errors[best[0] - 1]:
            spare = None if best is None else best[1]
            best = (step, grid, fit)
        elif errors[-1] > errors[-2]:
            break
        else:
            spare = grid
        if step < lora.iters:
            torch.addmm(w, fit.left, fit.right, alpha=-1, out=target)  # W − L R
    assert best is not None  # iters >= 1, so the loop ran
    best_iter, grid, fit = best
    root = math.sqrt(lora.scaling)
    q = grid.pack(tuple(w.shape))
    return LoftQResult(
        q, fit.right / root, fit.left / root, lora.scaling, errors, qlora_error, best_iter
    )
