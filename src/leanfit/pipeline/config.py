"""The LoftQ run's configuration and report types (no I/O beyond their JSON round trip).

A run's config composes the two settings of the maths, :class:`~leanfit.quantization.QuantSpec`
(:attr:`LoftQConfig.quant`) and :class:`~leanfit.quantization.LoraSpec`
(:attr:`LoftQConfig.lora`), with what only a whole-model run has: the bit plan, the targets,
the seed of the first target and the calibration.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from leanfit.exceptions import BadInputError, CorruptArtifactError, bad_value
from leanfit.io import read_json
from leanfit.quantization.spec import INITS, METHODS, SVD_METHODS, LoraSpec, QuantSpec


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class LoftQConfig:
    """How a model is quantized and its LoRA initialized.

    Built from flat keywords (as the command line gives them, and as ``loftq_config.json``
    stores them); the quantizer and LoRA settings are validated once, as the
    :attr:`quant` and :attr:`lora` they make, which the pipeline passes on whole.

    Parameters
    ----------
    bits : int
        Bits of every target (the low width of a mixed plan): 2, 3, 4 (NF) or 2, 3, 4, 8
        (uniform).
    rank : int
        LoRA rank r (>= 1; each target needs ``r < min(n_out, n_in)``).
    iters : int
        LoftQ alternating steps T (>= 1). With ``init="qlora"`` it is set to 0.
    method : {"nf", "uniform"}
        Quantizer (:func:`leanfit.quantization.quantize`).
    block_size : int
        Values per quantization block.
    svd : {"randomized", "exact"}
        Truncated SVD of the residuals.
    lora_alpha : float, optional
        PEFT's ``lora_alpha`` (> 0); default r, i.e. scaling ``alpha / r = 1``. The factors
        are divided by the scaling, so ``Q + (alpha/r)·B·A ≈ W`` for any alpha.
    double_quant : bool
        Store the per-block statistics as 8-bit codes.
    avg_bits : float, optional
        Mixed precision: the first blocks get ``high_bits`` so that the average is at most
        ``avg_bits`` (:func:`leanfit.pipeline.plan.plan_bits`).
    first_high_layers : int, optional
        Mixed precision: the number of first blocks at ``high_bits`` (instead of ``avg_bits``).
    high_bits : int
        Bits of the first blocks in a mixed plan (> ``bits``).
    bits_budget : float, optional
        Bit allocation instead of a fixed plan: each target gets a width from ``bits`` to
        ``high_bits`` so that the stored bits per parameter (codes + block statistics, as
        :attr:`LoftQReport.bits_per_param`) stay within this budget and the total LoftQ error
        is smallest (:mod:`leanfit.pipeline.allocation`; costs one LoftQ run per target
        and width before the walk). Excludes ``avg_bits`` and ``first_high_layers``.
    targets : tuple of str, optional
        Target patterns (PEFT's ``target_modules`` rule); default: the model type's table
        (:data:`leanfit.checkpoints.targets.DEFAULT_PATTERNS`), else all linear layers of its
        blocks (:func:`leanfit.checkpoints.targets.target_rule`).
    include_conv : bool
        Also quantize matched convolution kernels (as ``out × in·prod(kernel)`` matrices).
    seed : int
        Seeds the randomized SVD and the QLoRA ``lora_A``; target i uses ``seed + i``.
    init : {"loftq", "qlora"}
        ``"loftq"``: Q and the factors by LoftQ; ``"qlora"``: Q = quantize(W), ``lora_B = 0``
        and ``lora_A`` PEFT's default random init (LoRA starts exactly from Q).
    calibration : str, optional
        Calibrated LoftQ: ``"pride_and_prejudice"`` or a UTF-8 text file. Its text (the part
        before the held-out 10 %, :func:`leanfit.pipeline.calibration.calibration_texts`)
        runs through the model block by block, and each low-rank step minimizes the error of
        the layer's outputs on it, ``‖X (W − Q − A Bᵀ)ᵀ‖_F``, instead of the weight error
        (:mod:`leanfit.quantization.whitening`). Model types:
        :data:`leanfit.pipeline.calibration.SUPPORTED_MODEL_TYPES`; needs ``init="loftq"``.
    calib_tokens : int
        Calibration tokens (>= 2), in sequences of up to 256.
    calib_damp : float
        Damping of the Gram matrices: ``λ = calib_damp · mean(diag G)`` (> 0).
    """

    bits: int = field(default=2, metadata={"help": "bits per weight"})
    rank: int = field(default=16, metadata={"help": "LoRA rank r"})
    iters: int = field(default=5, metadata={"help": "LoftQ alternating steps T"})
    method: str = field(default="nf", metadata={"help": "quantizer", "choices": tuple(METHODS)})
    block_size: int = field(default=64, metadata={"help": "values per block"})
    svd: str = field(
        default="randomized", metadata={"help": "truncated SVD", "choices": SVD_METHODS}
    )
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA alpha (default: the rank)", "option": "--alpha"}
    )
    double_quant: bool = field(
        default=False, metadata={"help": "store the block scales as 8-bit codes"}
    )
    avg_bits: float | None = field(
        default=None,
        metadata={
            "help": "mixed precision: the first layers get --high-bits so the average is at "
            "most this",
            "group": "plan",
        },
    )
    first_high_layers: int | None = field(
        default=None,
        metadata={
            "help": "mixed precision: number of first layers at --high-bits",
            "group": "plan",
        },
    )
    high_bits: int = field(default=4, metadata={"help": "bits of the first layers"})
    bits_budget: float | None = field(
        default=None,
        metadata={
            "help": "bit allocation: each matrix gets --bits to --high-bits so that the stored "
            "bits per parameter (codes + block scales; NF block 64: 2.5 at 2 bits, 4.5 at 4) "
            "stay within this and the total LoftQ error is smallest",
            "group": "plan",
        },
    )
    targets: tuple[str, ...] | None = None
    include_conv: bool = field(
        default=False, metadata={"help": "also quantize matched convolutions"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    init: str = field(
        default="loftq",
        metadata={
            "help": "loftq, or qlora: Q = quantize(W) and a zero LoRA update (--iters ignored)",
            "choices": INITS,
        },
    )
    calibration: str | None = field(
        default=None,
        metadata={
            "help": "calibrated LoftQ: pride_and_prejudice or a UTF-8 text file; the LoRA init "
            "then minimizes each layer's output error on that text (run block by block; llama "
            "models such as smollm2; its last tenth of chapters or paragraphs is never used)",
            "metavar": "TEXT",
        },
    )
    calib_tokens: int = field(default=2048, metadata={"help": "calibration tokens", "metavar": "N"})
    calib_damp: float = field(
        default=0.01,
        metadata={"help": "Gram damping: damp · mean(diag G) added to the diagonal"},
    )
    quant: QuantSpec = field(init=False, repr=False, compare=False)
    """The quantizer of every target (at ``bits``; a mixed or allocated plan changes only the
    width: :meth:`QuantSpec.with_bits`)."""
    lora: LoraSpec = field(init=False, repr=False, compare=False)
    """The LoRA setting of every target."""

    def __post_init__(self) -> None:
        quant = QuantSpec(self.bits, self.method, self.block_size, self.double_quant)
        lora = LoraSpec(self.rank, self.lora_alpha, self.iters, self.svd, self.init)
        object.__setattr__(self, "quant", quant)
        object.__setattr__(self, "lora", lora)
        object.__setattr__(self, "iters", lora.iters)  # 0 for init="qlora"
        if not isinstance(self.include_conv, bool):
            raise bad_value("include_conv", self.include_conv, "a bool")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad_value("seed", self.seed, "an int >= 0")
        self._check_mixed_plan()
        self._check_calibration()
        if self.targets is not None:
            if isinstance(self.targets, str) or not all(
                isinstance(p, str) and p for p in self.targets
            ):
                raise bad_value("targets", self.targets, "a list of non-empty strings, or None")
            if not self.targets:
                raise bad_value("targets", self.targets, "a non-empty list of patterns, or None")
            object.__setattr__(self, "targets", tuple(self.targets))

    def _check_calibration(self) -> None:
        if self.calibration is not None:
            if not isinstance(self.calibration, str) or not self.calibration:
                raise bad_value(
                    "calibration",
                    self.calibration,
                    "'pride_and_prejudice', a text file path, or None",
                )
            if self.init != "loftq":
                raise BadInputError(
                    "calibration fits the LoftQ factors; it needs the init 'loftq', got "
                    f"{self.init!r}"
                )
        if not _is_int(self.calib_tokens) or self.calib_tokens < 2:
            raise bad_value("calib_tokens", self.calib_tokens, "an int >= 2")
        if not _is_number(self.calib_damp) or self.calib_damp <= 0:
            raise bad_value("calib_damp", self.calib_damp, "a finite number > 0")

    def _check_mixed_plan(self) -> None:
        if self.bits_budget is not None:
            self._check_budget()
        if self.avg_bits is None and self.first_high_layers is None:
            return
        if self.avg_bits is not None and self.first_high_layers is not None:
            raise BadInputError(
                "give avg_bits or first_high_layers, not both; got "
                f"avg_bits {self.avg_bits!r} and first_high_layers {self.first_high_layers!r}"
            )
        self._check_high_bits()
        if self.avg_bits is not None and not (
            _is_number(self.avg_bits) and self.bits <= self.avg_bits <= self.high_bits
        ):
            raise bad_value(
                "avg_bits", self.avg_bits, f"a number in [{self.bits}, {self.high_bits}]"
            )
        if self.first_high_layers is not None and (
            not _is_int(self.first_high_layers) or self.first_high_layers < 0
        ):
            raise bad_value("first_high_layers", self.first_high_layers, "an int >= 0")

    def _check_budget(self) -> None:
        if self.avg_bits is not None or self.first_high_layers is not None:
            raise BadInputError(
                "give bits_budget or a fixed mixed plan (avg_bits, first_high_layers), not both; "
                f"got bits_budget {self.bits_budget!r}, avg_bits {self.avg_bits!r} and "
                f"first_high_layers {self.first_high_layers!r}"
            )
        self._check_high_bits()
        budget = self.bits_budget
        if budget is None or not _is_number(budget) or budget <= 0:
            raise bad_value(
                "bits_budget", self.bits_budget, "a number > 0 (stored bits per parameter)"
            )

    def _check_high_bits(self) -> None:
        """``high_bits``: a width of the method (:meth:`QuantSpec.with_bits`) above ``bits``."""
        try:
            self.quant.with_bits(self.high_bits)
        except BadInputError:
            allowed = f"one of {METHODS[self.method]} with method {self.method!r}"
            raise bad_value("high_bits", self.high_bits, allowed) from None
        if self.high_bits <= self.bits:
            raise bad_value("high_bits", self.high_bits, f"greater than bits ({self.bits})")

    def to_dict(self) -> dict[str, Any]:
        """The constructor's keywords as JSON-serializable values (``targets`` as a list)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        if self.targets is not None:
            values["targets"] = list(self.targets)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoftQConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        if not isinstance(values, dict):
            raise bad_value("values", type(values).__name__, "a dict")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BadInputError(f"LoftQConfig has no fields {unknown}; known: {sorted(known)}")
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        """Write the fields as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LoftQConfig:
        """Read a JSON file written by :meth:`save`.

        Raises
        ------
        CorruptArtifactError
            The file is not valid JSON or holds invalid fields.
        """
        try:
            return cls.from_dict(read_json(path))
        except (CorruptArtifactError, BadInputError, TypeError) as err:
            raise CorruptArtifactError(f"invalid LoftQ config {str(path)!r}: {err}") from err


@dataclass(frozen=True)
class MatrixReport:
    """What LoftQ did to one target.

    ``qlora_error = ‖W − quantize(W)‖_F / ‖W‖_F``; ``errors[t] = ‖W − Q_t − s·B_t·A_t‖_F /
    ‖W‖_F`` after step t+1; ``error`` is that of the kept iterate (``qlora_error`` for the
    QLoRA init). ``weight_norm = ‖W‖_F`` weighs the totals.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    bits: int
    qlora_error: float
    errors: list[float]
    best_iter: int
    error: float
    weight_norm: float
    bits_per_param: float
    seconds: float

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MatrixReport:
        """Rebuild from ``dataclasses.asdict`` output (as stored in the run's JSON)."""
        shapes = {key: tuple(values[key]) for key in ("shape", "matrix_shape")}
        return cls(**{**values, **shapes})


@dataclass
class LoftQReport:
    """Per-matrix results and totals of one run (:func:`quantize_checkpoint`)."""

    source: str
    out_dir: str
    model_type: str
    config: LoftQConfig
    matrices: list[MatrixReport] = field(default_factory=list)
    target_rule: str = ""
    """Which rule chose the targets (:func:`leanfit.checkpoints.targets.target_rule`)."""
    quantized_params: int = 0
    quantized_bytes: int = 0
    other_params: int = 0
    other_bytes: int = 0
    adapter_params: int = 0
    seconds: float = 0.0
    allocation: dict[str, Any] | None = None
    start_rss_bytes: int = 0
    start_anon_bytes: int = 0
    peak_rss_bytes: int = 0
    peak_anon_bytes: int = 0

    def add(self, record: dict[str, Any]) -> None:
        """Count one source tensor from its walker record: a target's ``"matrix"`` (a
        :class:`MatrixReport` as a dict) and sizes, or an untouched tensor's sizes."""
        matrix = record.get("matrix")
        if matrix is None:
            self.other_params += record["params"]
            self.other_bytes += record["bytes"]
            return
        self.matrices.append(MatrixReport.from_dict(matrix))
        self.quantized_params += record["params"]
        self.quantized_bytes += record["bytes"]
        self.adapter_params += record["adapter_params"]

    def total(self, attribute: str) -> float:
        """Norm-weighted total of a relative error: ``sqrt(Σ e_i²‖W_i‖²) / sqrt(Σ ‖W_i‖²)``,
        i.e. the relative error of all target matrices taken together."""
        norms = sum(m.weight_norm**2 for m in self.matrices) or 1.0
        return math.sqrt(
            sum((getattr(m, attribute) * m.weight_norm) ** 2 for m in self.matrices) / norms
        )

    @property
    def qlora_error(self) -> float:
        """Total relative error of Q = quantize(W) alone (QLoRA's start)."""
        return self.total("qlora_error")

    @property
    def error(self) -> float:
        """Total relative error of the kept ``Q + s·B·A`` (equals :attr:`qlora_error` for QLoRA)."""
        return self.total("error")

    @property
    def bits_per_param(self) -> float:
        """Stored bits (codes + statistics) per parameter of the quantized matrices."""
        return 8 * self.quantized_bytes / max(self.quantized_params, 1)

    @property
    def backbone_bits_per_param(self) -> float:
        """Stored bits per parameter of the whole backbone (untouched tensors included)."""
        params = self.quantized_params + self.other_params
        return 8 * (self.quantized_bytes + self.other_bytes) / max(params, 1)

    def summary(self) -> dict[str, Any]:
        """The totals as a flat dict."""
        return {
            "matrices": len(self.matrices),
            "qlora_error": self.qlora_error,
            "loftq_error": self.error,
            "bits_per_param": self.bits_per_param,
            "backbone_bits_per_param": self.backbone_bits_per_param,
            "quantized_params": self.quantized_params,
            "other_params": self.other_params,
            "adapter_params": self.adapter_params,
            "seconds": self.seconds,
            "start_rss_mb": self.start_rss_bytes / 2**20,
            "peak_rss_mb": self.peak_rss_bytes / 2**20,
            "start_anon_mb": self.start_anon_bytes / 2**20,
            "peak_anon_mb": self.peak_anon_bytes / 2**20,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "out_dir": self.out_dir,
            "model_type": self.model_type,
            "target_rule": self.target_rule,
            "config": self.config.to_dict(),
            "totals": self.summary(),
            "allocation": self.allocation,
            "matrices": [asdict(m) for m in self.matrices],
        }
