"""Bit packing: exact round trips, the documented bit layout, and rejected inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leanfit.exceptions import BadInputError
from leanfit.quantization.packing import PACK_BITS, pack, packed_length, unpack


@pytest.mark.parametrize("bits", PACK_BITS)
@pytest.mark.parametrize("numel", [*range(0, 26), 63, 64, 65, 1001])
def test_round_trip_every_width_and_length(bits, numel):
    codes = torch.randint(0, 2**bits, (numel,), generator=torch.Generator().manual_seed(numel))
    codes = codes.to(torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (-(-numel * bits // 8),)
    assert packed_length(numel, bits) == packed.numel()
    assert torch.equal(unpack(packed, bits, numel), codes)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(PACK_BITS), st.data())
def test_round_trip_hypothesis(bits, data):
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=300))
    codes = torch.tensor(values, dtype=torch.uint8)
    assert torch.equal(unpack(pack(codes, bits), bits, len(values)), codes)


def test_layout_is_a_big_endian_bit_stream():
    # 2-bit: four codes per byte, first code in the top bits.
    assert pack(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [0b01_10_11_00]
    # 4-bit: first code in the high nibble (bitsandbytes' NF4 order).
    assert pack(torch.tensor([0xA, 0x5, 0x3], dtype=torch.uint8), 4).tolist() == [0xA5, 0x30]
    # 3-bit: 0..7 as 000 001 010 011 100 101 110 111 → 00000101 00111001 01110111.
    assert pack(torch.arange(8, dtype=torch.uint8), 3).tolist() == [0x05, 0x39, 0x77]
    # ... and a code straddling bytes 0 and 1: 111 111 111 → 11111111 1(0000000).
    assert pack(torch.full((3,), 7, dtype=torch.uint8), 3).tolist() == [0xFF, 0x80]
    codes = torch.tensor([0, 255, 17], dtype=torch.uint8)
    assert torch.equal(pack(codes, 8), codes)


def test_any_shape_is_read_row_major():
    codes = torch.arange(12, dtype=torch.uint8).reshape(3, 4) % 4
    assert torch.equal(unpack(pack(codes, 2), 2, 12), codes.reshape(-1))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pack(torch.zeros(3, dtype=torch.uint8), 5), "bits must be one of"),
        (lambda: pack(torch.zeros(3, dtype=torch.uint8), True), "bits must be one of"),
        (lambda: pack(torch.zeros(3, dtype=torch.int64), 4), "codes must be a torch.uint8"),
        (lambda: pack(torch.tensor([4], dtype=torch.uint8), 2), "below 2\\*\\*bits = 4"),
        (lambda: unpack(torch.zeros(2, dtype=torch.uint8), 4, 5), "3 bytes for 5 values; got 2"),
        (lambda: unpack(torch.zeros(2, dtype=torch.uint8), 4, -1), "numel must be an int >= 0"),
        (lambda: unpack(torch.zeros(1, 2, dtype=torch.uint8), 8, 2), "1-D torch.uint8"),
    ],
)
def test_bad_inputs_are_named(call, match):
    with pytest.raises(BadInputError, match=match):
        call()
