"""QuantLinear: forward, storage round trip, dtype handling, and PEFT LoRA wrapping."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from leanfit.exceptions import BadInputError, LeanfitError
from leanfit.quantization import (
    LoraSpec,
    QuantizedTensor,
    QuantLinear,
    QuantSpec,
    loftq_decompose,
    quantize,
)

peft = pytest.importorskip("peft")


def linear(inp=40, out=24, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(inp, out, bias=bias)


def inputs(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_forward_is_linear_with_the_dequantized_weight():
    dense = linear()
    layer = QuantLinear.from_linear(dense, QuantSpec(bits=4))
    x = inputs(3, 5, 40)
    expected = F.linear(x, quantize(dense.weight, QuantSpec(4)).dequantize(), dense.bias)
    assert torch.equal(layer(x), expected)
    assert (layer.in_features, layer.out_features) == (40, 24)


def test_no_float_weight_is_stored():
    layer = QuantLinear.from_linear(linear(), QuantSpec(bits=2, method="uniform", block_size=32))
    assert [name for name, _ in layer.named_parameters()] == ["bias"]
    assert set(layer.state_dict()) == {"packed", "scales", "offsets", "bias"}
    assert layer.packed.dtype == torch.uint8 and layer.packed.numel() == 40 * 24 * 2 // 8


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip_through_safetensors(tmp_path, double_quant, bias):
    layer = QuantLinear.from_linear(linear(bias=bias), QuantSpec(bits=3, double_quant=double_quant))
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    skeleton = QuantLinear(40, 24, bias, spec=QuantSpec(3, double_quant=double_quant))
    skeleton.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    x = inputs(4, 40)
    assert torch.equal(skeleton(x), layer(x))
    rebuilt = QuantizedTensor.from_state_dict(
        load_file(tmp_path / "layer.safetensors"), "", layer.quantized.meta()
    )
    assert torch.equal(rebuilt.dequantize(), layer.quantized.dequantize())


def test_from_quantized_keeps_the_quantized_tensor():
    q = quantize(inputs(24, 40), QuantSpec(4, "uniform", 16, double_quant=True))
    layer = QuantLinear.from_quantized(q, bias=torch.ones(24))
    assert layer.quantized.meta() == q.meta()
    assert torch.equal(layer.quantized.dequantize(), q.dequantize())
    assert torch.equal(layer.bias.data, torch.ones(24))


def test_low_precision_inputs_and_casting_keep_float32_scales():
    layer = QuantLinear.from_linear(linear(), QuantSpec(bits=4))
    scales = layer.scales.clone()
    layer = layer.to(torch.bfloat16)
    assert layer.scales.dtype == torch.float32 and torch.equal(layer.scales, scales)
    assert layer.bias.dtype == torch.bfloat16
    x = inputs(2, 40).to(torch.bfloat16)
    y = layer(x)
    expected = F.linear(x, layer.quantized.dequantize(torch.bfloat16), layer.bias)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)


def test_weight_is_read_only():
    layer = QuantLinear.from_linear(linear(), QuantSpec(bits=4))
    weight = layer.weight
    assert weight.shape == (24, 40) and weight.dtype == torch.float32
    assert type(weight * 2) is torch.Tensor  # ordinary maths works and gives plain tensors
    for mutate in (lambda w: w.add_(1), lambda w: w.copy_(w), lambda w: w.__setitem__(0, 1.0)):
        with pytest.raises(LeanfitError, match="cannot be changed in place"):
            mutate(layer.weight)
    with pytest.raises(LeanfitError, match="cannot be changed in place"):
        layer.weight.data += 1


def test_gradients_reach_inputs_and_bias():
    layer = QuantLinear.from_linear(linear(), QuantSpec(bits=4))
    x = inputs(3, 40).requires_grad_()
    layer(x).sum().backward()
    assert x.grad is not None and layer.bias.grad is not None
    assert torch.allclose(layer.bias.grad, torch.full((24,), 3.0))


class TwoLayers(nn.Module):
    """A toy model with two quantized projections and one ordinary head."""

    def __init__(self, up: QuantLinear, down: QuantLinear):
        super().__init__()
        self.up, self.down, self.head = up, down, linear(16, 3, seed=9)

    def forward(self, x):
        return self.head(self.down(torch.relu(self.up(x))))


def toy_model():
    up = QuantLinear.from_linear(linear(32, 64, seed=2), QuantSpec(bits=4))
    down = QuantLinear.from_linear(
        linear(64, 16, bias=False, seed=3), QuantSpec(bits=2, method="uniform")
    )
    return TwoLayers(up, down)


def lora_weight(module):
    """Q + s · B A of a PEFT LoRA layer wrapping a QuantLinear."""
    a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
    return module.base_layer.quantized.dequantize() + module.scaling["default"] * b @ a


def test_peft_wraps_quantlinear_and_adds_the_low_rank_term(tmp_path):
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["up", "down"], init_lora_weights=False
    )
    model = peft.get_peft_model(toy_model(), config)
    up = model.base_model.model.up
    assert isinstance(up, peft.tuners.lora.Linear) and isinstance(up.base_layer, QuantLinear)
    x = inputs(5, 32)
    # init_lora_weights=False draws a non-zero B, so the adapter really contributes.
    assert up.lora_B["default"].weight.abs().sum() > 0
    expected = F.linear(x, lora_weight(up), up.base_layer.bias)
    assert torch.allclose(up(x), expected, atol=1e-5)  # float32 sum-order differences
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    model.save_pretrained(tmp_path)
    fresh = toy_model()
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path)
    assert isinstance(reloaded.base_model.model.down.base_layer, QuantLinear)
    assert torch.allclose(reloaded(x), model(x), atol=1e-6)


def test_merging_into_a_quantized_layer_fails_loudly():
    config = peft.LoraConfig(r=2, target_modules=["up"], init_lora_weights=False)
    model = peft.get_peft_model(toy_model(), config)
    with pytest.raises(LeanfitError, match="merging a LoRA adapter"):
        model.merge_and_unload()


def test_loftq_factors_in_peft_reproduce_the_original_weight():
    dense = linear(64, 48, seed=4)
    result = loftq_decompose(dense.weight, QuantSpec(2), LoraSpec(8, iters=5, lora_alpha=32))
    base = TwoLayers(QuantLinear.from_quantized(result.quantized, dense.bias), toy_model().down)
    config = peft.LoraConfig(r=8, lora_alpha=32, target_modules=["up"])
    model = peft.get_peft_model(base, config)
    up = model.base_model.model.up
    with torch.no_grad():
        up.lora_A["default"].weight.copy_(result.lora_A)
        up.lora_B["default"].weight.copy_(result.lora_B)
    x = inputs(6, 64)
    assert up.scaling["default"] == result.scaling == 4.0
    assert torch.allclose(up(x), F.linear(x, result.effective_weight(), dense.bias), atol=1e-5)
    # ... which is closer to the original layer than the quantized layer alone.
    original = dense(x)
    with model.disable_adapter():
        qlora_gap = torch.linalg.norm(up(x) - original)
    assert torch.linalg.norm(up(x) - original) < 0.95 * qlora_gap


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: QuantLinear(0, 4, spec=QuantSpec(4)), "in_features must be an int >= 1; got 0"),
        (lambda: QuantLinear(4, 4, spec={"bits": 4}), "spec must be a QuantSpec"),
        (
            lambda: QuantLinear.from_linear(nn.Conv1d(2, 2, 1), QuantSpec(4)),
            "linear must be a torch.nn.Linear",
        ),
        (
            lambda: QuantLinear.from_quantized(quantize(torch.ones(8), QuantSpec(4))),
            "quantized.shape",
        ),
        (
            lambda: QuantLinear.from_linear(linear(), QuantSpec(4))(torch.ones(2, 7)),
            "shape \\(..., 40\\)",
        ),
    ],
)
def test_bad_inputs_are_named(call, match):
    with pytest.raises(BadInputError, match=match):
        call()


def test_weight_is_reused_while_unchanged_and_one_layer_at_a_time():
    from leanfit.quantization.nn import forget_dequantized

    layer, other = (
        QuantLinear.from_linear(linear(), QuantSpec(bits=4)),
        QuantLinear.from_linear(linear(seed=3), QuantSpec(4)),
    )
    first = layer.weight
    assert layer.weight is first  # the same layer again: the copy is reused
    assert other.weight is not first and layer.weight is not first  # one slot only
    again = layer.weight
    layer.packed.copy_(QuantLinear.from_linear(linear(seed=5), QuantSpec(bits=4)).packed)
    changed = layer.weight  # the buffer's version counter moved: dequantized afresh
    assert changed is not again and not torch.equal(changed, again)
    assert torch.equal(changed, layer.quantized.dequantize())
    layer.packed = layer.packed.clone()  # a replaced buffer (same values): afresh too
    assert layer.weight is not changed
    forget_dequantized()
    kept = layer.weight
    forget_dequantized()
    assert layer.weight is not kept
