"""README.md and docs/ stay true: generated parts in sync (scripts/update_readme.py), every
documented command accepted by the CLI, every option of a command shown in an example, every
Python import of a snippet importable, every relative link resolving."""

import argparse
import ast
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
QUANTIZATION_DOC = ROOT / "docs" / "quantization.md"
#: Commands whose every option needs an example in docs/quantization.md.
QUANTIZATION_DOC_COMMANDS = ("quantize", "finetune", "evaluate", "data", "experiment")


def load_script():
    spec = importlib.util.spec_from_file_location(
        "update_readme", ROOT / "scripts" / "update_readme.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(text: str, language: str = "") -> list[str]:
    """The fenced code blocks of ``text`` opened with ```` ```language ````."""
    blocks, opened, lines = [], None, []
    for line in text.splitlines():
        if opened is None and line.startswith("```"):
            opened, lines = line[3:].strip(), []
        elif opened is not None and line.strip() == "```":
            if opened == language:
                blocks.append("\n".join(lines) + "\n")
            opened = None
        elif opened is not None:
            lines.append(line)
    return blocks


def command_lines(text: str) -> list[str]:
    """Every ``leanfit ...`` command of the plain code blocks, continuation lines joined and
    trailing ``# comments`` dropped."""
    commands = []
    for block in code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["leanfit"]:
                commands.append(words)
    return commands


def documents() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in [README, *DOCS]
    }


def test_generated_parts_are_in_sync():
    stale = [
        str(path.relative_to(ROOT))
        for path, (old, new) in load_script().updated_files().items()
        if old != new
    ]
    assert not stale, "run python scripts/update_readme.py"


def test_docs_benchmarks_carries_every_results_table_verbatim():
    results = load_script().read_results()
    assert "selection_adult" in results and "loftq_pipeline" in results
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    for name, markdown in results.items():
        assert f"<!-- results:{name} -->" in page
        table_rows = [line for line in markdown.splitlines() if line.startswith("|")]
        assert table_rows and all(row in page for row in table_rows), name


def test_splice_replaces_only_between_markers():
    script = load_script()
    page = (
        "intro\n<!-- results:a -->\nold\n<!-- /results:a -->\noutro\n"
        "<!-- results:b --><!-- /results:b -->\n"
    )
    results = {"a": "# Title\n\n| x |\n|---|\n| 1 |\n", "b": "text"}
    spliced = script.splice(page, results)
    assert spliced.startswith("intro\n<!-- results:a -->\n### Title\n\n| x |\n|---|\n| 1 |\n")
    assert "old" not in spliced and spliced.count("benchmarks/a.py") == 1
    assert "<!-- results:b -->\ntext\n\n<sub>" in spliced
    assert spliced.endswith("<!-- /results:b -->\n")
    assert script.splice(spliced, results) == spliced


def test_results_without_markers_and_markers_without_results_are_named():
    script = load_script()
    page = "<!-- results:a -->\n<!-- /results:a -->\n<!-- results:gone -->\n<!-- /results:gone -->"
    with pytest.raises(ValueError) as caught:
        script.splice(page, {"a": "x", "new_one": "y", "new_two": "z"})
    message = str(caught.value)
    assert "<!-- results:new_one -->" in message and "<!-- /results:new_two -->" in message
    assert "results:gone" in message and "nothing generates" in message
    assert "results:a " not in message


def test_check_names_a_new_results_file_without_markers(tmp_path, monkeypatch, capsys):
    script = load_script()
    for path in script.RESULTS.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "brand_new.md").write_text("# Brand new\n\n| a |\n|---|\n| 1 |\n")
    monkeypatch.setattr(script, "RESULTS", tmp_path)
    assert script.main(["--check"]) == 2
    assert "<!-- results:brand_new -->" in capsys.readouterr().err


def test_summary_tables_are_computed_from_the_json_results():
    script = load_script()
    real = script.summaries()
    assert real["quantization"] in README.read_text(encoding="utf-8")

    def load_changed(name):
        data = script.load_json(name)
        if name == "loftq_pipeline":
            row = next(r for r in data["records"] if (r["model"], r["bits"]) == ("smollm2", 2))
            row["LoftQ error"] = 0.123456
        if name == "selection_adult":
            data["table"]["DP influence, 5 %"]["dp_abs"] = 0.0424242
        if name == "finetune_memory":
            for row in data["records"]:
                if row["model"] == "llama-1.1b" and row["tool"] in ("peft", "leanfit-fp"):
                    row["peak_rss_mb"] = 999.0 + (row["tool"] == "leanfit-fp")
        return data

    changed = script.summaries(load=load_changed)
    tuning = script.doc_summaries()["quantization.md"]["finetune-memory"]
    assert tuning in (ROOT / "docs" / "quantization.md").read_text(encoding="utf-8")
    changed_tuning = script.doc_summaries(load=load_changed)["quantization.md"]["finetune-memory"]
    assert "| llama-1.1b | 1 × 256 | 999 | 1000 |" in changed_tuning  # float32 peaks, below
    assert "| 999 |" not in tuning
    assert "llama-1.1b 1 × 256" in changed["quantization"]
    assert "LoftQ 0.488" in real["quantization"] and "LoftQ 0.488" not in changed["quantization"]
    assert "0.223 → 0.042" in changed["selection"] and "0.042" not in real["selection"]


def test_readme_is_short_and_starts_with_the_set_up_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < 12_000
    top = "\n".join(text.splitlines()[:25])
    assert "make demo" in top and "make test " in top
    for target in ("make test-all", "make lint", "make bench"):
        assert target in text


@pytest.fixture(scope="module")
def subcommands() -> dict[str, argparse.ArgumentParser]:
    return load_script().subcommand_parsers()


def test_every_documented_command_is_accepted_by_the_cli(capsys):
    from leanfit.cli import build_parser

    commands = [
        (name, words) for name, text in documents().items() for words in command_lines(text)
    ]
    assert len(commands) > 40
    for name, words in commands:
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as err:  # --help exits 0; a rejected command exits 2
            assert err.code == 0, f"{name}: {shlex.join(words)}\n{capsys.readouterr().err}"


def test_every_option_has_an_example_in_docs_quantization(subcommands):
    script = load_script()
    text = QUANTIZATION_DOC.read_text(encoding="utf-8")
    used: dict[str, set[str]] = {}
    for words in command_lines(text):
        used.setdefault(words[1], set()).update(w.split("=")[0] for w in words[2:])
    for command in QUANTIZATION_DOC_COMMANDS:
        options = script.option_strings(subcommands[command])
        missing = sorted(set(options) - used.get(command, set()))
        assert options and not missing, f"leanfit {command}: no example uses {missing}"


def test_python_snippets_import_what_they_use_from_leanfit():
    snippets = [
        (name, block) for name, text in documents().items() for block in code_blocks(text, "python")
    ]
    assert len(snippets) >= 2
    for name, block in snippets:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "leanfit":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    dotted = f"{node.module}.{alias.name}"
                    assert hasattr(module, alias.name), f"{name}: {dotted}"


#: Pages written with this test (others' pages are checked by the tests above only).
OWN_PAGES = ("README.md", "docs/quantization.md", "docs/architecture.md", "docs/benchmarks.md")


def test_dotted_names_resolve():
    generated = re.compile(r"<!-- (\w+):([\w-]+) -->.*?<!-- /\1:\2 -->", re.DOTALL)
    names = {
        (page, name.rstrip("."))
        for page in OWN_PAGES
        for name in re.findall(
            r"`(leanfit(?:\.\w+)+)", generated.sub("", (ROOT / page).read_text(encoding="utf-8"))
        )
    }
    assert len(names) > 30
    for page, name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[cut:]:
            assert hasattr(found, attribute), f"{page}: {name}"
            found = getattr(found, attribute)


def heading_anchors(text: str) -> set[str]:
    slug = load_script().slug
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#+ ", line)}


def test_relative_links_resolve():
    links = [
        (name, target)
        for name, text in documents().items()
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not re.match(r"[a-z]+:", target)
    ]
    assert len(links) > 20
    for name, target in links:
        path_part, _, anchor = target.partition("#")
        path = (ROOT / name).parent / path_part if path_part else ROOT / name
        assert path.exists(), f"{name}: {target}"
        if anchor:
            assert anchor in heading_anchors(path.read_text(encoding="utf-8")), f"{name}: {target}"


def test_option_table_shows_value_default_and_exclusions():
    script = load_script()
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path, help="a path")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, help="steps")
    group.add_argument("--epochs", type=int, default=1, help="epochs (a|b)")
    parser.add_argument("--mode", choices=["a", "b"], default="a", help="mode, %(default)s")
    parser.add_argument("--quiet", action="store_true", help="hush")
    parser.add_argument("--size", metavar="SIZE", default=0, help="zero is shown")
    extra = parser.add_argument_group("extra")
    extra.add_argument("--name", required=True, help="who")
    assert script.options_table(parser).splitlines() == [
        "| option | value | default | meaning |",
        "|---|---|---|---|",
        "| `PATH` (positional) | `PATH` |  | a path |",
        "| `--steps` | `INT` |  | steps (excludes --epochs) |",
        "| `--epochs` | `INT` | `1` | epochs (a\\|b) (excludes --steps) |",
        "| `--mode` | `{a,b}` | `a` | mode, a |",
        "| `--quiet` |  |  | hush |",
        "| `--size` | `SIZE` | `0` | zero is shown |",
        "",
        "*extra*",
        "",
        "| option | value | default | meaning |",
        "|---|---|---|---|",
        "| `--name` | `TEXT` |  | required; who |",
    ]


def test_numbers_are_formatted_for_reading():
    script = load_script()
    assert [script.num(x) for x in (0.82603, 75552.8, 1614070871.9)] == ["0.826", "7.6e4", "1.6e9"]
    assert [script.ppl(x) for x in (21.0469, 454.089, 1120.53, 75552.8)] == [
        "21.05",
        "454.1",
        "1121",
        "7.6e4",
    ]
    assert script.slug("`leanfit quantize` end to end: 2 × 3") == "leanfit-quantize-end-to-end-2--3"
