"""Apply LoftQ to a whole model: walk a checkpoint (or an in-memory module) tensor by tensor.

The walker knows no maths beyond calling :func:`leanfit.quantization.loftq_decompose`: it
chooses the targets (:mod:`leanfit.checkpoints.targets`) and their bits
(:mod:`leanfit.pipeline.plan`, :mod:`leanfit.pipeline.allocation`), reads one tensor,
turns a target into its ``n_out × n_in`` matrix, decomposes it, hands the packed Q and the
PEFT LoRA factors to the artifact writer (:mod:`leanfit.checkpoints.writer`), and lets
the tensor go before reading the next one. Peak memory is therefore the working set of the
largest tensor plus one backbone shard being filled (``max_shard_bytes``), not the model.

Output directory (written into ``.OUT.partial/``, renamed into place at the end; a killed
run continues with ``resume=True``, see :mod:`leanfit.checkpoints.resume`)::

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

import math
import time
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from leanfit.checkpoints.base import ModuleSource, TensorSource
from leanfit.checkpoints.targets import Target, needs_model_layers, select_targets, target_rule
from leanfit.exceptions import BadInputError, bad_value
from leanfit.heap import FreedMemory
from leanfit.io import read_json
from leanfit.pipeline.computers import (
    TargetComputer,
    TargetJob,
    compute_calibrated,
    compute_in_threads,
    compute_locally,
    make_calibrator,
)
from leanfit.pipeline.config import LoftQConfig, LoftQReport, MatrixReport
from leanfit.pipeline.memory import (
    MemoryEstimate,
    PeakMemory,
    check_budget,
    estimate_memory,
)
from leanfit.pipeline.parallel import check_workers
from leanfit.pipeline.plan import plan_bits
from leanfit.pipeline.report import write_reports

DEFAULT_SHARD_BYTES = 64 * 2**20


def _check_rank(targets: list[Target], rank: int) -> None:
    """Refuse a rank that some target cannot take, before anything is read or written."""
    for target in targets:
        limit = min(target.matrix_shape) - 1
        if rank > limit:
            raise BadInputError(
                f"rank must be below min(n_out, n_in) of every target; got {rank} for "
                f"{target.name!r} of matrix shape {target.matrix_shape} (at most {limit})",
                param="rank",
                value=rank,
            )


def _completed(out_dir: Path, config: LoftQConfig) -> LoftQReport:
    """The report of a complete output made with ``config`` (``--resume`` after the end)."""
    from leanfit.checkpoints.layout import LOFTQ_CONFIG, REPORT_JSON
    from leanfit.checkpoints.resume import header_differences

    existing = LoftQConfig.load(out_dir / LOFTQ_CONFIG)
    differences = header_differences(existing.to_dict(), config.to_dict())
    if differences:
        raise BadInputError(
            f"--resume: output {str(out_dir)!r} is complete but was made with another config "
            f"({'; '.join(differences[:4])}); pass --overwrite without --resume to redo it"
        )
    values = read_json(out_dir / REPORT_JSON)
    report = LoftQReport(values["source"], values["out_dir"], values["model_type"], existing)
    report.target_rule = values.get("target_rule", "")
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


def _targets_of(
    source: TensorSource, config: LoftQConfig
) -> tuple[list[str], dict[str, tuple[int, ...]], list[Target]]:
    """The source's tensor names, their shapes, and the targets ``config`` chooses among them
    (the model's linear layers asked for only when the choice needs them:
    :func:`~leanfit.checkpoints.targets.needs_model_layers`)."""
    names = source.names()
    shapes = {name: source.shape(name) for name in names}
    layers = source.linear_layers() if needs_model_layers(source.model_type) else None
    targets = select_targets(
        names,
        shapes,
        source.model_type,
        config.targets,
        include_conv=config.include_conv,
        layers=layers,
    )
    return names, shapes, targets


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
    from leanfit.checkpoints.resume import source_fingerprint, unfinished_run
    from leanfit.checkpoints.writer import ArtifactWriter

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
            "max_memory_bytes does not count calibration's activations and float64 Gram "
            "matrices, so it cannot bound a calibrated run; run without it",
            param="max_memory_bytes",
            value=max_memory_bytes,
        )
    if config.calibration is not None and compute is not compute_locally:
        raise BadInputError(
            "calibration runs block by block, one target after the other in one process; it "
            "cannot be distributed or use workers > 1"
        )
    budget = check_budget(max_memory_bytes)
    out_dir = Path(out_dir)
    names, shapes, targets = _targets_of(source, config)
    _check_rank(targets, config.lora.rank)
    if resume and out_dir.exists() and not unfinished_run(out_dir):
        return _completed(out_dir, config)
    allocation = None
    if config.bits_budget is None:
        plan = plan_bits(targets, config)
    else:
        from leanfit.pipeline.allocation import allocate_for_config

        chosen, allocation = allocate_for_config(
            source, targets, config, progress=progress, workers=workers
        )
        plan = chosen.bits
    memory = PeakMemory(budget)
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
    calibrator = make_calibrator(source, targets, config)
    if calibrator is not None:
        names = calibrator.order(names)
        compute = compute_calibrated(calibrator)
    report = LoftQReport(str(source_label), str(out_dir), source.model_type, config)
    report.target_rule = target_rule(source.model_type, config.targets)
    report.allocation = allocation
    identity = {"source": source_fingerprint(source), "tensors": len(names)}
    start = time.perf_counter()
    with (
        memory.running(),
        ArtifactWriter(
            out_dir,
            config.to_dict(),
            config.lora,
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
        freed = FreedMemory()
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
                    freed.freed(size["bytes"])
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
                    freed.freed(4 * math.prod(item.target.shape))  # read as float32
                    del item
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
        writer.finish(lambda root: write_reports(root, report))
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
    against (:mod:`leanfit.pipeline.memory`), with this process's current anonymous
    memory as the baseline."""
    from leanfit.checkpoints.source import open_checkpoint

    config = LoftQConfig() if config is None else config
    with open_checkpoint(source) as checkpoint:
        _, shapes, targets = _targets_of(checkpoint, config)
        if config.bits_budget is None:
            plan = plan_bits(targets, config)
        else:  # the widths are chosen while measuring: count every target at the widest
            plan = {target.name: config.high_bits for target in targets}
        memory = PeakMemory()
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
        (:func:`leanfit.checkpoints.source.open_checkpoint`).
    out_dir : str or Path
        The output directory (see the module docstring); written into the hidden sibling
        ``.OUT.partial/`` and renamed into place at the end
        (:mod:`leanfit.checkpoints.resume`).
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
        :mod:`leanfit.pipeline.memory`). A run whose estimated peak is over it is refused
        before anything is written; a run that goes over it stops after the current tensor
        with :class:`~leanfit.exceptions.MemoryBudgetError`, keeping its finished shards for
        ``resume``.
    workers : int
        Targets quantized (and, with ``bits_budget``, measured) at a time, by as many
        threads each running torch on one thread
        (:mod:`leanfit.pipeline.parallel`); the output equals a ``workers=1`` run under
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
    from leanfit.checkpoints.source import open_checkpoint

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
    :func:`leanfit.checkpoints.load` rebuilds it), and no tokenizer. ``config.targets`` is
    needed unless the model is a transformers model of a known type. The model is not changed.
    Load the result into a fresh instance with :func:`leanfit.checkpoints.loading.load_into`.
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
