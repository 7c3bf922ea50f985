"""Shared real models for the fine-tuning and evaluation tests, loaded once per session."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from leanfit.pretrained import model_path


@pytest.fixture
def single_thread():
    """Run the test with one torch thread, restoring the previous count afterwards.

    On the 2-core machines these tests target, other processes usually share the CPU; there a
    second OpenMP thread spins waiting for its partner and made the fine-tuning tests 5x
    slower (measured: 462 s with 2 threads against 89 s with 1 for this directory's
    fine-tuning and evaluation tests). Results do not depend on it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (base model, tokenizer). Tests must deep-copy the model before
    wrapping it in PEFT, which modifies it in place."""
    path = model_path("smollm2")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


@pytest.fixture
def fresh_smollm2(smollm2):
    """A private copy of SmolLM2 to wrap or modify."""
    return copy.deepcopy(smollm2[0])


@pytest.fixture(scope="session")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(model_path("minilm"))


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama():
    """Factory ``tiny_llama(seed)`` of randomly initialized two-layer llamas (vocabulary 64,
    width 16) for mechanics tests; the same seed gives the same weights."""
    return _tiny_llama
