"""Copy every benchmark result table (``benchmarks/results/NAME.md``) into README.md.

README.md marks where each result goes with a pair of comment lines::

    <!-- results:NAME -->
    (replaced by the content of benchmarks/results/NAME.md)
    <!-- /results:NAME -->

The content is copied verbatim except that its headings go two levels down (``#`` becomes
``###``) so that they nest under the README's sections, followed by a line saying which script
produced it. Run from anywhere: ``python scripts/update_readme.py`` rewrites README.md;
``--check`` only reports whether it is in sync (exit code 1 if not).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"


def block(name: str, markdown: str) -> str:
    """The text between the markers of ``name``: the result, headings demoted, and its origin."""
    lines = [f"##{line}" if line.startswith("#") else line for line in markdown.strip().split("\n")]
    origin = (
        f"<sub>Produced by `benchmarks/{name}.py` into `benchmarks/results/{name}.md`, "
        "copied here by `scripts/update_readme.py`.</sub>"
    )
    return "\n".join([*lines, "", origin])


def splice(readme: str, results: dict[str, str]) -> str:
    """``readme`` with the text between each pair of markers replaced by its result.

    Raises
    ------
    ValueError
        A result has no markers (or more than one pair) in ``readme``.
    """
    for name, markdown in sorted(results.items()):
        start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        pattern = re.compile(f"({re.escape(start)}).*?({re.escape(end)})", re.DOTALL)
        found = len(pattern.findall(readme))
        if found != 1:
            raise ValueError(f"README must have one pair of markers {start} … {end}; found {found}")
        text = f"\n{block(name, markdown)}\n"
        readme = pattern.sub(lambda m, text=text: m[1] + text + m[2], readme)
    return readme


def read_results(folder: Path = RESULTS) -> dict[str, str]:
    """Every ``NAME.md`` of ``folder``, by NAME (``*_quick.md`` from quick runs excluded)."""
    paths = [path for path in sorted(folder.glob("*.md")) if not path.stem.endswith("_quick")]
    return {path.stem: path.read_text(encoding="utf-8") for path in paths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    try:
        updated = splice(current, read_results())
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if updated == current:
        print("README.md is in sync with benchmarks/results")
        return 0
    if args.check:
        print("README.md is out of date: run python scripts/update_readme.py", file=sys.stderr)
        return 1
    README.write_text(updated, encoding="utf-8")
    print("README.md updated from benchmarks/results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
