"""``leanfit quantize --max-memory``: refused up front when the estimate is over the budget,
stopped (resumably) when the run goes over it, and the estimate is close to a real peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leanfit.exceptions import BadInputError, MemoryBudgetError
from leanfit.pipeline import LoftQConfig, estimate_checkpoint_memory, walker
from leanfit.pipeline.memory import MemoryEstimate, parse_size
from tests.reliability.processes import ROOT, comparable, quantize_in, write_llama

CONFIG = LoftQConfig(bits=2, rank=4, iters=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_llama(tmp_path_factory.mktemp("memory") / "model", layers=2, hidden=64)


def quantize_here(model: Path, folder: Path, **options):
    return quantize_in(folder, model, CONFIG, **options)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4GB", 4 * 10**9), ("500 MB", 500 * 10**6), ("1.5GiB", 3 * 2**29), ("123", 123)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "4 parsecs", "-1GB", "0.1"])
def test_parse_size_refuses(text):
    with pytest.raises(BadInputError, match="size"):
        parse_size(text, "--max-memory")


def test_budget_below_the_estimate_is_refused_before_writing(model, tmp_path):
    estimate = estimate_checkpoint_memory(model, CONFIG)
    budget = estimate.baseline // 2  # below what the process already holds
    with pytest.raises(
        BadInputError, match=r"max_memory_bytes must cover the estimated peak memory"
    ):
        quantize_here(model, tmp_path, max_memory_bytes=budget)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a partial run


def test_refusal_says_what_would_fit():
    mb = 10**6
    estimate = MemoryEstimate(
        baseline=300 * mb,
        workspace=200 * mb,
        largest_target="w",
        shard_buffer=64 * mb,
        dequantized_buffer=0,
        adapter=10 * mb,
        min_buffer=5 * mb,
    )
    assert estimate.peak == 564 * mb
    estimate.check(564 * mb)  # exactly the estimate: accepted
    fits = r"564 MB .* got 540 MB: a --max-shard-size of at most 40 MB would fit"
    with pytest.raises(BadInputError, match=fits):
        estimate.check(540 * mb)
    too_small = r"got 400 MB: even with the smallest shards it needs about 505 MB"
    with pytest.raises(BadInputError, match=too_small):
        estimate.check(400 * mb)


def test_the_description_adds_up_to_the_peak_when_the_adapter_dominates():
    mb = 10**6
    estimate = MemoryEstimate(300 * mb, 20 * mb, "w", 10 * mb, 0, 900 * mb, 5 * mb)
    assert estimate.peak == 1200 * mb  # the adapter, loaded whole at the end, is the peak
    assert estimate.describe() == "1.2 GB (baseline 300 MB + adapter 900 MB)"


def test_generous_budget_runs(model, tmp_path):
    estimate = estimate_checkpoint_memory(model, CONFIG)
    # 500 MB above the estimate: a budget the run must accept up front and never hit (the
    # estimate is an upper bound: real increments measured 0.63–0.87 × it; see memory.py).
    budget = estimate.peak + 500 * 10**6
    report = quantize_here(model, tmp_path, max_memory_bytes=budget)
    assert report.peak_anon_bytes <= budget
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_going_over_the_budget_stops_and_resumes(model, tmp_path, monkeypatch):
    """The up-front estimate is replaced by zeros so that only the watch during the run can
    stop it: with a 1-byte budget the first memory sample is over it."""
    quantize_here(model, tmp_path / "reference")
    zero = MemoryEstimate(0, 0, "-", 0, 0, 0, 0)
    monkeypatch.setattr(walker, "estimate_memory", lambda *args, **kwargs: zero)
    with pytest.raises(MemoryBudgetError, match=r"over the budget of 1 B.*after 1 of .*--resume"):
        quantize_here(model, tmp_path / "run", max_memory_bytes=1)
    assert (tmp_path / "run" / ".out.partial" / "journal.jsonl").is_file()  # kept to resume
    quantize_here(model, tmp_path / "run", resume=True)
    assert comparable(tmp_path / "run" / "out") == comparable(tmp_path / "reference" / "out")


MEASURE = """
import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM
from leanfit.pipeline import LoftQConfig
from leanfit.pipeline import estimate_checkpoint_memory, quantize_checkpoint
folder = Path(sys.argv[1])
torch.manual_seed(0)
LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=512, intermediate_size=2048,
    num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4)
).save_pretrained(folder / "model", safe_serialization=True)
config = LoftQConfig(bits=2, rank=8, iters=3)
estimate = estimate_checkpoint_memory(folder / "model", config, max_shard_bytes=2**20)
report = quantize_checkpoint(folder / "model", folder / "out", config, progress=False,
    max_shard_bytes=2**20, max_memory_bytes=estimate.peak + 2**30)
print(json.dumps({"estimated": estimate.peak - estimate.baseline,
                  "measured": report.peak_anon_bytes - report.start_anon_bytes}))
"""


def test_estimate_is_close_to_the_measured_peak(tmp_path):
    """A fresh process (earlier tests' freed heap would hide allocations) quantizes a llama
    block whose MLP matrices are 512 × 2048 (4 MB in float32, so the LoftQ working set is
    tens of MB, well above the allocator's noise). The estimate is meant as an upper bound
    with a margin: the measured increment of anonymous memory over the run's start is
    between 0.4 and 1.0 of the estimated one (measured 0.63–0.87 on this machine; the
    spread comes from glibc's heap reuse and the 20 ms sampling)."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=600,
        check=True,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    ratio = figures["measured"] / figures["estimated"]
    print(f"measured / estimated working set: {ratio:.2f} ({figures})")
    assert 0.4 <= ratio <= 1.0, figures
