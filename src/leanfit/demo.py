"""``make demo``: run every part of leanfit on real data and models, and say where it wrote.

Each step is a function of the output directory that writes its files there and returns a
one-line summary.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from leanfit.datasets import TABULAR
from leanfit.pretrained import PACKAGES, model_path


def datasets_step(out: Path) -> str:
    """Summarize the vendored tabular data sets and the packaged models in ``datasets.md``."""
    lines = ["| data set | rows | target = positive | sensitive = privileged | P(y=1) | P(s=1) |"]
    lines.append("|---|---:|---|---|---:|---:|")
    for name, loader in TABULAR.items():
        ds = loader()
        lines.append(
            f"| {name} | {len(ds):,} | {ds.target} = {ds.positive} | "
            f"{ds.sensitive} = {ds.privileged} | {ds.y.mean():.3f} | {ds.s.mean():.3f} |"
        )
    lines += ["", "| model | path |", "|---|---|"]
    lines += [f"| {name} | `{model_path(name)}` |" for name in PACKAGES]
    path = out / "datasets.md"
    path.write_text("\n".join(lines) + "\n")
    return f"data sets and models: {path}"


STEPS: list[Callable[[Path], str]] = [datasets_step]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the leanfit demo.")
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = [step(args.out) for step in STEPS]
    print("\nleanfit demo finished; outputs:")
    for summary in summaries:
        print(f"  - {summary}")


if __name__ == "__main__":
    main()
