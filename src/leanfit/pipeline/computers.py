"""Target computers: who quantizes the targets the walker asks for.

A :data:`TargetComputer` takes the jobs (target, bits, seed index) in the walker's order and
yields their :class:`QuantizedTarget` in that order: here (:func:`compute_locally`), in worker
threads (:func:`compute_in_threads`), fitted to calibration activations
(:func:`compute_calibrated`), or on Dask workers (:mod:`leanfit.pipeline.distributed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch

from leanfit.checkpoints.base import TensorSource
from leanfit.checkpoints.targets import Target, matrix_view, to_peft_lora
from leanfit.pipeline.config import LoftQConfig, MatrixReport
from leanfit.pipeline.parallel import ordered_map
from leanfit.quantization.loftq import LoftQResult, loftq_decompose
from leanfit.quantization.quantizers import QuantizedTensor


def decompose_target(
    matrix: torch.Tensor,
    index: int,
    bits: int,
    config: LoftQConfig,
    name: str,
    gram: torch.Tensor | None = None,
) -> LoftQResult:
    """LoftQ of a run's target ``index`` (0-based, in the run's target order) at ``bits``.

    The one place that turns a run's config into a decomposition: the config's quantizer at
    this width, its LoRA setting, and the seed ``config.seed + index`` — whoever computes the
    target (the computers here, Dask workers) or measures it for the bit allocation
    (:func:`leanfit.pipeline.allocation.measure_errors`), so that an error measured at a
    width is the error the run gets there.
    """
    return loftq_decompose(
        matrix,
        config.quant.with_bits(bits),
        config.lora,
        seed=config.seed + index,
        name=name,
        gram=gram,
        damp=config.calib_damp,
    )


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
Dask workers: :mod:`leanfit.pipeline.distributed`)."""


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
    result = decompose_target(matrix, job.index, job.bits, config, target.name, gram)
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
    thread (:func:`leanfit.pipeline.parallel.ordered_map`); the tensors are read in the
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
    (:class:`~leanfit.pipeline.calibration.BlockCalibrator`), which then records its
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


def make_calibrator(source: TensorSource, targets: list[Target], config: LoftQConfig) -> Any:
    """A :class:`~leanfit.pipeline.calibration.BlockCalibrator`, or None without
    calibration."""
    if config.calibration is None:
        return None
    from leanfit.pipeline import calibration

    calibration.check_calibratable(source.model_type, targets)
    texts = calibration.calibration_texts(config.calibration)
    tokens = calibration.calibration_tokens(
        texts, calibration.source_tokenizer(source), config.calib_tokens
    )
    return calibration.BlockCalibrator(source, targets, tokens)
