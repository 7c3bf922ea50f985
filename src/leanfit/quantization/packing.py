"""Bit packing of 2-, 3-, 4- and 8-bit codes into bytes, with an exact round trip.

Layout: the codes form one big-endian bit stream. Code ``i`` occupies bits
``[i·k, (i+1)·k)`` of the stream, counted from the most significant bit of byte 0. So
with k = 4 the first code sits in the high nibble of byte 0 (the order bitsandbytes uses
for NF4), with k = 2 four codes fill a byte from the top, and with k = 3 eight codes fill
three bytes, some codes straddling a byte boundary. The stream is cut after
``ceil(numel·k / 8)`` bytes; unused low bits of the last byte are zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from leanfit.exceptions import BadInputError, bad_value

PACK_BITS = (2, 3, 4, 8)


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in PACK_BITS:
        raise bad_value("bits", bits, f"one of {PACK_BITS}")
    return bits


def _group(bits: int) -> tuple[int, int]:
    """Smallest whole group: (codes per group, bytes per group); 8 codes in 3 bytes for k = 3."""
    codes = 8 // math.gcd(bits, 8)
    return codes, codes * bits // 8


def packed_length(numel: int, bits: int) -> int:
    """Number of bytes :func:`pack` returns for ``numel`` codes of ``bits`` bits."""
    return -(-numel * _check_bits(bits) // 8)


def _shifts(count: int, width: int, device: torch.device) -> Tensor:
    """Left shifts that put item 0 of a group in the most significant position."""
    return width * torch.arange(count - 1, -1, -1, device=device, dtype=torch.int32)


# For k = 2 and 4, the 8/k codes of one output byte are read as one integer word (code j in
# bits [8j, 8j + 8) on the little-endian hosts PyTorch supports). Code 0 is shifted left by
# 8 − k and code j right by 8j − (8 − k(j + 1)): each lands at its big-endian place in the
# low byte.
_WORD_OF_BYTE = {2: torch.int32, 4: torch.int16}


def _pack_bytes(codes: Tensor, bits: int) -> Tensor:
    """:func:`pack` for k in {2, 4}: ``codes`` uint8, 1-D, contiguous, a multiple of 8/k long.

    Only the low byte of each shifted word is kept (the final cast to uint8 wraps).
    """
    per_byte = 8 // bits
    words = codes.view(_WORD_OF_BYTE[bits])
    out = words << (8 - bits)  # code 0: from bit 0 to bit 8 − k
    for j in range(1, per_byte):
        out |= words >> (8 * j - (8 - bits * (j + 1)))
    return out.to(torch.uint8)


def pack(codes: Tensor, bits: int) -> Tensor:
    """Pack unsigned codes of ``bits`` bits each into a 1-D uint8 tensor.

    Parameters
    ----------
    codes : Tensor
        uint8, any shape (read in row-major order), every value below ``2**bits``.
    bits : int
        2, 3, 4 or 8.

    Returns
    -------
    Tensor
        uint8, shape ``(ceil(codes.numel() * bits / 8),)``, on the device of ``codes``.
    """
    bits = _check_bits(bits)
    if not isinstance(codes, Tensor) or codes.dtype != torch.uint8:
        raise bad_value("codes", getattr(codes, "dtype", type(codes)), "a torch.uint8 tensor")
    flat = codes.reshape(-1)
    if flat.numel() and int(flat.max()) >= 2**bits:
        raise bad_value("codes", int(flat.max()), f"below 2**bits = {2**bits} (largest code)")
    per_group, group_bytes = _group(bits)
    pad = -flat.numel() % per_group
    if bits in _WORD_OF_BYTE:
        return _pack_bytes(torch.cat([flat, flat.new_zeros(pad)]), bits)
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, per_group).to(torch.int32)
    words = (flat << _shifts(per_group, bits, flat.device)).sum(dim=1, dtype=torch.int32)
    out = (words[:, None] >> _shifts(group_bytes, 8, flat.device)) & 0xFF
    return out.to(torch.uint8).reshape(-1)[: packed_length(codes.numel(), bits)]


def unpack(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of :func:`pack`: the first ``numel`` codes of a packed stream.

    Parameters
    ----------
    packed : Tensor
        uint8, 1-D, of length ``ceil(numel * bits / 8)`` exactly.
    bits : int
        2, 3, 4 or 8.
    numel : int
        Number of codes to read.

    Returns
    -------
    Tensor
        uint8, shape ``(numel,)``, on the device of ``packed``.
    """
    bits = _check_bits(bits)
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise bad_value("numel", numel, "an int >= 0")
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise bad_value(
            "packed", getattr(packed, "dtype", type(packed)), "a 1-D torch.uint8 tensor"
        )
    expected = packed_length(numel, bits)
    if packed.numel() != expected:
        raise BadInputError(
            f"packed must hold ceil({numel} * {bits} / 8) = {expected} bytes for {numel} values; "
            f"got {packed.numel()}"
        )
    per_group, group_bytes = _group(bits)
    pad = -packed.numel() % group_bytes
    stream = torch.cat([packed, packed.new_zeros(pad)]).view(-1, group_bytes).to(torch.int32)
    words = (stream << _shifts(group_bytes, 8, stream.device)).sum(dim=1, dtype=torch.int32)
    codes = (words[:, None] >> _shifts(per_group, bits, stream.device)) & (2**bits - 1)
    return codes.to(torch.uint8).reshape(-1)[:numel]
