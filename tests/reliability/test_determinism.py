"""Same inputs and seed, same bytes: ``leanfit select`` and ``leanfit finetune`` outputs, and
``loftq_decompose``."""

from __future__ import annotations

import json

import pytest
import torch

from leanfit.cli import main
from leanfit.quantization import LoraSpec, QuantSpec
from leanfit.quantization.loftq import loftq_decompose
from tests.reliability.conftest import finetune_args
from tests.reliability.processes import digest, results_of, run_to_end
from tests.reliability.test_interruptions import select_args


def test_select_twice_gives_identical_files(inputs, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(select_args(inputs, first)) == 0
    assert main(select_args(inputs, second)) == 0
    capsys.readouterr()
    files = digest(first)
    assert {"report.md", "config.json", "influence.csv", "removed.csv"} <= set(files)
    assert any(name.endswith(".png") for name in files)
    assert files == digest(second)  # every file, figures included
    config = json.loads((first / "config.json").read_text())
    assert str(tmp_path) not in json.dumps(config)  # no paths, no clock: nothing run-specific


@pytest.fixture
def inputs(tmp_path):
    from tests.reliability.conftest import table

    folder = tmp_path / "in"
    folder.mkdir()
    table(300, 0).to_csv(folder / "train.csv", index=False)
    table(150, 1).to_csv(folder / "test.csv", index=False)
    return folder


def test_finetune_in_two_processes_gives_identical_files(
    tiny_causal_loftq, finetune_reference, tmp_path
):
    """This process's reference run and a subprocess (another hash seed), both on one CPU
    thread: every file is equal — adapter, checkpoints with optimizer and RNG states,
    metrics. (Across thread counts the float32 sums are ordered differently: 1 vs 2
    threads gave losses differing by up to 1e-6.)"""
    second = tmp_path / "second"
    run_to_end(finetune_args(tiny_causal_loftq, second))
    files = digest(finetune_reference)
    assert {"adapter/adapter_model.safetensors", "metrics.json"} <= set(files)
    assert "checkpoints/step-48/optimizer.safetensors" in files
    others = digest(second)
    assert {k: v for k, v in files.items() if k != "metrics.json"} == {
        k: v for k, v in others.items() if k != "metrics.json"
    }
    assert results_of(finetune_reference) == results_of(second)  # seconds and memory aside
    adapter = json.loads((second / "adapter" / "adapter_config.json").read_text())
    modules = adapter["target_modules"]  # PEFT keeps a set: saved sorted, not in hash order
    assert modules == sorted(modules) and len(modules) == 14


@pytest.mark.parametrize("svd", ["randomized", "exact"])
@pytest.mark.parametrize("iters", [0, 3])
def test_loftq_is_bitwise_reproducible(svd, iters):
    weight = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    init = "qlora" if iters == 0 else "loftq"  # QLoRA: no LoftQ step
    lora = LoraSpec(4, iters=max(iters, 1), svd=svd, init=init)
    runs = [loftq_decompose(weight, QuantSpec(2), lora, seed=7) for _ in range(2)]
    a, b = runs
    for name in ("lora_A", "lora_B"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.quantized.packed, b.quantized.packed)
    assert torch.equal(a.quantized.block_scales(), b.quantized.block_scales())
    assert a.errors == b.errors
    other = loftq_decompose(weight, QuantSpec(2), lora, seed=8)
    if svd == "randomized" or iters == 0:  # the seed matters only where randomness is used
        assert not torch.equal(other.lora_A, a.lora_A)
