"""The LoftQ output directory on real MiniLM weights: layout, PEFT's own adapter format,
loading onto packed layers, the float16 export and bitsandbytes, and damaged directories."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, GPT2Config, GPT2Model

from leanfit.checkpoints import load, load_into, merge_into
from leanfit.checkpoints.layout import FORMAT_VERSION
from leanfit.checkpoints.source import open_checkpoint
from leanfit.exceptions import BadInputError, CorruptArtifactError
from leanfit.pipeline import LoftQConfig, quantize_checkpoint
from leanfit.pretrained import model_path
from leanfit.quantization import LoraSpec, QuantizedTensor, QuantLinear, QuantSpec, loftq_decompose

TARGETS = 37  # 6 blocks × 6 linear layers + the pooler


def read_json(path):
    return json.loads(path.read_text())


def targets_of(directory):
    return read_json(directory / "backbone" / "quantization_config.json")["targets"]


def test_output_layout(minilm_loftq):
    root = minilm_loftq
    assert sorted(p.name for p in root.iterdir()) == [
        "adapter",
        "backbone",
        "dequantized",
        "loftq_config.json",
        "loftq_report.json",
        "loftq_report.md",
    ]
    assert not list(root.parent.glob(".*partial"))  # the temporary directory was renamed
    backbone = {p.name for p in (root / "backbone").iterdir()}
    assert {"config.json", "tokenizer.json", "vocab.txt", "quantization_config.json"} <= backbone
    assert {p.name for p in (root / "adapter").iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert LoftQConfig.load(root / "loftq_config.json") == LoftQConfig(bits=2, rank=16, iters=5)

    meta = read_json(root / "backbone" / "quantization_config.json")
    assert meta["format"] == "leanfit-loftq" and meta["format_version"] == FORMAT_VERSION
    assert meta["architecture"] == "BertModel" and len(meta["targets"]) == TARGETS
    query = meta["targets"]["encoder.layer.0.attention.self.query"]
    assert query["quantized"] == {
        "shape": [384, 384],
        "bits": 2,
        "method": "nf",
        "block_size": 64,
        "double_quant": False,
    }
    weight_map = read_json(root / "backbone" / "model.safetensors.index.json")["weight_map"]
    assert "encoder.layer.0.attention.self.query.weight" not in weight_map  # no float weight
    stored = {}
    for shard in sorted(set(weight_map.values())):
        stored.update(load_file(root / "backbone" / shard))
    packed = stored["encoder.layer.0.attention.self.query.packed"]
    assert packed.dtype == torch.uint8 and packed.numel() == 384 * 384 * 2 // 8
    assert stored["encoder.layer.0.attention.self.query.scales"].shape == (384 * 384 // 64,)
    assert stored["encoder.layer.0.attention.self.query.bias"].dtype == torch.float32
    # Codes (2 bits) plus one float32 absmax per 64 values: exactly 2.5 bits per parameter.
    target_bytes = sum(
        t.numel() * t.element_size()
        for name, t in stored.items()
        if name.rpartition(".")[0] in meta["targets"] and not name.endswith(".bias")
    )
    target_params = sum(
        e["quantized"]["shape"][0] * e["quantized"]["shape"][1] for e in meta["targets"].values()
    )
    assert 8 * target_bytes / target_params == 2.5


def test_adapter_is_exactly_what_peft_saves(minilm_loftq, tmp_path):
    model = load(minilm_loftq)
    model.save_pretrained(tmp_path / "resaved")
    ours = load_file(minilm_loftq / "adapter" / "adapter_model.safetensors")
    peft_saved = load_file(tmp_path / "resaved" / "adapter_model.safetensors")
    assert ours.keys() == peft_saved.keys() and len(ours) == 2 * TARGETS
    assert all(torch.equal(ours[key], peft_saved[key]) for key in ours)
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
    assert ours[key].shape == (16, 384)
    config = read_json(minilm_loftq / "adapter" / "adapter_config.json")
    resaved = read_json(tmp_path / "resaved" / "adapter_config.json")
    for field in ("peft_type", "r", "lora_alpha", "fan_in_fan_out", "bias", "task_type"):
        assert config[field] == resaved[field], field
    # PEFT saves a shortened but equivalent list ("query", "dense", ...); equal key sets above
    # show both select the same modules. Ours names each target in full.
    assert sorted(config["target_modules"]) == sorted(targets_of(minilm_loftq))
    assert (config["r"], config["lora_alpha"]) == (16, 16)


def test_loaded_model_runs_packed_layers_and_computes_q_plus_scaled_ba(
    minilm_loftq, minilm_fp32, minilm_batch, monkeypatch
):
    calls = []
    dequantize = QuantizedTensor.dequantize
    monkeypatch.setattr(
        QuantizedTensor,
        "dequantize",
        lambda self, *a, **k: calls.append(1) or dequantize(self, *a, **k),
    )
    model = load(minilm_loftq).eval()
    # PEFT reads each base layer's weight ~20 times while wrapping it; one dequantization
    # per layer is reused (reuse_dequantized_weight), so loading stays cheap.
    assert len(calls) == TARGETS
    monkeypatch.undo()
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == TARGETS
    assert not any(name.endswith("base_layer.weight") for name, _ in model.named_parameters())
    reference = merge_into(minilm_fp32, minilm_loftq)
    original = AutoModel.from_pretrained(model_path("minilm")).eval()
    with torch.no_grad():
        hidden = model(**minilm_batch).last_hidden_state
        expected = reference(**minilm_batch).last_hidden_state
        before = original(**minilm_batch).last_hidden_state
    # Same weights in float32, computed as x·Qᵀ + s·(x·Aᵀ)·Bᵀ instead of x·(Q + s·B·A)ᵀ:
    # rounding differences of ~1e-6 relative per layer over 6 layers, on values of size ≤ 6.
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-4)
    assert (expected - before).abs().max() > 0.1  # 2-bit weights do change the outputs


def test_stored_result_is_loftq_decompose_of_the_original_weight(minilm_loftq, minilm_fp32):
    original = {name: p.detach().clone() for name, p in minilm_fp32.named_parameters()}
    merge_into(minilm_fp32, minilm_loftq)
    for index, module in list(enumerate(targets_of(minilm_loftq)))[::12]:
        name = module + ".weight"
        # The walker seeds target i (in checkpoint order) with seed + i.
        result = loftq_decompose(original[name], QuantSpec(2), LoraSpec(16, iters=5), seed=index)
        merged = minilm_fp32.get_parameter(name).detach()
        # Same codes and factors; Q + s·B·A is the same float32 expression: identical.
        assert torch.equal(merged, result.effective_weight()), module


def test_sequence_classification_head_on_the_quantized_backbone(minilm_loftq, minilm_batch):
    base = load(minilm_loftq).eval()
    classifier = load(minilm_loftq, task="sequence-classification", num_labels=3).eval()
    bert = classifier.base_model.model.bert
    assert isinstance(bert.encoder.layer[0].attention.self.query.base_layer, QuantLinear)
    head = classifier.base_model.model.classifier
    assert head.weight.shape == (3, 384) and not head.weight.is_meta
    # transformers' initializer: normal with std = initializer_range = 0.02 (1152 draws: the
    # sample std is within 0.02 · (1 ± 0.1) with overwhelming probability).
    assert 0.018 < float(head.weight.std()) < 0.022 and torch.equal(head.bias, torch.zeros(3))
    with torch.no_grad():
        logits = classifier(**minilm_batch).logits
        assert torch.equal(
            bert(**minilm_batch).last_hidden_state, base(**minilm_batch).last_hidden_state
        )  # the same layers and tensors: bitwise equal
    assert logits.shape == (2, 3) and bool(torch.isfinite(logits).all())


def test_low_precision_and_trainable_adapter(minilm_loftq, minilm_batch):
    model = load(minilm_loftq, dtype=torch.bfloat16, is_trainable=True)
    layer = model.base_model.model.encoder.layer[0].attention.self.query
    assert layer.base_layer.scales.dtype == torch.float32  # quantization statistics stay fp32
    assert layer.base_layer.bias.dtype == torch.bfloat16
    assert model.base_model.model.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * TARGETS and all(".lora_" in name for name in trainable)
    out = model(**minilm_batch).last_hidden_state
    out.float().pow(2).mean().backward()
    assert layer.lora_A["default"].weight.grad is not None
    assert layer.base_layer.packed.grad is None


def test_dequantized_export_holds_q_in_float16(minilm_loftq, minilm_fp32):
    exported = AutoModel.from_pretrained(minilm_loftq / "dequantized")
    assert exported.embeddings.word_embeddings.weight.dtype == torch.float16  # config dtype
    loaded = load(minilm_loftq).base_model.model
    for module in targets_of(minilm_loftq):
        q = loaded.get_submodule(module).base_layer.quantized
        assert torch.equal(exported.get_submodule(module).weight, q.dequantize(torch.float16))
    torch.testing.assert_close(
        exported.embeddings.word_embeddings.weight,
        minilm_fp32.embeddings.word_embeddings.weight.half(),
        rtol=0,
        atol=0,
    )


def bnb_nf4(x):
    functional = pytest.importorskip("bitsandbytes.functional")
    packed, state = functional.quantize_4bit(x, quant_type="nf4", blocksize=64)
    restored = functional.dequantize_4bit(packed, state, quant_type="nf4", blocksize=64)
    packed = packed.reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[: x.numel()]
    return codes.to(torch.uint8), state.absmax, restored


def test_bitsandbytes_requantizes_the_nf4_export_to_our_codes(tmp_path):
    """What a GPU user gets from ``dequantized/`` with bitsandbytes NF4 (block 64).

    Q's values are ``table[c]·a`` with a = absmax of the block in float32. Each block holds
    ±a itself (the value that set the absmax has code ±1), so bitsandbytes finds the same
    absmax and, dividing, the same codes. In float16, though, a is rounded: re-quantizing the
    float16 export gives the same codes but absmax = fp16(a), i.e. Q up to a relative 2⁻¹¹
    of the block scale. Re-quantizing Q in float32 gives our codes, scales and Q bit for bit.
    """
    out = tmp_path / "nf4"
    config = LoftQConfig(bits=4, init="qlora")
    quantize_checkpoint(model_path("minilm"), out, config, export_dequantized=True, progress=False)
    loaded = load(out).base_model.model
    with open_checkpoint(out / "dequantized") as exported:
        for module in targets_of(out):
            q = loaded.get_submodule(module).base_layer.quantized
            weight16 = exported.read(module + ".weight").half()  # read() gives float32
            codes, absmax, _ = bnb_nf4(weight16)
            assert torch.equal(codes, q.codes()), module
            assert torch.equal(absmax, q.block_scales().half().float()), module
            codes, absmax, restored = bnb_nf4(q.dequantize())
            assert torch.equal(codes, q.codes()) and torch.equal(absmax, q.block_scales())
            assert torch.equal(restored, q.dequantize()), module


# --- damaged or foreign directories ----------------------------------------------------


@pytest.fixture
def artifact(minilm_loftq, tmp_path):
    """A copy of the MiniLM output without the float16 export, to damage."""
    copy = tmp_path / "copy"
    shutil.copytree(minilm_loftq, copy, ignore=shutil.ignore_patterns("dequantized"))
    return copy


def edit_json(path, change):
    values = read_json(path)
    change(values)
    path.write_text(json.dumps(values))


def test_a_directory_that_is_not_a_leanfit_output_is_refused(tmp_path):
    with pytest.raises(BadInputError, match="must be a leanfit quantize output .* 'vocab.txt'"):
        load(model_path("minilm"))
    with pytest.raises(BadInputError, match="must be a leanfit quantize output"):
        load(tmp_path / "absent")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: (d / "backbone" / "config.json").unlink(), "has no config.json"),
        (
            lambda d: edit_json(
                d / "backbone" / "quantization_config.json",
                lambda v: v.update(format_version=FORMAT_VERSION + 1),
            ),
            f"format_version {FORMAT_VERSION + 1}, newer than the {FORMAT_VERSION} this leanfit",
        ),
        (
            lambda d: edit_json(
                d / "backbone" / "quantization_config.json", lambda v: v.update(format="other")
            ),
            "is not a 'leanfit-loftq' file",
        ),
        (
            lambda d: (d / "backbone" / "quantization_config.json").write_text("{"),
            "is not valid JSON",
        ),
        (
            lambda d: edit_json(d / "adapter" / "adapter_config.json", lambda v: v.update(r=8)),
            r"must have shape \(8, 384\) \(rank 8\); got \(16, 384\) \(74 tensors",
        ),
        (
            lambda d: edit_json(
                d / "adapter" / "adapter_config.json",
                lambda v: v.update(target_modules=v["target_modules"][1:]),
            ),
            "targets 36 modules, the backbone 37",
        ),
        (lambda d: (d / "adapter" / "adapter_model.safetensors").unlink(), "must hold"),
        (
            lambda d: next((d / "backbone").glob("model-*.safetensors")).unlink(),
            r"backbone shards \['model-00001-of-00001.safetensors'\] .* are missing",
        ),
    ],
)
def test_damaged_outputs_are_named(artifact, damage, match):
    damage(artifact)
    with pytest.raises(CorruptArtifactError, match=match):
        load(artifact)


def test_adapter_tensors_of_the_wrong_shape_or_missing_are_named(artifact):
    path = artifact / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    key = "base_model.model.encoder.layer.2.output.dense.lora_A.weight"
    tensors[key] = tensors[key][:8].contiguous()
    save_file(tensors, path)
    with pytest.raises(CorruptArtifactError, match=rf"'{key}' must have shape \(16, 1536\).*\(8,"):
        load(artifact)
    del tensors[key]
    save_file(tensors, path)
    with pytest.raises(CorruptArtifactError, match=rf"missing \['{key}'\]"):
        load(artifact)


def test_a_backbone_lacking_a_tensor_or_for_another_model_is_refused(artifact):
    backbone = artifact / "backbone"
    (shard,) = backbone.glob("model-*.safetensors")
    tensors = load_file(shard)
    del tensors["embeddings.LayerNorm.weight"]
    save_file(tensors, shard)
    edit_json(
        backbone / "model.safetensors.index.json",
        lambda v: v["weight_map"].pop("embeddings.LayerNorm.weight"),
    )
    with pytest.raises(CorruptArtifactError, match=r"lacks 1 tensors .*'embeddings.LayerNorm"):
        load(artifact)
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50))
    with pytest.raises(CorruptArtifactError, match="not weights of the model built"):
        load_into(gpt2, artifact)


def test_a_sentence_transformers_checkpoint_loads_as_its_head_class(
    artifact, minilm_loftq, minilm_batch
):
    """MiniLM as sentence-transformers models such as all-mpnet-base-v2 are saved: the base
    model's tensors (no ``bert.`` prefix) while config.json names a head class."""
    backbone = artifact / "backbone"
    edit_json(backbone / "config.json", lambda v: v.update(architectures=["BertForMaskedLM"]))
    edit_json(
        backbone / "quantization_config.json", lambda v: v.update(architecture="BertForMaskedLM")
    )
    model = load(artifact).eval()
    masked_lm = model.get_base_model()
    assert type(masked_lm).__name__ == "BertForMaskedLM"
    # BertForMaskedLM has no pooler: that quantized layer is left out, as transformers does.
    assert sum(isinstance(m, QuantLinear) for m in masked_lm.modules()) == TARGETS - 1
    embeddings = masked_lm.bert.embeddings.word_embeddings.weight
    assert masked_lm.cls.predictions.decoder.weight is embeddings  # tied, as transformers ties
    with torch.no_grad():
        hidden = model(**minilm_batch, output_hidden_states=True).hidden_states[-1]
        expected = load(minilm_loftq).eval()(**minilm_batch).last_hidden_state
    assert torch.equal(hidden, expected)  # the same packed layers and tensors: bitwise equal


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "lm"}, "task must be one of .*'causal-lm'.*; got 'lm'"),
        ({"num_labels": 0}, "num_labels must be an int >= 1, or None; got 0"),
    ],
)
def test_bad_load_arguments_are_named(minilm_loftq, kwargs, match):
    with pytest.raises(BadInputError, match=match):
        load(minilm_loftq, **kwargs)
