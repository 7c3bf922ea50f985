"""Shared fixtures: the real weights of MiniLM and SmolLM2, tiny models, and the outputs of the
whole pipeline. They are imported inside the fixtures, so that tests using none of them do not
import torch or transformers; the helpers behind them are in :mod:`tests.shared`, and each
test folder of the LoftQ side runs on one torch thread by importing its fixture."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from leanfit.pretrained import model_path

if TYPE_CHECKING:
    import torch


@pytest.fixture(scope="session")
def minilm_weights() -> list[torch.Tensor]:
    """The 37 weight matrices of every ``nn.Linear`` in all-MiniLM-L6-v2 (out × in, float32)."""
    import torch

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
    from leanfit.checkpoints.source import open_checkpoint

    with open_checkpoint(smollm2_path) as checkpoint:
        yield checkpoint


@pytest.fixture(name="llama_cpp_permute")
def llama_cpp_permute_fixture():
    from tests.shared import llama_cpp_permute

    return llama_cpp_permute


@pytest.fixture(name="write_gguf")
def write_gguf_fixture():
    from tests.shared import write_gguf

    return write_gguf


@pytest.fixture(scope="session")
def smollm2_model():
    """SmolLM2-135M-Instruct (base model, tokenizer). Tests must deep-copy the model before
    wrapping it in PEFT, which modifies it in place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path("minilm"))


@pytest.fixture
def tiny_llama():
    """Factory ``tiny_llama(seed)`` of randomly initialized two-layer llamas (vocabulary 64,
    width 16) for mechanics tests; the same seed gives the same weights."""
    from tests.shared import tiny_decoder

    return lambda seed=0: tiny_decoder(seed=seed)


@pytest.fixture(scope="package")
def tiny_causal_loftq(tmp_path_factory) -> Path:
    """The quantized tiny causal LM of :func:`~tests.shared.quantize_tiny_causal_lm` (with its
    tokenizer)."""
    from tests.shared import quantize_tiny_causal_lm

    return quantize_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"))


@pytest.fixture(scope="package")
def minilm_loftq(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 through the whole pipeline: NF2, rank 16, T = 5, with the float16
    export; written once (about 10 s on one thread)."""
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint

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


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory) -> Path:
    """A random llama (:data:`~tests.shared.SYNTHETIC`, 28 targets) in shards of 100 kB: the
    input of the Dask and thread-worker tests, which compare their output with one process's."""
    from leanfit.checkpoints.synthetic import write_synthetic_llama
    from tests.shared import SYNTHETIC

    directory = tmp_path_factory.mktemp("synthetic") / "llama"
    return write_synthetic_llama(directory, SYNTHETIC, max_shard_bytes=100_000, progress=False)
