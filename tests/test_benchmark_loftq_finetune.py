"""The LoftQ fine-tuning benchmark runs end to end in its quick mode (slow: a few minutes)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "loftq_finetune.py"


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("loftq_finetune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "loftq_finetune_quick.json").read_text())
    assert [r["method"] for r in results["smollm2"]] == module.QUICK_METHODS
    for record in results["smollm2"]:
        assert record["ppl_init"] > 1 and record["ppl_finetuned"] > 1
    nf2 = results["smollm2"][1]
    # NF2 codes + fp32 scales per block of 64: exactly 2/16 + 32/(64*16) of float16.
    assert nf2["quantized_ratio"] == pytest.approx(2 / 16 + 32 / 64 / 16)
    assert all(0 <= r["accuracy"] <= 1 for r in results["minilm"])
    assert "SmolLM2" in (tmp_path / "loftq_finetune_quick.md").read_text()
