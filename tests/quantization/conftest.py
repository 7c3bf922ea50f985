"""Shared fixtures: one torch thread, and the real weight matrices of MiniLM."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread() -> Iterator[None]:
    """Run these tests on one thread: on a shared 2-core machine, OpenMP threads competing
    with other processes made the SVDs here 30x slower than a single thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def minilm_weights() -> list[torch.Tensor]:
    """The 37 weight matrices of every ``nn.Linear`` in all-MiniLM-L6-v2 (out × in, float32)."""
    transformers = pytest.importorskip("transformers")
    from leanfit.pretrained import model_path

    model = transformers.AutoModel.from_pretrained(model_path("minilm"))
    weights = [m.weight.detach().clone() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(weights) == 37
    return weights
