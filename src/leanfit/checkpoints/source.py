"""Stream a pretrained checkpoint tensor by tensor, in Hugging Face names and layout.

A quantizer needs one weight matrix at a time, so a checkpoint is never loaded whole: the
files are memory-mapped and :meth:`Checkpoint.read` materializes one tensor (as float32) on
demand. Two formats are read:

- a transformers directory: ``config.json`` plus ``model.safetensors``, or sharded
  ``model-0000i-of-0000n.safetensors`` files listed in ``model.safetensors.index.json``;
- a ``.gguf`` file (llama.cpp), read by :mod:`leanfit.checkpoints.gguf_source`.

Pickle checkpoints (``pytorch_model.bin``, ``.pt``, ...) are always refused, with no opt-in:
unpickling can run arbitrary code. Code shipped with a checkpoint (``auto_map`` in its
config) is never run: transformers is called with ``trust_remote_code=False``.

Files are untrusted input. Whatever their bytes, opening and reading raise only
:class:`~leanfit.exceptions.LeanfitError` subclasses (a damaged file gives
:class:`~leanfit.exceptions.CorruptArtifactError`), and memory stays bounded by the file's
size: safetensors checks its header's offsets against the file size, and a GGUF header
is walked with bounds checks before gguf-py parses it.
Tensor names are only ever dictionary keys, never file paths.

Names follow what ``save_pretrained`` would store: a weight tied to another one (the
``lm_head`` of a model with ``tie_word_embeddings``) is not listed by :meth:`Checkpoint.names`
but is reported in :attr:`Checkpoint.tied` and can still be read under its own name.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer

from leanfit.checkpoints.base import (
    Checkpoint,
    ModelStructure,
    guarded,
    load_config,
    meta_model,
    model_structure,
)
from leanfit.checkpoints.gguf_source import GGUFCheckpoint
from leanfit.exceptions import (
    BadInputError,
    CorruptArtifactError,
    MissingResourceError,
)
from leanfit.io import read_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""File suffixes of pickle-based checkpoints, which are refused."""

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece*.model",
    "chat_template.*",
)
"""Glob patterns of the tokenizer files copied from a transformers directory."""


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint for streaming reads.

    Parameters
    ----------
    path : str or Path
        A transformers directory (``config.json`` plus ``model.safetensors`` or sharded
        safetensors with ``model.safetensors.index.json``) or a ``.gguf`` file.

    Returns
    -------
    Checkpoint
        Use it as a context manager, or call :meth:`Checkpoint.close`.

    Raises
    ------
    MissingResourceError
        ``path`` does not exist.
    BadInputError
        A pickle checkpoint, a file of another kind, a directory without config.json or
        safetensors weights, or an unsupported GGUF architecture.
    CorruptArtifactError
        A safetensors or GGUF file that cannot be parsed, or an index that does not match
        its shards.
    """
    path = Path(path)
    if not path.exists():
        raise MissingResourceError(f"checkpoint {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix == ".gguf":
            return GGUFCheckpoint(path)
        if path.suffix in PICKLE_SUFFIXES:
            raise _pickle_refused(path)
        raise BadInputError(
            "checkpoint must be a transformers directory (config.json + safetensors) or a "
            f".gguf file; got the file {str(path)!r}"
        )
    return SafetensorsCheckpoint(path)


class SafetensorsCheckpoint(Checkpoint):
    """A transformers directory with one or several safetensors files (memory-mapped)."""

    def __init__(self, directory: Path) -> None:
        files, listed = _safetensors_files(directory)
        config = load_config(directory, directory / "config.json")
        super().__init__(directory, config)
        self._handles: dict[str, Any] = {}
        self._files: dict[str, Path] = {}
        for file in files:
            try:
                handle = safe_open(file, framework="pt")
            except SafetensorError as err:
                raise CorruptArtifactError(f"cannot read {str(file)!r}: {err}") from err
            for name in handle.offset_keys():
                if name in self._handles:
                    raise CorruptArtifactError(
                        f"tensor {name!r} is stored twice in {str(directory)!r}"
                    )
                self._handles[name] = handle
                self._files[name] = file
        if listed is not None and listed != set(self._handles):
            extra, absent = sorted(listed - set(self._handles)), sorted(set(self._handles) - listed)
            raise CorruptArtifactError(
                f"{INDEX_FILE} in {str(directory)!r} does not match its shards: listed but not "
                f"stored {extra[:5]}, stored but not listed {absent[:5]}"
            )

    def _build_structure(self) -> ModelStructure:
        config = self.config
        architectures = getattr(config, "architectures", None) or []
        name = architectures[0] if isinstance(architectures, list) and architectures else None
        build = (
            getattr(transformers, name, None)
            if isinstance(name, str)
            else transformers.AutoModel.from_config
        )
        buildable = not isinstance(build, type) or issubclass(build, transformers.PreTrainedModel)
        model = None
        if callable(build) and buildable:  # never a class transformers lacks (its own code)
            model = guarded(self.path, "build the model it describes", meta_model, build, config)
        return model_structure(model, self._handles)

    def tokenizer(self) -> Any:
        self._check_open()
        if not any(p for pattern in TOKENIZER_FILES for p in self.path.glob(pattern)):
            raise BadInputError(f"checkpoint {str(self.path)!r} holds no tokenizer files")
        return guarded(
            self.path,
            "read its tokenizer",
            AutoTokenizer.from_pretrained,
            self.path,
            trust_remote_code=False,
        )

    def save_config_and_tokenizer(self, out_dir: str | Path) -> list[Path]:
        self._check_open()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        sources = {
            p for pattern in (*CONFIG_FILES, *TOKENIZER_FILES) for p in self.path.glob(pattern)
        }
        for source in sorted(sources):
            if source.is_file():
                written.append(Path(shutil.copy2(source, out_dir / source.name)))
        return written

    def _stored_names(self) -> dict[str, Any]:
        return self._handles

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[name].get_slice(name).get_shape())

    def _read(self, name: str) -> torch.Tensor:
        # get_tensor gives a view on the file's memory map: copy it (below). The map is opened
        # for this read and unmapped on return: the pages read through a long-lived map stayed
        # in the resident set, which then grew to the size of the checkpoint.
        try:
            with safe_open(self._files[name], framework="pt") as handle:
                tensor = handle.get_tensor(name)
        except (SafetensorError, RuntimeError, ValueError, OSError) as err:
            raise CorruptArtifactError(
                f"tensor {name!r} of {str(self.path)!r} cannot be read: {err}"
            ) from err
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            return tensor.float()
        return tensor.clone()

    def _release(self) -> None:
        self._handles = {}


def _pickle_refused(path: Path) -> BadInputError:
    return BadInputError(
        f"checkpoint {str(path)!r} is a pickle file, which leanfit does not load (unpickling can "
        "run arbitrary code); convert it to safetensors in an environment you trust, e.g. "
        "load it with transformers and save it with save_pretrained, which writes safetensors"
    )


def _safetensors_files(directory: Path) -> tuple[list[Path], set[str] | None]:
    """The weight files of a transformers directory in shard order, and the names its index
    lists (None without an index)."""
    if not (directory / "config.json").is_file():
        raise BadInputError(
            f"checkpoint directory {str(directory)!r} must contain config.json; "
            f"it has {sorted(p.name for p in directory.iterdir())}"
        )
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = read_json(index)["weight_map"]
            files = [directory / name for name in sorted(set(weight_map.values()))]
        except (KeyError, TypeError, AttributeError) as err:
            raise CorruptArtifactError(f"{str(index)!r} has no valid weight_map: {err}") from err
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CorruptArtifactError(f"{str(index)!r} lists missing shards {missing}")
        return files, set(weight_map)
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE], None
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise _pickle_refused(pickles[0])
    raise BadInputError(
        f"checkpoint directory {str(directory)!r} must contain {SINGLE_FILE} or {INDEX_FILE}; "
        f"it has {sorted(p.name for p in directory.iterdir())}"
    )
