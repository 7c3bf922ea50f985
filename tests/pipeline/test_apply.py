"""The walker: LoftQConfig, streaming (sharded safetensors, GGUF), GPT-2 Conv1D, convolutions
through the module API, mixed precision, the report against the files, refusals."""

import copy
import json
import math
import warnings
import weakref

import pytest
import torch
from gguf import GGMLQuantizationType
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
)

from leanfit.checkpoints import load, load_into, merge_into
from leanfit.checkpoints.source import SafetensorsCheckpoint
from leanfit.exceptions import BadInputError, CorruptArtifactError
from leanfit.pipeline import LoftQConfig, quantize_checkpoint, quantize_module
from leanfit.pretrained import model_path
from leanfit.quantization import LoraSpec, QuantLinear, QuantSpec
from tests.shared import WIDER, tiny_decoder

FAST = LoftQConfig(bits=4, rank=4, iters=2)


def read_json(path):
    return json.loads(path.read_text())


# --- LoftQConfig -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 5}, r"bits must be one of \(2, 3, 4\) with method 'nf'; got 5"),
        ({"method": "int"}, r"method must be one of \['nf', 'uniform'\]; got 'int'"),
        ({"rank": 0}, "rank must be an int >= 1; got 0"),
        ({"iters": 0}, r"iters must be an int >= 1 \(the qlora init has none\); got 0"),
        ({"init": "pissa"}, r"init must be one of \('loftq', 'qlora'\); got 'pissa'"),
        ({"svd": "full"}, r"svd must be one of \('randomized', 'exact'\); got 'full'"),
        ({"lora_alpha": -1.0}, "lora_alpha must be a finite number > 0, or None; got -1.0"),
        ({"double_quant": 1}, "double_quant must be a bool; got 1"),
        ({"seed": -2}, "seed must be an int >= 0; got -2"),
        ({"avg_bits": 2.5, "first_high_layers": 2}, "give avg_bits or first_high_layers"),
        ({"avg_bits": 5.0}, r"avg_bits must be a number in \[2, 4\]; got 5.0"),
        ({"first_high_layers": 1, "high_bits": 2}, r"high_bits must be greater than bits \(2\)"),
        ({"first_high_layers": -1}, "first_high_layers must be an int >= 0; got -1"),
        ({"targets": "q_proj"}, "targets must be a list of non-empty strings, or None"),
        ({"targets": []}, "targets must be a non-empty list of patterns, or None"),
    ],
)
def test_config_errors_are_named(kwargs, match):
    with pytest.raises(BadInputError, match=match):
        LoftQConfig(**kwargs)


def test_config_json_round_trip(tmp_path):
    config = LoftQConfig(
        bits=3, rank=8, lora_alpha=32.0, double_quant=True, avg_bits=3.5, targets=["q", "v"]
    )
    assert config.targets == ("q", "v")
    # the run composes the two settings of the maths, built (and checked) once
    assert config.quant == QuantSpec(3, "nf", 64, True)
    assert config.lora == LoraSpec(8, 32.0) and config.lora.alpha == 32.0
    path = config.save(tmp_path / "config.json")
    stored = read_json(path)
    assert stored["targets"] == ["q", "v"] and not {"quant", "lora"} & set(stored)
    assert LoftQConfig.load(path) == config
    qlora = LoftQConfig(init="qlora", iters=7)
    assert qlora.iters == qlora.lora.iters == 0
    assert LoftQConfig.from_dict(qlora.to_dict()) == qlora
    assert LoftQConfig().lora.alpha == 16.0  # alpha defaults to r: scaling 1
    with pytest.raises(BadInputError, match=r"no fields \['ranks'\]"):
        LoftQConfig.from_dict({"bits": 2, "ranks": 3})
    path.write_text('{"bits": 9}')
    with pytest.raises(CorruptArtifactError, match="invalid LoftQ config .* bits must be"):
        LoftQConfig.load(path)


# --- tiny transformers models ----------------------------------------------------------


def tiny_llama(**overrides):
    return tiny_decoder(**{**WIDER, **overrides})


TOKENS = torch.tensor([[1, 5, 17, 33, 60, 2, 91, 40]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


def test_sharded_checkpoint_is_streamed_one_tensor_at_a_time(tmp_path, monkeypatch):
    source = tiny_llama(tie_word_embeddings=True)
    source.save_pretrained(tmp_path / "source", max_shard_size="40KB")
    assert len(list((tmp_path / "source").glob("model-*.safetensors"))) >= 3

    alive, read = [], SafetensorsCheckpoint.read

    def tracked_read(self, name):
        # Every tensor read before must be gone: processed, written and let go.
        assert [ref() for ref in alive if ref() is not None] == [], name
        tensor = read(self, name)
        alive.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(SafetensorsCheckpoint, "read", tracked_read)
    out = tmp_path / "out"
    # max_shard_bytes=1: every tensor (or quantized group) is written as soon as it is added.
    report = quantize_checkpoint(tmp_path / "source", out, FAST, max_shard_bytes=1, progress=False)
    stored = len(source.state_dict()) - 1  # the tied lm_head is not stored
    assert len(alive) == stored and len(report.matrices) == 14  # 2 blocks × 7 projections

    weight_map = read_json(out / "backbone" / "model.safetensors.index.json")["weight_map"]
    shards = sorted((out / "backbone").glob("model-*-of-*.safetensors"))
    assert len(shards) == stored  # one group per shard: untouched tensors and quantized ones
    assert set(weight_map.values()) == {p.name for p in shards}
    assert shards[-1].name == f"model-{stored:05d}-of-{stored:05d}.safetensors"

    loaded = load(out).eval()
    inner = loaded.base_model.model
    assert inner.lm_head.weight is inner.model.embed_tokens.weight  # tied again
    reference = merge_into(copy.deepcopy(source), out)
    # float32, same weights, LoRA applied as a separate path: ~1e-6 relative rounding.
    torch.testing.assert_close(logits(loaded), logits(reference), rtol=0, atol=1e-5)

    base = load(out, task="base").eval()  # LlamaModel: the stored "model." prefix is dropped
    assert isinstance(base.base_model.model.layers[1].mlp.down_proj.base_layer, QuantLinear)
    with torch.no_grad():
        hidden = base(input_ids=TOKENS).last_hidden_state
        assert torch.equal(hidden, inner.model(input_ids=TOKENS).last_hidden_state)


def test_ties_come_from_the_model_and_format_1_outputs_still_load(tmp_path):
    """The source's ties are not read when a table chooses the targets (building the model
    costs seconds of imports); ``load`` finds them in the model it builds. Outputs of format
    version 1, which listed them in ``quantization_config.json``, load the same."""
    source = tiny_llama(tie_word_embeddings=True)
    source.save_pretrained(tmp_path / "source")
    with SafetensorsCheckpoint(tmp_path / "source") as checkpoint:
        assert checkpoint._structure is None  # not built by opening
        assert checkpoint.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    out = tmp_path / "out"
    quantize_checkpoint(tmp_path / "source", out, FAST, progress=False)
    meta_path = out / "backbone" / "quantization_config.json"
    meta = read_json(meta_path)
    assert "tied" not in meta
    current = logits(load(out).eval())
    meta.update(format_version=1, tied={"lm_head.weight": "model.embed_tokens.weight"})
    meta_path.write_text(json.dumps(meta))
    inner = load(out).eval().base_model.model
    assert inner.lm_head.weight is inner.model.embed_tokens.weight
    assert torch.equal(logits(inner), current)


def test_gpt2_conv1d_weights_are_transposed_and_restored(tmp_path):
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=96,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    source = GPT2LMHeadModel(config).eval()
    source.save_pretrained(tmp_path / "gpt2")
    report = quantize_checkpoint(tmp_path / "gpt2", tmp_path / "out", FAST, progress=False)
    meta = read_json(tmp_path / "out" / "backbone" / "quantization_config.json")["targets"]
    c_attn = meta["transformer.h.0.attn.c_attn"]
    assert c_attn["transposed"] and c_attn["shape"] == [32, 96]  # Conv1D stores in × out
    assert c_attn["quantized"]["shape"] == [96, 32]  # quantized as the out × in matrix
    assert len(meta) == 8 and all(m.error < m.qlora_error for m in report.matrices)

    loaded = load(tmp_path / "out").eval()
    layer = loaded.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(layer.base_layer, QuantLinear)
    assert (layer.base_layer.in_features, layer.base_layer.out_features) == (32, 96)
    reference = merge_into(copy.deepcopy(source), tmp_path / "out")
    assert not torch.equal(
        reference.transformer.h[0].attn.c_attn.weight,
        source.state_dict()["transformer.h.0.attn.c_attn.weight"],
    )
    torch.testing.assert_close(logits(loaded), logits(reference), rtol=0, atol=1e-5)  # as above


def test_gguf_input_is_quantized_and_loads_as_a_causal_lm(tmp_path, write_gguf):
    source = tiny_llama(tie_word_embeddings=False)
    path = tmp_path / "tiny.gguf"
    write_gguf(source, "llama", path, {"ffn_down": GGMLQuantizationType.Q8_0})
    with pytest.warns(UserWarning, match="holds no tokenizer"):
        quantize_checkpoint(path, tmp_path / "out", FAST, progress=False)
    config = read_json(tmp_path / "out" / "backbone" / "config.json")
    assert config["architectures"] == ["LlamaForCausalLM"]  # filled in: GGUF has none
    adapter = read_json(tmp_path / "out" / "adapter" / "adapter_config.json")
    assert adapter["task_type"] == "CAUSAL_LM"
    loaded = load(tmp_path / "out").eval()
    assert type(loaded).__name__ == "PeftModelForCausalLM"
    # The reference reads the GGUF file with transformers (q/k un-permuted, Q8_0 dequantized).
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    merge_into(reference, tmp_path / "out")
    torch.testing.assert_close(logits(loaded), logits(reference), rtol=0, atol=1e-5)  # as above


def test_mixed_precision_plan_reaches_the_artifact(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "source")
    config = LoftQConfig(bits=2, rank=4, iters=1, first_high_layers=1)
    report = quantize_checkpoint(tmp_path / "source", tmp_path / "out", config, progress=False)
    meta = read_json(tmp_path / "out" / "backbone" / "quantization_config.json")["targets"]
    assert {m["quantized"]["bits"] for k, m in meta.items() if ".layers.0." in k} == {4}
    assert {m["quantized"]["bits"] for k, m in meta.items() if ".layers.1." in k} == {2}
    # Codes plus one float32 scale per 64 values: bits + 0.5 per parameter, 3.5 on average.
    assert sorted({m.bits_per_param for m in report.matrices}) == [2.5, 4.5]
    assert report.bits_per_param == pytest.approx(3.5)
    layer = load(tmp_path / "out").base_model.model.model.layers[0].mlp.up_proj.base_layer
    assert layer.spec == QuantSpec(4)


# --- in-memory modules and convolutions --------------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(4, 16, kernel_size=3, padding=1)
        self.conv1d = nn.Conv1d(16, 12, kernel_size=3, padding=1)
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))  # (n, 16, h, w)
        y = torch.relu(self.conv1d(y.flatten(2)))  # (n, 12, h·w)
        return self.head(y.mean(-1))


def test_convolutions_through_the_module_api(tmp_path):
    model = SmallCNN().eval()
    config = LoftQConfig(
        bits=4, rank=2, iters=3, targets=("conv", "conv1d", "head"), include_conv=True
    )
    report = quantize_module(model, tmp_path / "out", config, progress=False)
    assert [(m.kind, m.matrix_shape) for m in report.matrices] == [
        ("conv", (16, 36)),
        ("conv", (12, 48)),
        ("linear", (10, 12)),
    ]
    assert all(m.error < m.qlora_error for m in report.matrices)
    assert not (tmp_path / "out" / "backbone" / "config.json").exists()  # a plain module
    with pytest.raises(CorruptArtifactError, match=r"has no config.json.*load_into\(model"):
        load(tmp_path / "out")

    loaded = load_into(SmallCNN(seed=1), tmp_path / "out").eval()  # other random weights
    assert isinstance(loaded.base_model.model.head.base_layer, QuantLinear)
    assert loaded.base_model.model.conv.lora_A["default"].weight.shape == (2, 4, 3, 3)
    reference = merge_into(copy.deepcopy(model), tmp_path / "out")
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # float32, same weights; convolutions apply lora_B ∘ lora_A as two convolutions.
        torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=1e-5)
        assert not torch.allclose(reference(x), model(x), atol=1e-3)  # 4 bits changed it


def test_a_module_without_blocks_needs_target_patterns(tmp_path):
    with pytest.raises(BadInputError, match="no weight matched all linear layers of the blocks"):
        quantize_module(SmallCNN(), tmp_path / "out", LoftQConfig(), progress=False)
    assert list(tmp_path.iterdir()) == []


# --- refusals ------------------------------------------------------------------------------


def test_existing_output_is_kept_without_overwrite(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "source")
    out = tmp_path / "out"
    quantize_checkpoint(tmp_path / "source", out, FAST, progress=False)
    before = (out / "loftq_config.json").read_text()
    other = LoftQConfig(bits=2, rank=3, iters=1)
    with pytest.raises(BadInputError, match="exists; pass --overwrite"):
        quantize_checkpoint(tmp_path / "source", out, other, progress=False)
    assert (out / "loftq_config.json").read_text() == before
    quantize_checkpoint(tmp_path / "source", out, other, overwrite=True, progress=False)
    assert LoftQConfig.load(out / "loftq_config.json") == other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source"]  # no leftovers


def test_a_rank_too_large_for_a_target_is_named_and_nothing_is_written(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "source")
    config = LoftQConfig(bits=4, rank=40, iters=1)  # k_proj is 32 × 64: rank ≤ 31
    with pytest.raises(BadInputError, match=r"got 40 for '.*k_proj.weight' .*at most 31"):
        quantize_checkpoint(tmp_path / "source", tmp_path / "out", config, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


# --- real weights through the whole pipeline -------------------------------------------


def test_loftq_beats_qlora_on_minilm_and_the_report_is_the_files(minilm_loftq, minilm_fp32):
    report = read_json(minilm_loftq / "loftq_report.json")
    totals, matrices = report["totals"], report["matrices"]
    # The method's promise with a margin (as in test_loftq): every matrix improves, and the
    # total error drops by > 10 % (measured 0.570 → 0.475, -16.6 %).
    assert all(m["error"] < m["qlora_error"] for m in matrices)
    assert totals["loftq_error"] < 0.9 * totals["qlora_error"]
    assert totals["qlora_error"] == pytest.approx(0.570, abs=0.005)  # test_loftq's reference
    assert totals["bits_per_param"] == 2.5 and totals["matrices"] == 37

    original = {name: p.detach().clone() for name, p in minilm_fp32.named_parameters()}
    merged = {n: p.detach() for n, p in merge_into(minilm_fp32, minilm_loftq).named_parameters()}
    squared = norms = 0.0
    for m in matrices:
        w = original[m["name"]]
        error = float(torch.linalg.norm(w - merged[m["name"]]) / torch.linalg.norm(w))
        # Both are float32 norms of the same difference, summed in a different order.
        assert error == pytest.approx(m["error"], rel=1e-4), m["name"]
        squared += float(torch.linalg.norm(w - merged[m["name"]])) ** 2
        norms += float(torch.linalg.norm(w)) ** 2
    assert math.sqrt(squared / norms) == pytest.approx(totals["loftq_error"], rel=1e-4)
    assert "| QLoRA error | LoftQ error |" in (minilm_loftq / "loftq_report.md").read_text()


def test_qlora_init_starts_exactly_from_q(tmp_path, minilm_fp32):
    config = LoftQConfig(bits=2, init="qlora")
    report = quantize_checkpoint(model_path("minilm"), tmp_path / "out", config, progress=False)
    assert all(m.errors == [] and m.error == m.qlora_error for m in report.matrices)
    assert report.error == pytest.approx(0.570, abs=0.005)  # QLoRA's error, as above
    loaded = load(tmp_path / "out").base_model.model
    layer = loaded.encoder.layer[3].output.dense
    assert torch.equal(layer.lora_B["default"].weight, torch.zeros(384, 16))  # PEFT's default
    bound = 1 / math.sqrt(1536)  # PEFT's lora_A: Kaiming-uniform, U(-1/√in, 1/√in)
    assert 0 < float(layer.lora_A["default"].weight.abs().max()) <= bound


@pytest.mark.slow
def test_smollm2_gguf_first_block_through_the_pipeline(tmp_path, smollm2_path):
    from transformers import AutoTokenizer

    config = LoftQConfig(bits=4, rank=16, iters=5, targets=(r"model\.layers\.0\..*",))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the real file has a tokenizer
        report = quantize_checkpoint(smollm2_path, tmp_path / "out", config, progress=False)
    assert len(report.matrices) == 7 and report.error < 0.9 * report.qlora_error
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "backbone")
    batch = tokenizer("The capital of France is", return_tensors="pt")
    loaded = load(tmp_path / "out").eval()
    reference = AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name
    ).eval()
    merge_into(reference, tmp_path / "out")
    with torch.no_grad():
        got, expected = loaded(**batch).logits, reference(**batch).logits
    # float32 through 30 blocks; logits are O(10): rounding stays far below 1e-3.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)
    assert tokenizer.decode(got[0, -1].argmax()) == " Paris"
