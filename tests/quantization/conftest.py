"""Shared fixtures: one torch thread, the real weights of MiniLM and SmolLM2, and tiny GGUF
files written the way llama.cpp's converter writes them."""

import copy
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from leanfit.checkpoints.source import open_checkpoint
from leanfit.checkpoints.synthetic import SyntheticLlama, write_synthetic_llama
from leanfit.pretrained import model_path


@pytest.fixture(autouse=True, scope="package")
def _one_thread() -> Iterator[None]:
    """Run these tests on one thread: on a shared 2-core machine, OpenMP threads competing
    with other processes made the SVDs here 30x slower and the fine-tuning tests 5x slower
    than a single thread. Results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def minilm_weights() -> list[torch.Tensor]:
    """The 37 weight matrices of every ``nn.Linear`` in all-MiniLM-L6-v2 (out × in, float32)."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(model_path("minilm"))
    weights = [m.weight.detach().clone() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(weights) == 37
    return weights


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return model_path("smollm2")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    with open_checkpoint(smollm2_path) as checkpoint:
        yield checkpoint


def llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute): within each head,
    interleave the first and second halves of the rows."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model, architecture: str, path: Path, storage: dict[str, gguf.GGMLQuantizationType]):
    """Write a transformers causal LM as a GGUF file, as llama.cpp's converter does.

    ``storage`` maps a substring of the GGUF tensor name to its storage type (the first match
    wins); other tensors are stored as F32. q/k rows are permuted for the llama architecture.
    """
    config = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    if architecture == "llama":
        writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == architecture)
    table = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        module, _, suffix = name.rpartition(".")
        gguf_name = f"{table.get_name(module)}.{suffix}"
        values = tensor.numpy()
        if architecture == "llama" and ".attn_q." in gguf_name:
            values = llama_cpp_permute(values, config.num_attention_heads)
        elif architecture == "llama" and ".attn_k." in gguf_name:
            values = llama_cpp_permute(values, config.num_key_value_heads)
        qtype = next((q for key, q in storage.items() if key in gguf_name), None)
        if qtype is None or values.ndim != 2:
            writer.add_tensor(gguf_name, values)
        else:
            data = gguf.quants.quantize(values, qtype)
            writer.add_tensor(gguf_name, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(name="llama_cpp_permute")
def llama_cpp_permute_fixture():
    return llama_cpp_permute


@pytest.fixture(name="write_gguf")
def write_gguf_fixture():
    return write_gguf


@pytest.fixture(scope="session")
def smollm2_model():
    """SmolLM2-135M-Instruct (base model, tokenizer). Tests must deep-copy the model before
    wrapping it in PEFT, which modifies it in place."""
    path = model_path("smollm2")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


@pytest.fixture
def fresh_smollm2(smollm2_model):
    """A private copy of SmolLM2 to wrap or modify."""
    return copy.deepcopy(smollm2_model[0])


@pytest.fixture(scope="session")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(model_path("minilm"))


TINY = {
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
# Wider settings for the checkpoint readers' tests: 4 query heads over 2 KV heads.
WIDER = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}


def tiny_decoder(
    config_class=LlamaConfig, model_class=LlamaForCausalLM, seed: int = 0, **overrides
):
    """A randomly initialized two-layer decoder (``TINY`` settings, changed by ``overrides``)
    in eval mode; the same seed and settings give the same weights."""
    torch.manual_seed(seed)
    return model_class(config_class(**{**TINY, **overrides})).eval()


@pytest.fixture
def tiny_llama():
    """Factory ``tiny_llama(seed)`` of randomly initialized two-layer llamas (vocabulary 64,
    width 16) for mechanics tests; the same seed gives the same weights."""
    return lambda seed=0: tiny_decoder(seed=seed)


def write_tiny_causal_lm(folder: Path) -> Path:
    """A tiny random llama with a real tokenizer, saved as a transformers directory.

    The tokenizer is MiniLM's WordPiece (30,522 tokens) with ``[SEP]`` as end of text, so
    the whole ``quantize`` → ``finetune`` → ``evaluate`` pipeline runs on real text in a few
    seconds; the model (width 16) predicts near-uniformly.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_path("minilm"))
    tokenizer.eos_token = tokenizer.sep_token
    special = {"eos_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id}
    model = tiny_decoder(vocab_size=len(tokenizer), bos_token_id=tokenizer.cls_token_id, **special)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def quantize_tiny_causal_lm(folder: Path) -> Path:
    """``write_tiny_causal_lm`` in ``folder/model``, quantized (NF2, rank 4) to ``folder/loftq``."""
    from leanfit.pipeline import quantize_checkpoint
    from leanfit.quantization import LoftQConfig

    out = folder / "loftq"
    config = LoftQConfig(bits=2, rank=4, iters=2)
    quantize_checkpoint(write_tiny_causal_lm(folder / "model"), out, config, progress=False)
    return out


@pytest.fixture(scope="package")
def tiny_causal_loftq(tmp_path_factory) -> Path:
    """The quantized tiny causal LM of :func:`quantize_tiny_causal_lm` (with its tokenizer)."""
    return quantize_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"))


@pytest.fixture(scope="package")
def minilm_loftq(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 through the whole pipeline: NF2, rank 16, T = 5, with the float16
    export; written once (about 10 s on one thread)."""
    from leanfit.pipeline import quantize_checkpoint
    from leanfit.quantization import LoftQConfig

    out = tmp_path_factory.mktemp("minilm") / "loftq"
    config = LoftQConfig(bits=2, rank=16, iters=5)
    quantize_checkpoint(model_path("minilm"), out, config, progress=False, export_dequantized=True)
    return out


@pytest.fixture(scope="session")
def minilm_batch():
    """Two real sentences, tokenized (padded) for MiniLM."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path("minilm"))
    sentences = [
        "It is a truth universally acknowledged that a single man must be in want of a wife.",
        "The weather is lovely today.",
    ]
    return dict(tokenizer(sentences, padding=True, return_tensors="pt"))


@pytest.fixture
def minilm_fp32():
    """A fresh full-precision MiniLM (BertModel), in eval mode."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_path("minilm")).eval()


SYNTHETIC = SyntheticLlama(
    hidden_size=64, intermediate_size=96, num_layers=4, vocab_size=128, num_heads=4, num_kv_heads=2
)


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory) -> Path:
    """A random llama (:data:`SYNTHETIC`, 28 targets) in shards of 100 kB: the input of the
    Dask and thread-worker tests, which compare their output with one process's."""
    directory = tmp_path_factory.mktemp("synthetic") / "llama"
    return write_synthetic_llama(directory, SYNTHETIC, max_shard_bytes=100_000, progress=False)
