"""Steered fairness trimming on a table the project had not used (Toronto arrests), and Adult.

Question: on real data with a sensitive attribute (``colour``, privileged ``White``; target
``released`` = ``Yes``), what do plain, constrained and Pareto fairness trimming do to test
accuracy and the test demographic-parity gap, at the fixed default budget (5 %) and at the
budget chosen automatically on the validation set, compared with removing as many rows at
random? The test split is never seen by any choice.

Setting:

* ``leanfit.datasets.load_arrests`` (5,226 rows), 10 splits (seeds 0–9), 60 / 20 / 20
  train / validation / test, stratified on label × group (:func:`split_dataset`); L2
  logistic regression, λ = 1, intercept, default preprocessing.
* For comparison, Adult in the paper's protocol (train = ``adult.data``, validation and test
  = the halves of ``adult.test``, shuffled with seeds 0–4; λ = 2.2622, no intercept), where
  the default 5 % budget costs accuracy.
* Influence on the validation rows for utility (log-loss) and the absolute DP gap of predicted
  probabilities; selections by :func:`leanfit.selection.policies.steering.strategy_keep`.
* Budgets: 5 % (the CLI default); ``auto``: :func:`choose_budget` on the validation curve of
  the same strategy (grid :func:`auto_counts`, 0.25 %–20 %), with ``max_accuracy_drop`` 0.01
  and no target, and with ``target_dp`` 0.02.
* Random: the same number of rows removed uniformly, 5 seeds per split (mean).
* DP: selection-rate gap of hard test predictions, White minus Black (signed) and absolute.
* Also the command a user runs, whole process timed: ``leanfit select`` on the seed-42000
  split written as three CSV files, without ``--positive`` / ``--privileged`` (both assumed
  and stated), ``--objective fairness --budget auto --strategy S --seeds 5``.

Usage: ``python benchmarks/selection_steering.py [--splits 10] [--adult-splits 5]``; writes
``benchmarks/results/selection_steering.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import write_results
from tqdm.auto import tqdm

from leanfit.selection import (
    DemographicParity,
    InfluenceSelector,
    random_trim,
    retrain_and_evaluate,
    split_dataset,
)
from leanfit.selection.policies.steering import (
    STRATEGIES,
    auto_counts,
    choose_budget,
    masks_curve,
    strategy_keep,
)

RESULTS = Path(__file__).resolve().parent / "results"
DATASET = "arrests"
FIXED = 0.05
MAX_DROP = 0.01
TARGET_DP = 0.02
RANDOM_SEEDS = 5
RULES = ("5%", "auto", f"auto, target {TARGET_DP}")
METRICS = ("accuracy", "dp", "dp_abs")


def test_metrics(selector, split, keep) -> dict:
    part = split.test
    values = retrain_and_evaluate(selector, keep, part.X, part.y, sensitive_features=part.s)
    return {m: values[m] for m in (*METRICS, "n_removed")}


def random_metrics(selector, split, count: int, seed: int) -> dict:
    """Mean test metrics over ``RANDOM_SEEDS`` random removals of ``count`` rows."""
    n = len(split.train)
    if count == 0:
        return test_metrics(selector, split, np.ones(n, dtype=bool))
    runs = [
        test_metrics(selector, split, random_trim(n, count, random_state=1000 * seed + r))
        for r in range(RANDOM_SEEDS)
    ]
    return {m: float(np.mean([run[m] for run in runs])) for m in METRICS}


def run_split(dataset: str, seed: int) -> list[dict]:
    split = split_dataset(dataset, random_state=seed)
    n = len(split.train)
    selector = InfluenceSelector(split.l2_reg, fit_intercept=split.fit_intercept, random_state=seed)
    selector.fit(split.train.X, split.train.y)
    scores = selector.influence(
        split.val.X,
        split.val.y,
        sensitive_features=split.val.s.to_numpy(),
        objective=["utility", DemographicParity(absolute=True)],
    ).set_axis(["utility", "fairness"], axis=1)
    untrimmed = test_metrics(selector, split, np.ones(n, dtype=bool))
    first = {"dataset": dataset, "split": seed}
    records = [first | {"strategy": "untrimmed", "rule": "", "count": 0, **untrimmed}]
    counts = [0, *auto_counts(n)]
    for strategy in STRATEGIES:
        masks = {k: strategy_keep(scores, "fairness", k, strategy) for k in counts}
        val = split.val
        curve = masks_curve(selector, masks, val.X, val.y, val.s.to_numpy(), strategy)
        chosen = {
            "5%": round(FIXED * n),
            "auto": choose_budget(curve, max_accuracy_drop=MAX_DROP).n_removed,
            RULES[2]: choose_budget(
                curve, max_accuracy_drop=MAX_DROP, target_dp=TARGET_DP
            ).n_removed,
        }
        for rule, count in chosen.items():
            keep = strategy_keep(scores, "fairness", count, strategy)
            after = test_metrics(selector, split, keep)
            rand = random_metrics(selector, split, int(after["n_removed"]), seed)
            records.append(
                first
                | {"strategy": strategy, "rule": rule, "count": count}
                | after
                | {f"random_{m}": rand[m] for m in METRICS}
            )
    return records


def cli_runs(folder: Path) -> list[dict]:
    """``leanfit select`` as a user runs it, on CSV files, one run per strategy."""
    split = split_dataset(DATASET)
    for part in ("train", "val", "test"):
        getattr(split, part).frame.to_csv(folder / f"{part}.csv", index=False)
    rows = []
    for strategy in STRATEGIES:
        out = folder / f"out-{strategy}"
        command = [
            sys.executable, "-m", "leanfit.cli", "select",
            "--train", str(folder / "train.csv"), "--val", str(folder / "val.csv"),
            "--test", str(folder / "test.csv"), "--target", "released", "--sensitive", "colour",
            "--objective", "fairness", "--budget", "auto", "--strategy", strategy,
            "--seeds", str(RANDOM_SEEDS), "--quiet", "--out", str(out),
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        metrics = pd.read_csv(out / "metrics.csv").set_index("model")
        config = json.loads((out / "config.json").read_text())
        for model, row in metrics.iterrows():
            rows.append(
                {"strategy": strategy, "model": model, "n_removed": int(row.n_removed)}
                | {m: float(row[m]) for m in METRICS}
                | {
                    "chosen": config["n_removed"],
                    "rule": config["budget_choice"]["rule"],
                    "reason": config["budget_choice"]["reason"],
                    "assumptions": config["assumptions"],
                    "seconds": seconds,
                }
            )
    return rows


def cell(values: pd.Series, fmt: str = ".3f") -> str:
    return f"{values.mean():{fmt}} ± {values.std(ddof=1):{fmt}}"


DESCRIPTIONS = {
    "arrests": "stratified 60/20/20 splits of `leanfit.datasets.load_arrests` (5,226 rows; "
    "target released = Yes, sensitive colour, privileged White; DP = White minus Black)",
    "adult": "splits of Adult in the paper's protocol (train = adult.data, 30,162 rows; "
    "validation and test = the halves of adult.test, 7,530 rows each; target income = >50K, "
    "sensitive sex, privileged Male; DP = Male minus Female)",
}


def dataset_table(records: pd.DataFrame, dataset: str) -> list[str]:
    records = records[records.dataset == dataset]
    base = records[records.strategy == "untrimmed"].set_index("split")
    lines = [
        f"## {dataset}",
        "",
        f"Mean ± std over {len(base)} {DESCRIPTIONS[dataset]}.",
        "",
        "| strategy | budget | rows removed | test accuracy | Δ accuracy | test DP | test abs DP "
        "| random: accuracy | random: abs DP |",
        "|---|---|---:|---|---|---|---|---|---|",
        f"| untrimmed | – | 0 | {cell(base.accuracy)} | – | {cell(base.dp)} | "
        f"{cell(base.dp_abs)} | – | – |",
    ]
    for rule in RULES:
        for strategy in STRATEGIES:
            part = records[(records.strategy == strategy) & (records.rule == rule)]
            part = part.set_index("split")
            delta = part.accuracy - base.accuracy.loc[part.index]
            lines.append(
                f"| {strategy} | {rule} | {part.n_removed.mean():.0f} "
                f"({part.n_removed.min():.0f}–{part.n_removed.max():.0f}) | "
                f"{cell(part.accuracy)} | {cell(delta, '+.3f')} | {cell(part.dp)} | "
                f"{cell(part.dp_abs)} | {cell(part.random_accuracy)} | "
                f"{cell(part.random_dp_abs)} |"
            )
    return [*lines, ""]


def markdown(records: pd.DataFrame, cli: pd.DataFrame) -> str:
    lines = [
        "# Steered fairness trimming: plain, constrained, Pareto; fixed and automatic budget",
        "",
        "Test metrics (the test split is never used by a choice). DP: selection-rate gap of "
        "hard test predictions, privileged minus unprivileged; |DP| its absolute value. "
        f"*auto*: the budget chosen on the validation split only (accuracy drop ≤ {MAX_DROP}; "
        f"lowest validation |DP|, or the smallest budget with validation |DP| ≤ {TARGET_DP}); "
        f"random: as many rows removed uniformly ({RANDOM_SEEDS} seeds per split). Δ accuracy: "
        "versus untrimmed, same split. Rows removed: mean (min–max) over splits.",
        "",
    ]
    for dataset in pd.unique(records.dataset):
        lines += dataset_table(records, dataset)
    lines += [
        "## The command a user runs (arrests)",
        "",
        "`leanfit select --train train.csv --val val.csv --test test.csv --target released "
        "--sensitive colour --objective fairness --budget auto --strategy S --seeds 5` on the "
        "seed-42000 split; no --positive / --privileged (assumed, stated in the report). "
        "Wall time of the whole command, process start included.",
        "",
        "| strategy | row of the report | removed | test accuracy | test DP | test abs DP | "
        "seconds |",
        "|---|---|---:|---|---|---|---:|",
    ]
    for row in cli.itertuples():
        lines.append(
            f"| {row.strategy} | {row.model} | {row.n_removed} | {row.accuracy:.4f} | "
            f"{row.dp:+.4f} | {row.dp_abs:.4f} | {row.seconds:.1f} |"
        )
    lines += ["", "Budget choices (validation only):", ""]
    for strategy, part in cli.groupby("strategy", sort=False):
        lines.append(f"- **{strategy}**: {part.chosen.iloc[0]} rows ({part.rule.iloc[0]}): "
                     f"{part.reason.iloc[0]}")  # fmt: skip
    lines += ["", "Assumptions stated by the run: " + "; ".join(cli.assumptions.iloc[0]) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=10, help="arrests splits")
    parser.add_argument("--adult-splits", type=int, default=5, help="adult splits (0: none)")
    args = parser.parse_args()
    start = time.perf_counter()
    jobs = [(DATASET, seed) for seed in range(args.splits)]
    jobs += [("adult", seed) for seed in range(args.adult_splits)]
    records = [r for job in tqdm(jobs, desc="splits") for r in run_split(*job)]
    with tempfile.TemporaryDirectory() as tmp:
        cli = cli_runs(Path(tmp))
    frame, cli_frame = pd.DataFrame(records), pd.DataFrame(cli)
    meta = {
        "dataset": DATASET,
        "splits": args.splits,
        "adult_splits": args.adult_splits,
        "fixed_budget": FIXED,
        "max_accuracy_drop": MAX_DROP,
        "target_dp": TARGET_DP,
        "random_seeds": RANDOM_SEEDS,
        "seconds": time.perf_counter() - start,
    }
    text = markdown(frame, cli_frame)
    write_results(
        RESULTS,
        "selection_steering",
        quick=args.splits < 10 or args.adult_splits < 5,
        meta=meta,
        records=records + [{"cli": True, **row} for row in cli],
        markdown=text,
    )
    print(text)


if __name__ == "__main__":
    main()
