"""Load test: ``leanfit quantize`` on synthetic llama checkpoints of many tensors completes, and
its peak memory stays within 2× the largest tensors' working set plus the outputs it holds.

Both figures are measured in fresh processes by ``benchmarks/quantize_memory.py`` (the claim
it benchmarks): the working set is the peak anonymous memory of quantizing a random matrix of
the largest target's shape alone and of writing the largest tensor as float32; the outputs
held are one backbone shard (64 MB) and the LoRA adapter.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from leanfit.checkpoints.synthetic import SyntheticLlama, write_synthetic_llama

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def benchmark():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location(
            "quantize_memory", BENCHMARKS / "quantize_memory.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def check_streaming_bound(benchmark, tmp_path: Path, spec: SyntheticLlama) -> dict:
    source = write_synthetic_llama(tmp_path / "llama", spec, progress=False)
    (row,) = benchmark.measure_checkpoint("synthetic", source, tmp_path, reference=False)
    assert row["tensors"] == len(spec.tensor_shapes())
    assert row["targets"] == 7 * spec.num_layers
    # The claim: peak anonymous memory within 2× the working set plus the outputs held.
    assert row["peak_anon_mb"] <= row["bound_mb"]
    # ... and below the model as float32, which loading it whole would take on top.
    assert row["peak_anon_mb"] < row["model_fp32_mb"]
    return row


def test_quantize_100mb_of_300_tensors_within_the_memory_bound(benchmark, tmp_path):
    spec = SyntheticLlama.of_size(
        100 * 2**20,
        hidden_size=256,
        intermediate_size=704,
        num_heads=8,
        num_kv_heads=2,
        vocab_size=4096,
        dtype="float32",
    )
    assert spec.num_layers > 30  # 309 tensors
    check_streaming_bound(benchmark, tmp_path, spec)


@pytest.mark.slow
def test_quantize_3gb_of_1000_tensors_within_the_memory_bound(benchmark, tmp_path):
    spec = SyntheticLlama.of_size(
        3 * 2**30,
        hidden_size=1024,
        intermediate_size=2816,
        num_heads=16,
        num_kv_heads=4,
        vocab_size=32000,
    )
    assert spec.num_layers > 100  # 1,236 tensors
    row = check_streaming_bound(benchmark, tmp_path, spec)
    # 3 GiB asked (3.22 GB) in whole decoder blocks: the file lands within a block of it
    # (measured 3.0 GB); 2.9 GB rules out a spec that silently shrank.
    assert row["file_gb"] > 2.9
