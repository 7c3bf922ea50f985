"""Blockwise NF-k and uniform-k quantizers: tables, bitsandbytes parity, error bounds, storage."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from leanfit.exceptions import BadInputError, CorruptArtifactError
from leanfit.quantization.quantizers import (
    DoubleQuantized,
    QuantizedTensor,
    levels,
    nf_table,
    quantize,
)
from leanfit.quantization.spec import METHODS, QuantSpec

ALL_QUANTIZERS = [(m, b) for m, bits in METHODS.items() for b in bits]
EPS32 = torch.finfo(torch.float32).eps


def gaussian(*shape, seed=0, std=0.02):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


# --- tables -------------------------------------------------------------------------------


def test_nf2_is_the_paper_table():
    assert nf_table(2).tolist() == pytest.approx([-1.0, 0.0, 0.3379, 1.0], abs=5e-5)  # 4 decimals


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nf_table_shape(bits):
    table = nf_table(bits)
    assert table.dtype == torch.float32 and table.numel() == 2**bits
    assert torch.all(table[1:] > table[:-1])  # strictly increasing
    assert table[0] == -1 and table[-1] == 1
    assert (table == 0).sum() == 1 and (table > 0).sum() == 2 ** (bits - 1)  # one extra positive


def test_nf4_equals_bitsandbytes_table():
    functional = pytest.importorskip("bitsandbytes.functional")
    reference = functional.get_4bit_type("nf4", device="cpu")
    # Stricter than the 1e-7 the method asks for: the same float32 bits.
    assert torch.equal(nf_table(4), reference)


# --- bitsandbytes parity -------------------------------------------------------------------


def bnb_nf4(x):
    functional = pytest.importorskip("bitsandbytes.functional")
    packed, state = functional.quantize_4bit(x, quant_type="nf4", blocksize=64)
    restored = functional.dequantize_4bit(packed, state, quant_type="nf4", blocksize=64)
    packed = packed.reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[: x.numel()]
    return packed, codes, state.absmax, restored


@pytest.mark.parametrize("shape", [(64, 64), (96, 200), (33, 65), (7, 9), (3, 322)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nf4_matches_bitsandbytes_exactly(shape, dtype):
    x = gaussian(*shape, seed=shape[0]).to(dtype)
    packed, codes, absmax, restored = bnb_nf4(x)
    ours = quantize(x, QuantSpec(4, "nf", 64))
    assert torch.equal(ours.codes(), codes.to(torch.uint8))
    assert torch.equal(ours.block_scales(), absmax)
    assert torch.equal(ours.dequantize(dtype), restored)
    if x.numel() % 2 == 0:  # bitsandbytes pads an odd count with the code of 0.0, we with 0
        assert torch.equal(ours.packed, packed)


def test_nf4_ties_round_like_bitsandbytes():
    table = nf_table(4)
    midpoints = (table[:-1] + table[1:]) / 2
    above = torch.nextafter(midpoints, torch.tensor(2.0))
    below = torch.nextafter(midpoints, torch.tensor(-2.0))
    # absmax 1 makes the reciprocal exactly 1, so these values reach bucketize unchanged.
    values = torch.cat([torch.tensor([1.0]), midpoints, above, below, -midpoints])
    block = torch.cat([values, torch.zeros(64 - values.numel())]).repeat(2, 1)
    _, codes, _, _ = bnb_nf4(block)
    ours = quantize(block, QuantSpec(4)).codes()
    assert torch.equal(ours, codes.to(torch.uint8))
    assert torch.equal(ours[1:16], torch.arange(15, dtype=torch.uint8))  # a tie takes the lower


# --- error bounds --------------------------------------------------------------------------


def block_view(x, block_size):
    return x.reshape(-1, block_size)


def test_uniform8_error_is_at_most_half_a_step_per_block():
    x = gaussian(128, 256, seed=1)
    q = quantize(x, QuantSpec(8, "uniform", 64))
    blocks, restored = block_view(x, 64), block_view(q.dequantize(), 64)
    low, high = blocks.amin(1), blocks.amax(1)
    step = (high - low) / 255
    # Why: the 256 levels run from the block minimum to its maximum in steps Δ, every value
    # lies in [min, max], so the nearest level is at most Δ/2 away. Tolerance: float32
    # rounding of (x − min)/Δ (relative 2**-24 on t <= 255, i.e. < 1e-4·Δ when it tips a
    # value to the farther level) and of min + code·Δ (a few ulps of |min| + |max|).
    slack = 1e-4 * step + 4 * EPS32 * (low.abs() + high.abs())
    assert torch.all((blocks - restored).abs().amax(1) <= step / 2 + slack)
    # ... and the bound is nearly reached, so it is the right bound, not a loose one.
    assert (blocks - restored).abs().max() > 0.45 * step.max()


@pytest.mark.parametrize(("method", "bits"), ALL_QUANTIZERS)
def test_every_value_goes_to_a_nearest_level(method, bits):
    x = gaussian(32, 128, seed=bits)
    q = quantize(x, QuantSpec(bits, method, 64))
    blocks, restored = block_view(x, 64), block_view(q.dequantize(), 64)
    gap = (levels(bits, method)[1:] - levels(bits, method)[:-1]).max()
    scale = q.block_scales()
    # Normalized values lie in the span of the levels, so they are within half the widest
    # gap of one; same float32 slack as above.
    slack = 1e-4 * scale + 4 * EPS32 * blocks.abs().amax(1)
    assert torch.all((blocks - restored).abs().amax(1) <= gap * scale / 2 + slack)


@pytest.mark.parametrize(
    ("method", "bits", "low", "high"),
    [
        ("nf", 2, 0.50, 0.60),
        ("nf", 4, 0.08, 0.10),
        ("uniform", 2, 0.40, 0.50),
        ("uniform", 8, 0.004, 0.007),
    ],
)
def test_relative_error_on_gaussian_data(method, bits, low, high):
    # Gaussian data: NF2 ≈ 0.56, NF4 ≈ 0.092, uniform-2 ≈ 0.45, uniform-8 ≈ 0.0053
    # (block 64); the bands catch a wrong table or scale, not float noise.
    x = gaussian(256, 256, seed=3)
    error = float((quantize(x, QuantSpec(bits, method)).dequantize() - x).norm() / x.norm())
    assert low < error < high


def test_constant_and_zero_blocks_are_exact():
    x = torch.cat([torch.full((64,), 0.3), torch.zeros(64)])
    for method, bits in ALL_QUANTIZERS:
        assert torch.equal(quantize(x, QuantSpec(bits, method)).dequantize(), x)


# --- the last, partial block ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "bits"), [("nf", 4), ("uniform", 2), ("uniform", 8)])
def test_partial_last_block_uses_only_its_own_values(method, bits):
    # All positive: zero padding would pull a min–max range down to 0.
    x = gaussian(70, seed=4).abs() + 1.0
    whole = quantize(x, QuantSpec(bits, method, 64))
    tail = quantize(x[64:], QuantSpec(bits, method, 64))
    assert whole.block_scales().shape == (2,)
    assert torch.equal(whole.block_scales()[1:], tail.block_scales())
    if method == "uniform":
        assert torch.equal(whole.block_offsets()[1:], tail.block_offsets())
        assert whole.block_offsets()[1] == x[64:].min()
    assert torch.equal(whole.codes()[64:], tail.codes())
    assert torch.equal(whole.dequantize()[64:], tail.dequantize())


# --- storage -------------------------------------------------------------------------------


def test_bits_per_param_counts_codes_and_statistics():
    x = gaussian(64, 512)  # 512 blocks of 64, i.e. two groups of 256 blocks
    assert quantize(x, QuantSpec(4)).bits_per_param == 4 + 32 / 64
    assert quantize(x, QuantSpec(2, "uniform")).bits_per_param == 2 + 64 / 64
    assert quantize(x, QuantSpec(3)).nbytes == 64 * 512 * 3 // 8 + 4 * 512
    # int8 scale codes, one float32 per 256 blocks, one float32 mean.
    assert quantize(x, QuantSpec(4, double_quant=True)).nbytes == 64 * 512 // 2 + 512 + 2 * 4 + 4


def test_double_quantized_statistics_error_bound():
    values = gaussian(1000, seed=5).abs() + 0.01
    code = DoubleQuantized.encode(values)
    assert code.codes.dtype == torch.int8 and code.group_scales.shape == (4,)
    spread = torch.repeat_interleave(code.group_scales, 256)[:1000]
    # Symmetric rounding to 127 steps of the group's spread: at most half a step, plus
    # float32 rounding.
    assert torch.all((code.decode() - values).abs() <= spread / 254 * (1 + 1e-4) + 1e-9)


@pytest.mark.parametrize(("method", "bits"), [("nf", 4), ("nf", 2), ("uniform", 4)])
def test_double_quant_costs_little_accuracy(method, bits):
    x = gaussian(256, 256, seed=6)
    plain = float((quantize(x, QuantSpec(bits, method)).dequantize() - x).norm())
    double = float(
        (quantize(x, QuantSpec(bits, method, double_quant=True)).dequantize() - x).norm()
    )
    # Scales off by at most 1/254 of their spread, and codes chosen against the stored
    # scales: measured ratios are below 1.005; 2 % would mean a broken second level.
    assert double <= 1.02 * plain


@pytest.mark.parametrize(
    ("method", "bits", "double_quant"),
    [("nf", 4, False), ("nf", 3, True), ("uniform", 2, False), ("uniform", 8, True)],
)
def test_state_dict_round_trip_through_safetensors(tmp_path, method, bits, double_quant):
    x = gaussian(48, 100, seed=7)  # 4800 values: a partial last block
    q = quantize(x, QuantSpec(bits, method, 64, double_quant))
    save_file(q.to_state_dict("layer.weight."), tmp_path / "q.safetensors")
    (tmp_path / "q.json").write_text(json.dumps(q.meta()))
    meta = json.loads((tmp_path / "q.json").read_text())
    back = QuantizedTensor.from_state_dict(
        load_file(tmp_path / "q.safetensors"), "layer.weight.", meta
    )
    assert (
        back.meta()
        == q.meta()
        == {
            "shape": [48, 100],
            "bits": bits,
            "method": method,
            "block_size": 64,
            "double_quant": double_quant,
        }
    )
    assert torch.equal(back.dequantize(), q.dequantize())
    assert back.nbytes == q.nbytes


def test_corrupt_state_is_reported():
    q = quantize(gaussian(10, 10), QuantSpec(4, "uniform"))
    tensors, meta = q.to_state_dict("w."), q.meta()
    with pytest.raises(CorruptArtifactError, match="missing tensors \\['w.offsets'\\]"):
        QuantizedTensor.from_state_dict(
            {k: v for k, v in tensors.items() if "off" not in k}, "w.", meta
        )
    with pytest.raises(CorruptArtifactError, match="'scales' must be torch.float32"):
        QuantizedTensor.from_state_dict(
            {**tensors, "w.scales": tensors["w.scales"].half()}, "w.", meta
        )
    with pytest.raises(
        CorruptArtifactError, match="'packed' must be torch.uint8 of shape \\(50,\\)"
    ):
        QuantizedTensor.from_state_dict(
            {**tensors, "w.packed": tensors["w.packed"][:-1]}, "w.", meta
        )
    with pytest.raises(CorruptArtifactError, match="bits must be one of"):
        QuantizedTensor.from_state_dict(tensors, "w.", {**meta, "bits": 5})
    with pytest.raises(CorruptArtifactError, match="'double_quant'"):
        QuantizedTensor.from_state_dict(
            tensors, "w.", {k: v for k, v in meta.items() if k != "double_quant"}
        )


# --- dtypes, devices, shapes ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_float_dtype_is_computed_in_float32(dtype):
    x = gaussian(20, 30).to(dtype)
    q = quantize(x, QuantSpec(4))
    assert torch.equal(q.codes(), quantize(x.float(), QuantSpec(4)).codes())
    restored = q.dequantize(dtype)
    assert restored.dtype == dtype and restored.shape == (20, 30)


def test_input_is_not_modified_and_shapes_are_kept():
    x = gaussian(2, 3, 50)
    before = x.clone()
    q = quantize(x, QuantSpec(2, "uniform", 7))
    assert torch.equal(x, before)
    assert q.shape == (2, 3, 50) and q.dequantize().shape == (2, 3, 50)
    assert q.codes().shape == (300,) and int(q.codes().max()) < 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = gaussian(64, 96)
    on_gpu = quantize(x.cuda(), QuantSpec(4, double_quant=True))
    assert on_gpu.packed.is_cuda
    assert torch.equal(on_gpu.codes().cpu(), quantize(x, QuantSpec(4, double_quant=True)).codes())


# --- rejected inputs -----------------------------------------------------------------------


def test_a_setting_that_is_not_a_quant_spec_is_refused():
    # the settings themselves are refused when built (tests/quantization/test_spec.py)
    with pytest.raises(BadInputError, match="spec must be a QuantSpec; got 'dict'"):
        quantize(gaussian(64), {"bits": 4})


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (torch.tensor([1.0, math.nan]), "finite"),
        (torch.tensor([1.0, -math.inf]), "finite"),
        (torch.tensor([1e300], dtype=torch.float64), "finite in float32"),
        (torch.zeros(0, 4), "non-empty tensor; got \\(0, 4\\)"),
        (torch.ones(4, dtype=torch.int32), "floating-point tensor; got torch.int32"),
    ],
)
def test_bad_tensors_are_named(tensor, match):
    with pytest.raises(BadInputError, match=match):
        quantize(tensor, QuantSpec(4))
