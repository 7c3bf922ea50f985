"""Tiny random transformers models, one per architecture, saved as a user's checkpoint.

Each :class:`Architecture` names a ``model_type``, the class the checkpoint is saved as
(``config.architectures[0]``) and the configuration of a model with two blocks and a hidden
size of 32: big enough to have every kind of layer of the real model, small enough that
quantizing it takes a fraction of a second. :func:`save_checkpoint` writes it the way
``save_pretrained`` does (float32 safetensors), or in the sentence-transformers layout: the
base model's tensors without their prefix (``encoder.layer.0...``) while ``config.json``
names a head class (``BertForMaskedLM``), as in all-mpnet-base-v2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import transformers

Inputs = Literal["text", "seq2seq", "image", "audio"]

TEXT = {"vocab_size": 96, "max_position_embeddings": 64}
"""Shared by the text models: 96 tokens, 64 positions."""
BLOCKS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
"""Two blocks of width 32 with 4 heads (head size 8)."""
ENCODER = {**TEXT, **BLOCKS, "intermediate_size": 64}
DECODER = {**ENCODER, "num_key_value_heads": 2}
SEQ2SEQ = {
    "vocab_size": 96,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
}


@dataclass(frozen=True)
class Architecture:
    """A tiny random model of one architecture, and how to feed it.

    Attributes
    ----------
    id : str
        Test id: the ``model_type``, plus the layout when it is not transformers' own.
    config_class, model_class : str
        transformers class names; the checkpoint says it was saved as ``model_class``.
    config : dict
        Arguments of ``config_class``.
    inputs : {"text", "seq2seq", "image", "audio"}
        What :func:`example_inputs` builds.
    layout : {"transformers", "sentence-transformers"}
        How :func:`save_checkpoint` writes the tensors.
    """

    id: str
    config_class: str
    model_class: str
    config: dict[str, Any] = field(default_factory=dict)
    inputs: Inputs = "text"
    layout: Literal["transformers", "sentence-transformers"] = "transformers"

    def build_config(self) -> transformers.PretrainedConfig:
        return getattr(transformers, self.config_class)(**self.config)

    def build(self, seed: int = 0) -> torch.nn.Module:
        """The model with transformers' random initialization under ``seed``, in eval mode."""
        torch.manual_seed(seed)
        return getattr(transformers, self.model_class)(self.build_config()).eval()


ARCHITECTURES = [
    # Decoder language models.
    Architecture("llama", "LlamaConfig", "LlamaForCausalLM", DECODER),
    Architecture("mistral", "MistralConfig", "MistralForCausalLM", DECODER),
    Architecture("qwen2", "Qwen2Config", "Qwen2ForCausalLM", DECODER),
    Architecture("qwen3", "Qwen3Config", "Qwen3ForCausalLM", {**DECODER, "head_dim": 8}),
    Architecture("phi3", "Phi3Config", "Phi3ForCausalLM", {**DECODER, "pad_token_id": 0}),
    Architecture("gemma2", "Gemma2Config", "Gemma2ForCausalLM", {**DECODER, "head_dim": 8}),
    Architecture(
        "gemma3_text", "Gemma3TextConfig", "Gemma3ForCausalLM", {**DECODER, "head_dim": 8}
    ),
    Architecture(
        "gpt2",
        "GPT2Config",
        "GPT2LMHeadModel",
        {"vocab_size": 96, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4},
    ),
    Architecture("gpt_neox", "GPTNeoXConfig", "GPTNeoXForCausalLM", ENCODER),
    Architecture(
        "opt",
        "OPTConfig",
        "OPTForCausalLM",
        {**TEXT, **BLOCKS, "ffn_dim": 64, "word_embed_proj_dim": 32},
    ),
    Architecture("falcon", "FalconConfig", "FalconForCausalLM", {**TEXT, **BLOCKS}),
    # Encoders, with a task head or in the sentence-transformers layout.
    Architecture("bert", "BertConfig", "BertForSequenceClassification", ENCODER),
    Architecture(
        "bert-sentence-transformers",
        "BertConfig",
        "BertForMaskedLM",
        ENCODER,
        layout="sentence-transformers",
    ),
    Architecture("roberta", "RobertaConfig", "RobertaForMaskedLM", ENCODER),
    Architecture("deberta-v2", "DebertaV2Config", "DebertaV2ForSequenceClassification", ENCODER),
    Architecture(
        "mpnet-sentence-transformers",
        "MPNetConfig",
        "MPNetForMaskedLM",
        ENCODER,
        layout="sentence-transformers",
    ),
    Architecture(
        "distilbert",
        "DistilBertConfig",
        "DistilBertForQuestionAnswering",
        {**TEXT, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64},
    ),
    Architecture("electra", "ElectraConfig", "ElectraForTokenClassification", ENCODER),
    # Encoder–decoders.
    Architecture(
        "t5",
        "T5Config",
        "T5ForConditionalGeneration",
        {"vocab_size": 96, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4},
        inputs="seq2seq",
    ),
    Architecture("bart", "BartConfig", "BartForConditionalGeneration", SEQ2SEQ, inputs="seq2seq"),
    # Vision and audio.
    Architecture(
        "vit",
        "ViTConfig",
        "ViTForImageClassification",
        {**BLOCKS, "intermediate_size": 64, "image_size": 32, "patch_size": 8, "num_labels": 3},
        inputs="image",
    ),
    Architecture(
        "whisper",
        "WhisperConfig",
        "WhisperForConditionalGeneration",
        {
            **SEQ2SEQ,
            "num_mel_bins": 16,
            "max_source_positions": 16,
            "max_target_positions": 32,
            "decoder_start_token_id": 1,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "suppress_tokens": [],
            "begin_suppress_tokens": [],
        },
        inputs="audio",
    ),
]
"""The architectures of the conformance suite's default run (ids are unique)."""

SMALL_GPT = {"vocab_size": 96, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}
SLOW_ARCHITECTURES = [
    Architecture(
        "llama-tied",
        "LlamaConfig",
        "LlamaForCausalLM",
        {**DECODER, "tie_word_embeddings": True},
    ),
    Architecture("olmo", "OlmoConfig", "OlmoForCausalLM", DECODER),
    Architecture("stablelm", "StableLmConfig", "StableLmForCausalLM", DECODER),
    Architecture("granite", "GraniteConfig", "GraniteForCausalLM", DECODER),
    Architecture("cohere", "CohereConfig", "CohereForCausalLM", DECODER),
    Architecture(
        "bloom",
        "BloomConfig",
        "BloomForCausalLM",
        {"vocab_size": 96, "hidden_size": 32, "n_layer": 2, "n_head": 4},
    ),
    Architecture("gpt_bigcode", "GPTBigCodeConfig", "GPTBigCodeForCausalLM", SMALL_GPT),
    Architecture("openai-gpt", "OpenAIGPTConfig", "OpenAIGPTLMHeadModel", SMALL_GPT),
    Architecture("gptj", "GPTJConfig", "GPTJForCausalLM", {**SMALL_GPT, "rotary_dim": 4}),
    Architecture(
        "codegen",
        "CodeGenConfig",
        "CodeGenForCausalLM",
        {**SMALL_GPT, "n_ctx": 64, "rotary_dim": 4},
    ),
    Architecture("bert-base-model", "BertConfig", "BertModel", ENCODER),
    Architecture("albert", "AlbertConfig", "AlbertForMaskedLM", {**ENCODER, "embedding_size": 16}),
    Architecture("xlm-roberta", "XLMRobertaConfig", "XLMRobertaForSequenceClassification", ENCODER),
    Architecture(
        "mbart", "MBartConfig", "MBartForConditionalGeneration", SEQ2SEQ, inputs="seq2seq"
    ),
    Architecture(
        "swin",
        "SwinConfig",
        "SwinForImageClassification",
        {
            "image_size": 32,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [2, 2],
            "window_size": 4,
            "num_labels": 3,
        },
        inputs="image",
    ),
]
"""More architectures, checked the same way in the slow run (``-m slow``)."""


def save_checkpoint(architecture: Architecture, directory: Path, seed: int = 0) -> None:
    """Build the model under ``seed`` and save it as a float32 safetensors checkpoint.

    In the sentence-transformers layout the base model (``AutoModel``: encoder and pooler) is
    built and saved, and ``config.json`` is made to name the head class, as in
    all-mpnet-base-v2 (whose config names ``MPNetForMaskedLM``).
    """
    if architecture.layout == "transformers":
        architecture.build(seed).save_pretrained(directory)
        return
    torch.manual_seed(seed)
    transformers.AutoModel.from_config(architecture.build_config()).save_pretrained(directory)
    config = directory / "config.json"
    values = json.loads(config.read_text())
    values["architectures"] = [architecture.model_class]
    config.write_text(json.dumps(values, indent=2))


def example_inputs(architecture: Architecture, config: Any, seed: int = 1) -> dict[str, Any]:
    """A batch of two examples the model accepts: token ids (with a padded position in the
    first example of a text encoder), images or log-mel features, and decoder token ids for
    encoder–decoders."""
    generator = torch.Generator().manual_seed(seed)

    def tokens(length: int) -> torch.Tensor:
        return torch.randint(3, config.vocab_size, (2, length), generator=generator)

    builders: dict[str, Callable[[], dict[str, Any]]] = {
        "text": lambda: {"input_ids": tokens(8)},
        "seq2seq": lambda: {"input_ids": tokens(8), "decoder_input_ids": tokens(5)},
        "image": lambda: {
            "pixel_values": torch.randn(
                2, config.num_channels, config.image_size, config.image_size, generator=generator
            )
        },
        "audio": lambda: {
            "input_features": torch.randn(
                2, config.num_mel_bins, 2 * config.max_source_positions, generator=generator
            ),
            "decoder_input_ids": tokens(5),
        },
    }
    return builders[architecture.inputs]()


DOC = Path(__file__).resolve().parents[2] / "docs" / "architectures.md"
LAYOUTS = {
    "transformers": "`save_pretrained`",
    "sentence-transformers": "base model's tensors, head class in config",
}


def table_rows() -> list[str]:
    """The markdown rows of :data:`ARCHITECTURES` and :data:`SLOW_ARCHITECTURES`: model type,
    class saved as, layout, inputs, the rule that chooses the default targets, and the run."""
    from leanfit.checkpoints.targets import target_rule

    rows = []
    for run, architectures in (("default", ARCHITECTURES), ("slow", SLOW_ARCHITECTURES)):
        for architecture in architectures:
            model_type = architecture.build_config().model_type
            rows.append(
                f"| `{model_type}` | `{architecture.model_class}` "
                f"| {LAYOUTS[architecture.layout]} | {architecture.inputs} "
                f"| {target_rule(model_type)} | {run} | `{architecture.id}` |"
            )
    return rows


def markdown() -> str:
    """docs/architectures.md."""
    return "\n".join(
        [
            "# Supported architectures",
            "",
            "`leanfit quantize` takes any transformers model saved as safetensors (and llama,",
            "Qwen2 and Qwen3 GGUF files); `leanfit.checkpoints.load(OUT)` gives it back as the",
            "class it was saved as. The rules, for every model type:",
            "",
            "- **Default targets.** A model type with a target table keeps it (the attention and",
            "  MLP projections; for BERT-style encoders also the pooler). Every other type gets",
            "  all linear layers of its repeated blocks (`torch.nn.Linear` and GPT-2-style",
            "  `Conv1D`, found by module type in the model transformers builds from",
            "  `config.json`: fused projections such as Falcon's `query_key_value` included),",
            "  never the output head, a classifier, a pooler, an embedding or a convolution",
            "  (such as ViT's patch embedding). The report (`target_rule` in",
            "  `loftq_report.json`, `loftq_report.md`) and the command's summary say which rule",
            "  chose them; `--target` replaces both.",
            "- **Loading.** `load(OUT)` builds `config.architectures[0]` (causal or masked LM,",
            "  sequence, token or image classifier, question answering, seq2seq, speech",
            "  seq2seq...) with transformers' `from_pretrained`, which matches the stored names",
            "  to the model's: its renamings (ViT, GPT-NeoX in transformers 5), and the",
            "  base-model prefix added or stripped. A checkpoint holding only the base model",
            "  under a head class (the sentence-transformers layout) loads as `from_pretrained`",
            "  loads it: the head is initialized, its output embeddings tied, tensors the class",
            "  lacks (a pooler) left out, with a warning. A class transformers does not provide",
            "  (a model with its own code, which leanfit never runs) is an error naming it.",
            "- **Mixture of experts.** Experts that transformers 5 fuses into one parameter when",
            "  loading (Mixtral) load merged, in full precision, beside the packed attention",
            "  (`test_experts_that_transformers_fuses_load_beside_packed_attention`); they",
            "  cannot be targets.",
            "",
            "## Checked architectures",
            "",
            "Each row is a tiny random model (two blocks of width 32) built with transformers",
            "and run through the conformance suite, in its default run or in the slow one",
            "(`-m slow`):",
            "",
            "| model type | saved as | checkpoint | inputs | default targets | run | test id |",
            "|---|---|---|---|---|---|---|",
            *table_rows(),
            "",
            "## How support is checked",
            "",
            "```",
            "python -m pytest tests/conformance          # default run",
            "python -m pytest tests/conformance -m slow  # the slow rows",
            "```",
            "",
            "For each row, `tests/conformance/test_architectures.py` saves the model as float32",
            "safetensors, runs `leanfit quantize` with the default targets (2 bits, rank 8),",
            "once with the LoftQ initialization and once with `--init qlora`, loads both",
            "outputs with `load`, and checks that",
            "",
            "- the model is of the class the checkpoint was saved as, every target a packed",
            "  `QuantLinear`, and the report names the rule that chose the targets;",
            "- its output equals, within float32 rounding, that of the source model (loaded by",
            "  transformers) with each target weight replaced by the dequantized",
            "  `Q + (alpha/r)·B·A` (`merge_into`, itself checked against the per-matrix errors",
            "  the quantizer reported);",
            "- LoftQ's initialization is closer to the source model's output than QLoRA's at",
            "  the same bits.",
            "",
            "One architecture also runs through the `leanfit` command in its own process. The",
            "table above is generated from the suite's list (`python -m",
            "tests.conformance.models`), and a test fails when they differ.",
            "",
        ]
    )


if __name__ == "__main__":
    DOC.write_text(markdown(), encoding="utf-8")
    print(f"wrote {DOC}")
