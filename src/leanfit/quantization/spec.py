"""The quantizer setting and the LoRA setting: frozen values, validated where they are built.

A :class:`QuantSpec` (bits, method, block size, double quantization) says how a tensor is
stored; a :class:`LoraSpec` (rank, lora_alpha, iterations, SVD, init) says how its LoRA
initialization is fitted. Both are checked once, in ``__post_init__``, and passed whole to
the maths (:func:`~leanfit.quantization.quantize`,
:func:`~leanfit.quantization.loftq_decompose`), to :class:`~leanfit.quantization.QuantLinear`
and to the checkpoint format, which reads a stored setting back with
:meth:`QuantSpec.from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from leanfit.exceptions import BadInputError, CorruptArtifactError, bad_value

METHODS: dict[str, tuple[int, ...]] = {"nf": (2, 3, 4), "uniform": (2, 3, 4, 8)}
"""Each quantizer and the bit widths it supports."""

INITS = ("loftq", "qlora")

SVD_METHODS = ("randomized", "exact")
"""The truncated SVDs of :func:`leanfit.quantization.truncated_svd`."""

Spec = TypeVar("Spec", "QuantSpec", "LoraSpec")


@dataclass(frozen=True)
class QuantSpec:
    """How a tensor is quantized (:func:`leanfit.quantization.quantize`).

    Parameters
    ----------
    bits : int
        k: 2, 3, 4 for ``"nf"``; 2, 3, 4, 8 for ``"uniform"``.
    method : {"nf", "uniform"}
        NormalFloat-k (absmax scale) or uniform-k (min–max per block).
    block_size : int
        Values per block (>= 1); the last block may be partial.
    double_quant : bool
        Store the per-block statistics as 8-bit codes.

    Raises
    ------
    BadInputError
        An unsupported combination, or a value of the wrong type.
    """

    bits: int = 2
    method: str = "nf"
    block_size: int = 64
    double_quant: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise bad_value("method", self.method, f"one of {sorted(METHODS)}")
        allowed = METHODS[self.method]
        bits = self.bits
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
            raise bad_value("bits", bits, f"one of {allowed} with method {self.method!r}")
        block = self.block_size
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise bad_value("block_size", block, "an int >= 1")
        if not isinstance(self.double_quant, bool):
            raise bad_value("double_quant", self.double_quant, "a bool")

    def with_bits(self, bits: int) -> QuantSpec:
        """The same quantizer at another width (checked for the method)."""
        return replace(self, bits=bits)

    def to_dict(self) -> dict[str, Any]:
        """``{"bits", "method", "block_size", "double_quant"}``, as the checkpoint format
        stores them."""
        return {
            "bits": self.bits,
            "method": self.method,
            "block_size": self.block_size,
            "double_quant": self.double_quant,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> QuantSpec:
        """The setting stored in ``values`` (its other keys are ignored).

        Raises
        ------
        CorruptArtifactError
            ``values`` is not a mapping, lacks one of the four keys, or holds an invalid
            setting: stored metadata is untrusted input.
        """
        try:
            return cls(
                bits=values["bits"],
                method=values["method"],
                block_size=values["block_size"],
                double_quant=values["double_quant"],
            )
        except (KeyError, TypeError, BadInputError) as err:
            raise CorruptArtifactError(f"invalid quantizer setting: {err}") from err


@dataclass(frozen=True)
class LoraSpec:
    """How the LoRA initialization of a quantized weight is fitted
    (:func:`leanfit.quantization.loftq_decompose`).

    Parameters
    ----------
    rank : int
        r (>= 1; a weight of shape out × in needs ``r < min(out, in)``).
    lora_alpha : float, optional
        PEFT's ``lora_alpha`` (> 0); default r, i.e. scaling ``alpha / r = 1`` (:attr:`alpha`).
        The factors are divided by the scaling, so ``Q + (alpha/r)·B·A ≈ W`` for any alpha.
    iters : int
        LoftQ alternating steps T (>= 1). With ``init="qlora"`` it is set to 0.
    svd : {"randomized", "exact"}
        Truncated SVD of the residuals.
    init : {"loftq", "qlora"}
        ``"loftq"``: Q and the factors by LoftQ; ``"qlora"``: Q = quantize(W), ``lora_B = 0``
        and ``lora_A`` PEFT's default random init (LoRA starts exactly from Q).

    Raises
    ------
    BadInputError
        A value out of range or of the wrong type.
    """

    rank: int = 16
    lora_alpha: float | None = None
    iters: int = 5
    svd: str = "randomized"
    init: str = "loftq"

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise bad_value("init", self.init, f"one of {INITS}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise bad_value("rank", self.rank, "an int >= 1")
        if self.init == "qlora":
            object.__setattr__(self, "iters", 0)
        elif isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise bad_value("iters", self.iters, "an int >= 1 (the qlora init has none)")
        if self.svd not in SVD_METHODS:
            raise bad_value("svd", self.svd, f"one of {SVD_METHODS}")
        alpha = self.lora_alpha
        if alpha is not None and (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not 0 < alpha < math.inf
        ):
            raise bad_value("lora_alpha", alpha, "a finite number > 0, or None")

    @property
    def alpha(self) -> float:
        """``lora_alpha``, or r when it is not given."""
        return float(self.rank) if self.lora_alpha is None else float(self.lora_alpha)

    @property
    def scaling(self) -> float:
        """s = alpha / r: LoRA computes ``W_eff = Q + s · lora_B @ lora_A``."""
        return self.alpha / self.rank


def check_spec(name: str, value: object, kind: type[Spec]) -> Spec:
    """``value`` itself if it is a ``kind`` (:class:`QuantSpec` or :class:`LoraSpec`), already
    validated when it was built; else :class:`BadInputError` naming the parameter ``name``."""
    if not isinstance(value, kind):
        raise bad_value(name, type(value).__name__, f"a {kind.__name__}")
    return value
