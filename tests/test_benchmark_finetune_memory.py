"""The fine-tuning memory benchmark's worker runs each kind of setting (a tiny llama)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "finetune_memory.py"


@pytest.fixture
def benchmark(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("finetune_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "CACHE", tmp_path)
    # hidden, intermediate, layers, heads, kv heads: a llama small enough to quantize in seconds
    monkeypatch.setitem(module.LLAMAS, "llama-tiny", (64, 128, 2, 4, 2))
    return module


@pytest.mark.parametrize(
    ("tool", "bits", "options"),
    [("peft", None, ["ckpt"]), ("leanfit-peft", 2, []), ("leanfit", 2, ["ckpt", "chunked"])],
)
def test_worker_measures_one_setting(benchmark, tool, bits, options):
    setting = {"model": "llama-tiny", "tokens": 8, "tool": tool, "bits": bits, "options": options}
    record = benchmark.worker(setting, tokens=8, steps=2, device_name="cpu")
    assert record["runtime_mb"] > 0 and record["peak_rss_mb"] >= record["runtime_mb"]
    assert record["model_tensors_mb"] > 0 and record["optimizer_mb"] > 0
    assert record["step_seconds"] > 0
