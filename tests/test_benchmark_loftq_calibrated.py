"""The calibrated LoftQ benchmark runs end to end in its quick mode (slow: several minutes)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "loftq_calibrated.py"


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("loftq_calibrated", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "loftq_calibrated_quick.json").read_text())
    assert [r["method"] for r in results["records"]] == list(module.METHODS)
    for record in results["records"]:
        assert record["ppl_init"] > 1 and record["ppl_finetuned"] > 1
    assert "not run" not in (tmp_path / "loftq_calibrated_quick.md").read_text()
