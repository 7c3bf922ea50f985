"""README.md carries the benchmark result tables verbatim (scripts/update_readme.py)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "update_readme", ROOT / "scripts" / "update_readme.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_in_sync_with_every_results_file():
    script = load_script()
    results = script.read_results()
    assert "selection_adult" in results
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert script.splice(readme, results) == readme, "run python scripts/update_readme.py"
    for markdown in results.values():
        table_rows = [line for line in markdown.splitlines() if line.startswith("|")]
        assert all(row in readme for row in table_rows)  # tables copied verbatim


def test_splice_replaces_only_between_markers():
    script = load_script()
    readme = (
        "intro\n<!-- results:a -->\nold\n<!-- /results:a -->\noutro\n"
        "<!-- results:b --><!-- /results:b -->\n"
    )
    spliced = script.splice(readme, {"a": "# Title\n\n| x |\n|---|\n| 1 |\n", "b": "text"})
    assert spliced.startswith("intro\n<!-- results:a -->\n### Title\n\n| x |\n|---|\n| 1 |\n")
    assert "old" not in spliced and spliced.count("benchmarks/a.py") == 1
    assert "<!-- results:b -->\ntext\n\n<sub>" in spliced and spliced.endswith(
        "<!-- /results:b -->\n"
    )
    assert script.splice(spliced, {"a": "# Title\n\n| x |\n|---|\n| 1 |\n", "b": "text"}) == spliced
    with pytest.raises(ValueError, match="results:c"):
        script.splice(readme, {"c": "text"})
