"""The LoftQ output directory: write it while the walker streams, and load it back.

Layout (see :mod:`leanfit.quantization.apply`)::

    OUT/backbone/model-0000i-of-0000n.safetensors + model.safetensors.index.json
        a target module ``m`` is stored as ``m.packed``, ``m.scales`` (``m.offsets`` for
        uniform; ``*_dq_scales``, ``*_dq_mean`` with double quantization), its bias as
        ``m.bias``; every other tensor under its own name, as read (float32 or integer)
    OUT/backbone/quantization_config.json   format version and per-target metadata
    OUT/backbone/config.json, tokenizer files
    OUT/adapter/adapter_config.json, adapter_model.safetensors   a PEFT LoRA adapter
    OUT/dequantized/   optional: config, tokenizer, float16 weights with Q dequantized
    OUT/loftq_config.json, loftq_report.json, loftq_report.md

:func:`load` rebuilds the transformers model with the targets as
:class:`~leanfit.quantization.QuantLinear` (never materializing their full-precision
weights) and attaches the adapter with PEFT. The model it returns computes, in every target,
``x ↦ x·(Q + (alpha/r)·lora_B·lora_A)ᵀ + b``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from leanfit._version import __version__
from leanfit.exceptions import BadInputError, CorruptArtifactError, LeanfitError, bad_value
from leanfit.io import read_json, write_durably, write_error
from leanfit.quantization.nn import QuantLinear, reuse_dequantized_weight
from leanfit.quantization.quantizers import QuantizedTensor, check_quantization_args
from leanfit.quantization.resume import PartialRun
from leanfit.quantization.targets import Target, lora_shapes_for_peft, restore_shape

if TYPE_CHECKING:
    from peft import PeftModel

    from leanfit.quantization.apply import LoftQConfig, LoftQReport, TensorSource

logger = logging.getLogger(__name__)

FORMAT = "leanfit-loftq"
FORMAT_VERSION = 1
BACKBONE, ADAPTER, DEQUANTIZED = "backbone", "adapter", "dequantized"
QUANTIZATION_CONFIG = "quantization_config.json"
LOFTQ_CONFIG = "loftq_config.json"
REPORT_JSON, REPORT_MD = "loftq_report.json", "loftq_report.md"
INDEX_FILE = "model.safetensors.index.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

TASKS = ("auto", "causal-lm", "base", "sequence-classification")


# --- writing -----------------------------------------------------------------------------


class ShardWriter:
    """Write tensors into safetensors shards of about ``max_bytes``, with an index.

    Tensors given together to :meth:`add` stay in one shard. A shard is written as soon as
    adding the next group would pass ``max_bytes``, so at most one shard is held in memory.
    Each shard file is written durably (:func:`leanfit.io.write_durably`) and reported to
    ``on_flush(file, names, nbytes, tags)`` with the ``tag`` of every group it holds.
    :meth:`close` names the shards ``model-0000i-of-0000n.safetensors`` and writes
    ``model.safetensors.index.json`` (``{"metadata": {"total_size": …}, "weight_map": {name:
    file}}``), the layout of a sharded transformers checkpoint.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        on_flush: Callable[[str, list[str], int, list[int]], None] | None = None,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise bad_value("max_shard_bytes", max_bytes, "an int >= 1")
        self.directory = directory
        self.max_bytes = max_bytes
        self.on_flush = on_flush
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._pending_tags: list[int] = []
        self._files: list[list[str]] = []
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor], tag: int = -1) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self.flush()
        self._pending.update({name: t.contiguous() for name, t in tensors.items()})
        self._pending_bytes += size
        self._pending_tags.append(tag)
        if self._pending_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending = self._pending
        name = shard_file(len(self._files) + 1)
        write_durably(
            self.directory / name, lambda tmp: save_file(pending, tmp, metadata={"format": "pt"})
        )
        self._files.append(list(pending))
        self.total_bytes += self._pending_bytes
        if self.on_flush is not None:
            self.on_flush(name, list(pending), self._pending_bytes, self._pending_tags)
        self._pending, self._pending_bytes, self._pending_tags = {}, 0, []

    @property
    def count(self) -> int:
        """Shards written so far."""
        return len(self._files)

    def restore(self, names: list[str], nbytes: int) -> None:
        """Count a shard written by an earlier process (before anything is added)."""
        self._files.append(list(names))
        self.total_bytes += nbytes

    def close(self) -> None:
        self.flush()
        weight_map = {}
        count = len(self._files)
        for i, names in enumerate(self._files, start=1):
            final = final_shard_file(i, count)
            if (self.directory / shard_file(i)).exists() or not (self.directory / final).exists():
                os.replace(self.directory / shard_file(i), self.directory / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def shard_file(number: int) -> str:
    """The name of shard ``number`` (1-based) before :meth:`ShardWriter.close` renames it."""
    return f"model-{number:05d}.safetensors"


def final_shard_file(number: int, count: int) -> str:
    """The name of shard ``number`` of ``count`` (1-based), as transformers names shards."""
    return f"model-{number:05d}-of-{count:05d}.safetensors"


def _target_meta(target: Target, quantized: QuantizedTensor, rank: int) -> dict[str, Any]:
    return {
        "name": target.name,
        "kind": target.kind,
        "transposed": target.transposed,
        "shape": list(target.shape),
        "layer_index": target.layer_index,
        "rank": rank,
        "quantized": quantized.meta(),
    }


def _architecture(source: TensorSource) -> str | None:
    """The model class name: ``config.architectures[0]``; for a GGUF file (always a causal
    LM, with no architecture in its config) transformers' causal-LM class for the config."""
    from leanfit.quantization.checkpoint import GGUFCheckpoint

    config = getattr(source, "config", None)
    architectures = getattr(config, "architectures", None)
    if architectures:
        return str(architectures[0])
    if isinstance(source, GGUFCheckpoint):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(source.config)]
        return str(getattr(model_class, "__name__", "")) or None
    return None


def _peft_task_type(architecture: str | None) -> str | None:
    """PEFT's ``task_type`` for a model class name: ``"CAUSAL_LM"`` for causal LMs (so that
    ``from_pretrained`` returns a ``PeftModelForCausalLM`` with ``generate``), else None."""
    causal = architecture is not None and architecture.endswith(("ForCausalLM", "LMHeadModel"))
    return "CAUSAL_LM" if causal else None


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    values = json.loads(path.read_text())
    edit(values)
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _sort_target_modules(values: dict[str, Any]) -> None:
    if isinstance(values.get("target_modules"), list):  # a str is a regular expression
        values["target_modules"] = sorted(values["target_modules"])


def sort_adapter_targets(adapter: Path) -> None:
    """Rewrite ``adapter/adapter_config.json`` with its ``target_modules`` sorted.

    PEFT keeps ``target_modules`` as a set, so the order it writes follows the hash seed of
    the process; sorted, two runs write the same bytes.
    """
    _edit_json(adapter / ADAPTER_CONFIG, _sort_target_modules)


class ArtifactWriter:
    """Collect what the walker produces and write the output directory, resumably.

    Use as a context manager: entering opens the output's partial run
    (:class:`leanfit.quantization.resume.PartialRun`: refusing an existing output without
    ``overwrite``, resuming or refusing an unfinished run), leaving renames the tree into
    place — or, after an error, keeps the partial run for ``--resume`` (interrupt, memory
    budget) or removes it (anything else). :meth:`finish` must be called before leaving.

    The walker gives every source tensor, in order, with its index and a JSON-able
    ``record`` (its report row); :meth:`needs` says which tensors an earlier process already
    finished. :attr:`records` are the records of all tensors, in order, after :meth:`close`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        config: LoftQConfig,
        source: TensorSource,
        *,
        overwrite: bool,
        export_dequantized: bool,
        max_shard_bytes: int,
        resume: bool = False,
        identity: dict[str, Any] | None = None,
    ) -> None:

        self.config, self.source = config, source
        header = {
            **(identity or {}),
            "config": config.to_dict(),
            "settings": {
                "max_shard_bytes": max_shard_bytes,
                "export_dequantized": export_dequantized,
                "leanfit_version": __version__,
            },
        }
        self._run = PartialRun(Path(out_dir), header, resume=resume, overwrite=overwrite)
        self._max_shard_bytes = max_shard_bytes
        self._export = export_dequantized
        self.records: list[dict[str, Any]] = []
        self._parts: list[str] = []
        self._pending_records: dict[int, dict[str, Any]] = {}
        self._pending_adapter: dict[int, dict[str, torch.Tensor]] = {}
        self._done = {BACKBONE: 0, DEQUANTIZED: 0}  # per writer: the tensors finished
        self._finished = False

    def __enter__(self) -> ArtifactWriter:
        self._run.open()
        try:
            self.root = self._run.tree
            self.backbone = ShardWriter(
                self.root / BACKBONE, self._max_shard_bytes, self._committer(BACKBONE)
            )
            self.dequantized = (
                ShardWriter(
                    self.root / DEQUANTIZED, self._max_shard_bytes, self._committer(DEQUANTIZED)
                )
                if self._export
                else None
            )
            self.architecture = _architecture(self.source)
            self._restore()
            for writer, dtype in ((self.backbone, None), (self.dequantized, "float16")):
                if writer is not None:
                    writer.directory.mkdir(parents=True, exist_ok=True)
                    self._write_model_files(writer.directory, dtype)
        except BaseException as err:
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:

        if exc is None and not self._finished:
            self._run.abandon(None)
            raise RuntimeError("ArtifactWriter left without finish(): output discarded")
        try:
            if exc is None:
                self._run.finish()
                return
            self._run.abandon(exc)
        except OSError as err:
            self._run.abandon(err)
            raise write_error(self._run.out, err) from err
        if isinstance(exc, OSError) and not isinstance(exc, LeanfitError):
            raise write_error(self._run.out, exc) from exc

    # -- resuming ------------------------------------------------------------------------

    def _writers(self) -> dict[str, ShardWriter]:
        writers = {BACKBONE: self.backbone}
        if self.dequantized is not None:
            writers[DEQUANTIZED] = self.dequantized
        return writers

    def _restore(self) -> None:
        """Take over the shards the journal lists, while their files are present; drop the
        rest of the journal and every other file of the tree (rewritten identically)."""
        writers = self._writers()
        kept = 0
        for entry in self._run.entries:
            writer = writers.get(entry.get("writer", ""))
            if writer is None or not _shard_present(writer, entry, self._run.parts):
                break
            writer.restore(entry["names"], entry["bytes"])
            self._take(entry)
            kept += 1
        self._run.keep_entries(kept)
        keep = {self._run.parts / part for part in self._parts}
        for writer in writers.values():
            for number in range(1, writer.count + 1):
                keep.add(writer.directory / shard_file(number))
                keep.update(writer.directory.glob(f"model-{number:05d}-of-*.safetensors"))
        for root in (self._run.tree, self._run.parts):
            for path in sorted(root.rglob("*"), reverse=True):
                if path.is_dir() and not path.is_symlink():
                    if not any(path.iterdir()):
                        path.rmdir()
                elif path not in keep:
                    path.unlink()

    def needs(self, index: int) -> bool:
        """Whether source tensor ``index`` must still be given (it is not in every writer's
        finished shards)."""
        return index >= min(self._done[kind] for kind in self._writers())

    def _take(self, entry: dict[str, Any]) -> None:
        """Count a journaled shard as finished: its tensors and, for the backbone, their
        records and adapter part."""
        self._done[entry["writer"]] = entry["last"] + 1
        if entry["writer"] == BACKBONE:
            self.records.extend(entry["records"])
            if entry["adapter"]:
                self._parts.append(entry["adapter"])

    def _committer(self, kind: str) -> Callable[[str, list[str], int, list[int]], None]:
        def commit(file: str, names: list[str], nbytes: int, tags: list[int]) -> None:
            entry: dict[str, Any] = {
                "kind": "shard",
                "writer": kind,
                "file": file,
                "names": names,
                "bytes": nbytes,
                "last": max(tags),
            }
            if kind == BACKBONE:
                records = [self._pending_records.pop(tag) for tag in tags]
                adapter: dict[str, torch.Tensor] = {}
                for tag in tags:
                    adapter.update(self._pending_adapter.pop(tag, {}))
                part = None
                if adapter:
                    part = f"adapter-{self.backbone.count:05d}.safetensors"
                    write_durably(
                        self._run.parts / part,
                        lambda tmp: save_file(adapter, tmp, metadata={"format": "pt"}),
                    )
                entry.update(records=records, adapter=part)
            self._run.append(entry)
            self._take(entry)

        return commit

    # -- writing -------------------------------------------------------------------------

    def add_tensor(
        self, index: int, name: str, tensor: torch.Tensor, record: dict[str, Any]
    ) -> None:
        """An untouched tensor: stored as read; float16 in the dequantized export."""
        if index >= self._done[BACKBONE]:
            self._pending_records[index] = record
            self.backbone.add({name: tensor}, tag=index)
        if self.dequantized is not None and index >= self._done[DEQUANTIZED]:
            half = tensor.half() if tensor.is_floating_point() else tensor
            self.dequantized.add({name: half}, tag=index)

    def add_target(
        self,
        index: int,
        target: Target,
        quantized: QuantizedTensor,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        record: dict[str, Any],
    ) -> None:
        """A quantized target: Q packed into the backbone, PEFT's lora_A/lora_B weights.

        ``record`` gets the target's metadata under ``"meta"`` and ``"module"``."""
        if index >= self._done[BACKBONE]:
            record["module"] = target.module
            record["meta"] = _target_meta(target, quantized, int(lora_a.shape[0]))
            self._pending_records[index] = record
            self._pending_adapter[index] = {
                f"{PEFT_PREFIX}{target.module}.lora_A.weight": lora_a.contiguous(),
                f"{PEFT_PREFIX}{target.module}.lora_B.weight": lora_b.contiguous(),
            }
            self.backbone.add(quantized.to_state_dict(target.module + "."), tag=index)
        if self.dequantized is not None and index >= self._done[DEQUANTIZED]:
            dense = restore_shape(quantized.dequantize(), target).half()
            self.dequantized.add({target.name: dense}, tag=index)

    def close(self) -> None:
        """Write the last shards and indexes, ``quantization_config.json``, the adapter and
        ``loftq_config.json``."""
        self.backbone.close()
        targets = {r["module"]: r["meta"] for r in self.records if "meta" in r}
        quantization = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "leanfit_version": __version__,
            "model_type": self.source.model_type,
            "architecture": self.architecture,
            "tied": dict(self.source.tied),
            "targets": targets,
        }
        (self.root / BACKBONE / QUANTIZATION_CONFIG).write_text(
            json.dumps(quantization, indent=2) + "\n"
        )
        if self.dequantized is not None:
            self.dequantized.close()
        self._write_adapter(sorted(targets))
        self.config.save(self.root / LOFTQ_CONFIG)

    def finish(self, report: LoftQReport) -> None:
        """Write the reports (after :meth:`close`); the directory is complete."""
        write_reports(self.root, report)
        self._finished = True

    def _write_model_files(self, directory: Path, dtype: str | None) -> None:
        """Config (with ``architectures`` filled in, and ``dtype`` if given) and tokenizer."""
        architecture = self.architecture
        self.source.save_config_and_tokenizer(directory)
        config_path = directory / "config.json"
        if config_path.is_file():

            def edit(values: dict[str, Any]) -> None:
                if architecture and not values.get("architectures"):
                    values["architectures"] = [architecture]
                if dtype is not None:
                    values["dtype"] = dtype
                    values.pop("torch_dtype", None)

            _edit_json(config_path, edit)

    def _write_adapter(self, modules: list[str]) -> None:
        from peft import LoraConfig

        alpha = self.config.alpha
        lora = LoraConfig(
            r=self.config.rank,
            lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,  # type: ignore[arg-type]
            target_modules=modules,
            task_type=_peft_task_type(self.architecture),
            lora_dropout=0.0,
            bias="none",
        )
        directory = self.root / ADAPTER
        lora.save_pretrained(str(directory))
        sort_adapter_targets(directory)
        adapter: dict[str, torch.Tensor] = {}
        for part in self._parts:
            adapter.update(load_file(self._run.parts / part))
        save_file(adapter, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})


def _shard_present(writer: ShardWriter, entry: dict[str, Any], parts: Path) -> bool:
    """The shard file of a journal line (under its first or its final name) and its adapter
    part are on disk."""
    number = writer.count + 1
    if entry.get("file") != shard_file(number):
        return False
    found = (writer.directory / shard_file(number)).is_file() or any(
        writer.directory.glob(f"model-{number:05d}-of-*.safetensors")
    )
    adapter = entry.get("adapter")
    return found and (not adapter or (parts / adapter).is_file())


def write_reports(root: Path, report: LoftQReport) -> None:
    """``loftq_report.json`` and ``loftq_report.md`` in ``root``."""
    from leanfit.reports import markdown_table, write_report

    (root / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    totals = report.summary()
    config = report.config
    rows = [
        {
            "matrix": m.name,
            "shape": "×".join(map(str, m.matrix_shape)),
            "bits": m.bits,
            "QLoRA": m.qlora_error,
            "LoftQ per iteration": ", ".join(f"{e:.4f}" for e in m.errors) or "–",
            "kept": m.best_iter,
            "error": m.error,
            "bits/param": m.bits_per_param,
            "time (s)": m.seconds,
        }
        for m in report.matrices
    ]
    summary = [
        {
            "matrices": totals["matrices"],
            "QLoRA error": totals["qlora_error"],
            "LoftQ error": totals["loftq_error"],
            "bits/param (targets)": totals["bits_per_param"],
            "bits/param (backbone)": totals["backbone_bits_per_param"],
            "adapter params": totals["adapter_params"],
            "time (s)": totals["seconds"],
            "RSS start → peak (MB)": f"{totals['start_rss_mb']:.0f} → {totals['peak_rss_mb']:.0f}",
            "anon start → peak (MB)": (
                f"{totals['start_anon_mb']:.0f} → {totals['peak_anon_mb']:.0f}"
            ),
        }
    ]
    settings = (
        f"Source `{report.source}` ({report.model_type}); init {config.init}, "
        f"{config.method.upper()}{config.bits}"
        + (
            f" (mixed, high {config.high_bits})"
            if config.avg_bits is not None or config.first_high_layers is not None
            else ""
        )
        + (
            f" to {config.high_bits} bits allocated under a budget of {config.bits_budget:g} "
            "stored bits/param"
            if config.bits_budget is not None
            else ""
        )
        + f", block {config.block_size}, rank {config.rank}, alpha {config.alpha:g}, "
        f"T = {config.iters}, {config.svd} SVD, double quant {config.double_quant}.\n\n"
        + (
            f"Calibrated on {config.calibration!r} ({config.calib_tokens} tokens, damping "
            f"{config.calib_damp:g}). Errors are relative output errors on the calibration "
            "tokens X: ‖X (W − Q − (alpha/r)·B·A)ᵀ‖/‖X Wᵀ‖ (Gram damped), QLoRA with B = 0. "
            if config.calibration
            else "Errors are relative Frobenius errors: QLoRA ‖W − Q‖/‖W‖ with Q = quantize(W), "
            "LoftQ ‖W − Q − (alpha/r)·B·A‖/‖W‖ after each iteration. "
        )
        + "The kept iterate is the best one. "
        "Totals weigh each matrix by ‖W‖² (the relative error of all targets together). "
        "Bits/param count packed codes and scales. Memory: resident set size of the process "
        "(psutil) at the start of the walk and its peak; anon = RSS minus file-backed pages "
        "(memory-mapped checkpoint pages are page cache, not allocations)."
    )
    write_report(
        root / REPORT_MD,
        "LoftQ report",
        [
            ("Settings", settings),
            ("Totals", markdown_table(summary)),
            ("Matrices", markdown_table(rows, floatfmt={"QLoRA": ".4f", "error": ".4f"})),
        ],
    )


# --- reading -----------------------------------------------------------------------------


def read_quantization_config(directory: str | Path) -> dict[str, Any]:
    """Validate a LoftQ output directory and return its ``backbone/quantization_config.json``.

    Raises
    ------
    BadInputError
        ``directory`` is not a leanfit LoftQ output (no ``backbone/quantization_config.json``).
    CorruptArtifactError
        The file is unreadable, of another format, of a newer format version, or incomplete.
    """
    directory = Path(directory)
    path = directory / BACKBONE / QUANTIZATION_CONFIG
    if not path.is_file():
        found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "nothing"
        raise BadInputError(
            f"directory must be a leanfit quantize output (with {BACKBONE}/{QUANTIZATION_CONFIG}); "
            f"got {str(directory)!r} holding {found}"
        )
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptArtifactError(f"{str(path)!r} is not a {FORMAT!r} file")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CorruptArtifactError(f"{str(path)!r} has no valid format_version; got {version!r}")
    if version > FORMAT_VERSION:
        raise CorruptArtifactError(
            f"{str(path)!r} has format_version {version}, newer than the {FORMAT_VERSION} this "
            f"leanfit {__version__} reads; upgrade leanfit"
        )
    targets, tied = meta.get("targets"), meta.get("tied")
    if not isinstance(targets, dict) or not targets or not isinstance(tied, dict):
        raise CorruptArtifactError(f"{str(path)!r} lists no targets or no tied map")
    if not all(isinstance(v, str) for v in tied.values()):
        raise CorruptArtifactError(f"{str(path)!r}: tied must map tensor names to tensor names")
    if not isinstance(meta.get("architecture"), str | None):
        raise CorruptArtifactError(
            f"{str(path)!r}: architecture must be a class name or null; "
            f"got {meta['architecture']!r}"
        )
    return meta


def _target(module: str, entry: dict[str, Any]) -> Target:
    """The :class:`Target` of a ``quantization_config.json`` entry, its quantizer checked."""
    try:
        name, shape, layer = entry["name"], entry["shape"], entry["layer_index"]
        if not isinstance(name, str) or name.rpartition(".")[0] != module:
            raise BadInputError(f"name must be the module's weight; got {name!r}")
        if not (isinstance(shape, list) and 2 <= len(shape) <= 5 and all(_count(n) for n in shape)):
            raise BadInputError(f"shape must be a list of 2 to 5 sizes >= 1; got {shape!r}")
        if not (layer is None or _count(layer, minimum=0)):
            raise BadInputError(f"layer_index must be null or an int >= 0; got {layer!r}")
        if entry["kind"] not in ("linear", "conv") or not isinstance(entry["transposed"], bool):
            raise BadInputError(
                "kind must be 'linear' or 'conv' and transposed a bool; "
                f"got {entry['kind']!r}, {entry['transposed']!r}"
            )
        target = Target(name, module, tuple(shape), layer, entry["transposed"], entry["kind"])
        quant = entry["quantized"]
        check_quantization_args(quant["bits"], quant["method"], quant["block_size"])
        if list(quant["shape"]) != list(target.matrix_shape):
            raise BadInputError(
                f"quantized shape {quant['shape']} is not the matrix shape {target.matrix_shape}"
            )
        if not isinstance(quant["double_quant"], bool):
            raise BadInputError(f"double_quant must be a bool; got {quant['double_quant']!r}")
    except (KeyError, TypeError, BadInputError) as err:
        raise CorruptArtifactError(f"target {module!r} has invalid metadata: {err!r}") from err
    return target


def _count(value: object, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    """The LoRA settings leanfit reads from ``adapter/adapter_config.json``, checked.

    Only ``r`` (int >= 1), ``lora_alpha`` (finite number > 0) and ``target_modules`` (a
    list of module names) are read; the other fields are PEFT's, which leanfit always
    writes with their defaults and never passes on (a field such as ``megatron_core``
    would make PEFT import the module it names).

    Raises
    ------
    CorruptArtifactError
        The file is missing, unreadable, or a field is missing or of the wrong type.
    """
    path = adapter / ADAPTER_CONFIG
    config = read_json(path)
    if not isinstance(config, dict):
        raise CorruptArtifactError(f"{str(path)!r} is not a LoRA adapter config (a JSON object)")
    rank, alpha, modules = (config.get(k) for k in ("r", "lora_alpha", "target_modules"))
    alpha_ok = (
        isinstance(alpha, int | float)
        and not isinstance(alpha, bool)
        and math.isfinite(alpha)
        and alpha > 0
    )
    if not _count(rank) or not alpha_ok:
        raise CorruptArtifactError(
            f"{str(path)!r} must hold r (an int >= 1) and lora_alpha (a number > 0); "
            f"got r={rank!r}, lora_alpha={alpha!r}"
        )
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise CorruptArtifactError(
            f"{str(path)!r}: target_modules must be a list of module names; got {modules!r}"
        )
    return {"r": rank, "lora_alpha": alpha, "target_modules": modules}


class _KeyMap:
    """Stored names ↔ the model's state-dict names, which may add or drop the base-model
    prefix (``bert.``, ``model.``) when the model class differs from the saved one."""

    def __init__(self, stored_targets: Iterable[str], model_keys: set[str], prefix: str) -> None:
        stored = list(stored_targets)
        self.add = self.strip = ""
        if all(name in model_keys for name in stored):
            return
        if prefix and all(f"{prefix}.{name}" in model_keys for name in stored):
            self.add = prefix + "."
        elif prefix and all(
            name.startswith(prefix + ".") and name[len(prefix) + 1 :] in model_keys
            for name in stored
        ):
            self.strip = prefix + "."
        else:
            absent = [name for name in stored if name not in model_keys][:3]
            raise CorruptArtifactError(
                f"the backbone's targets {absent} are not weights of the model built "
                f"(e.g. {sorted(model_keys)[:3]}); the artifact does not match the model class"
            )

    def __call__(self, name: str) -> str | None:
        """The model's name of a stored name; None for a tensor outside the model (a head
        dropped when loading the base model of a saved task model)."""
        if self.strip:
            return name[len(self.strip) :] if name.startswith(self.strip) else None
        return self.add + name

    def of_target(self, name: str) -> str:
        """The model's name of a target (always inside the model: checked at construction)."""
        renamed = self(name)
        if renamed is None:
            raise CorruptArtifactError(f"target {name!r} is outside the model built")
        return renamed

    def peft_mapping(self) -> dict[str, str] | None:
        """PEFT's ``key_mapping`` (regex → replacement on keys without ``base_model.model.``)."""
        if self.add:
            return {"^": self.add}
        if self.strip:
            return {"^" + self.strip.replace(".", r"\."): ""}
        return None


def _prefix(model: nn.Module) -> str:
    """transformers' ``base_model_prefix`` (``bert``, ``model``, ``transformer``), or ``""``."""
    return str(getattr(model, "base_model_prefix", "") or "")


def _swap_quantized_linears(
    model: nn.Module, targets: dict[str, Target], keys: _KeyMap, meta: dict[str, Any]
) -> None:
    """Replace each linear target by an all-zero :class:`QuantLinear` skeleton (no float weight)."""
    for module_name, target in targets.items():
        if target.kind != "linear":
            continue
        name = keys.of_target(target.module)
        original = model.get_submodule(name)
        weight = getattr(original, "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != target.shape:
            raise CorruptArtifactError(
                f"target {module_name!r} has shape {target.shape}; the model built has "
                f"{None if weight is None else tuple(weight.shape)} there"
            )
        n_out, n_in = target.matrix_shape
        quant = meta["targets"][module_name]["quantized"]
        layer = QuantLinear(
            n_in,
            n_out,
            getattr(original, "bias", None) is not None,
            bits=quant["bits"],
            method=quant["method"],
            block_size=quant["block_size"],
            double_quant=quant["double_quant"],
        )
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)


def _shards(backbone: Path) -> list[Path]:
    return sorted(set(_weight_map(backbone).values()))


def _decode_convs(
    tensors: dict[str, torch.Tensor], targets: dict[str, Target], meta: dict[str, Any]
) -> None:
    """Replace the packed tensors of convolution targets by their dequantized kernel
    (convolutions have no quantized module: they run dequantized)."""
    for module_name, target in targets.items():
        if target.kind == "conv" and f"{module_name}.packed" in tensors:
            quant = meta["targets"][module_name]["quantized"]
            q = QuantizedTensor.from_state_dict(tensors, module_name + ".", quant)
            for key in q.to_state_dict(module_name + "."):
                del tensors[key]
            tensors[target.name] = restore_shape(q.dequantize(), target)


def _check_adapter(adapter: Path, targets: dict[str, Target]) -> None:
    """The adapter holds exactly lora_A/lora_B of every target, in PEFT's shapes."""
    config_path, weights = adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights.is_file():
        raise CorruptArtifactError(
            f"adapter {str(adapter)!r} must hold {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        )
    config = read_adapter_config(adapter)
    rank, modules = config["r"], config["target_modules"]
    if sorted(modules) != sorted(targets):
        raise CorruptArtifactError(
            f"{str(config_path)!r} targets {len(modules)} modules, the backbone {len(targets)}: "
            f"e.g. {sorted(set(modules) ^ set(targets))[:3]} differ"
        )
    expected = {}
    for module, target in targets.items():
        shape_a, shape_b = lora_shapes_for_peft(target, rank)
        expected[f"{PEFT_PREFIX}{module}.lora_A.weight"] = shape_a
        expected[f"{PEFT_PREFIX}{module}.lora_B.weight"] = shape_b
    try:
        with safe_open(weights, framework="pt") as handle:
            stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except SafetensorError as err:
        raise CorruptArtifactError(f"cannot read {str(weights)!r}: {err}") from err
    if set(stored) != set(expected):
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        raise CorruptArtifactError(
            f"{str(weights)!r} must hold lora_A and lora_B of each target; "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    wrong = [(n, stored[n], shape) for n, shape in expected.items() if stored[n] != tuple(shape)]
    if wrong:
        name, got, shape = wrong[0]
        raise CorruptArtifactError(
            f"adapter tensor {name!r} must have shape {tuple(shape)} (r={rank}); got {got} "
            f"({len(wrong)} tensors have wrong shapes)"
        )


def _retie(model: nn.Module, tied: dict[str, str], keys: _KeyMap) -> set[str]:
    """Make every alias parameter the stored one again (assign-loading replaced the stored
    ones); returns the aliases handled."""
    done = set()
    for alias, stored in tied.items():
        alias_name, stored_name = keys(alias), keys(stored)
        if alias_name is None or stored_name is None:
            continue
        owner, _, attr = alias_name.rpartition(".")
        try:
            module = model.get_submodule(owner)
            parameter = model.get_parameter(stored_name)
        except AttributeError:
            continue
        setattr(module, attr, parameter)
        done.add(alias_name)
    return done


def _initialize(model: nn.Module, names: Iterable[str]) -> None:
    """Materialize and initialize the modules owning parameters the backbone lacks (a new task
    head), with the model's own initializer (transformers' ``_init_weights``) if it has one."""
    model_init = getattr(model, "_init_weights", None)
    for owner in sorted({name.rpartition(".")[0] for name in names}):
        module = model.get_submodule(owner)
        module.to_empty(device="cpu", recurse=False)
        reset = getattr(module, "reset_parameters", None)
        if callable(model_init):
            model_init(module)
        elif callable(reset):
            reset()
        else:
            raise BadInputError(f"module {owner!r} is not in the backbone and has no initializer")


def load_into(
    model: nn.Module,
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    is_trainable: bool = False,
) -> PeftModel:
    """Load a LoftQ output into a model skeleton and attach its LoRA adapter.

    Linear targets (GPT-2 ``Conv1D`` included) are replaced by :class:`QuantLinear` modules
    holding the packed Q; convolution targets get their dequantized kernel (they run in full
    precision); every other tensor is assigned from the backbone, shard by shard. Parameters
    of ``model`` may live on the meta device: they are replaced, never copied into.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture of the quantized model (e.g. a fresh instance); changed in place.
    directory : str or Path
        Output of :func:`leanfit.quantization.quantize_checkpoint` or ``quantize_module``.
    device, dtype
        Where the model goes and the dtype of its floating tensors (the packed codes and the
        float32 quantization statistics keep theirs).
    is_trainable : bool
        Passed to ``PeftModel.from_pretrained``: LoRA weights trainable (for fine-tuning).

    Raises
    ------
    BadInputError
        ``directory`` is not a leanfit LoftQ output.
    CorruptArtifactError
        A newer or invalid format, missing shards or tensors, or an adapter whose targets or
        shapes do not match the backbone, or a parameter of ``model`` the backbone lacks.
    """
    return _load_into(model, Path(directory), device, dtype, is_trainable, head_prefix=None)


def _load_into(
    model: nn.Module,
    directory: Path,
    device: torch.device | str,
    dtype: torch.dtype,
    is_trainable: bool,
    head_prefix: str | None,
) -> PeftModel:
    """:func:`load_into`; with ``head_prefix`` (the base model's, e.g. ``"bert."``) for a model
    class other than the saved one: parameters missing from the backbone and outside that
    prefix (a new task head) are initialized, and backbone tensors outside it (the saved
    model's head) are dropped with a warning, instead of both being refused."""
    from peft import LoraConfig, PeftModel

    if not isinstance(model, nn.Module):
        raise bad_value("model", type(model).__name__, "a torch.nn.Module")
    meta = read_quantization_config(directory)
    targets = {module: _target(module, entry) for module, entry in meta["targets"].items()}
    _check_adapter(directory / ADAPTER, targets)
    keys = _KeyMap([t.name for t in targets.values()], set(model.state_dict()), _prefix(model))
    _swap_quantized_linears(model, targets, keys, meta)
    expected = set(model.state_dict())
    buffers = {name for name, _ in model.named_buffers()}
    loaded: set[str] = set()
    dropped: list[str] = []
    for shard in _shards(directory / BACKBONE):
        tensors = load_file(shard)
        _decode_convs(tensors, targets, meta)
        renamed = {}
        for name, tensor in tensors.items():
            new = keys(name)
            if new in expected:
                renamed[new] = tensor
            elif new is None or (head_prefix is not None and not new.startswith(head_prefix)):
                dropped.append(name)  # a head of the saved model that the model built lacks
            elif new not in buffers:  # e.g. position_ids, a non-persistent buffer today
                raise CorruptArtifactError(
                    f"backbone tensor {name!r} ({shard.name}) is not in the model built "
                    f"({type(model).__name__})"
                )
        try:
            model.load_state_dict(renamed, strict=False, assign=True)
        except RuntimeError as err:
            raise CorruptArtifactError(
                f"backbone shard {shard.name} does not fit the model: {err}"
            ) from err
        loaded |= set(renamed)
        del tensors, renamed
    if dropped:
        logger.warning(
            "%d backbone tensors outside the model are not loaded, e.g. %s",
            len(dropped),
            dropped[:3],
        )
    missing = expected - loaded - _retie(model, meta["tied"], keys)
    if head_prefix is not None:
        head = {n for n in missing if not n.startswith(head_prefix)}
        _initialize(model, head)
        missing -= head
    if missing:
        raise CorruptArtifactError(
            f"the backbone lacks {len(missing)} tensors of the model, e.g. {sorted(missing)[:3]}"
        )
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta:
        raise CorruptArtifactError(f"parameters {on_meta[:3]} were not loaded from the backbone")
    model.to(dtype=dtype)
    saved = read_adapter_config(directory / ADAPTER)
    lora = LoraConfig(
        r=saved["r"],
        lora_alpha=saved["lora_alpha"],
        target_modules=sorted(keys.of_target(module) for module in targets),  # model's names
        task_type=_peft_task_type(type(model).__name__),  # the model built, maybe another
        lora_dropout=0.0,
        bias="none",
    )
    # PEFT's key_mapping (recent releases) only for a model class other than the saved one.
    mapping: dict[str, Any] = {"key_mapping": keys.peft_mapping()} if keys.peft_mapping() else {}
    with reuse_dequantized_weight():  # PEFT reads each layer's weight ~20 times
        peft_model = PeftModel.from_pretrained(
            model,
            str(directory / ADAPTER),
            is_trainable=is_trainable,
            config=lora,
            **mapping,
        )
    return peft_model.to(device)


def _model_class(config: Any, task: str, architecture: str | None) -> Any:
    import transformers

    autos = {
        "causal-lm": transformers.AutoModelForCausalLM,
        "base": transformers.AutoModel,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
    }
    if task != "auto":
        return autos[task]
    cls = getattr(transformers, architecture or "", None)
    return cls if cls is not None else transformers.AutoModel


def load(
    directory: str | Path,
    *,
    task: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    num_labels: int | None = None,
    is_trainable: bool = False,
) -> PeftModel:
    """Load a LoftQ output as a PEFT model on a packed low-bit backbone.

    The transformers model is built from ``backbone/config.json`` with its parameters on the
    meta device (no full-precision weights are allocated), the targets are swapped for
    :class:`QuantLinear` and every tensor is loaded from the backbone (:func:`load_into`);
    then ``PeftModel.from_pretrained`` attaches ``adapter/``. Each target then computes
    ``x·(Q + (alpha/r)·lora_B·lora_A)ᵀ + b``.

    Parameters
    ----------
    directory : str or Path
        Output of :func:`leanfit.quantization.quantize_checkpoint`.
    task : {"auto", "causal-lm", "base", "sequence-classification"}
        ``"auto"``: the saved architecture (``config.architectures[0]``); the others use
        ``AutoModelForCausalLM``, ``AutoModel`` or ``AutoModelForSequenceClassification``.
        A head the backbone lacks (the classifier) is freshly initialized.
    device, dtype
        Where the model goes and the dtype of its floating tensors.
    num_labels : int, optional
        Labels of a sequence-classification head.
    is_trainable : bool
        LoRA weights trainable (for fine-tuning).

    Raises
    ------
    BadInputError
        Not a leanfit output, or an invalid argument.
    CorruptArtifactError
        No ``config.json``, a newer or invalid format, missing tensors, or an adapter that
        does not match the backbone.
    """
    import transformers
    from accelerate import init_empty_weights

    if task not in TASKS:
        raise bad_value("task", task, f"one of {TASKS}")
    if num_labels is not None and (
        isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1
    ):
        raise bad_value("num_labels", num_labels, "an int >= 1, or None")
    directory = Path(directory)
    meta = read_quantization_config(directory)
    backbone = directory / BACKBONE
    if not (backbone / "config.json").is_file():
        raise CorruptArtifactError(
            f"{str(backbone)!r} has no config.json: it was written from a plain torch module "
            "(quantize_module); load it with load_into(model, directory)"
        )
    config = transformers.AutoConfig.from_pretrained(backbone)
    if num_labels is not None:
        config.num_labels = num_labels
    cls = _model_class(config, task, meta.get("architecture"))
    with init_empty_weights():
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    head_prefix = _prefix(model) + "." if task != "auto" and _prefix(model) else None
    return _load_into(model, directory, device, dtype, is_trainable, head_prefix)


def _weight_map(backbone: Path) -> dict[str, Path]:
    """Backbone tensor name → its shard file, from the index (every shard checked to exist)."""
    index = backbone / INDEX_FILE
    try:
        weight_map = read_json(index)["weight_map"]
        paths = {name: backbone / file for name, file in weight_map.items()}
    except (KeyError, TypeError, AttributeError) as err:
        raise CorruptArtifactError(f"{str(index)!r} is missing or invalid: {err}") from err
    outside = sorted({p.name for p in paths.values()} - set(map(str, weight_map.values())))
    if outside:
        raise CorruptArtifactError(
            f"{str(index)!r} must map tensor names to shard files in {str(backbone)!r}; "
            f"got paths {outside[:3]}"
        )
    missing = sorted({p.name for p in paths.values() if not p.is_file()})
    if missing:
        raise CorruptArtifactError(
            f"backbone shards {missing} listed in {str(index)!r} are missing"
        )
    return paths


def merge_into(model: nn.Module, directory: str | Path) -> nn.Module:
    """Set every target weight of a full-precision model to ``Q + (alpha/r)·lora_B·lora_A``.

    The merged LoftQ initialization, computed from the files without PEFT or
    :class:`QuantLinear`: the reference of what :func:`load` computes, and a way to evaluate
    the initialization in full precision. Stored layouts are restored (GPT-2 ``Conv1D``
    transposed, convolution kernels reshaped). Tensors other than the target weights are not
    touched.

    Parameters
    ----------
    model : torch.nn.Module
        The model the output was made from (same architecture), in any float dtype;
        changed in place.
    directory : str or Path
        A LoftQ output directory.

    Returns
    -------
    torch.nn.Module
        ``model``.
    """
    directory = Path(directory)
    meta = read_quantization_config(directory)
    targets = {module: _target(module, entry) for module, entry in meta["targets"].items()}
    _check_adapter(directory / ADAPTER, targets)
    adapter = load_file(directory / ADAPTER / ADAPTER_WEIGHTS)
    lora = read_adapter_config(directory / ADAPTER)
    scaling = lora["lora_alpha"] / lora["r"]
    weight_map = _weight_map(directory / BACKBONE)
    keys = _KeyMap([t.name for t in targets.values()], set(model.state_dict()), _prefix(model))
    for module, target in targets.items():
        quant = meta["targets"][module]["quantized"]
        tensors = {}
        for name, path in weight_map.items():
            if name.rpartition(".")[0] == module and name != module + ".bias":
                with safe_open(path, framework="pt") as handle:
                    tensors[name] = handle.get_tensor(name)
        q = QuantizedTensor.from_state_dict(tensors, module + ".", quant)
        lora_a = adapter[f"{PEFT_PREFIX}{module}.lora_A.weight"].flatten(1)
        lora_b = adapter[f"{PEFT_PREFIX}{module}.lora_B.weight"].flatten(1)
        merged = restore_shape(q.dequantize() + scaling * (lora_b @ lora_a), target)
        weight = model.get_parameter(keys.of_target(target.name))
        with torch.no_grad():
            weight.copy_(merged.to(weight.dtype))
    return model
