"""Blockwise NormalFloat-k and uniform-k quantizers: pure tensor functions.

A tensor is flattened in row-major order and cut into blocks of ``block_size`` values.
Each block has its own statistics and each value is replaced by a k-bit code:

- ``method="nf"`` (NormalFloat-k, k in {2, 3, 4}): the block scale is its absmax ``a``;
  a value ``x`` becomes the index of the table entry nearest to ``x / a`` and is restored
  as ``table[code] · a``. The table (:func:`nf_table`) holds 2**k quantiles of the standard
  normal, asymmetric (one more positive value), normalized to [-1, 1].
- ``method="uniform"`` (k in {2, 3, 4, 8}): asymmetric min–max; the block offset is its
  minimum ``m`` and the scale its step ``Δ = (max − m) / (2**k − 1)``; ``x`` becomes the
  nearest of ``m + j·Δ``, j = 0 … 2**k − 1.

All arithmetic is in float32 whatever the input dtype, on the input's device. A value's code
is the number of midpoints between neighbouring levels that lie strictly below it (what
:func:`torch.bucketize` gives): a value exactly on a midpoint takes the lower level. It is
found in constant time per value by a lookup table over a fine grid of the level range
(:func:`nearest_codes`), several times faster than a binary search.

Last block. When ``numel`` is not a multiple of ``block_size`` the last block is padded by
repeating its last real value. A repeated value changes neither the minimum, the maximum
nor the absmax, so the statistics of the last block are those of its real values only
(zero padding would be harmless for absmax but would wrongly widen a min–max range whose
values all have one sign). The padded codes are dropped before packing.

Double quantization (QLoRA's trick, our own 8-bit code): the per-block float32 statistics
(scales, and for uniform also offsets) are stored as int8 codes of their deviation from
their mean, symmetric, with one float32 absmax per group of 256 blocks
(:class:`DoubleQuantized`). The codes of the weight itself are then chosen against the
statistics as they will be restored, so every value goes to the nearest level of the grid
that is really stored.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from leanfit.exceptions import BadInputError, CorruptArtifactError, bad_value
from leanfit.quantization.packing import pack, packed_length, unpack
from leanfit.quantization.spec import QuantSpec, check_spec

NF_OFFSET = 0.9677083
DOUBLE_QUANT_GROUP = 256
_DQ_LEVELS = 127  # int8 codes of the double quantization lie in [-127, 127]
_MIN_ABSMAX = 1e-38  # as bitsandbytes: an all-zero block gets a finite reciprocal


@functools.cache
def _nf_table_cpu(bits: int) -> Tensor:
    half = 2**bits // 2
    # float32 probabilities, float64 quantiles, float32 normalization: the recipe whose
    # result bitsandbytes hard-codes for NF4, so the tables agree bit for bit.
    upper = torch.linspace(NF_OFFSET, 0.5, half + 1)[:-1].double()
    lower = torch.linspace(NF_OFFSET, 0.5, half)[:-1].double()
    zero = torch.zeros(1, dtype=torch.float64)
    values = torch.cat([torch.special.ndtri(upper), zero, -torch.special.ndtri(lower)]).float()
    values = torch.sort(values).values
    return values / values.max()


def nf_table(bits: int, device: torch.device | str | None = None) -> Tensor:
    """The NormalFloat-k table: 2**k sorted float32 values in [-1, 1].

    With ``p = 0.9677083`` and Φ⁻¹ the standard normal quantile,
    ``v1 = Φ⁻¹(linspace(p, 0.5, 2**k/2 + 1)[:-1])``, ``v3 = −Φ⁻¹(linspace(p, 0.5, 2**k/2)[:-1])``
    and the table is ``sort(v1 ∪ {0} ∪ v3) / max``: 2**k/2 positive values, 2**k/2 − 1
    negative ones and an exact zero. NF2 = {−1, 0, 0.3379, 1}; NF4 is bitsandbytes' table.

    Parameters
    ----------
    bits : int
        k in {2, 3, 4}.
    device : torch.device or str, optional
        Where to put the table (CPU by default).
    """
    return levels(bits, "nf", device)


def levels(bits: int, method: str, device: torch.device | str | None = None) -> Tensor:
    """The normalized levels a code indexes: the NF table, or 0 … 2**k − 1 for uniform."""
    return _levels(QuantSpec(bits, method), device)


def _levels(spec: QuantSpec, device: torch.device | str | None = None) -> Tensor:
    """:func:`levels` of a setting already checked (a fresh tensor)."""
    if spec.method == "nf":
        return _nf_table_cpu(spec.bits).to(device=device, copy=True)
    return torch.arange(2**spec.bits, dtype=torch.float32, device=device)


_LUT_BINS = 4096
_LUT_SLACK = 1e-5  # far above the float32 rounding of the bin index, far below a bin width


@functools.cache
def _code_lut_cpu(spec: QuantSpec) -> tuple[Tensor, Tensor, Tensor, float]:
    """Per bin of a 4096-bin grid over [first level, last level]: (codes below, midpoint),
    then the bin-index map ``x ↦ shift + per_unit · x`` as (shift, a 0-d tensor; per_unit).

    ``below[u]`` counts the midpoints under the bin's widened lower edge ``e_u − slack`` and
    ``window[u]`` is the one midpoint inside the widened bin ``[e_u − slack, e_{u+1} + slack]``
    (+inf if none). A value x that the float32 bin formula sends to bin u lies inside the
    widened bin, so its code is ``below[u] + [x > window[u]]``.
    """
    table = _levels(spec)
    midpoints = ((table[:-1] + table[1:]) / 2).double()
    low, high = float(table[0]), float(table[-1])
    edges = torch.linspace(low, high, _LUT_BINS + 1, dtype=torch.float64)
    below = torch.searchsorted(midpoints, edges[:-1] - _LUT_SLACK * (high - low))
    upto = torch.searchsorted(midpoints, edges[1:] + _LUT_SLACK * (high - low), right=True)
    if int((upto - below).max()) > 1:  # pragma: no cover - impossible for the tables here
        raise AssertionError("two midpoints in one lookup bin")
    inside = midpoints.float()[below.clamp(max=midpoints.numel() - 1)]
    window = torch.where(upto > below, inside, torch.tensor(math.inf))
    per_unit = _LUT_BINS / (high - low)
    return below.to(torch.int32), window, torch.tensor(-low * per_unit), per_unit


def _code_lut(spec: QuantSpec, device: torch.device) -> tuple[Tensor, Tensor, Tensor, float]:
    """:func:`_code_lut_cpu` on ``device``: (below, window, −low · per_unit, per_unit)."""
    below, window, shift, per_unit = _code_lut_cpu(spec)
    return below.to(device), window.to(device), shift.to(device), per_unit


class Workspace:
    """Scratch buffers for :func:`nearest_codes` and :func:`quantize_to_grid` of ``numel``
    values (after padding to whole blocks), reused by repeated calls on tensors of one size:
    fresh allocations of this size cost page faults, often more than the arithmetic.

    A workspace serves one call at a time (not thread-safe).
    """

    def __init__(self, numel: int, device: torch.device | str | None = None) -> None:
        self.work = torch.empty(numel, device=device)
        self.index = torch.empty(numel, dtype=torch.int32, device=device)
        self.above = torch.empty(numel, dtype=torch.bool, device=device)

    def fits(self, flat: Tensor) -> bool:
        return self.work.numel() == flat.numel() and self.work.device == flat.device


def nearest_codes(
    normalized: Tensor,
    spec: QuantSpec,
    *,
    out: Tensor | None = None,
    workspace: Workspace | None = None,
) -> Tensor:
    """Codes (int32, flat) of values already mapped to the level axis (see :func:`_normalize`).

    Equal to ``torch.bucketize(normalized, midpoints)`` (ties to the lower level), in a
    fixed number of passes: bin index, two table lookups, one comparison. ``out`` (int32, as
    many elements) receives the codes; ``workspace`` provides the scratch buffers.
    """
    flat = normalized.reshape(-1)
    below, window, shift, per_unit = _code_lut(spec, flat.device)
    if workspace is None or not workspace.fits(flat):
        workspace = Workspace(flat.numel(), flat.device)
    # bin index: shift + per_unit · x = (x − low) · per_unit, within the lookup's slack
    work = torch.add(shift, flat, alpha=per_unit, out=workspace.work).clamp_(0, _LUT_BINS - 1)
    index = workspace.index.copy_(work)  # truncation toward zero = floor for work >= 0
    nearest_midpoint = torch.index_select(window, 0, index, out=work)
    above = torch.gt(flat, nearest_midpoint, out=workspace.above)
    codes = torch.index_select(below, 0, index, out=out)
    # the bin indices are spent: their buffer takes the 0/1 step as int32 (adding the bool
    # directly would allocate a converted temporary of the full size at every call)
    return codes.add_(index.copy_(above))


_BYTE_ALIGNED = (2, 4, 8)


# A row of 8/k float32 levels seen as one element of this width: gathering single wide elements
# is several times faster than gathering short rows (the bits are copied, never converted).
_ROW_AS = {1: torch.float32, 2: torch.int64, 4: torch.complex128}


@functools.cache
def _byte_levels_cpu(spec: QuantSpec) -> Tensor:
    """(256,) table: entry b holds the 8/k float32 levels of the codes packed in byte b.

    Stored as 256 elements of 4·8/k bytes each (``_ROW_AS``); ``.view(torch.float32)`` of a
    gather gives the levels in code order.
    """
    per_byte = 8 // spec.bits
    codes = unpack(torch.arange(256, dtype=torch.uint8), spec.bits, 256 * per_byte)
    rows = _levels(spec)[codes.long()].view(256, per_byte)
    return rows.view(_ROW_AS[per_byte]).view(256)


def _blocks(flat: Tensor, block_size: int) -> Tensor:
    """(n_blocks, block_size) view of a 1-D tensor, the last block padded with its last value."""
    pad = -flat.numel() % block_size
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, block_size)


@dataclass(frozen=True)
class DoubleQuantized:
    """An 8-bit code of a float32 vector ``v`` (the per-block statistics).

    ``v ≈ mean + codes · group_scales[g] / 127`` for entries of group g (groups of 256
    consecutive entries), where ``group_scales[g] = max |v − mean|`` over the group and
    ``codes = round((v − mean) · 127 / group_scales[g])``. The error of an entry is at most
    ``group_scales[g] / 254``.

    Attributes
    ----------
    codes : Tensor
        int8, shape ``(n,)``.
    group_scales : Tensor
        float32, shape ``(ceil(n / 256),)``.
    mean : Tensor
        float32, shape ``(1,)``.
    """

    codes: Tensor
    group_scales: Tensor
    mean: Tensor

    @classmethod
    def encode(cls, values: Tensor) -> DoubleQuantized:
        """Quantize a 1-D float32 vector."""
        mean = values.mean().reshape(1)
        deviation = _blocks(values - mean, DOUBLE_QUANT_GROUP)
        group_scales = deviation.abs().amax(dim=1)
        step = group_scales.clamp(min=_MIN_ABSMAX) / _DQ_LEVELS
        codes = torch.round(deviation / step[:, None]).clamp(-_DQ_LEVELS, _DQ_LEVELS)
        return cls(codes.reshape(-1)[: values.numel()].to(torch.int8), group_scales, mean)

    def decode(self) -> Tensor:
        """The float32 vector, shape ``(n,)``."""
        codes = _blocks(self.codes.float(), DOUBLE_QUANT_GROUP)
        values = codes * (self.group_scales / _DQ_LEVELS)[:, None] + self.mean
        return values.reshape(-1)[: self.codes.numel()]

    def tensors(self) -> dict[str, Tensor]:
        return {"": self.codes, "_dq_scales": self.group_scales, "_dq_mean": self.mean}


def _decode(stat: Tensor | DoubleQuantized) -> Tensor:
    return stat.decode() if isinstance(stat, DoubleQuantized) else stat


def _layout(numel: int, spec: QuantSpec) -> dict[str, tuple[int, torch.dtype]]:
    """Name → (length, dtype) of every stored tensor of a quantized tensor."""
    n_blocks = -(-numel // spec.block_size)
    stats = ["scales"] + (["offsets"] if spec.method == "uniform" else [])
    layout = {"packed": (packed_length(numel, spec.bits), torch.uint8)}
    for stat in stats:
        if spec.double_quant:
            layout[stat] = (n_blocks, torch.int8)
            layout[f"{stat}_dq_scales"] = (-(-n_blocks // DOUBLE_QUANT_GROUP), torch.float32)
            layout[f"{stat}_dq_mean"] = (1, torch.float32)
        else:
            layout[stat] = (n_blocks, torch.float32)
    return layout


def stored_nbytes(numel: int, spec: QuantSpec) -> int:
    """Bytes a quantized tensor of ``numel`` elements stores (packed codes and statistics),
    i.e. :attr:`QuantizedTensor.nbytes` without quantizing anything."""
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 1:
        raise bad_value("numel", numel, "an int >= 1")
    layout = _layout(numel, check_spec("spec", spec, QuantSpec))
    return sum(length * dtype.itemsize for length, dtype in layout.values())


def empty_state(
    shape: tuple[int, ...], spec: QuantSpec, device: torch.device | str | None = None
) -> dict[str, Tensor]:
    """Zero-filled tensors with the names, sizes and dtypes that :meth:`to_state_dict` gives."""
    layout = _layout(math.prod(shape), check_spec("spec", spec, QuantSpec))
    return {name: torch.zeros(n, dtype=dt, device=device) for name, (n, dt) in layout.items()}


class Scratch:
    """Buffers reused by repeated :meth:`QuantizedTensor.dequantize` calls, one per dtype and
    device, grown to the largest size asked for.

    Dequantizing one layer after another into fresh tensors of different sizes fragments the C
    heap: a LoRA step on SmolLM2 kept 160 MB more resident than the float32 model's. A scratch
    serves one call at a time (keep one per thread).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A 1-D tensor of ``numel`` elements (contents undefined)."""
        key = (dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self._buffers.pop(key, None)  # free the smaller one before allocating
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buffer
        return buffer[:numel]


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor stored as packed k-bit codes plus per-block statistics.

    The restored value of flat element i in block b = i // block_size is
    ``levels[code_i] · scale_b`` for NF and ``offset_b + code_i · scale_b`` for uniform.

    Attributes
    ----------
    packed : Tensor
        uint8, 1-D: the codes packed by :func:`leanfit.quantization.packing.pack`.
    scales : Tensor or DoubleQuantized
        One per block: the absmax (NF) or the step Δ (uniform); float32, or an 8-bit
        :class:`DoubleQuantized` code of them.
    offsets : Tensor, DoubleQuantized or None
        Uniform only: the per-block minimum; None for NF.
    shape : tuple of int
        Shape of the original tensor.
    spec : QuantSpec
        The quantizer (bits, method, block size, double quantization).
    """

    packed: Tensor
    scales: Tensor | DoubleQuantized
    offsets: Tensor | DoubleQuantized | None
    shape: tuple[int, ...]
    spec: QuantSpec

    def __post_init__(self) -> None:
        spec = check_spec("spec", self.spec, QuantSpec)
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if (self.offsets is None) != (spec.method == "nf"):
            raise BadInputError(
                f"offsets must be given for uniform and only for uniform; "
                f"got method {spec.method!r} and offsets of type {type(self.offsets).__name__}"
            )
        layout = _layout(self.numel, spec)
        for name, tensor in self.to_state_dict("").items():
            length, dtype = layout.get(name, (None, None))
            if tensor.dtype != dtype or tensor.shape != (length,):
                raise BadInputError(
                    f"tensor {name!r} must be {dtype} of shape ({length},); "
                    f"got {tensor.dtype} of shape {tuple(tensor.shape)}"
                )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored: packed codes plus all statistics."""
        return sum(t.numel() * t.element_size() for t in self.to_state_dict("").values())

    @property
    def bits_per_param(self) -> float:
        """Stored bits (codes and statistics) per element of the original tensor."""
        return 8 * self.nbytes / self.numel

    def codes(self) -> Tensor:
        """The codes, uint8, 1-D of length numel, in row-major order of the original tensor."""
        return unpack(self.packed, self.spec.bits, self.numel)

    def block_scales(self) -> Tensor:
        """Per-block scales as float32 (decoded if double-quantized)."""
        return _decode(self.scales)

    def block_offsets(self) -> Tensor | None:
        """Per-block offsets as float32 (uniform), or None (NF)."""
        return None if self.offsets is None else _decode(self.offsets)

    def dequantize(
        self,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        *,
        scratch: Scratch | None = None,
    ) -> Tensor:
        """The restored tensor of ``shape``: computed in float32 and cast to ``dtype``.

        With ``scratch`` the values are computed in its reused buffers instead of fresh
        allocations, and the result is a view of one of them: valid until the next call with
        the same scratch (for a product computed at once, as :class:`QuantLinear` does).
        """
        device = torch.device(self.packed.device if device is None else device)
        spec = self.spec
        n_blocks = -(-self.numel // spec.block_size)
        if spec.bits in _BYTE_ALIGNED:
            # Each byte holds whole codes: one lookup per byte gives its 8/k levels at once.
            lut = _byte_levels_cpu(spec).to(device)
            n_values = self.packed.numel() * (8 // spec.bits)
            if scratch is None:
                index = self.packed.to(device, torch.int32)
                flat = lut.index_select(0, index).view(torch.float32)
            else:
                index = scratch.get(self.packed.numel(), torch.int32, device).copy_(self.packed)
                flat = scratch.get(max(n_values, n_blocks * spec.block_size), torch.float32, device)
                torch.index_select(lut, 0, index, out=flat[:n_values].view(lut.dtype))
        else:
            table = _levels(spec, device)
            if scratch is None:
                flat = table[self.codes().to(device).long()]
            else:
                index = scratch.get(self.numel, torch.int32, device).copy_(self.codes())
                flat = scratch.get(n_blocks * spec.block_size, torch.float32, device)
                torch.index_select(table, 0, index, out=flat[: self.numel])
        if scratch is None:
            values = _blocks(flat[: self.numel], spec.block_size)  # fresh: scale in place
        else:  # the tail of the last block is scratch, scaled and then dropped
            values = flat[: n_blocks * spec.block_size].view(n_blocks, spec.block_size)
        values.mul_(self.block_scales().to(device)[:, None])
        offsets = self.block_offsets()
        if offsets is not None:
            values.add_(offsets.to(device)[:, None])
        restored = values.reshape(-1)[: self.numel].reshape(self.shape)
        if scratch is None or dtype == torch.float32:
            return restored.to(dtype)
        return scratch.get(self.numel, dtype, device).view(self.shape).copy_(restored)

    def meta(self) -> dict[str, Any]:
        """JSON-serializable description needed (with the tensors) to rebuild this object."""
        return {"shape": list(self.shape), **self.spec.to_dict()}

    def to_state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Stored tensors keyed ``prefix + name``; names: packed, scales, offsets (uniform),
        and with double quantization also ``<stat>_dq_scales`` and ``<stat>_dq_mean``."""
        tensors = {"packed": self.packed}
        stats = {"scales": self.scales, "offsets": self.offsets}
        for name, stat in stats.items():
            if isinstance(stat, DoubleQuantized):
                tensors.update({name + suffix: t for suffix, t in stat.tensors().items()})
            elif stat is not None:
                tensors[name] = stat
        return {prefix + name: t for name, t in tensors.items()}

    @classmethod
    def from_state_dict(
        cls, tensors: dict[str, Tensor], prefix: str, meta: dict[str, Any]
    ) -> QuantizedTensor:
        """Rebuild from :meth:`to_state_dict` output and :meth:`meta`.

        Raises
        ------
        CorruptArtifactError
            A tensor is missing or has the wrong dtype or size, or ``meta`` is invalid.
        """
        try:
            shape = tuple(meta["shape"])
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise BadInputError(f"invalid meta {meta!r}")
            spec = QuantSpec.from_dict(meta)
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptArtifactError(
                f"quantized tensor {prefix!r} cannot be rebuilt: {error}"
            ) from error
        return cls.from_tensors(tensors, prefix, shape, spec)

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, Tensor], prefix: str, shape: tuple[int, ...], spec: QuantSpec
    ) -> QuantizedTensor:
        """Rebuild from :meth:`to_state_dict` output, the shape and the setting being known.

        Raises
        ------
        CorruptArtifactError
            A tensor is missing or has the wrong dtype or size.
        """
        try:
            layout = _layout(math.prod(shape), spec)
            missing = [prefix + name for name in layout if prefix + name not in tensors]
            if missing:
                raise BadInputError(f"missing tensors {missing}")

            def stat(name: str) -> Tensor | DoubleQuantized:
                value = tensors[prefix + name]
                if not spec.double_quant:
                    return value
                return DoubleQuantized(
                    value, tensors[f"{prefix}{name}_dq_scales"], tensors[f"{prefix}{name}_dq_mean"]
                )

            return cls(
                packed=tensors[prefix + "packed"],
                scales=stat("scales"),
                offsets=stat("offsets") if spec.method == "uniform" else None,
                shape=shape,
                spec=spec,
            )
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as error:
            raise CorruptArtifactError(
                f"quantized tensor {prefix!r} cannot be rebuilt: {error}"
            ) from error


def _check_tensor(tensor: object) -> Tensor:
    """The input as a finite float32 tensor."""
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        raise bad_value("tensor", getattr(tensor, "dtype", type(tensor)), "a floating-point tensor")
    if tensor.numel() == 0:
        raise bad_value("tensor", tuple(tensor.shape), "a non-empty tensor")
    flat = tensor.detach().reshape(-1).float()
    if not bool(torch.isfinite(flat).all()):
        raise BadInputError("tensor must be finite in float32; got NaN or Inf values")
    return flat


def _nf_stats(blocks: Tensor) -> tuple[Tensor, None]:
    # max |x| = max(max x, −min x) exactly, without an |x| temporary of the blocks' size
    return torch.maximum(blocks.amax(dim=1), blocks.amin(dim=1).neg_()), None


def _uniform_stats(blocks: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    low, high = blocks.amin(dim=1), blocks.amax(dim=1)
    return (high - low) / (2**bits - 1), low


def _normalize(
    blocks: Tensor, scales: Tensor, offsets: Tensor | None, out: Tensor | None = None
) -> Tensor:
    """Map values to the level axis: x / absmax (NF) or (x − min) / Δ (uniform)."""
    if offsets is None:
        # Multiply by the reciprocal, as bitsandbytes does, so midpoint ties round alike.
        return torch.mul(blocks, (1.0 / scales.clamp(min=_MIN_ABSMAX))[:, None], out=out)
    steps = torch.where(scales > 0, scales, torch.ones_like(scales))
    return torch.sub(blocks, offsets[:, None], out=out).div_(steps[:, None])


def quantize(tensor: Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Quantize a tensor blockwise to k-bit codes (see the module docstring for the maths).

    Parameters
    ----------
    tensor : Tensor
        Any shape and floating dtype, finite, non-empty; not modified.
    spec : QuantSpec
        The quantizer: bits k, method, values per block (the last block may be partial),
        and whether the per-block statistics are stored as 8-bit codes
        (:class:`DoubleQuantized`).

    Returns
    -------
    QuantizedTensor
        On the device of ``tensor``.

    Notes
    -----
    NF4 with ``block_size=64`` and no double quantization reproduces bitsandbytes'
    ``quantize_4bit(x, quant_type="nf4", blocksize=64)`` on CPU exactly: the same float32
    table, the absmax applied as a multiplication by its float32 reciprocal, the same
    float32 midpoints and ``bucketize`` tie rule (a value on a midpoint takes the lower
    code), and the same nibble order (first code in the high nibble). Values beyond the
    outer midpoints map to the extreme codes, so no clamping is needed.
    """
    spec = check_spec("spec", spec, QuantSpec)
    flat = _check_tensor(tensor)
    return quantize_to_grid(flat, spec).pack(tuple(tensor.shape))


@dataclass(frozen=True)
class GridPoint:
    """Unpacked result of :func:`quantize_to_grid`: codes, statistics and restored values.

    ``values`` is what :meth:`QuantizedTensor.dequantize` of ``pack()`` returns (flat,
    float32), computed without packing, so an iterative caller (LoftQ) packs only the
    iterate it keeps.
    """

    codes: Tensor  # (n_blocks · block_size,) int32, the last block padded
    scales: Tensor | DoubleQuantized
    offsets: Tensor | DoubleQuantized | None
    padded_values: Tensor  # (n_blocks · block_size,) float32, the last block padded
    numel: int
    spec: QuantSpec

    @property
    def values(self) -> Tensor:
        """The restored values, (numel,) float32."""
        return self.padded_values[: self.numel]

    def pack(self, shape: tuple[int, ...]) -> QuantizedTensor:
        """The :class:`QuantizedTensor` of these codes for a tensor of ``shape``."""
        return QuantizedTensor(
            packed=pack(self.codes[: self.numel].to(torch.uint8), self.spec.bits),
            scales=self.scales,
            offsets=self.offsets,
            shape=shape,
            spec=self.spec,
        )


def quantize_to_grid(
    flat: Tensor,
    spec: QuantSpec,
    *,
    out: GridPoint | None = None,
    workspace: Workspace | None = None,
) -> GridPoint:
    """Quantize a finite 1-D float32 tensor (already checked) without packing.

    Same codes and statistics as :func:`quantize`; the restored values come from one
    gather of the level table and one multiply(-add) by the block statistics.

    ``out``: an earlier result for a tensor of the same size whose ``codes`` and ``values``
    buffers are overwritten (it must not be used afterwards); ``workspace``: scratch buffers
    (:class:`Workspace` of ``n_blocks · block_size`` values). An iterative caller (LoftQ)
    passes both and so allocates nothing large per call.
    """
    blocks = _blocks(flat, spec.block_size)
    nf = spec.method == "nf"
    scales, offsets = _nf_stats(blocks) if nf else _uniform_stats(blocks, spec.bits)
    stored_scales: Tensor | DoubleQuantized = scales
    stored_offsets: Tensor | DoubleQuantized | None = offsets
    if spec.double_quant:
        stored_scales = DoubleQuantized.encode(scales)
        scales = stored_scales.decode()
        if offsets is not None:
            stored_offsets = DoubleQuantized.encode(offsets)
            offsets = stored_offsets.decode()
    if out is not None and (out.codes.shape, out.codes.device) != ((blocks.numel(),), flat.device):
        out = None
    padded = torch.empty(blocks.numel(), device=flat.device) if out is None else out.padded_values
    normalized = _normalize(blocks, scales, offsets, out=padded.view_as(blocks))
    codes = nearest_codes(
        normalized, spec, out=None if out is None else out.codes, workspace=workspace
    )
    table = _levels(spec, flat.device)
    # the normalized values are spent: their buffer receives the restored ones
    values = torch.index_select(table, 0, codes, out=padded.view(-1)).view_as(blocks)
    values.mul_(scales[:, None])
    if offsets is not None:
        values.add_(offsets[:, None])
    return GridPoint(
        codes,
        stored_scales,
        stored_offsets,
        padded,
        flat.numel(),
        spec,
    )
