"""scripts/update_readme.py: marked blocks are replaced by their result file."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "update_readme.py"
spec = importlib.util.spec_from_file_location("update_readme", SCRIPT)
update_readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_readme)


def test_marked_blocks_are_replaced_and_other_text_kept(tmp_path):
    (tmp_path / "speed.md").write_text("# Speed\n\n| a |\n|---|\n| 1 |\n")
    (tmp_path / "speed_quick.md").write_text("# not shown\n")
    readme = "intro\n<!-- results:speed -->\nold table\n<!-- /results:speed -->\nend\n"
    updated = update_readme.splice(readme, tmp_path)
    assert updated.startswith("intro\n<!-- results:speed -->\n### Speed\n")
    assert "old table" not in updated and "not shown" not in updated
    assert updated.endswith("<!-- /results:speed -->\nend\n")
    assert update_readme.splice(updated, tmp_path) == updated  # idempotent


def test_a_marker_without_its_result_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results:missing"):
        update_readme.splice("<!-- results:missing -->\n<!-- /results:missing -->", tmp_path)


def test_readme_markers_all_have_results():
    readme = (SCRIPT.parents[1] / "README.md").read_text(encoding="utf-8")
    update_readme.splice(readme)  # raises if a marked result file is missing
