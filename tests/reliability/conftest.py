"""Small valid inputs that the reliability tests damage (a CSV table, a safetensors
checkpoint directory and a GGUF file of a tiny llama), and the fine-tuning run the kill tests
compare with (the subprocess helpers are in :mod:`tests.reliability.processes`)."""

from pathlib import Path

import gguf
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from tests.shared import quantize_tiny_causal_lm, tiny_decoder, write_gguf

ROOT = Path(__file__).resolve().parents[2]


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
    tiny_decoder().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def safetensors_dir(tmp_path_factory) -> Path:
    return write_safetensors_dir(tmp_path_factory.mktemp("st") / "model")


def tiny_gguf(folder: Path) -> Path:
    """A tiny llama as ``folder/tiny.gguf``, ffn_down in Q8_0 and the rest in F32 (~60 kB)."""
    path = folder / "tiny.gguf"
    write_gguf(tiny_decoder(), "llama", path, {"ffn_down": gguf.GGMLQuantizationType.Q8_0})
    return path


@pytest.fixture(scope="session")
def tiny_causal_loftq(tmp_path_factory) -> Path:
    """A quantized tiny causal LM with a tokenizer (``leanfit finetune`` input)."""
    return quantize_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"))


FINETUNE_STEPS = 48


def finetune_args(directory: Path, out: Path, *extra: str) -> list[str]:
    """``leanfit finetune`` of ``directory`` on 64 blocks of the novel: 48 steps of 4 blocks
    of 32 tokens, a checkpoint every 8 steps, an evaluation every 16, on one thread."""
    return [
        "finetune", str(directory), "--out", str(out), "--text", "pride_and_prejudice",
        "--max-examples", "64", "--max-length", "32", "--batch-size", "4",
        "--steps", str(FINETUNE_STEPS), "--lr", "1e-2", "--checkpoint-every", "8",
        "--eval-every", "16", "--threads", "1", "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def finetune_reference(tiny_causal_loftq, tmp_path_factory) -> Path:
    """An uninterrupted ``finetune_args`` run, in this process (torch's thread count restored)."""
    from leanfit.cli import main

    out = tmp_path_factory.mktemp("finetune") / "reference"
    threads = torch.get_num_threads()
    try:
        assert main(finetune_args(tiny_causal_loftq, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def raw_safetensors(path: Path, header: bytes, payload: bytes = b"") -> Path:
    """A safetensors file with the given header bytes (length-prefixed) and payload."""
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    return path


__all__ = ["raw_safetensors", "save_file", "table", "torch", "write_safetensors_dir"]
