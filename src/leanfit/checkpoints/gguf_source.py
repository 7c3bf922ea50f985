"""Read a llama.cpp GGUF file tensor by tensor, in transformers' names and layout.

Tensors are renamed to the names transformers uses, dequantized (Q4_1, Q8_0, Q6_K, ...
through ``gguf.quants``), given back in the Hugging Face (out × in) layout, and — for the
``llama`` architecture — un-permuted from llama.cpp's rotary row order
(:func:`unpermute_rotary`). The header is walked with bounds checks
(:func:`check_gguf_layout`) before gguf-py parses it: the file is untrusted input.
"""

from __future__ import annotations

import mmap
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from leanfit.checkpoints.base import (
    Checkpoint,
    ModelStructure,
    guarded,
    load_config,
    meta_model,
    model_structure,
)
from leanfit.exceptions import (
    BadInputError,
    CorruptArtifactError,
)

GGUF_ARCHITECTURES = {"llama": True, "qwen2": False, "qwen3": False}
"""GGUF ``general.architecture`` values read, and whether their q/k rows are rotary-permuted.

llama.cpp's converter reorders the rows of q_proj and k_proj for the ``llama`` architecture
(which also covers Mistral and SmolLM checkpoints); Qwen2/Qwen3 are stored unpermuted.
"""

GGUF_IGNORED = frozenset({"rope_freqs.weight"})
"""GGUF tensors with no transformers parameter (transformers recomputes them from config)."""

GGUF_MAX_DIMS = 4
"""Most dimensions a GGUF tensor may have (ggml's ``GGML_MAX_DIMS``)."""
GGUF_MAX_NESTING = 3
"""Deepest nesting of arrays accepted in a GGUF header value."""
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY, _GGUF_UINT32 = 8, 9, 4


class GGUFCheckpoint(Checkpoint):
    """A llama.cpp GGUF file (memory-mapped), read in transformers' names and layout."""

    def __init__(self, file: Path) -> None:
        from gguf import GGUFReader

        check_gguf_layout(file)
        reader = guarded(file, "parse it", GGUFReader, file)
        architecture = guarded(
            file, "read its architecture", _gguf_text, reader, "general.architecture"
        )
        has_tokenizer = _gguf_text(reader, "tokenizer.ggml.model") is not None
        # The tensors keep views on the memory map; the parsed header (the tokenizer's
        # vocabulary: ~150 MB of small arrays for a 49k-token vocabulary) is let go.
        tensors = list(reader.tensors)
        del reader
        if architecture not in GGUF_ARCHITECTURES:
            raise BadInputError(
                f"GGUF architecture must be one of {sorted(GGUF_ARCHITECTURES)}; got "
                f"{architecture!r} in {str(file)!r}"
            )
        config = load_config(file.parent, file, gguf_file=file.name)
        layers = getattr(config, "num_hidden_layers", None)
        if not isinstance(layers, int) or not 1 <= layers <= len(tensors):
            raise CorruptArtifactError(
                f"GGUF file {str(file)!r} declares {layers!r} blocks for {len(tensors)} tensors"
            )
        super().__init__(file, config)
        model = guarded(
            file,
            "build the model it describes",
            meta_model,
            AutoModelForCausalLM.from_config,
            config,
        )
        hf_names = gguf_to_hf_names(architecture, layers, model.state_dict().keys())
        self._permuted = GGUF_ARCHITECTURES[architecture]
        self._has_tokenizer = has_tokenizer
        self._tensors: dict[str, Any] = {}
        self._gguf_names: dict[str, str] = {}
        unmapped = []
        for tensor in tensors:
            if tensor.name in hf_names:
                self._tensors[hf_names[tensor.name]] = tensor
                self._gguf_names[hf_names[tensor.name]] = tensor.name
            elif tensor.name not in GGUF_IGNORED:
                unmapped.append(tensor.name)
        if unmapped:
            warnings.warn(
                f"{len(unmapped)} GGUF tensors have no transformers name and are skipped: "
                f"{unmapped[:5]}",
                stacklevel=3,
            )
        self._opened_structure = model_structure(model, self._tensors)

    def _build_structure(self) -> ModelStructure:
        return self._opened_structure  # the model was built at opening, to name the tensors

    def save_config_and_tokenizer(self, out_dir: str | Path) -> list[Path]:
        self._check_open()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(out_dir)
        if not self._has_tokenizer:
            warnings.warn(
                f"GGUF file {str(self.path)!r} holds no tokenizer; only config.json is written",
                stacklevel=2,
            )
            return [out_dir / "config.json"]
        saved = self.tokenizer().save_pretrained(out_dir)
        return sorted({out_dir / "config.json", *(Path(name) for name in saved)})

    def tokenizer(self) -> Any:
        self._check_open()
        if not self._has_tokenizer:
            raise BadInputError(f"GGUF file {str(self.path)!r} holds no tokenizer")
        return guarded(
            self.path,
            "read its tokenizer",
            AutoTokenizer.from_pretrained,
            self.path.parent,
            gguf_file=self.path.name,
            trust_remote_code=False,
        )

    def _stored_names(self) -> dict[str, Any]:
        return self._tensors

    def _shape(self, name: str) -> tuple[int, ...]:
        # GGUF lists dimensions fastest-first (ggml's ne order): reversed, they are the
        # row-major shape transformers uses.
        return tuple(int(n) for n in reversed(self._tensors[name].shape))

    def _read(self, name: str) -> torch.Tensor:
        from gguf.quants import dequantize

        tensor = self._tensors[name]
        values = guarded(
            self.path,
            f"dequantize {name!r}",
            lambda: np.reshape(dequantize(tensor.data, tensor.tensor_type), self._shape(name)),
        )
        if np.may_share_memory(values, tensor.data):
            values = values.copy()  # an unquantized tensor is a view of the read-only map
        weight = torch.from_numpy(values)
        gguf_name = self._gguf_names[name]
        if self._permuted and ".attn_q." in gguf_name:
            weight = unpermute_rotary(weight, self.config.num_attention_heads)
        elif self._permuted and ".attn_k." in gguf_name:
            kv_heads = self.config.num_key_value_heads or self.config.num_attention_heads
            weight = unpermute_rotary(weight, kv_heads)
        return weight

    def _release(self) -> None:
        self._tensors = {}


class _GGUFDamage(Exception):
    """An inconsistency in a GGUF header (the message omits the file name)."""


class _Cursor:
    """Bounds-checked reads from a GGUF header (little- or big-endian)."""

    def __init__(self, data: mmap.mmap | bytes, path: Path) -> None:
        self.data, self.path, self.pos, self.order = data, path, 0, "<"

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or size > self.left:
            raise _GGUFDamage(
                f"truncated or damaged: {what} at byte "
                f"{self.pos} needs {size:,} bytes, {self.left:,} remain"
            )
        self.pos += size
        return bytes(self.data[self.pos - size : self.pos])

    def uint(self, size: int, what: str) -> int:
        code = {4: "I", 8: "Q"}[size]
        return int(struct.unpack(self.order + code, self.take(size, what))[0])

    def count(self, what: str, min_item: int) -> int:
        """A uint64 count of items of at least ``min_item`` bytes each, checked to fit."""
        n = self.uint(8, what)
        if n * min_item > self.left:
            raise _GGUFDamage(f"damaged: {what} is {n:,}, but only {self.left:,} bytes follow")
        return n

    def string(self, what: str) -> str:
        raw = self.take(self.count(f"length of {what}", 1), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _GGUFDamage(f"damaged: {what} is not UTF-8 ({err})") from err

    def skip_value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind in _GGUF_SCALAR_SIZES:
            self.take(_GGUF_SCALAR_SIZES[kind], what)
        elif kind == _GGUF_STRING:
            self.take(self.count(f"length of {what}", 1), what)
        elif kind == _GGUF_ARRAY and depth < GGUF_MAX_NESTING:
            item = self.uint(4, f"item type of {what}")
            size = _GGUF_SCALAR_SIZES.get(item)
            n = self.count(f"length of {what}", size or 8)
            if size is not None:
                self.take(n * size, what)
            else:
                for _ in range(n):
                    self.skip_value(item, what, depth + 1)
        else:
            raise _GGUFDamage(
                f"damaged: {what} has value type {kind} "
                f"(known: 0-12, arrays nested at most {GGUF_MAX_NESTING} deep)"
            )


def check_gguf_layout(path: Path) -> None:
    """Walk a GGUF file's header with bounds checks, before gguf-py parses it.

    Checks the magic and version, that every count and length fits in the bytes that
    follow, that value types are known, that each tensor has at most
    :data:`GGUF_MAX_DIMS` dimensions, a known storage type, whole blocks, and data inside
    the file. gguf-py trusts these numbers: an array length of 2**63 would keep it
    looping, a tensor past the end of the file would fail deep inside numpy.

    Raises
    ------
    CorruptArtifactError
        The first inconsistency found, with its byte offset.
    """
    try:
        _walk_gguf(path)
    except _GGUFDamage as err:
        raise CorruptArtifactError(f"cannot read GGUF file {str(path)!r}: {err}") from err


def _walk_gguf(path: Path) -> None:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with path.open("rb") as handle:
        size = path.stat().st_size
        if size < 24:
            raise _GGUFDamage(f"truncated: {size} bytes")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cursor = _Cursor(data, path)
            if cursor.take(4, "magic") != b"GGUF":
                raise _GGUFDamage("not a GGUF file (bad magic)")
            version = cursor.uint(4, "version")
            if version & 0xFFFF == 0:
                cursor.order = ">"
                version = int.from_bytes(version.to_bytes(4, "little"), "big")
            if version not in (2, 3):
                raise _GGUFDamage(f"version {version}; versions 2 and 3 are read")
            n_tensors = cursor.count("tensor count", 24)
            n_fields = cursor.count("metadata count", 13)
            alignment = 32
            for index in range(n_fields):
                key = cursor.string(f"metadata key {index}")
                kind = cursor.uint(4, f"type of {key!r}")
                start = cursor.pos
                cursor.skip_value(kind, f"value of {key!r}")
                if key == "general.alignment" and kind == _GGUF_UINT32:
                    alignment = int.from_bytes(data[start : start + 4], "little")
                    if cursor.order == ">":
                        alignment = int.from_bytes(data[start : start + 4], "big")
            if alignment <= 0 or alignment & (alignment - 1):
                raise _GGUFDamage(f"alignment {alignment}, not a power of two")
            extents = []
            for index in range(n_tensors):
                name = cursor.string(f"name of tensor {index}")
                n_dims = cursor.uint(4, f"dimension count of {name!r}")
                if not 1 <= n_dims <= GGUF_MAX_DIMS:
                    raise _GGUFDamage(
                        f"tensor {name!r} has {n_dims} dimensions (1 to {GGUF_MAX_DIMS} allowed)"
                    )
                dims = [cursor.uint(8, f"dimensions of {name!r}") for _ in range(n_dims)]
                kind = cursor.uint(4, f"storage type of {name!r}")
                offset = cursor.uint(8, f"data offset of {name!r}")
                try:
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
                except (ValueError, KeyError) as err:
                    raise _GGUFDamage(f"tensor {name!r} has unknown storage type {kind}") from err
                if dims[0] % block:
                    raise _GGUFDamage(
                        f"tensor {name!r}: first dimension {dims[0]} "
                        f"is not a whole number of blocks of {block}"
                    )
                elements = 1
                for dim in dims:
                    elements *= dim
                extents.append((name, offset, elements // block * type_size))
            data_start = -(-cursor.pos // alignment) * alignment
            for name, offset, nbytes in extents:
                if data_start + offset + nbytes > size:
                    raise _GGUFDamage(
                        f"truncated or damaged: tensor {name!r} "
                        f"claims {nbytes:,} bytes at byte {data_start + offset:,}, beyond the "
                        f"end of the file ({size:,} bytes)"
                    )


def _gguf_text(reader: Any, key: str) -> str | None:
    """A string field of a GGUF header, or None when absent."""
    field = reader.fields.get(key)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def gguf_to_hf_names(architecture: str, num_layers: int, hf_names: Iterable[str]) -> dict[str, str]:
    """Map GGUF tensor names to transformers names, e.g. ``blk.3.attn_q.weight`` →
    ``model.layers.3.self_attn.q_proj.weight``.

    gguf-py's table maps every known transformers module name to the GGUF name; applied to
    the parameter names of the model transformers builds for the config, it gives the
    inverse map.

    Parameters
    ----------
    architecture : str
        GGUF ``general.architecture`` (e.g. ``"llama"``).
    num_layers : int
        Number of transformer blocks.
    hf_names : iterable of str
        State-dict keys of the transformers model (``....weight`` / ``....bias``).
    """
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next(key for key, value in MODEL_ARCH_NAMES.items() if value == architecture)
    table = get_tensor_name_map(arch, num_layers)
    mapping = {}
    for hf_name in hf_names:
        module, _, suffix = hf_name.rpartition(".")
        gguf_module = table.get_name(module)
        if gguf_module is not None:
            mapping[f"{gguf_module}.{suffix}"] = hf_name
    return mapping


def unpermute_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's rotary row order of a q or k projection (weight or bias).

    transformers' rotary embedding rotates row ``j`` of each head together with row
    ``j + d/2`` (``rotate_half``); llama.cpp pairs adjacent rows instead, so its converter
    interleaves the two halves of each head. With head size ``d``, head ``h``, ``j < d/2`` and
    ``s ∈ {0, 1}``::

        hf[h·d + s·d/2 + j] = gguf[h·d + 2j + s]

    Parameters
    ----------
    weight : Tensor, shape (n_heads·d, ...)
        The GGUF-ordered rows.
    n_heads : int
        Number of heads of this projection (``num_key_value_heads`` for k).

    Returns
    -------
    Tensor, same shape
        The rows in transformers' order.
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise CorruptArtifactError(
            f"a rotary projection with {rows} rows cannot split into {n_heads} heads of even size"
        )
    half = rows // n_heads // 2
    tail = weight.shape[1:]
    return weight.reshape(n_heads, half, 2, *tail).transpose(1, 2).reshape(weight.shape)
