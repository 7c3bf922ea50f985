"""Influence-based selection on a multi-million-row table: does it finish, and at what cost?

Claim: :class:`leanfit.selection.InfluenceSelector` fits, scores every training row on two
objectives (validation log-loss and the absolute demographic-parity gap) and trims 5 % of a
table of several million rows × 20 features on one machine, with memory a small multiple of
the table itself (the influence pass is chunked, so it adds ``chunk_size × p`` only).

Data: synthetic, generated in chunks of 250,000 rows with a fixed seed. Features are
standard normal (column 0 shifted by the group), the sensitive attribute is a Bernoulli(0.6)
group, labels follow a logistic model ``P(y = 1) = σ(x·β + 0.5·s)``. The validation table
has 100,000 rows drawn the same way.

Measured in this process: wall-clock seconds per phase (generate, fit, influence, trim) and
the peak resident set size (``ru_maxrss``, the kernel's high-water mark of the process) with
the size of the raw training table for comparison.

Usage: ``python benchmarks/selection_load.py [--rows N] [--json PATH]``; writes
``benchmarks/results/selection_load.{json,md}`` by default.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from leanfit.selection import DemographicParity, InfluenceSelector, trim

RESULTS = Path(__file__).resolve().parent / "results"
MB = 2**20
CHUNK = 250_000
FEATURES = 20
VAL_ROWS = 100_000


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_table(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``rows`` × (20 float features + binary ``group``) and 0/1 labels, built chunk by chunk."""
    rng = np.random.default_rng(seed)
    beta = np.random.default_rng(0).normal(size=FEATURES) / np.sqrt(FEATURES)
    X = np.empty((rows, FEATURES))
    s = np.empty(rows, dtype=np.int64)
    y = np.empty(rows, dtype=np.int64)
    for start in range(0, rows, CHUNK):
        stop = min(rows, start + CHUNK)
        group = rng.random(stop - start) < 0.6
        features = rng.standard_normal((stop - start, FEATURES))
        features[:, 0] += 0.5 * group
        logits = features @ beta + 0.5 * group
        X[start:stop] = features
        s[start:stop] = group
        y[start:stop] = rng.random(stop - start) < 1 / (1 + np.exp(-logits))
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(FEATURES)], copy=False)
    frame["group"] = s
    return frame, y


def measure(rows: int) -> dict:
    timings = {}
    start = time.perf_counter()
    train, y = synthetic_table(rows, seed=1)
    val, y_val = synthetic_table(VAL_ROWS, seed=2)
    table_mb = train.memory_usage(index=False).sum() / MB
    timings["generate"] = time.perf_counter() - start

    start = time.perf_counter()
    selector = InfluenceSelector(1.0).fit(train, y)
    timings["fit"] = time.perf_counter() - start

    start = time.perf_counter()
    scores = selector.influence(
        val,
        y_val,
        objective=["utility", DemographicParity(absolute=True)],
        sensitive_features="group",
    )
    timings["influence"] = time.perf_counter() - start

    start = time.perf_counter()
    kept = {name: int(trim(scores[name], 0.05).sum()) for name in scores.columns}
    timings["trim"] = time.perf_counter() - start
    if not all(count == rows - round(0.05 * rows) for count in kept.values()):
        raise RuntimeError(f"trimming kept {kept} of {rows} rows")
    if not np.all(np.isfinite(scores.to_numpy())):
        raise RuntimeError("influence has non-finite values")
    return {
        "rows": rows,
        "features": FEATURES + 1,
        "model_columns": int(selector.model_.coef_.shape[0]),
        "val_rows": VAL_ROWS,
        "objectives": list(scores.columns),
        "rows_kept_per_objective": kept,
        "train_table_mb": round(float(table_mb), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "seconds": {phase: round(t, 2) for phase, t in timings.items()},
        "newton_iterations": int(getattr(selector.model_, "n_iter_", -1)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_count": __import__("os").cpu_count(),
    }


def markdown(result: dict) -> str:
    seconds = result["seconds"]
    header = "| rows | features | table MB | peak RSS MB | " + " | ".join(
        f"{phase} s" for phase in seconds
    )
    rule = "|" + "---|" * (4 + len(seconds))
    row = (
        f"| {result['rows']:,} | {result['features']} | {result['train_table_mb']:.0f} | "
        f"{result['peak_rss_mb']:.0f} | " + " | ".join(f"{t:.1f}" for t in seconds.values())
    )
    return (
        "# Selection at scale\n\n"
        f"`InfluenceSelector` on a synthetic table ({result['rows']:,} rows × "
        f"{result['features']} columns, {result['val_rows']:,} validation rows): fit, influence "
        "on validation log-loss and on the absolute demographic-parity gap, trim 5 %. One "
        f"process on {result['cpu_count']} CPU cores; peak RSS is the kernel's high-water "
        "mark of the whole process (Python, libraries and both tables included).\n\n"
        f"{header} |\n{rule}\n{row} |\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--json", type=Path, default=RESULTS / "selection_load.json")
    args = parser.parse_args()
    result = measure(args.rows)
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    args.json.with_suffix(".md").write_text(markdown(result), encoding="utf-8")


if __name__ == "__main__":
    main()
