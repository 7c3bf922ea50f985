"""Helpers shared by the test folders: the one-thread fixture (autouse in every folder whose
conftest.py imports it), tiny random decoders, tiny GGUF files written the way llama.cpp's
converter writes them, and the synthetic llama of the parallel and Dask tests. The fixtures
are in tests/conftest.py."""

from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from leanfit.checkpoints.synthetic import SyntheticLlama
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

TINY_BERT = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
"""A BERT of two width-32 blocks (``BertConfig(**TINY_BERT)``): 13 linear layers."""


def tiny_decoder(
    config_class=LlamaConfig, model_class=LlamaForCausalLM, seed: int = 0, **overrides
):
    """A randomly initialized two-layer decoder (``TINY`` settings, changed by ``overrides``)
    in eval mode; the same seed and settings give the same weights."""
    torch.manual_seed(seed)
    return model_class(config_class(**{**TINY, **overrides})).eval()


def tiny_lora_run(model, lora_seed: int = 0):
    """``model`` (a tiny llama of :data:`TINY`) with LoRA on q/v (rank 2, dropout 0.1: a
    resumed or checkpointed run must replay the same masks) and random blocks of 16 tokens:
    (PEFT model, 18 training blocks, 4 held-out blocks)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(lora_seed)
    lora = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(model, lora)
    blocks = torch.randint(0, 64, (22, 16), generator=torch.Generator().manual_seed(0))
    return model, blocks[:18], blocks[18:]


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
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint

    out = folder / "loftq"
    config = LoftQConfig(bits=2, rank=4, iters=2)
    quantize_checkpoint(write_tiny_causal_lm(folder / "model"), out, config, progress=False)
    return out


SYNTHETIC = SyntheticLlama(
    hidden_size=64, intermediate_size=96, num_layers=4, vocab_size=128, num_heads=4, num_kv_heads=2
)
