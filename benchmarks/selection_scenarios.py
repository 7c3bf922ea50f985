"""The paper's applications of influence-based selection, each against honest baselines.

Runs every scenario of :mod:`leanfit.selection.scenarios` on the vendored data over several
seeds (mean ± sample std) and writes one small table per run:

* distribution shift (Adult: target with more women; German credit: older target);
* anchoring poisoning attacks (German credit, random anchoring; COMPAS, non-random);
* adaptive evasion attacks (Adult, L2 ball);
* online learning with 35 % flipped labels per batch (Adult);
* active learning with the influence tree (Adult);
* non-convex models through a convex surrogate (MLP on Adult; MLP head on MiniLM embeddings
  of tweets).

Usage: ``python benchmarks/selection_scenarios.py [--quick] [--seeds 5] [--only NAME ...]``;
writes ``benchmarks/results/selection_scenarios.{json,md}`` (``--quick``: the small
configurations, about a minute each). ``--render`` only rewrites the markdown from the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from leanfit.io import atomic_output
from leanfit.reports import markdown_table
from leanfit.selection.scenarios.experiment import (
    SCENARIOS,
    result_from_record,
    result_record,
    run_experiment,
    summary_table,
)

RESULTS = Path(__file__).resolve().parent / "results"

#: (scenario, label, configuration fields on top of the full or quick defaults)
RUNS: list[tuple[str, str, dict[str, object]]] = [
    ("shift", "Adult, target with more women (group tilt 1.5)", {}),
    ("shift", "German credit, older target (age tilt 1.5)", {"dataset": "german", "kind": "age"}),
    ("poisoning", "German credit, random anchoring, ε = 10 %", {}),
    (
        "poisoning",
        "COMPAS, non-random anchoring, ε = 10 %",
        {"dataset": "compas", "method": "non-random"},
    ),
    ("adaptive", "Adult, L2 ball of radius 0.25", {}),
    ("online", "Adult, 10 batches, 35 % of labels flipped, 10 % trimmed per batch", {}),
    ("active", "Adult, 100 seed labels, 10 rounds of 10 queries", {}),
    ("surrogate", "MLP on Adult; MLP head on MiniLM embeddings of tweets", {}),
]


def run(quick: bool, seeds: int, only: list[str] | None) -> list[tuple[str, dict, str]]:
    """Run the selected scenarios; return (label, JSON record, markdown table) per run."""
    outputs = []
    for name, label, fields in RUNS:
        if only and name not in only:
            continue
        config_type = SCENARIOS[name].config_type
        config = config_type.quick(**fields) if quick else config_type(**fields)
        result = run_experiment(name, config, seeds=seeds, quick=quick)
        table = markdown_table(summary_table(result))
        print(f"\n{SCENARIOS[name].title}: {label} ({result.elapsed_seconds:.0f} s)\n{table}")
        outputs.append((label, result_record(result), table))
    return outputs


def write(outputs: list[tuple[str, dict, str]], quick: bool, seeds: int, elapsed: float) -> None:
    runs = [{"label": label, **record} for label, record, _ in outputs]
    with atomic_output(RESULTS / "selection_scenarios.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"quick": quick, "seeds": seeds, "runs": runs}, indent=1) + "\n")
    lines = [
        "# Influence-based selection in practice",
        "",
        f"{'Quick' if quick else 'Full'} configurations, {seeds} seeds per run (mean ± sample "
        f"std over seeds), {elapsed / 60:.0f} min in all. Produced by "
        "`python benchmarks/selection_scenarios.py"
        f"{' --quick' if quick else ''} --seeds {seeds}`; the same runs one at a time: "
        "`leanfit experiment NAME --out DIR`.",
    ]
    for (label, record, table), _ in zip(outputs, runs, strict=True):
        settings = ", ".join(f"`{k}={v}`" for k, v in record["config"].items() if v is not None)
        lines += [
            "",
            f"## {record['title']}: {label}",
            "",
            f"{SCENARIOS[record['scenario']].description} Configuration: {settings}; "
            f"{record['elapsed_seconds']:.0f} s.",
            "",
            table.rstrip("\n"),
        ]
    with atomic_output(RESULTS / "selection_scenarios.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small configurations")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per run (default 5)")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="scenarios to run")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the .md from the saved .json"
    )
    args = parser.parse_args()
    if args.render:
        saved = json.loads((RESULTS / "selection_scenarios.json").read_text())
        outputs = [
            (run.pop("label"), run, markdown_table(summary_table(result_from_record(run))))
            for run in saved["runs"]
        ]
        elapsed = sum(record["elapsed_seconds"] for _, record, _ in outputs)
        write(outputs, saved["quick"], saved["seeds"], elapsed)
        return
    start = time.perf_counter()
    outputs = run(args.quick, args.seeds, args.only)
    write(outputs, args.quick, args.seeds, time.perf_counter() - start)
    print(f"\nwrote {RESULTS / 'selection_scenarios.json'} and .md")


if __name__ == "__main__":
    main()
