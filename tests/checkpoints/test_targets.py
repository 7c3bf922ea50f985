"""Target selection, bit plans, matrix views and PEFT's LoRA layout for convolutions."""

import copy
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    AutoModel,
    BartConfig,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    FalconConfig,
    FalconForCausalLM,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MPNetConfig,
    OpenAIGPTConfig,
    OpenAIGPTLMHeadModel,
    Qwen2Config,
    Qwen3Config,
    RobertaConfig,
    T5Config,
    ViTConfig,
    ViTForImageClassification,
)
from transformers.pytorch_utils import Conv1D

from leanfit.checkpoints.source import open_checkpoint
from leanfit.checkpoints.targets import (
    ALL_LINEAR,
    DEFAULT_PATTERNS,
    GIVEN,
    default_target_patterns,
    layer_index,
    linear_layers,
    lora_shapes_for_peft,
    matrix_view,
    restore_shape,
    select_targets,
    target_rule,
    to_peft_lora,
)
from leanfit.exceptions import BadInputError
from leanfit.pretrained import model_path

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
CONFIGS = {
    "llama": LlamaConfig(**SMALL, intermediate_size=64, vocab_size=50),
    "mistral": MistralConfig(**SMALL, intermediate_size=64, vocab_size=50),
    "qwen2": Qwen2Config(**SMALL, intermediate_size=64, vocab_size=50),
    "qwen3": Qwen3Config(**SMALL, intermediate_size=64, vocab_size=50),
    "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50),
    "bert": BertConfig(**SMALL, intermediate_size=64, vocab_size=50),
    "roberta": RobertaConfig(**SMALL, intermediate_size=64, vocab_size=50),
    "deberta-v2": DebertaV2Config(**SMALL, intermediate_size=64, vocab_size=50),
    "mpnet": MPNetConfig(**SMALL, intermediate_size=64, vocab_size=50),
    "bart": BartConfig(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        vocab_size=50,
    ),
    "t5": T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=50),
}


def names_and_shapes(model):
    state = model.state_dict()
    return list(state), {name: tuple(t.shape) for name, t in state.items()}


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_defaults_select_exactly_the_linear_layers_of_the_backbone(model_type):
    assert set(CONFIGS) == set(DEFAULT_PATTERNS)
    with torch.device("meta"):
        model = AutoModel.from_config(CONFIGS[model_type])
    linear = {
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)
    }
    targets = select_targets(*names_and_shapes(model), model_type)
    assert {t.name for t in targets} == linear
    assert all(t.transposed == (model_type == "gpt2") and t.kind == "linear" for t in targets)
    assert all(t.module == t.name.removesuffix(".weight") for t in targets)


def test_minilm_has_36_block_matrices_and_the_pooler():
    with open_checkpoint(model_path("minilm")) as checkpoint:
        names = checkpoint.names()
        targets = select_targets(names, {n: checkpoint.shape(n) for n in names}, "bert")
    assert len(targets) == 37
    assert [t.layer_index for t in targets].count(None) == 1  # pooler.dense
    assert all([t.layer_index for t in targets].count(i) == 6 for i in range(6))
    assert targets[-1].name == "pooler.dense.weight" and targets[-1].shape == (384, 384)
    assert {t.matrix_shape for t in targets} == {(384, 384), (1536, 384), (384, 1536)}


def test_smollm2_targets_are_the_seven_projections_of_30_blocks(smollm2):
    names = smollm2.names()
    targets = select_targets(names, {n: smollm2.shape(n) for n in names}, smollm2.model_type)
    assert len(targets) == 30 * 7
    assert not any("embed" in t.name or "norm" in t.name for t in targets)
    assert sorted({t.layer_index for t in targets}) == list(range(30))
    kinds = {t.name.split(".")[-2]: t.shape for t in targets if t.layer_index == 0}
    assert kinds["k_proj"] == (192, 576) and kinds["down_proj"] == (576, 1536)


def test_heads_and_embeddings_are_never_targets():
    with torch.device("meta"):
        llama = LlamaForCausalLM(CONFIGS["llama"])
        classifier = BertForSequenceClassification(CONFIGS["bert"])
    names, shapes = names_and_shapes(llama)
    targets = select_targets(names, shapes, "llama", patterns=[r".*"])  # everything asked for
    assert "lm_head.weight" not in {t.name for t in targets}
    assert all(len(t.shape) == 2 and "embed" not in t.name for t in targets)
    targets = select_targets(*names_and_shapes(classifier), "bert")
    assert "classifier.weight" not in {t.name for t in targets}
    assert "bert.pooler.dense.weight" in {t.name for t in targets}


def test_gpt2_conv1d_is_transposed_to_out_by_in():
    torch.manual_seed(0)
    model = GPT2Model(CONFIGS["gpt2"]).eval()
    targets = select_targets(*names_and_shapes(model), "gpt2")
    assert len(targets) == 2 * 4
    for target in targets:
        module = model.get_submodule(target.module)
        x = torch.randn(5, module.nx)
        matrix = matrix_view(module.weight, target)
        assert matrix.shape == target.matrix_shape == (module.nf, module.weight.shape[0])
        # Conv1D computes x @ W + b: as a Linear, W.T is the out × in matrix.
        torch.testing.assert_close(module(x) - module.bias, x @ matrix.T, rtol=0, atol=1e-6)
        assert torch.equal(restore_shape(matrix, target), module.weight)


def test_user_patterns_follow_peft_rules():
    with torch.device("meta"):
        model = LlamaForCausalLM(CONFIGS["llama"])
    names, shapes = names_and_shapes(model)
    suffix = select_targets(names, shapes, "llama", patterns=["q_proj", "self_attn.v_proj"])
    assert [t.name.split(".")[-2] for t in suffix] == ["q_proj", "v_proj"] * 2
    regex = select_targets(names, shapes, "unknown-type", patterns=[r"model\.layers\.1\..*_proj"])
    assert len(regex) == 7 and {t.layer_index for t in regex} == {1}
    with pytest.raises(BadInputError, match="no weight matched"):
        select_targets(names, shapes, "llama", patterns=["embed_tokens"])
    with pytest.raises(BadInputError, match="regular expression"):
        select_targets(names, shapes, "llama", patterns=["(unclosed"])
    with pytest.raises(BadInputError, match="patterns must be a non-empty list"):
        select_targets(names, shapes, "llama", patterns="q_proj")


def test_a_type_without_table_gets_the_linear_layers_of_the_model_built():
    with pytest.raises(BadInputError, match=r"'bert', 'deberta-v2'.*table; got 'vit'.*all linear"):
        default_target_patterns("vit")
    assert target_rule("vit") == ALL_LINEAR and target_rule("llama") == "table for llama"
    assert target_rule("llama", ["q_proj"]) == GIVEN
    with pytest.raises(BadInputError, match="model_type 'vit'.*builds none here.*--target"):
        select_targets(["a.weight"], {"a.weight": (2, 2)}, "vit")  # no model layers given


ALL_LINEAR_MODELS = {
    "openai-gpt": lambda: OpenAIGPTLMHeadModel(
        OpenAIGPTConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=16)
    ),
    "vit": lambda: ViTForImageClassification(
        ViTConfig(**SMALL, intermediate_size=64, image_size=16, patch_size=8, num_labels=3)
    ),
    "falcon": lambda: FalconForCausalLM(FalconConfig(**SMALL, vocab_size=50)),
    "bert": lambda: BertForSequenceClassification(CONFIGS["bert"]),
}


@pytest.mark.parametrize("name", sorted(ALL_LINEAR_MODELS))
def test_all_linear_rule_takes_the_linear_layers_of_the_blocks_only(name):
    with torch.device("meta"):
        model = ALL_LINEAR_MODELS[name]()
    layers = {f"{module}.weight": layer for module, layer in linear_layers(model).items()}
    targets = select_targets(*names_and_shapes(model), "no-table-type", layers=layers)
    in_blocks = {
        module: isinstance(m, Conv1D)
        for module, m in model.named_modules()
        if isinstance(m, nn.Linear | Conv1D) and re.search(r"\.\d+\.", module)
    }
    assert {t.module: t.transposed for t in targets} == in_blocks  # Conv1D is in × out
    assert len(targets) == 2 * {"openai-gpt": 4, "vit": 6, "falcon": 4, "bert": 6}[name]
    outside = ("lm_head", "classifier", "pooler", "patch_embeddings", "embed")
    assert not any(word in t.name for t in targets for word in outside)


def test_layer_index_parsing():
    assert layer_index("model.layers.12.self_attn.q_proj.weight") == 12
    assert layer_index("encoder.layer.3.attention.self.query.weight") == 3
    assert layer_index("transformer.h.11.attn.c_attn.weight") == 11
    assert layer_index("h.0.mlp.c_fc.weight") == 0
    assert layer_index("decoder.block.4.layer.1.EncDecAttention.q.weight") == 4  # block first
    assert layer_index("pooler.dense.weight") is None
    assert layer_index("shared.weight") is None and layer_index("graph.3.weight") is None


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, kernel_size=3, padding=1)
        self.conv1d = nn.Conv1d(6, 5, kernel_size=3, padding=1)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))  # (n, 6, h, w)
        y = torch.relu(self.conv1d(y.flatten(2)))  # (n, 5, h·w)
        return self.head(y.mean(-1))


def test_convolutions_need_include_conv():
    names, shapes = names_and_shapes(SmallCNN())
    patterns = ["conv", "conv1d", "head"]
    with pytest.warns(UserWarning, match="2 convolution weights .* include_conv"):
        only_linear = select_targets(names, shapes, "cnn", patterns=patterns)
    assert [t.name for t in only_linear] == ["head.weight"]
    targets = select_targets(names, shapes, "cnn", patterns=patterns, include_conv=True)
    assert [(t.kind, t.matrix_shape) for t in targets] == [
        ("conv", (6, 27)),
        ("conv", (5, 18)),
        ("linear", (2, 5)),
    ]
    weight = torch.randn(6, 3, 3, 3)
    assert torch.equal(restore_shape(matrix_view(weight, targets[0]), targets[0]), weight)
    assert torch.equal(matrix_view(weight, targets[0])[4], weight[4].flatten())
    with pytest.raises(BadInputError, match=r"must have shape \(6, 3, 3, 3\)"):
        matrix_view(torch.zeros(6, 27), targets[0])


@pytest.mark.parametrize("module", ["conv", "conv1d", "head"])
def test_rank_r_factors_become_peft_lora_layers_with_the_same_delta(module):
    torch.manual_seed(0)
    base = SmallCNN().eval()
    names, shapes = names_and_shapes(base)
    (target,) = select_targets(names, shapes, "cnn", patterns=[module], include_conv=True)
    rank, alpha = 3, 6  # PEFT scales the update by alpha / rank = 2
    n_out, n_in = target.matrix_shape
    lora_a, lora_b = torch.randn(rank, n_in), torch.randn(n_out, rank) / 10
    delta = restore_shape(lora_b @ lora_a, target)

    expected = copy.deepcopy(base)
    expected.get_submodule(module).weight.data += delta
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(target_modules=[module], r=rank, lora_alpha=alpha)
    ).eval()
    layer = peft_model.base_model.model.get_submodule(module)
    peft_a, peft_b = to_peft_lora(lora_a, lora_b / (alpha / rank), target)
    assert (tuple(peft_a.shape), tuple(peft_b.shape)) == lora_shapes_for_peft(target, rank)
    assert layer.lora_A["default"].weight.shape == peft_a.shape
    assert layer.lora_B["default"].weight.shape == peft_b.shape
    layer.lora_A["default"].weight.data.copy_(peft_a)
    layer.lora_B["default"].weight.data.copy_(peft_b)

    # float32 sums of a few dozen O(1) products in a different order: error ~1e-6.
    torch.testing.assert_close(layer.get_delta_weight("default"), delta, rtol=0, atol=1e-5)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), expected(x), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_lora_shapes_of_gpt2_conv1d():
    model = GPT2Model(CONFIGS["gpt2"])
    targets = select_targets(*names_and_shapes(model), "gpt2", patterns=["c_attn"])
    peft_model = get_peft_model(
        model, LoraConfig(target_modules=["c_attn"], r=2, fan_in_fan_out=True)
    )
    layer = peft_model.base_model.model.get_submodule(targets[0].module)
    assert targets[0].matrix_shape == (96, 32)  # q, k, v stacked: out = 3 × 32
    shape_a, shape_b = lora_shapes_for_peft(targets[0], 2)
    assert layer.lora_A["default"].weight.shape == shape_a == (2, 32)
    assert layer.lora_B["default"].weight.shape == shape_b == (96, 2)
    with pytest.raises(BadInputError, match="rank must be a positive integer"):
        lora_shapes_for_peft(targets[0], 0)
    with pytest.raises(BadInputError, match="same r"):
        to_peft_lora(torch.zeros(2, 32), torch.zeros(96, 3), targets[0])
