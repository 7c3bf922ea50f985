"""The quantizer and LoRA settings: refused when built, whole when passed, read back from
stored metadata as untrusted input."""

import json
import math

import pytest
import torch

from leanfit.exceptions import BadInputError, CorruptArtifactError
from leanfit.quantization import LoraSpec, QuantSpec, loftq_decompose, quantize
from leanfit.quantization.spec import METHODS


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 0}, "block_size must be an int >= 1; got 0"),
        ({"block_size": 1.5}, "block_size must be an int >= 1; got 1.5"),
        ({"block_size": True}, "block_size must be an int >= 1; got True"),
        ({"bits": 8}, "bits must be one of \\(2, 3, 4\\) with method 'nf'; got 8"),
        ({"bits": True}, "bits must be one of \\(2, 3, 4\\) with method 'nf'; got True"),
        ({"bits": 5, "method": "uniform"}, "bits must be one of \\(2, 3, 4, 8\\)"),
        ({"method": "int"}, "method must be one of \\['nf', 'uniform'\\]; got 'int'"),
        ({"double_quant": 1}, "double_quant must be a bool; got 1"),
    ],
)
def test_a_bad_quantizer_setting_is_refused_when_built(kwargs, match):
    with pytest.raises(BadInputError, match=match):
        QuantSpec(**{"bits": 4, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank must be an int >= 1; got 0"),
        ({"rank": 2.0}, "rank must be an int >= 1; got 2.0"),
        (
            {"iters": 0},
            "iters must be an int >= 1 \\(the qlora init has none\\); got 0",
        ),
        ({"svd": "full"}, "svd must be one of \\('randomized', 'exact'\\); got 'full'"),
        ({"lora_alpha": 0}, "lora_alpha must be a finite number > 0, or None; got 0"),
        ({"lora_alpha": math.nan}, "lora_alpha must be a finite number > 0"),
        ({"lora_alpha": True}, "lora_alpha must be a finite number > 0"),
        ({"init": "pissa"}, "init must be one of \\('loftq', 'qlora'\\); got 'pissa'"),
    ],
)
def test_a_bad_lora_setting_is_refused_when_built(kwargs, match):
    with pytest.raises(BadInputError, match=match):
        LoraSpec(**kwargs)


def test_the_lora_setting_resolves_alpha_and_the_qlora_init():
    assert (LoraSpec(8).alpha, LoraSpec(8).scaling) == (8.0, 1.0)
    assert (LoraSpec(8, lora_alpha=32).alpha, LoraSpec(8, lora_alpha=32).scaling) == (32.0, 4.0)
    assert LoraSpec(8, iters=3, init="qlora").iters == 0  # QLoRA runs no LoftQ step


def test_with_bits_changes_only_the_width_and_checks_it_for_the_method():
    spec = QuantSpec(2, "uniform", 32, True)
    assert spec.with_bits(8) == QuantSpec(8, "uniform", 32, True)
    with pytest.raises(BadInputError, match="bits must be one of \\(2, 3, 4\\) with method 'nf'"):
        QuantSpec(2).with_bits(8)


def test_the_setting_is_checked_once_where_it_is_built(monkeypatch):
    """Quantizing and decomposing with a built setting build (and check) no other: the
    check runs once, when the QuantSpec is made."""
    built = []
    check = QuantSpec.__post_init__

    def counted(self):
        built.append(self)
        check(self)

    monkeypatch.setattr(QuantSpec, "__post_init__", counted)
    spec, lora = QuantSpec(3), LoraSpec(4, iters=2)
    for _ in range(2):
        quantize(torch.randn(8, 16), spec).dequantize()
        loftq_decompose(torch.randn(16, 24), spec, lora)
    assert built == [spec]


@pytest.mark.parametrize(
    ("method", "bits"), [(m, b) for m, widths in METHODS.items() for b in widths]
)
@pytest.mark.parametrize("double_quant", [False, True])
def test_the_stored_form_round_trips_through_json(method, bits, double_quant):
    spec = QuantSpec(bits, method, 16, double_quant)
    stored = json.loads(json.dumps(spec.to_dict()))
    assert list(stored) == ["bits", "method", "block_size", "double_quant"]  # the file order
    assert QuantSpec.from_dict(stored) == spec
    assert QuantSpec.from_dict({"shape": [4, 4], **stored}) == spec  # other keys are ignored


@pytest.mark.parametrize(
    ("stored", "match"),
    [
        ({"bits": 5, "method": "nf", "block_size": 64, "double_quant": False}, "bits must be"),
        ({"bits": 4, "method": "int4", "block_size": 64, "double_quant": False}, "method must"),
        ({"bits": 4, "method": "nf", "block_size": "64", "double_quant": False}, "block_size"),
        ({"bits": 4, "method": "nf", "block_size": 64, "double_quant": "no"}, "double_quant"),
        ({"bits": 4, "method": "nf", "block_size": 64}, "'double_quant'"),
        ([4, "nf", 64, False], "invalid quantizer setting"),
    ],
)
def test_corrupt_stored_metadata_is_a_corrupt_artifact(stored, match):
    with pytest.raises(CorruptArtifactError, match=match):
        QuantSpec.from_dict(stored)
