"""The published LoftQ algorithm, as a reference for the speed benchmarks (not leanfit code).

Written from the algorithm as published by Li et al., ICLR 2024, and its authors' code as it
was in PEFT's ``loftq_utils.py`` before PEFT moved NF4 to bitsandbytes (see
``loftq_speed.py``): float32, NF-k blockwise quantization by exhaustive nearest-level search
with packing and unpacking, the exact full SVD of the residual at every step, last iterate.
It imports only torch and scipy, so that a process timing it end to end pays for no more.
"""

from __future__ import annotations

import torch
from scipy.stats import norm

BLOCK = 64


def reference_nf_table(bits: int) -> torch.Tensor:
    """NormalFloat-k levels from scipy's normal quantiles (offset 0.9677083, asymmetric)."""
    offset, half = 0.9677083, 2 ** (bits - 1)
    positive = norm.ppf(torch.linspace(offset, 0.5, half + 1)[:-1].numpy()).tolist()
    negative = (-norm.ppf(torch.linspace(offset, 0.5, half)[:-1].numpy())).tolist()
    table = torch.tensor(sorted([*positive, 0.0, *negative]))
    return (table / table.max()).float()


def reference_quantize_dequantize(w: torch.Tensor, table: torch.Tensor, bits: int) -> torch.Tensor:
    """Blockwise NF quantization by exhaustive nearest-level search, packed and unpacked."""
    blocks = w.reshape(-1, BLOCK)
    absmax = blocks.abs().max(dim=1, keepdim=True).values
    normalized = (blocks / absmax).unsqueeze(-1)
    codes = torch.argmin((normalized - table.reshape(1, 1, -1)).abs(), dim=-1)
    # pack k-bit codes into bytes, low bits first, then unpack them again
    per_byte = 8 // bits
    grouped = codes.reshape(-1, per_byte).to(torch.uint8)
    packed = torch.zeros(grouped.shape[0], dtype=torch.uint8)
    for i in range(per_byte):
        packed |= grouped[:, i] << (i * bits)
    unpacked = torch.stack([(packed >> (i * bits)) & (2**bits - 1) for i in range(per_byte)], 1)
    values = table[unpacked.reshape(-1).long()].reshape(-1, BLOCK) * absmax
    return values.reshape(w.shape)


def reference_loftq(w: torch.Tensor, bits: int, rank: int, iters: int):
    """(Q, L, R) after ``iters`` alternating steps, exact SVD each time; last iterate."""
    table = reference_nf_table(bits)
    w = w.float()
    target = w
    for _ in range(iters):
        q = reference_quantize_dequantize(target, table, bits)
        u, s, vh = torch.linalg.svd(w - q, full_matrices=False)
        root = s[:rank].sqrt()
        left, right = u[:, :rank] * root, root[:, None] * vh[:rank]
        target = w - left @ right
    return q, left, right
