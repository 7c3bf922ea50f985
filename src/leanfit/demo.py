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
from leanfit.selection import adult_protocol, run_selection


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


def selection_step(out: Path) -> str:
    """Influence-based data selection on Adult (the paper's protocol), all objectives, 5 %."""
    split = adult_protocol()
    result = run_selection(
        split.train,
        split.val,
        split.test,
        out_dir=out / "selection-adult",
        objectives="all",
        budget=0.05,
        l2_reg=split.l2_reg,
        fit_intercept=split.fit_intercept,
        overwrite=True,
        description=split.description,
    )
    metrics = result.metrics.set_index("model")
    before, after = metrics.loc["untrimmed"], metrics.loc["fairness influence"]
    random = metrics.loc["random"]
    return (
        f"data selection on Adult: trimming {result.n_removed:,} rows by fairness influence "
        f"takes DP {before['dp']:.3f} → {after['dp']:.3f} at accuracy {before['accuracy']:.3f} → "
        f"{after['accuracy']:.3f} (random: DP {random['dp']:.3f}, accuracy "
        f"{random['accuracy']:.3f}); report {result.report}"
    )


STEPS: list[Callable[[Path], str]] = [datasets_step, selection_step]


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
