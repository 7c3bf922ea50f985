"""The lookup-table fast paths of the quantizers against their plain definitions."""

import pytest
import torch

from leanfit.quantization import QuantSpec, quantize
from leanfit.quantization.quantizers import levels, nearest_codes, quantize_to_grid
from leanfit.quantization.spec import METHODS

SETTINGS = [(method, bits) for method, allowed in METHODS.items() for bits in allowed]


@pytest.mark.parametrize(("method", "bits"), SETTINGS)
def test_nearest_codes_equal_bucketize_even_on_and_around_midpoints(method, bits):
    table = levels(bits, method)
    midpoints = (table[:-1] + table[1:]) / 2
    inf = torch.tensor(float("inf"))
    values = torch.cat(
        [
            midpoints,  # ties go to the lower level
            torch.nextafter(midpoints, inf),
            torch.nextafter(midpoints, -inf),
            table,
            torch.nextafter(table[[0, -1]], torch.stack([-inf, inf])),  # just outside
            torch.empty(5000).uniform_(float(table[0]), float(table[-1])),
        ]
    )
    expected = torch.bucketize(values, midpoints)
    assert torch.equal(nearest_codes(values, QuantSpec(bits, method)).long(), expected)


@pytest.mark.parametrize(("method", "bits"), SETTINGS)
@pytest.mark.parametrize("double_quant", [False, True])
def test_dequantize_equals_levels_of_codes_times_scales(method, bits, double_quant):
    x = torch.randn(7, 45)  # 315 values: a partial last block of 64
    q = quantize(x, QuantSpec(bits, method, 64, double_quant))
    table = levels(bits, method)
    flat = table[q.codes().long()]
    pad = -flat.numel() % 64
    blocks = torch.cat([flat, flat[-1:].expand(pad)]).view(-1, 64)
    expected = blocks * q.block_scales()[:, None]
    if q.block_offsets() is not None:
        expected = expected + q.block_offsets()[:, None]
    # the same float32 operations in the same order: bit-for-bit equal
    assert torch.equal(q.dequantize(), expected.reshape(-1)[: x.numel()].view(7, 45))
    grid = quantize_to_grid(x.reshape(-1), QuantSpec(bits, method, 64, double_quant))
    assert torch.equal(grid.values, q.dequantize().reshape(-1))
    assert torch.equal(grid.pack(tuple(x.shape)).packed, q.packed)
