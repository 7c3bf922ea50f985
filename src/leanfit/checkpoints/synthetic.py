"""Random llama-shaped checkpoints of any size, written without holding the model.

Load tests and memory benchmarks need checkpoints of several gigabytes with many tensors;
real ones of that size are not shipped. :func:`write_synthetic_llama` writes a transformers
directory (``config.json``, sharded safetensors, ``model.safetensors.index.json``) whose
tensors have the names and shapes of a ``LlamaForCausalLM`` and random values. The safetensors
files are written by hand, tensor by tensor and row block by row block, so the writer holds
at most :data:`CHUNK_VALUES` values at a time whatever the checkpoint's size.

Values: the weight matrices and the embeddings are i.i.d. ``N(0, std²)`` (``std = 0.02``,
the ``initializer_range`` transformers uses); the RMSNorm weights are ones. Each tensor is
drawn from its own generator seeded by ``(seed, position in the model)``, so its values do not
depend on the shard size.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from leanfit.checkpoints.layout import INDEX_FILE, final_shard_file
from leanfit.exceptions import bad_value
from leanfit.io import atomic_output

DTYPES = {"float32": (4, "F32"), "bfloat16": (2, "BF16")}
"""Storage dtypes: bytes per value and safetensors' name."""

CHUNK_VALUES = 2**22
"""Most values drawn at once (16 MB as float32)."""

INIT_STD = 0.02


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_value(name, value, "an int >= 1")
    return value


@dataclass(frozen=True)
class SyntheticLlama:
    """Shape of a llama checkpoint (untied embeddings, grouped-query attention).

    Parameters
    ----------
    hidden_size, intermediate_size, num_layers, vocab_size, num_heads, num_kv_heads : int
        As ``LlamaConfig``; ``hidden_size`` must be a multiple of ``num_heads`` and
        ``num_heads`` of ``num_kv_heads``.
    dtype : {"float32", "bfloat16"}
        Storage dtype.
    """

    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_layers: int = 4
    vocab_size: int = 8192
    num_heads: int = 16
    num_kv_heads: int = 4
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "vocab_size",
            "num_heads",
            "num_kv_heads",
        ):
            _positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_heads:
            raise bad_value("hidden_size", self.hidden_size, f"a multiple of {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise bad_value("num_kv_heads", self.num_kv_heads, f"a divisor of {self.num_heads}")
        if self.dtype not in DTYPES:
            raise bad_value("dtype", self.dtype, f"one of {sorted(DTYPES)}")

    @property
    def element_size(self) -> int:
        return DTYPES[self.dtype][0]

    def layer_shapes(self, index: int) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of block ``index`` (Hugging Face layout: a Linear is out × in)."""
        h, i = self.hidden_size, self.intermediate_size
        kv = h // self.num_heads * self.num_kv_heads
        prefix = f"model.layers.{index}."
        return [
            (prefix + "input_layernorm.weight", (h,)),
            (prefix + "self_attn.q_proj.weight", (h, h)),
            (prefix + "self_attn.k_proj.weight", (kv, h)),
            (prefix + "self_attn.v_proj.weight", (kv, h)),
            (prefix + "self_attn.o_proj.weight", (h, h)),
            (prefix + "post_attention_layernorm.weight", (h,)),
            (prefix + "mlp.gate_proj.weight", (i, h)),
            (prefix + "mlp.up_proj.weight", (i, h)),
            (prefix + "mlp.down_proj.weight", (h, i)),
        ]

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every tensor in model order: embeddings, the blocks, final norm, LM head."""
        shapes: list[tuple[str, tuple[int, ...]]] = [
            ("model.embed_tokens.weight", (self.vocab_size, self.hidden_size))
        ]
        for index in range(self.num_layers):
            shapes += self.layer_shapes(index)
        shapes += [
            ("model.norm.weight", (self.hidden_size,)),
            ("lm_head.weight", (self.vocab_size, self.hidden_size)),
        ]
        return shapes

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors in the storage dtype."""
        return self.element_size * sum(math.prod(s) for _, s in self.tensor_shapes())

    @classmethod
    def of_size(cls, total_bytes: int, **shape: object) -> SyntheticLlama:
        """The model with the given shape fields and as many blocks as make its size closest
        to ``total_bytes`` (at least one block)."""
        _positive_int("total_bytes", total_bytes)
        one = cls(**{**shape, "num_layers": 1})  # type: ignore[arg-type]
        two = cls(**{**shape, "num_layers": 2})  # type: ignore[arg-type]
        per_layer = two.nbytes - one.nbytes
        layers = max(1, round((total_bytes - one.nbytes) / per_layer) + 1)
        return cls(**{**shape, "num_layers": layers})  # type: ignore[arg-type]

    def config(self) -> dict[str, object]:
        """The ``config.json`` values (those of ``LlamaConfig``)."""
        from transformers import LlamaConfig

        config = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            tie_word_embeddings=False,
        )
        config.architectures = ["LlamaForCausalLM"]
        values = config.to_dict()
        values["dtype"] = self.dtype
        values.pop("torch_dtype", None)
        return values


def _plan_shards(
    shapes: list[tuple[str, tuple[int, ...]]], element_size: int, max_shard_bytes: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive tensors grouped into shards of at most ``max_shard_bytes`` (a tensor larger
    than that is a shard of its own)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = element_size * math.prod(shape)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _values(shape: tuple[int, ...], name: str, seed: int, position: int) -> Iterator[np.ndarray]:
    """The tensor's float32 values, block by block (flattened, row-major)."""
    total = math.prod(shape)
    generator = np.random.default_rng([seed, position])
    for start in range(0, total, CHUNK_VALUES):
        count = min(CHUNK_VALUES, total - start)
        if name.endswith("norm.weight"):
            yield np.ones(count, dtype=np.float32)
            continue
        chunk = generator.standard_normal(count, dtype=np.float32)
        chunk *= INIT_STD
        yield chunk


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of finite float32 values, rounded to nearest even: the
    top 16 bits of ``bits + 0x7FFF + (bit 16)`` (what ``torch.Tensor.to(torch.bfloat16)``
    gives for finite values)."""
    bits = values.astype(np.float32, copy=False).view(np.uint32).astype(np.uint64)
    bits += 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).astype(np.uint16)


def _write_shard(
    path: Path,
    tensors: list[tuple[str, tuple[int, ...]]],
    spec: SyntheticLlama,
    positions: dict[str, int],
    seed: int,
    bar: tqdm,
) -> int:
    """One safetensors file: 8-byte header length, JSON header, then the raw tensors."""
    code = DTYPES[spec.dtype][1]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        end = offset + spec.element_size * math.prod(shape)
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for name, shape in tensors:
            for chunk in _values(shape, name, seed, positions[name]):
                data = to_bfloat16_bits(chunk) if spec.dtype == "bfloat16" else chunk
                file.write(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())
            bar.update(spec.element_size * math.prod(shape))
    return offset


def write_synthetic_llama(
    directory: str | Path,
    spec: SyntheticLlama,
    *,
    max_shard_bytes: int = 500 * 2**20,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a random llama checkpoint as a sharded transformers directory.

    Parameters
    ----------
    directory : str or Path
        Output directory (written to a temporary sibling, renamed into place at the end).
    spec : SyntheticLlama
        Shapes and dtype; ``spec.nbytes`` is the size of the tensors written.
    max_shard_bytes : int
        Consecutive tensors are grouped into shards of at most this size
        (``model-0000i-of-0000n.safetensors``).
    seed : int
        Tensor k (in model order) is drawn from ``numpy.random.default_rng([seed, k])``.
    overwrite : bool
        Replace an existing ``directory``.
    progress : bool
        Show a tqdm bar (bytes written).

    Returns
    -------
    Path
        ``directory``; ``from_pretrained(directory)`` builds the ``LlamaForCausalLM``.
    """
    if not isinstance(spec, SyntheticLlama):
        raise bad_value("spec", type(spec).__name__, "a SyntheticLlama")
    _positive_int("max_shard_bytes", max_shard_bytes)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise bad_value("seed", seed, "an int >= 0")
    shapes = spec.tensor_shapes()
    positions = {name: k for k, (name, _) in enumerate(shapes)}
    shards = _plan_shards(shapes, spec.element_size, max_shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    with (
        atomic_output(directory, overwrite=overwrite) as tmp,
        tqdm(
            total=spec.nbytes, unit="B", unit_scale=True, desc="synthetic", disable=not progress
        ) as bar,
    ):
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(spec.config(), indent=2) + "\n")
        for i, tensors in enumerate(shards, start=1):
            file = final_shard_file(i, len(shards))
            total += _write_shard(tmp / file, tensors, spec, positions, seed, bar)
            weight_map.update(dict.fromkeys((name for name, _ in tensors), file))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return Path(directory)
