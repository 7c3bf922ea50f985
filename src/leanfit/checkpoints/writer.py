"""Write the LoftQ output directory while the walker streams (:mod:`leanfit.checkpoints.layout`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from leanfit._version import __version__
from leanfit.checkpoints.base import TensorSource
from leanfit.checkpoints.layout import (
    ADAPTER,
    ADAPTER_WEIGHTS,
    BACKBONE,
    DEQUANTIZED,
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    LOFTQ_CONFIG,
    PEFT_PREFIX,
    QUANTIZATION_CONFIG,
    edit_json,
    final_shard_file,
    peft_task_type,
    shard_file,
    transformers_quantization_config,
    write_adapter_config,
)
from leanfit.checkpoints.resume import PartialRun
from leanfit.checkpoints.targets import Target, restore_shape
from leanfit.exceptions import LeanfitError, bad_value
from leanfit.io import write_durably, write_error
from leanfit.quantization.quantizers import QuantizedTensor
from leanfit.quantization.spec import LoraSpec

logger = logging.getLogger(__name__)


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
    from leanfit.checkpoints.gguf_source import GGUFCheckpoint

    config = getattr(source, "config", None)
    architectures = getattr(config, "architectures", None)
    if architectures:
        return str(architectures[0])
    if isinstance(source, GGUFCheckpoint):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(source.config)]
        return str(getattr(model_class, "__name__", "")) or None
    return None


class ArtifactWriter:
    """Collect what the walker produces and write the output directory, resumably.

    Use as a context manager: entering opens the output's partial run
    (:class:`leanfit.checkpoints.resume.PartialRun`: refusing an existing output without
    ``overwrite``, resuming or refusing an unfinished run), leaving renames the tree into
    place — or, after an error, keeps the partial run for ``--resume`` (interrupt, memory
    budget) or removes it (anything else). :meth:`finish` must be called before leaving.

    The walker gives every source tensor, in order, with its index and a JSON-able
    ``record`` (its report row); :meth:`needs` says which tensors an earlier process already
    finished. :attr:`records` are the records of all tensors, in order, after :meth:`close`.

    ``config`` is the run's configuration as a JSON object: written as ``loftq_config.json``
    and compared on resume; ``lora`` the LoRA setting the adapter config states.
    """

    def __init__(
        self,
        out_dir: str | Path,
        config: dict[str, Any],
        lora: LoraSpec,
        source: TensorSource,
        *,
        overwrite: bool,
        export_dequantized: bool,
        max_shard_bytes: int,
        resume: bool = False,
        identity: dict[str, Any] | None = None,
    ) -> None:

        self.config, self.lora, self.source = config, lora, source
        header = {
            **(identity or {}),
            "config": config,
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
            "targets": targets,
        }
        (self.root / BACKBONE / QUANTIZATION_CONFIG).write_text(
            json.dumps(quantization, indent=2) + "\n"
        )
        self._write_transformers_config(targets)
        if self.dequantized is not None:
            self.dequantized.close()
        self._write_adapter(sorted(targets))
        (self.root / LOFTQ_CONFIG).write_text(json.dumps(self.config, indent=2) + "\n")

    def finish(self, write_reports: Callable[[Path], None]) -> None:
        """Write the reports into the tree (after :meth:`close`) with ``write_reports(root)``;
        the directory is complete."""
        write_reports(self.root)
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

            edit_json(config_path, edit)

    def _write_transformers_config(self, targets: dict[str, dict[str, Any]]) -> None:
        """``quantization_config`` (quant_method ``"leanfit"``) in ``backbone/config.json``, so
        that transformers' ``from_pretrained`` loads the backbone packed (see
        :mod:`leanfit.checkpoints.hf`); a backbone without config.json is left as is."""
        config_path = self.root / BACKBONE / "config.json"
        if config_path.is_file():
            entry = transformers_quantization_config(targets)
            edit_json(config_path, lambda values: values.update(quantization_config=entry))

    def _write_adapter(self, modules: list[str]) -> None:
        alpha = self.lora.alpha
        directory = self.root / ADAPTER
        write_adapter_config(
            directory,
            rank=self.lora.rank,
            alpha=int(alpha) if float(alpha).is_integer() else alpha,
            target_modules=modules,
            task_type=peft_task_type(self.architecture),
        )
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
