"""A leanfit output loaded the standard way: ``from_pretrained(OUT/backbone)`` through the
registered quantizer (quant_method "leanfit"), then ``PeftModel.from_pretrained(model,
OUT/adapter)``; used with ``generate``, a pipeline, the ``Trainer`` and TRL's ``SFTTrainer``."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
    pipeline,
)

import leanfit.checkpoints.hf  # noqa: F401  (registers quant_method "leanfit")
from leanfit.checkpoints import load
from leanfit.checkpoints.hf import LeanfitConfig, peft_arguments
from leanfit.checkpoints.layout import FORMAT_VERSION
from leanfit.exceptions import BadInputError, CorruptArtifactError
from leanfit.finetune.data import load_data
from leanfit.pipeline import LoftQConfig, quantize_checkpoint
from leanfit.pretrained import model_path
from leanfit.quantization import QuantLinear
from tests.conformance.models import ARCHITECTURES, example_inputs, save_checkpoint
from tests.shared import TINY_BERT


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def edit_json(path: Path, change) -> None:
    values = read_json(path)
    change(values)
    path.write_text(json.dumps(values))


def from_pretrained(out: Path, auto=AutoModelForCausalLM, is_trainable=False, **kwargs):
    """The documented two lines."""
    model = auto.from_pretrained(out / "backbone", **kwargs)
    return PeftModel.from_pretrained(model, out / "adapter", is_trainable=is_trainable)


def quant_layers(model: torch.nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@pytest.fixture
def artifact(tiny_causal_loftq, tmp_path) -> Path:
    """A private copy of the tiny output, to damage."""
    return Path(shutil.copytree(tiny_causal_loftq, tmp_path / "out"))


@pytest.fixture(scope="module")
def prompt(tiny_causal_loftq) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_loftq / "backbone")
    return tokenizer(["It is a truth universally acknowledged"], return_tensors="pt").input_ids


# ------------------------------------------------------------------------ the config written


def test_backbone_config_names_every_target_with_its_quantizer(tiny_causal_loftq):
    backbone = tiny_causal_loftq / "backbone"
    written = read_json(backbone / "config.json")["quantization_config"]
    targets = read_json(backbone / "quantization_config.json")["targets"]
    assert (written["quant_method"], written["format"], written["format_version"]) == (
        "leanfit",
        "leanfit-loftq",
        FORMAT_VERSION,
    )
    listed = {
        module: {k: group[k] for k in ("bits", "method", "block_size", "double_quant")}
        for group in written["groups"]
        for module in group["modules"]
    }
    assert listed == {
        module: {k: entry["quantized"][k] for k in ("bits", "method", "block_size", "double_quant")}
        for module, entry in targets.items()
    }
    assert len(listed) == 14  # 2 blocks × 7 projections
    # The float16 export is an ordinary checkpoint: no quantization_config there.
    assert not (tiny_causal_loftq / "dequantized").exists()


def test_mixed_bits_give_one_group_per_setting(tmp_path):
    from tests.shared import write_tiny_causal_lm

    out = tmp_path / "loftq"
    config = LoftQConfig(bits=2, rank=4, iters=1, first_high_layers=1, high_bits=4)
    quantize_checkpoint(write_tiny_causal_lm(tmp_path / "model"), out, config, progress=False)
    groups = read_json(out / "backbone" / "config.json")["quantization_config"]["groups"]
    assert sorted((g["bits"], len(g["modules"])) for g in groups) == [(2, 7), (4, 7)]
    model = from_pretrained(out)
    bits = {n.rpartition("base_layer")[0]: m.spec.bits for n, m in quant_layers(model).items()}
    assert {b for n, b in bits.items() if ".layers.0." in n} == {4}
    assert {b for n, b in bits.items() if ".layers.1." in n} == {2}


# ------------------------------------------------------------------ loading, packed and exact


def test_from_pretrained_keeps_targets_packed_and_equals_load(tiny_causal_loftq, prompt):
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_loftq / "backbone")
    layers = quant_layers(base)
    assert len(layers) == 14
    # Packed: the state dict holds uint8 codes and per-block scales, no float weight.
    state = base.state_dict()
    assert not [n for n in state if n.removesuffix(".weight") in layers]
    assert all(state[f"{n}.packed"].dtype == torch.uint8 for n in layers)
    assert all(state[f"{n}.scales"].dtype == torch.float32 for n in layers)
    assert base.is_quantized and base.config.quantization_config.quant_method == "leanfit"

    model = PeftModel.from_pretrained(base, tiny_causal_loftq / "adapter").eval()
    reference = load(tiny_causal_loftq).eval()
    with torch.no_grad():
        got, want = model(input_ids=prompt).logits, reference(input_ids=prompt).logits
    # The same stored tensors in the same QuantLinear and LoRA layers: bit for bit.
    assert torch.equal(got, want)


def test_bfloat16_load_keeps_the_statistics_in_float32(tiny_causal_loftq, prompt):
    model = from_pretrained(tiny_causal_loftq, dtype=torch.bfloat16).eval()
    layer = next(iter(quant_layers(model).values()))
    assert (layer.packed.dtype, layer.scales.dtype) == (torch.uint8, torch.float32)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    reference = load(tiny_causal_loftq, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=prompt).logits, reference(input_ids=prompt).logits)


def test_gpt2_conv1d_targets_load_transposed(tmp_path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64)).save_pretrained(
        tmp_path / "gpt2"
    )
    out = tmp_path / "loftq"
    quantize_checkpoint(tmp_path / "gpt2", out, LoftQConfig(bits=4, rank=4), progress=False)
    groups = read_json(out / "backbone" / "config.json")["quantization_config"]["groups"]
    assert [g["transposed"] for g in groups] == [True]
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        got = from_pretrained(out).eval()(input_ids=ids).logits
        want = load(out).eval()(input_ids=ids).logits
    assert len(quant_layers(load(out))) == 8
    assert torch.equal(got, want)


def test_real_minilm_encoder_loads_through_automodel(tmp_path, minilm_batch):
    out = tmp_path / "loftq"
    quantize_checkpoint(
        model_path("minilm"), out, LoftQConfig(bits=2, rank=8, iters=1), progress=False
    )
    model = from_pretrained(out, auto=AutoModel).eval()
    assert len(quant_layers(model)) == 37  # 6 blocks × 6 linear layers + the pooler
    with torch.no_grad():
        got = model(**minilm_batch).last_hidden_state
        want = load(out).eval()(**minilm_batch).last_hidden_state
    assert torch.equal(got, want)


CONFORMANCE = {architecture.id: architecture for architecture in ARCHITECTURES}


@pytest.mark.parametrize(
    ("model_type", "auto", "renamed"),
    [
        pytest.param("llama", AutoModelForCausalLM, False, id="llama"),
        # embed_out -> lm_head: renamed by transformers, but not a target.
        pytest.param("gpt_neox", AutoModelForCausalLM, False, id="gpt_neox"),
        # attention.attention.query -> attention.q_proj, ...: every target renamed.
        pytest.param("vit", AutoModelForImageClassification, True, id="vit"),
    ],
)
def test_from_pretrained_equals_load_when_transformers_renames(tmp_path, model_type, auto, renamed):
    """transformers 5 renames the stored names of some architectures on load (ViT's
    ``vit.encoder.layer.0.attention.attention.query`` is ``vit.layers.0.attention.q_proj``,
    GPT-NeoX's ``embed_out`` is ``lm_head``): the quantizer places each target by the same
    rules as ``load``, and ``peft_arguments`` gives PEFT the adapter under the model's names."""
    architecture = CONFORMANCE[model_type]
    save_checkpoint(architecture, tmp_path / "source")
    out = tmp_path / "loftq"
    config = LoftQConfig(bits=2, rank=4, iters=1)  # default targets
    quantize_checkpoint(tmp_path / "source", out, config, progress=False)
    targets = read_json(out / "backbone" / "quantization_config.json")["targets"]

    base = auto.from_pretrained(out / "backbone").eval()
    assert type(base).__name__ == architecture.model_class
    assert len(quant_layers(base)) == len(targets)
    reference = load(out).eval()
    inputs = example_inputs(architecture, base.config)
    with torch.no_grad():
        base_logits = base(**inputs).logits
        with reference.disable_adapter():
            # The same stored tensors in the same QuantLinear layers: bit for bit.
            assert torch.equal(base_logits, reference(**inputs).logits)

    arguments = peft_arguments(base, out / "adapter")
    assert bool(arguments) == renamed
    model = PeftModel.from_pretrained(base, out / "adapter", **arguments).eval()
    with torch.no_grad():
        got, want = model(**inputs).logits, reference(**inputs).logits
    assert torch.equal(got, want)  # same layers, same LoRA tensors: bit for bit
    assert not torch.equal(got, base_logits)  # LoftQ's B is not zero: the adapter counts

    # An adapter PEFT saves from this model holds the model's names: it loads plainly.
    model.save_pretrained(tmp_path / "saved")
    fresh = auto.from_pretrained(out / "backbone")
    with torch.no_grad():
        again = PeftModel.from_pretrained(fresh, tmp_path / "saved").eval()(**inputs).logits
    assert torch.equal(again, want)


def test_peft_arguments_needs_a_leanfit_backbone(tmp_path):
    from tests.shared import write_tiny_causal_lm

    plain = AutoModelForCausalLM.from_pretrained(write_tiny_causal_lm(tmp_path / "model"))
    with pytest.raises(BadInputError, match="model must be a model loaded by from_pretrained"):
        peft_arguments(plain, tmp_path / "adapter")


def test_a_base_model_checkpoint_loads_under_a_head_class(tmp_path, caplog):
    """The sentence-transformers layout: BERT keys without ``bert.``, a head class named in
    config.json. The targets load under the base-model prefix, the pooler (a target the
    masked-LM class lacks) is left out with a warning, and ``peft_arguments`` puts the
    adapter under the same prefix."""
    torch.manual_seed(0)
    config = BertConfig(**TINY_BERT, architectures=["BertForMaskedLM"])
    BertModel(config).save_pretrained(tmp_path / "bert")
    edit_json(
        tmp_path / "bert" / "config.json", lambda v: v.update(architectures=["BertForMaskedLM"])
    )
    out = tmp_path / "loftq"
    quantize_checkpoint(tmp_path / "bert", out, LoftQConfig(bits=4, rank=4), progress=False)
    with caplog.at_level(logging.WARNING, logger="leanfit.checkpoints.hf"):
        masked = AutoModelForMaskedLM.from_pretrained(out / "backbone")
    assert "1 targets of the backbone are not modules of BertForMaskedLM" in caplog.text
    assert "pooler.dense" in caplog.text
    assert len(quant_layers(masked)) == 12  # 2 blocks × 6 linear layers
    arguments = peft_arguments(masked, out / "adapter")
    assert arguments["config"].target_modules == {
        name.removesuffix(".packed") for name in masked.state_dict() if name.endswith(".packed")
    }
    masked = PeftModel.from_pretrained(masked, out / "adapter", **arguments)
    stored = load_file(out / "adapter" / "adapter_model.safetensors")
    query = masked.base_model.model.bert.encoder.layer[0].attention.self.query
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight"
    assert torch.equal(query.lora_B["default"].weight, stored[key])
    ids = torch.arange(10).reshape(2, 5)
    with torch.no_grad():
        got = masked.eval().base_model.model.bert(input_ids=ids).last_hidden_state
        want = from_pretrained(out, auto=AutoModel).eval()(input_ids=ids).last_hidden_state
    assert torch.equal(got, want)


def test_load_is_from_pretrained_then_peft_new_head_included(tmp_path):
    """``load(OUT)`` is ``from_pretrained`` and ``PeftModel.from_pretrained`` with
    ``peft_arguments``: the same model, the head transformers initializes for a base-model
    checkpoint under a head class included (same seed, same draws)."""
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(tmp_path / "bert")
    edit_json(
        tmp_path / "bert" / "config.json", lambda v: v.update(architectures=["BertForMaskedLM"])
    )
    out = tmp_path / "loftq"
    quantize_checkpoint(tmp_path / "bert", out, LoftQConfig(bits=4, rank=4), progress=False)
    torch.manual_seed(1)
    masked = AutoModelForMaskedLM.from_pretrained(out / "backbone")
    reference = PeftModel.from_pretrained(
        masked, out / "adapter", **peft_arguments(masked, out / "adapter")
    ).eval()
    torch.manual_seed(1)
    loaded = load(out).eval()
    ids = torch.arange(10).reshape(2, 5)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, reference(input_ids=ids).logits)


# -------------------------------------------------------------- generate, pipeline, saving


def test_generate_and_a_text_generation_pipeline(tiny_causal_loftq, prompt):
    model = from_pretrained(tiny_causal_loftq).eval()
    reference = load(tiny_causal_loftq).eval()
    settings = {"max_new_tokens": 6, "do_sample": False}
    generated = model.generate(input_ids=prompt, **settings)
    assert generated.shape == (1, prompt.shape[1] + 6)
    assert torch.equal(generated, reference.generate(input_ids=prompt, **settings))

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_loftq / "backbone")
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = "It is a truth universally acknowledged"
    (result,) = generate(text, return_tensors=True, **settings)
    assert result["generated_token_ids"] == generated[0].tolist()  # prompt: the same tokens
    (result,) = generate(text, **settings)
    assert result["generated_text"].startswith(text) and len(result["generated_text"]) > len(text)


def test_saved_backbone_and_adapter_load_back_the_same_model(tiny_causal_loftq, tmp_path, prompt):
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_loftq / "backbone")
    base.save_pretrained(tmp_path / "backbone")
    model = PeftModel.from_pretrained(base, tiny_causal_loftq / "adapter").eval()
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(next((tmp_path / "backbone").glob("*.safetensors")))
    assert saved["model.layers.0.mlp.down_proj.packed"].dtype == torch.uint8
    reloaded = from_pretrained(tmp_path).eval()
    assert len(quant_layers(reloaded)) == 14
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=prompt).logits, model(input_ids=prompt).logits)


def test_dequantize_gives_float_linears_computing_the_same(tiny_causal_loftq, prompt):
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_loftq / "backbone").eval()
    with torch.no_grad():
        want = base(input_ids=prompt).logits
        base.dequantize()
        got = base(input_ids=prompt).logits
    assert not quant_layers(base)
    assert not base.is_quantized and not hasattr(base.config, "quantization_config")
    # Same dequantized weight, same F.linear call: bit for bit.
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------- training


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def changed(before: dict, model: torch.nn.Module) -> list[str]:
    after = model.state_dict()
    assert set(after) == set(before)
    return sorted(name for name in before if not torch.equal(before[name], after[name]))


def held_out_losses(
    model: torch.nn.Module,
    train: torch.Tensor,
    held_out: torch.Tensor,
    tmp_path: Path,
    *,
    steps: int,
    learning_rate: float,
) -> tuple[Trainer, float, float]:
    """The transformers ``Trainer`` after ``steps`` steps (batches of 4 blocks, constant
    learning rate, CPU, seed 0), and the loss on the first 16 held-out blocks before and
    after."""
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    blocks = lambda tensor: [{"input_ids": b, "labels": b} for b in tensor]  # noqa: E731
    trainer = Trainer(
        model=model, args=args, train_dataset=blocks(train), eval_dataset=blocks(held_out[:16])
    )
    first = trainer.evaluate()["eval_loss"]
    trainer.train()
    return trainer, first, trainer.evaluate()["eval_loss"]


def test_trainer_fine_tunes_only_the_lora_weights_of_a_2bit_backbone(tiny_causal_loftq, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_loftq / "backbone")
    train, held_out = load_data("pride_and_prejudice", tokenizer, max_length=64)
    model = from_pretrained(tiny_causal_loftq, is_trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    before = snapshot(model)
    trainer, first, last = held_out_losses(
        model, train, held_out, tmp_path, steps=20, learning_rate=1e-2
    )
    # The backbone is a width-16 random llama over a 30,522-token vocabulary: it predicts
    # near-uniformly (ln 30522 = 10.33) and 20 steps of rank-4 LoRA only start to favour the
    # frequent tokens of the novel. Observed held-out drop 0.026 nats on the same 16 blocks
    # (a deterministic evaluation: any drop is real); 0.01 leaves a 2.5x margin.
    assert first - last > 0.01, (first, last)
    moved = changed(before, model)
    assert moved and all(".lora_A." in n or ".lora_B." in n for n in moved)
    assert len(moved) == 28  # lora_A and lora_B of 14 targets; packed buffers and bias untouched

    trainer.save_model(str(tmp_path / "tuned"))
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_loftq / "backbone")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "tuned").eval()
    ids = held_out[:2]
    with torch.no_grad():
        # Same weights, same layers: the reloaded adapter computes exactly the trained model.
        assert torch.equal(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_trl_sft_trainer_trains_the_adapter(tiny_causal_loftq, tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from leanfit.datasets import load_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_loftq / "backbone")
    texts = [chapter[:400] for chapter in load_text("pride_and_prejudice")["text"].iloc[:16]]
    model = from_pretrained(tiny_causal_loftq, is_trainable=True)
    before = snapshot(model)
    config = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_length=64,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.model is model
    moved = changed(before, model)
    assert len(moved) == 28 and all(".lora_A." in n or ".lora_B." in n for n in moved)
    assert quant_layers(model)


@pytest.mark.slow
def test_trainer_recovers_a_real_2bit_smollm2(tmp_path):
    """SmolLM2-135M at NF2 (rank 8, one LoftQ step), fine-tuned through the Trainer."""
    out = tmp_path / "loftq"
    config = LoftQConfig(bits=2, rank=8, iters=1)
    quantize_checkpoint(model_path("smollm2"), out, config, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(out / "backbone")
    train, held_out = load_data("pride_and_prejudice", tokenizer, max_length=64)
    model = from_pretrained(out, is_trainable=True)
    assert len(quant_layers(model)) == 210  # 30 blocks × 7 projections
    before = snapshot(model)
    _, first, last = held_out_losses(model, train, held_out, tmp_path, steps=8, learning_rate=1e-3)
    # NF2 with one LoftQ step leaves SmolLM2 far from its float loss (observed 13.25 nats on
    # these 16 held-out blocks); 8 steps of LoRA bring it to 8.84. Half that drop (2.2 nats)
    # as the bar leaves room for another machine's float rounding.
    assert first - last > 2.2, (first, last)
    moved = changed(before, model)
    assert len(moved) == 420 and all(".lora_A." in n or ".lora_B." in n for n in moved)


# --------------------------------------------------------------------------------- errors


def test_a_plain_checkpoint_cannot_be_quantized_on_load(tmp_path):
    from tests.shared import write_tiny_causal_lm

    plain = write_tiny_causal_lm(tmp_path / "model")
    group = {"kind": "linear", "transposed": False, "bits": 2, "method": "nf"}
    config = LeanfitConfig([{**group, "block_size": 64, "double_quant": False, "modules": ["x"]}])
    with pytest.raises(BadInputError, match="loads only a backbone written by leanfit quantize"):
        AutoModelForCausalLM.from_pretrained(plain, quantization_config=config)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            lambda q: q.update(format_version=FORMAT_VERSION + 1),
            CorruptArtifactError,
            f"format_version {FORMAT_VERSION + 1}, newer",
        ),
        (lambda q: q.update(format="other"), CorruptArtifactError, "must have format 'leanfit"),
        (lambda q: q.update(groups=[]), CorruptArtifactError, "groups must be a non-empty list"),
        (
            lambda q: q["groups"][0].update(bits=5),
            CorruptArtifactError,
            r"bits must be one of \(2, 3, 4\) with method 'nf'; got 5",
        ),
        (
            lambda q: q["groups"][0].update(modules=["h.0.attn.c_attn", "h.0.mlp.c_fc"]),
            CorruptArtifactError,
            r"targets \(e.g. \['h.0.attn.c_attn', 'h.0.mlp.c_fc'\]\) are not modules of the Llama",
        ),
        (lambda q: q.update(bits=2), CorruptArtifactError, r"got also \['bits'\]"),
        (
            lambda q: q["groups"][0].update(transposed=True),
            CorruptArtifactError,
            "is stored transposed .* the model's module there is an nn.Linear",
        ),
        (  # a layout other than the stored one: transformers refuses the sizes
            lambda q: q["groups"][0].update(block_size=32),
            RuntimeError,
            "ignore_mismatched_sizes",
        ),
        (
            lambda q: q["groups"][0].update(kind="conv"),
            BadInputError,
            r"are convolutions.*leanfit.checkpoints.load\(OUT\)",
        ),
    ],
)
def test_a_damaged_quantization_config_is_named(artifact, change, error, match):
    edit_json(artifact / "backbone" / "config.json", lambda v: change(v["quantization_config"]))
    with pytest.raises(error, match=match):
        AutoModelForCausalLM.from_pretrained(artifact / "backbone")


def test_targets_that_transformers_fuses_are_refused(tmp_path):
    """transformers 5 merges Mixtral's per-expert weights into one parameter on load."""
    from tests.conformance.models import DECODER, Architecture

    experts = {"num_local_experts": 2, "num_experts_per_tok": 1}
    mixtral = Architecture("mixtral", "MixtralConfig", "MixtralForCausalLM", {**DECODER, **experts})
    save_checkpoint(mixtral, tmp_path / "source")
    config = LoftQConfig(bits=2, rank=4, iters=1, targets=("w1", "q_proj"))
    quantize_checkpoint(tmp_path / "source", tmp_path / "out", config, progress=False)
    with pytest.raises(
        CorruptArtifactError, match=r"targets \['model.layers.0.block_sparse_moe.ex"
    ):
        AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "backbone")


def test_a_backbone_lacking_packed_tensors_is_refused(artifact):
    (shard,) = (artifact / "backbone").glob("model-*.safetensors")
    tensors = load_file(shard)
    del tensors["model.layers.1.mlp.up_proj.packed"]
    save_file(tensors, shard)
    edit_json(
        artifact / "backbone" / "model.safetensors.index.json",
        lambda v: v["weight_map"].pop("model.layers.1.mlp.up_proj.packed"),
    )
    with pytest.raises(CorruptArtifactError, match=r"lack 1 tensors .*'model.layers.1.mlp.up_"):
        AutoModelForCausalLM.from_pretrained(artifact / "backbone")
