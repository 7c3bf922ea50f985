"""Fixtures of the integration tests: one torch thread, and leanfit outputs to load."""

from pathlib import Path

import pytest

from tests.shared import _one_thread, quantize_tiny_causal_lm

__all__ = ["_one_thread"]


@pytest.fixture(scope="package")
def tiny_causal_loftq(tmp_path_factory) -> Path:
    """A tiny random llama with MiniLM's tokenizer, quantized to NF2 (rank 4)."""
    return quantize_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"))
