"""Small valid inputs that the reliability tests damage (a CSV table, a safetensors
checkpoint directory and a GGUF file of a tiny llama), and functions that run ``leanfit`` in a
subprocess and kill it."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from tests.quantization.conftest import quantize_tiny_causal_lm, tiny_decoder, write_gguf

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


# -- leanfit in a subprocess ---------------------------------------------------------------


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def start(args: list[str]) -> subprocess.Popen:
    """``python -m leanfit.cli ARGS`` with this checkout's sources; stderr piped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "leanfit.cli", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip


def run_to_end(args: list[str]) -> float:
    """Run ``leanfit ARGS`` in a subprocess; check it succeeds; its wall time in seconds."""
    began = time.monotonic()
    process = start(args)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()
    return time.monotonic() - began


def kill_when(args: list[str], condition: Callable[[float], bool]) -> bool:
    """Start ``leanfit ARGS`` and SIGKILL it as soon as ``condition(seconds since start)``
    holds (polled every 5 ms); True if it was still running then, False if it ended first."""
    process = start(args)
    began = time.monotonic()
    while process.poll() is None:
        if condition(time.monotonic() - began):
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            return True
        time.sleep(0.005)
    return False


def kill_at(args: list[str], seconds: float, out: Path) -> bool:
    """Start ``leanfit ARGS`` writing ``out`` and SIGKILL it after ``seconds`` (or, if
    ``seconds`` is negative, once its hidden partial output ``.OUT.*.partial`` appears);
    True if it was still running when killed."""

    def due(elapsed: float) -> bool:
        if seconds >= 0:
            return elapsed >= seconds
        return any(out.parent.glob(f".{out.name}.*.partial"))

    return kill_when(args, due)


def check_kills(
    args_for: Callable[[Path], list[str]],
    sources: Path,
    tmp_path: Path,
    *,
    n_kills: int,
    seed: int,
    files: Callable[[Path], dict[str, str]] = digest,
) -> list[tuple[float, bool, int]]:
    """Kill ``leanfit`` runs writing ``OUT`` and check that nothing is lost.

    A reference run of ``args_for(OUT)``, then ``n_kills`` runs SIGKILLed: the first as soon
    as its hidden ``.OUT.*.partial`` sibling appears, the others at random moments of the
    reference's duration. After each: ``sources`` keep their bytes, ``OUT`` is absent or
    complete (``files(OUT)`` equal to the reference's), only hidden partials are left beside
    it, and a rerun completes with the reference's files and removes them.

    Returns
    -------
    list of (seconds, killed, partials)
        The planned moment (-1: at the partial), whether the run was still going when
        killed, and how many partials it left.
    """
    reference = tmp_path / "reference"
    duration = run_to_end(args_for(reference))
    expected = files(reference)
    before = digest(sources)
    times = [-1.0, *np.random.default_rng(seed).uniform(0.1, 1.0, n_kills - 1) * duration]
    outcomes = []
    for index, seconds in enumerate(times):
        runs = tmp_path / f"runs{index}"
        runs.mkdir()
        out = runs / "out"
        killed = kill_at(args_for(out), seconds, out)
        assert digest(sources) == before  # the input is never touched
        left = sorted(p.name for p in runs.iterdir())
        assert all(name == "out" or name.startswith(".out.") for name in left), left
        assert all(name.endswith(".partial") for name in left if name != "out"), left
        if out.exists():  # finished before the kill: complete
            assert files(out) == expected
        partials = [name for name in left if name.endswith(".partial")]
        if not out.exists():
            run_to_end(args_for(out))
            assert files(out) == expected  # a rerun completes, identical
            assert sorted(p.name for p in runs.iterdir()) == ["out"]  # partials removed
        outcomes.append((round(seconds, 2), killed, len(partials)))
    return outcomes


__all__ = ["raw_safetensors", "save_file", "table", "torch", "write_safetensors_dir"]
