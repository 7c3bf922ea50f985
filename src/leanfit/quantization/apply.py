"""Apply LoftQ to a whole model: walk a checkpoint (or an in-memory module) tensor by tensor.

The walker knows no maths beyond calling :func:`leanfit.quantization.loftq_decompose`: it
chooses the targets and their bits (:mod:`leanfit.quantization.targets`), reads one tensor,
turns a target into its ``n_out × n_in`` matrix, decomposes it, hands the packed Q and the
PEFT LoRA factors to the artifact writer (:mod:`leanfit.quantization.artifacts`), and lets
the tensor go before reading the next one. Peak memory is therefore the working set of the
largest tensor plus one backbone shard being filled (``max_shard_bytes``), not the model.

Output directory (written into ``.OUT.partial/``, renamed into place at the end; a killed
run continues with ``resume=True``, see :mod:`leanfit.quantization.resume`)::

    OUT/
      backbone/         packed codes + scales of the targets, other tensors untouched (float32),
                        quantization_config.json, the model's config.json and tokenizer files
      adapter/          PEFT LoRA adapter: adapter_config.json, adapter_model.safetensors
      dequantized/      (optional) plain transformers directory: Q dequantized, float16
      loftq_config.json the LoftQConfig used
      loftq_report.json per-matrix and total errors, bits per parameter, time, peak memory
      loftq_report.md   the same as tables
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import math
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import psutil
import torch
from torch import nn
from tqdm.auto import tqdm

from leanfit.exceptions import BadInputError, CorruptArtifactError, MemoryBudgetError, bad_value
from leanfit.io import read_json
from leanfit.quantization.loftq import LoftQResult, loftq_decompose
from leanfit.quantization.lowrank import SVD_METHODS
from leanfit.quantization.memory import (
    MemoryEstimate,
    check_budget,
    estimate_memory,
    format_size,
)
from leanfit.quantization.parallel import check_workers, ordered_map
from leanfit.quantization.quantizers import QuantizedTensor, check_quantization_args
from leanfit.quantization.targets import (
    Target,
    matrix_view,
    plan_bits,
    select_targets,
    to_peft_lora,
)

INITS = ("loftq", "qlora")
DEFAULT_SHARD_BYTES = 64 * 2**20


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class LoftQConfig:
    """How a model is quantized and its LoRA initialized.

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
        ``avg_bits`` (:func:`leanfit.quantization.targets.plan_bits`).
    first_high_layers : int, optional
        Mixed precision: the number of first blocks at ``high_bits`` (instead of ``avg_bits``).
    high_bits : int
        Bits of the first blocks in a mixed plan (> ``bits``).
    bits_budget : float, optional
        Bit allocation instead of a fixed plan: each target gets a width from ``bits`` to
        ``high_bits`` so that the stored bits per parameter (codes + block statistics, as
        :attr:`LoftQReport.bits_per_param`) stay within this budget and the total LoftQ error
        is smallest (:mod:`leanfit.quantization.allocation`; costs one LoftQ run per target
        and width before the walk). Excludes ``avg_bits`` and ``first_high_layers``.
    targets : tuple of str, optional
        Target patterns (PEFT's ``target_modules`` rule); default: the model type's attention
        and MLP linear layers (:data:`leanfit.quantization.targets.DEFAULT_PATTERNS`).
    include_conv : bool
        Also quantize matched convolution kernels (as ``out × in·prod(kernel)`` matrices).
    seed : int
        Seeds the randomized SVD and the QLoRA ``lora_A``; target i uses ``seed + i``.
    init : {"loftq", "qlora"}
        ``"loftq"``: Q and the factors by LoftQ; ``"qlora"``: Q = quantize(W), ``lora_B = 0``
        and ``lora_A`` PEFT's default random init (LoRA starts exactly from Q).
    calibration : str, optional
        Calibrated LoftQ: ``"pride_and_prejudice"`` or a UTF-8 text file. Its text (the part
        before the held-out 10 %, :func:`leanfit.quantization.calibration.calibration_texts`)
        runs through the model block by block, and each low-rank step minimizes the error of
        the layer's outputs on it, ``‖X (W − Q − A Bᵀ)ᵀ‖_F``, instead of the weight error
        (:mod:`leanfit.quantization.whitening`). Model types:
        :data:`leanfit.quantization.calibration.SUPPORTED_MODEL_TYPES`; needs ``init="loftq"``.
    calib_tokens : int
        Calibration tokens (>= 2), in sequences of up to 256.
    calib_damp : float
        Damping of the Gram matrices: ``λ = calib_damp · mean(diag G)`` (> 0).
    """

    bits: int = 2
    rank: int = 16
    iters: int = 5
    method: str = "nf"
    block_size: int = 64
    svd: str = "randomized"
    lora_alpha: float | None = None
    double_quant: bool = False
    avg_bits: float | None = None
    first_high_layers: int | None = None
    high_bits: int = 4
    bits_budget: float | None = None
    targets: tuple[str, ...] | None = None
    include_conv: bool = False
    seed: int = 0
    init: str = "loftq"
    calibration: str | None = None
    calib_tokens: int = 2048
    calib_damp: float = 0.01

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise bad_value("init", self.init, f"one of {INITS}")
        check_quantization_args(self.bits, self.method, self.block_size)
        if not _is_int(self.rank) or self.rank < 1:
            raise bad_value("rank", self.rank, "an int >= 1")
        if self.init == "qlora":
            object.__setattr__(self, "iters", 0)
        elif not _is_int(self.iters) or self.iters < 1:
            raise bad_value("iters", self.iters, "an int >= 1 (init='qlora' means no iteration)")
        if self.svd not in SVD_METHODS:
            raise bad_value("svd", self.svd, f"one of {SVD_METHODS}")
        if self.lora_alpha is not None and (
            not _is_number(self.lora_alpha) or self.lora_alpha <= 0
        ):
            raise bad_value("lora_alpha", self.lora_alpha, "a finite number > 0, or None")
        for name in ("double_quant", "include_conv"):
            if not isinstance(getattr(self, name), bool):
                raise bad_value(name, getattr(self, name), "a bool")
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
                    "calibration fits the LoftQ factors; it needs init='loftq', got "
                    f"init={self.init!r}"
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
                f"avg_bits={self.avg_bits!r}, first_high_layers={self.first_high_layers!r}"
            )
        check_quantization_args(self.high_bits, self.method, self.block_size)
        if self.high_bits <= self.bits:
            raise bad_value("high_bits", self.high_bits, f"greater than bits={self.bits}")
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
                f"got bits_budget={self.bits_budget!r}, avg_bits={self.avg_bits!r}, "
                f"first_high_layers={self.first_high_layers!r}"
            )
        check_quantization_args(self.high_bits, self.method, self.block_size)
        if self.high_bits <= self.bits:
            raise bad_value("high_bits", self.high_bits, f"greater than bits={self.bits}")
        budget = self.bits_budget
        if budget is None or not _is_number(budget) or budget <= 0:
            raise bad_value(
                "bits_budget", self.bits_budget, "a number > 0 (stored bits per parameter)"
            )

    @property
    def alpha(self) -> float:
        """``lora_alpha``, or r when it is not given."""
        return float(self.rank) if self.lora_alpha is None else float(self.lora_alpha)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable fields (``targets`` as a list)."""
        values = asdict(self)
        if self.targets is not None:
            values["targets"] = list(self.targets)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoftQConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        if not isinstance(values, dict):
            raise bad_value("values", type(values).__name__, "a dict")
        known = {f.name for f in fields(cls)}
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
            "config": self.config.to_dict(),
            "totals": self.summary(),
            "allocation": self.allocation,
            "matrices": [asdict(m) for m in self.matrices],
        }


class TensorSource(Protocol):
    """What the walker reads: a :class:`leanfit.quantization.checkpoint.Checkpoint` or a
    :class:`ModuleSource`."""

    tied: dict[str, str]

    @property
    def model_type(self) -> str: ...

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str) -> torch.Tensor: ...

    def save_config_and_tokenizer(self, out_dir: str | Path) -> list[Path]: ...


class ModuleSource:
    """An in-memory :class:`torch.nn.Module` seen as a checkpoint: its state-dict tensors.

    Parameters sharing storage are stored under their first name; the others are listed in
    :attr:`tied`. ``model_type`` is the transformers config's, or ``"module"``.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise bad_value("model", type(model).__name__, "a torch.nn.Module")
        self.model = model
        self._state: dict[str, torch.Tensor] = {}
        self.tied: dict[str, str] = {}
        first: dict[tuple[int, int, tuple[int, ...]], str] = {}
        for name, tensor in model.state_dict(keep_vars=False).items():
            key = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
            )
            if key in first and tensor.numel():
                self.tied[name] = first[key]
            else:
                first.setdefault(key, name)
                self._state[name] = tensor

    @property
    def model_type(self) -> str:
        config = getattr(self.model, "config", None)
        return str(getattr(config, "model_type", None) or "module")

    def names(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[self.tied.get(name, name)].shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (tied ones once), as the model holds them."""
        return self._state

    def read(self, name: str) -> torch.Tensor:
        tensor = self._state[self.tied.get(name, name)].detach()
        return (tensor.float() if tensor.is_floating_point() else tensor).to("cpu", copy=True)

    def save_config_and_tokenizer(self, out_dir: str | Path) -> list[Path]:
        """Write the transformers config (with ``architectures``) if the model has one."""
        config = getattr(self.model, "config", None)
        if config is None or not hasattr(config, "save_pretrained"):
            return []
        config = type(config).from_dict(config.to_dict())
        config.architectures = [type(self.model).__name__]
        config.save_pretrained(out_dir)
        return [Path(out_dir) / "config.json"]


class _PeakMemory:
    """Peak RSS and peak anonymous memory (RSS − file-backed shared pages) of this process,
    sampled every 20 ms by a background thread (psutil)."""

    def __init__(self, budget: int | None = None) -> None:
        self._process = psutil.Process()
        self.rss = self.anon = self.start_rss = self.start_anon = 0
        self.budget = budget
        self.over: int | None = None  # the first anonymous-memory sample above the budget
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        info = self._process.memory_info()
        anon = info.rss - getattr(info, "shared", 0)
        self.rss = max(self.rss, info.rss)
        self.anon = max(self.anon, anon)
        if self.budget is not None and anon > self.budget and self.over is None:
            self.over = anon

    def check(self, done: str) -> None:
        """Raise :class:`MemoryBudgetError` once a sample went over the budget."""
        if self.over is None or self.budget is None:
            return
        raise MemoryBudgetError(
            f"max_memory: the run used {format_size(self.over)} of anonymous memory, over the "
            f"budget of {format_size(self.budget)}, and stopped after {done}; the finished "
            "shards are kept: run again with --resume and a larger --max-memory or a smaller "
            "--max-shard-size"
        )

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    @contextmanager
    def running(self) -> Iterator[_PeakMemory]:
        self.sample()
        self.start_rss, self.start_anon = self.rss, self.anon
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.sample()


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    function = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return function


def _release_freed_memory() -> None:
    """Give the memory freed by the last tensor back to the operating system (glibc only).

    glibc serves large blocks from its heap once its mmap threshold has grown, and keeps
    freed heap pages: walking SmolLM2-135M, resident memory then grew by 420 MB (one
    tensor's worth after another). ``malloc_trim(0)`` after each tensor keeps the growth to
    what is really held (the shard being filled and the adapter): 70–90 MB.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _check_rank(targets: list[Target], rank: int) -> None:
    """Refuse a rank that some target cannot take, before anything is read or written."""
    for target in targets:
        limit = min(target.matrix_shape) - 1
        if rank > limit:
            raise BadInputError(
                f"rank must be below min(n_out, n_in) of every target; got rank={rank} for "
                f"{target.name!r} of matrix shape {target.matrix_shape} (at most {limit})"
            )


def _decompose(
    matrix: torch.Tensor,
    bits: int,
    config: LoftQConfig,
    seed: int,
    name: str,
    gram: torch.Tensor | None = None,
) -> LoftQResult:
    return loftq_decompose(
        matrix,
        bits=bits,
        rank=config.rank,
        iters=config.iters,
        method=config.method,
        block_size=config.block_size,
        svd=config.svd,
        lora_alpha=config.alpha,
        double_quant=config.double_quant,
        seed=seed,
        name=name,
        gram=gram,
        damp=config.calib_damp,
    )


def _completed(out_dir: Path, config: LoftQConfig) -> LoftQReport:
    """The report of a complete output made with ``config`` (``--resume`` after the end)."""
    from leanfit.quantization.artifacts import LOFTQ_CONFIG, REPORT_JSON
    from leanfit.quantization.resume import header_differences

    existing = LoftQConfig.load(out_dir / LOFTQ_CONFIG)
    differences = header_differences(existing.to_dict(), config.to_dict())
    if differences:
        raise BadInputError(
            f"--resume: output {str(out_dir)!r} is complete but was made with another config "
            f"({'; '.join(differences[:4])}); pass --overwrite without --resume to redo it"
        )
    values = read_json(out_dir / REPORT_JSON)
    report = LoftQReport(values["source"], values["out_dir"], values["model_type"], existing)
    totals = values["totals"]
    for name in ("quantized_params", "other_params", "adapter_params", "seconds"):
        setattr(report, name, totals[name])
    report.quantized_bytes = round(totals["bits_per_param"] * report.quantized_params / 8)
    stored = totals["backbone_bits_per_param"] * (report.quantized_params + report.other_params)
    report.other_bytes = round(stored / 8) - report.quantized_bytes
    for name in ("start_rss", "peak_rss", "start_anon", "peak_anon"):
        setattr(report, f"{name}_bytes", round(totals[f"{name}_mb"] * 2**20))
    report.matrices.extend(MatrixReport.from_dict(matrix) for matrix in values["matrices"])
    return report


@dataclass(frozen=True)
class TargetJob:
    """One target to quantize: its position in the model's target list (it is seeded with
    ``config.seed + index``, whoever computes it) and its bits."""

    index: int
    target: Target
    bits: int


@dataclass
class QuantizedTarget:
    """What quantizing one target gives: packed Q, PEFT's ``lora_A`` (r × n_in) and
    ``lora_B`` (n_out × r), and the report line."""

    target: Target
    quantized: QuantizedTensor
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    report: MatrixReport


TargetComputer = Callable[
    [TensorSource, list[TargetJob], LoftQConfig], Generator[QuantizedTarget, None, None]
]
"""Computes the jobs and yields their results in the jobs' order (:func:`compute_locally`, or
Dask workers: :mod:`leanfit.quantization.distributed`)."""


def quantize_target(
    tensor: torch.Tensor, job: TargetJob, config: LoftQConfig, started: float | None = None
) -> QuantizedTarget:
    """LoftQ of one target tensor (as read), seeded with ``config.seed + job.index``.

    ``started`` is the ``time.perf_counter()`` from which the report's seconds count (default:
    now).
    """
    return _quantize_target(tensor, job, config, started)[0]


def _quantize_target(
    tensor: torch.Tensor,
    job: TargetJob,
    config: LoftQConfig,
    started: float | None = None,
    gram: torch.Tensor | None = None,
) -> tuple[QuantizedTarget, LoftQResult]:
    """:func:`quantize_target`, optionally fitted to a calibration Gram; also the raw result."""
    tic = time.perf_counter() if started is None else started
    target = job.target
    matrix = matrix_view(tensor, target)
    result = _decompose(matrix, job.bits, config, config.seed + job.index, target.name, gram)
    lora_a, lora_b = to_peft_lora(result.lora_A, result.lora_B, target)
    report = MatrixReport(
        name=target.name,
        kind=target.kind + (" (transposed)" if target.transposed else ""),
        shape=target.shape,
        matrix_shape=target.matrix_shape,
        bits=job.bits,
        qlora_error=result.qlora_error,
        errors=list(result.errors),
        best_iter=result.best_iter,
        error=result.error,
        weight_norm=float(torch.linalg.norm(matrix)),
        bits_per_param=result.quantized.bits_per_param,
        seconds=time.perf_counter() - tic,
    )
    return QuantizedTarget(target, result.quantized, lora_a, lora_b, report), result


def compute_locally(
    source: TensorSource, jobs: list[TargetJob], config: LoftQConfig
) -> Generator[QuantizedTarget, None, None]:
    """Read and quantize the targets one at a time, when the walker asks for the next one."""
    for job in jobs:
        tic = time.perf_counter()
        yield quantize_target(source.read(job.target.name), job, config, tic)


def compute_in_threads(workers: int) -> TargetComputer:
    """A :data:`TargetComputer` quantizing ``workers`` targets at a time, each on one torch
    thread (:func:`leanfit.quantization.parallel.ordered_map`); the tensors are read in the
    walker's thread. The results equal :func:`compute_locally`'s under
    ``torch.set_num_threads(1)``."""

    def compute(
        source: TensorSource, jobs: list[TargetJob], config: LoftQConfig
    ) -> Generator[QuantizedTarget, None, None]:
        reads = ((source.read(job.target.name), job) for job in jobs)
        return ordered_map(lambda read: quantize_target(*read, config), reads, workers)

    return compute


def compute_calibrated(calibrator: Any) -> TargetComputer:
    """A :data:`TargetComputer` for calibrated LoftQ: the targets in order, block by block,
    each fitted to its input Gram from ``calibrator``
    (:class:`~leanfit.quantization.calibration.BlockCalibrator`), which then records its
    ``Q + s·B·A`` so that the next blocks see the quantized model's activations."""

    def compute(
        source: TensorSource, jobs: list[TargetJob], config: LoftQConfig
    ) -> Generator[QuantizedTarget, None, None]:
        for job in jobs:
            tic = time.perf_counter()
            tensor = source.read(job.target.name)
            gram = calibrator.gram(job.target)
            item, result = _quantize_target(tensor, job, config, tic, gram)
            calibrator.record(job.target, result.effective_weight())
            del tensor, gram, result
            yield item

    return compute


def _calibrator(source: TensorSource, targets: list[Target], config: LoftQConfig) -> Any:
    """A :class:`~leanfit.quantization.calibration.BlockCalibrator`, or None without
    calibration."""
    if config.calibration is None:
        return None
    from leanfit.quantization import calibration

    calibration.check_calibratable(source.model_type, targets)
    texts = calibration.calibration_texts(config.calibration)
    tokens = calibration.calibration_tokens(
        texts, calibration.source_tokenizer(source), config.calib_tokens
    )
    return calibration.BlockCalibrator(source, targets, tokens)


def _rule_plan(targets: list[Target], config: LoftQConfig) -> dict[str, int]:
    """Each target's bits by the config's fixed rule: uniform, or the first layers wider."""
    return plan_bits(
        targets,
        config.bits,
        avg_bits=config.avg_bits,
        high_bits=config.high_bits,
        first_high_layers=config.first_high_layers,
    )


def walk(
    source: TensorSource,
    out_dir: str | Path,
    config: LoftQConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    export_dequantized: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    source_label: str = "",
    resume: bool = False,
    max_memory_bytes: int | None = None,
    workers: int = 1,
    compute: TargetComputer = compute_locally,
) -> LoftQReport:
    """Quantize every target of ``source`` into an artifact directory (the shared walker).

    See :func:`quantize_checkpoint` for the parameters and the output. The tensors are
    written in ``source.names()`` order (with calibration: block by block, the other tensors
    first); ``compute`` gives the quantized targets in that order (``workers > 1``:
    :func:`compute_in_threads`).
    """
    from leanfit.quantization.artifacts import ArtifactWriter
    from leanfit.quantization.resume import source_fingerprint, unfinished_run

    if not isinstance(config, LoftQConfig):
        raise bad_value("config", type(config).__name__, "a LoftQConfig")
    if check_workers(workers) > 1:
        if compute is not compute_locally:
            raise BadInputError(
                "workers > 1 quantizes in this process; it cannot be combined "
                "with another target computer (Dask)"
            )
        compute = compute_in_threads(workers)
    if config.calibration is not None and resume:
        raise BadInputError(
            "--resume is not supported with calibration (the blocks after the finished "
            "ones need the quantized activations of the whole run); rerun without --resume"
        )
    if config.calibration is not None and max_memory_bytes is not None:
        raise BadInputError(
            "max_memory does not count calibration's activations and float64 Gram matrices, "
            "so it cannot bound a calibrated run; run without --max-memory"
        )
    if config.calibration is not None and compute is not compute_locally:
        raise BadInputError(
            "calibration runs block by block, one target after the other in one process; it "
            "cannot be distributed or use workers > 1"
        )
    budget = check_budget(max_memory_bytes)
    out_dir = Path(out_dir)
    names = source.names()
    shapes = {name: source.shape(name) for name in names}
    targets = select_targets(
        names, shapes, source.model_type, config.targets, include_conv=config.include_conv
    )
    _check_rank(targets, config.rank)
    if resume and out_dir.exists() and not unfinished_run(out_dir):
        return _completed(out_dir, config)
    allocation = None
    if config.bits_budget is None:
        plan = _rule_plan(targets, config)
    else:
        from leanfit.quantization.allocation import allocate_for_config

        chosen, allocation = allocate_for_config(
            source, targets, config, progress=progress, workers=workers
        )
        plan = chosen.bits
    memory = _PeakMemory(budget)
    if budget is not None:
        memory.sample()
        estimate_memory(
            targets,
            shapes,
            plan,
            config,
            max_shard_bytes=max_shard_bytes,
            export_dequantized=export_dequantized,
            baseline=memory.anon,
            workers=workers,
        ).check(budget)
    jobs = [TargetJob(i, t, plan[t.name]) for i, t in enumerate(targets)]
    target_names = {t.name for t in targets}
    calibrator = _calibrator(source, targets, config)
    if calibrator is not None:
        names = calibrator.order(names)
        compute = compute_calibrated(calibrator)
    report = LoftQReport(str(source_label), str(out_dir), source.model_type, config)
    report.allocation = allocation
    identity = {"source": source_fingerprint(source), "tensors": len(names)}
    start = time.perf_counter()
    with (
        memory.running(),
        ArtifactWriter(
            out_dir,
            config,
            source,
            overwrite=overwrite,
            export_dequantized=export_dequantized,
            max_shard_bytes=max_shard_bytes,
            resume=resume,
            identity=identity,
        ) as writer,
        tqdm(total=len(names), unit="tensor", desc="LoftQ", disable=not progress) as bar,
    ):
        position = {name: index for index, name in enumerate(names)}
        pending = sorted(
            (job for job in jobs if writer.needs(position[job.target.name])),
            key=lambda job: position[job.target.name],
        )
        with closing(compute(source, pending, config)) as computed:
            for index, name in enumerate(names):
                if not writer.needs(index):
                    bar.update()
                    continue
                bar.set_postfix_str(name, refresh=False)
                if name not in target_names:
                    tensor = source.read(name)
                    size = {
                        "params": tensor.numel(),
                        "bytes": tensor.numel() * tensor.element_size(),
                    }
                    writer.add_tensor(index, name, tensor, {"name": name, **size})
                    del tensor
                else:
                    item = next(computed)
                    record = {
                        "name": name,
                        "params": item.quantized.numel,
                        "bytes": item.quantized.nbytes,
                        "adapter_params": item.lora_a.numel() + item.lora_b.numel(),
                        "matrix": asdict(item.report),
                    }
                    writer.add_target(
                        index, item.target, item.quantized, item.lora_a, item.lora_b, record
                    )
                    del item
                _release_freed_memory()
                bar.update()
                memory.sample()
                memory.check(f"{index + 1} of {len(names)} tensors")
        writer.close()
        memory.sample()
        for record in writer.records:
            report.add(record)
        report.seconds = time.perf_counter() - start
        report.start_rss_bytes, report.start_anon_bytes = memory.start_rss, memory.start_anon
        report.peak_rss_bytes, report.peak_anon_bytes = memory.rss, memory.anon
        writer.finish(report)
    return report


def estimate_checkpoint_memory(
    source: str | Path,
    config: LoftQConfig | None = None,
    *,
    export_dequantized: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    workers: int = 1,
) -> MemoryEstimate:
    """The peak-memory estimate :func:`quantize_checkpoint` checks ``max_memory_bytes``
    against (:mod:`leanfit.quantization.memory`), with this process's current anonymous
    memory as the baseline."""
    from leanfit.quantization.checkpoint import open_checkpoint

    config = LoftQConfig() if config is None else config
    with open_checkpoint(source) as checkpoint:
        names = checkpoint.names()
        shapes = {name: checkpoint.shape(name) for name in names}
        targets = select_targets(
            names, shapes, checkpoint.model_type, config.targets, include_conv=config.include_conv
        )
        if config.bits_budget is None:
            plan = _rule_plan(targets, config)
        else:  # the widths are chosen while measuring: count every target at the widest
            plan = {target.name: config.high_bits for target in targets}
        memory = _PeakMemory()
        memory.sample()
        return estimate_memory(
            targets,
            shapes,
            plan,
            config,
            max_shard_bytes=max_shard_bytes,
            export_dequantized=export_dequantized,
            baseline=memory.anon,
            workers=check_workers(workers),
        )


def quantize_checkpoint(
    source: str | Path,
    out_dir: str | Path,
    config: LoftQConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    export_dequantized: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    resume: bool = False,
    max_memory_bytes: int | None = None,
    workers: int = 1,
) -> LoftQReport:
    """Quantize a pretrained checkpoint with LoftQ, streaming it tensor by tensor.

    Parameters
    ----------
    source : str or Path
        A transformers directory (safetensors, sharded or not) or a ``.gguf`` file
        (:func:`leanfit.quantization.checkpoint.open_checkpoint`).
    out_dir : str or Path
        The output directory (see the module docstring); written into the hidden sibling
        ``.OUT.partial/`` and renamed into place at the end
        (:mod:`leanfit.quantization.resume`).
    config : LoftQConfig, optional
        Default ``LoftQConfig()``: NF2, rank 16, T = 5, block 64, randomized SVD.
    overwrite : bool
        Replace an existing ``out_dir``.
    progress : bool
        Show a tqdm bar (one step per tensor).
    export_dequantized : bool
        Also write ``dequantized/``: a plain transformers directory whose weights are Q
        dequantized in float16 (other tensors cast to float16), to be used with the adapter.
    max_shard_bytes : int
        A backbone shard is written once it holds this many bytes (a tensor is never split).
    resume : bool
        Continue the unfinished run of ``out_dir`` (killed, interrupted or stopped by the
        memory budget) from its finished shards; the result is byte-identical to an
        uninterrupted run. The source, the config, ``max_shard_bytes`` and
        ``export_dequantized`` must be those of the unfinished run. With no unfinished run it
        starts afresh; with a complete ``out_dir`` of the same config it returns its report.
        Without ``resume``, an unfinished run is refused unless ``overwrite`` discards it.
    max_memory_bytes : int, optional
        Memory budget (anonymous memory of the process, see
        :mod:`leanfit.quantization.memory`). A run whose estimated peak is over it is refused
        before anything is written; a run that goes over it stops after the current tensor
        with :class:`~leanfit.exceptions.MemoryBudgetError`, keeping its finished shards for
        ``resume``.
    workers : int
        Targets quantized (and, with ``bits_budget``, measured) at a time, by as many
        threads each running torch on one thread
        (:mod:`leanfit.quantization.parallel`); the output equals a ``workers=1`` run under
        ``torch.set_num_threads(1)`` byte for byte. Up to ``workers`` targets are in memory at
        once. Not with calibration.

    Returns
    -------
    LoftQReport
        Also written as ``loftq_report.json`` and ``loftq_report.md``.

    Raises
    ------
    BadInputError
        Invalid config, no matching target, a rank too large for a target, an existing
        ``out_dir`` without ``overwrite``, an unfinished run without ``resume`` or
        ``overwrite``, an unfinished run of other inputs with ``resume``, or an estimated peak
        memory over ``max_memory_bytes``.
    MemoryBudgetError
        The run went over ``max_memory_bytes``.
    """
    from leanfit.quantization.checkpoint import open_checkpoint

    config = LoftQConfig() if config is None else config
    with open_checkpoint(source) as checkpoint:
        return walk(
            checkpoint,
            out_dir,
            config,
            overwrite=overwrite,
            progress=progress,
            export_dequantized=export_dequantized,
            max_shard_bytes=max_shard_bytes,
            source_label=str(source),
            resume=resume,
            max_memory_bytes=max_memory_bytes,
            workers=workers,
        )


def quantize_module(
    model: nn.Module,
    out_dir: str | Path,
    config: LoftQConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    export_dequantized: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    resume: bool = False,
    max_memory_bytes: int | None = None,
    workers: int = 1,
) -> LoftQReport:
    """Quantize an in-memory model's Linear (and, with ``include_conv``, Conv) layers.

    The same walker and artifacts as :func:`quantize_checkpoint`, reading the model's state
    dict; ``backbone/`` holds the transformers config when the model has one (then
    :func:`leanfit.quantization.load` rebuilds it), and no tokenizer. ``config.targets`` is
    needed unless the model is a transformers model of a known type. The model is not changed.
    Load the result into a fresh instance with :func:`leanfit.quantization.artifacts.load_into`.
    ``workers`` as in :func:`quantize_checkpoint`.
    """
    return walk(
        ModuleSource(model),
        out_dir,
        config,
        overwrite=overwrite,
        progress=progress,
        export_dequantized=export_dequantized,
        max_shard_bytes=max_shard_bytes,
        source_label=type(model).__name__,
        resume=resume,
        max_memory_bytes=max_memory_bytes,
        workers=workers,
    )
