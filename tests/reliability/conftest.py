"""Small valid inputs that the reliability tests damage: a CSV table, a safetensors
checkpoint directory and a GGUF file of a tiny llama."""

from pathlib import Path

import gguf
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from tests.quantization.conftest import _tiny_llama, write_gguf


def table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Two numeric features, a categorical one, a binary group ``g`` (M/F), labels ``y``."""
    rng = np.random.default_rng(seed)
    g = rng.random(n) < 0.5
    a = rng.standard_normal(n) + 0.5 * g
    y = (a + rng.standard_normal(n) > 0.3).astype(int)
    return pd.DataFrame(
        {
            "a": a,
            "b": rng.standard_normal(n),
            "c": rng.choice(["x", "y", "z"], n),
            "g": np.where(g, "M", "F"),
            "y": y,
        }
    )


@pytest.fixture
def csv_pair(tmp_path) -> tuple[Path, Path]:
    """A valid train / test pair of CSV files (``--target y --sensitive g``)."""
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    table(120, 0).to_csv(train, index=False)
    table(80, 1).to_csv(test, index=False)
    return train, test


def write_safetensors_dir(folder: Path) -> Path:
    """A two-layer tiny llama saved as a transformers directory (config + safetensors)."""
    model = _tiny_llama(0)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def safetensors_dir(tmp_path_factory) -> Path:
    return write_safetensors_dir(tmp_path_factory.mktemp("st") / "model")


@pytest.fixture(scope="session")
def gguf_file(tmp_path_factory) -> Path:
    """A tiny llama as GGUF, ffn_down in Q8_0 and the rest in F32 (~60 kB)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(_tiny_llama(0), "llama", path, {"ffn_down": gguf.GGMLQuantizationType.Q8_0})
    return path


def raw_safetensors(path: Path, header: bytes, payload: bytes = b"") -> Path:
    """A safetensors file with the given header bytes (length-prefixed) and payload."""
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    return path


__all__ = ["raw_safetensors", "save_file", "table", "torch", "write_safetensors_dir"]
