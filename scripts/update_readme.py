"""Copy benchmark result tables (``benchmarks/results/NAME.md``) into README.md.

README.md marks where each result goes with a pair of comment lines::

    <!-- results:NAME -->
    (replaced by the content of benchmarks/results/NAME.md)
    <!-- /results:NAME -->

Every marked NAME must have its ``NAME.md``; result files without markers are left out (quick
runs write ``NAME_quick.md``, which the README does not show). Headings of a result go two
levels down (``#`` becomes ``###``) to nest under the README's sections. Run from anywhere:
``python scripts/update_readme.py`` rewrites README.md; ``--check`` only reports whether it is
in sync (exit code 1 if not).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
MARKERS = re.compile(r"(<!-- results:([\w-]+) -->)(.*?)(<!-- /results:\2 -->)", re.DOTALL)


def block(name: str, markdown: str) -> str:
    """The text between the markers of ``name``: the result, headings demoted, and its origin."""
    lines = [f"##{line}" if line.startswith("#") else line for line in markdown.strip().split("\n")]
    origin = f"<sub>From `benchmarks/results/{name}.md` (`benchmarks/{name}.py`).</sub>"
    return "\n".join([*lines, "", origin])


def splice(readme: str, folder: Path = RESULTS) -> str:
    """``readme`` with every marked block replaced by its result file.

    Raises
    ------
    FileNotFoundError
        A marked NAME has no ``NAME.md`` in ``folder``.
    """

    def replace(match: re.Match) -> str:
        name = match[2]
        path = folder / f"{name}.md"
        if not path.is_file():
            raise FileNotFoundError(f"README marks results:{name} but {path} does not exist")
        return f"{match[1]}\n{block(name, path.read_text(encoding='utf-8'))}\n{match[4]}"

    return MARKERS.sub(replace, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    try:
        updated = splice(current)
    except FileNotFoundError as err:
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
