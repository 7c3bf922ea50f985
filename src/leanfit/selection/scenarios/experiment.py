"""Run a scenario over several seeds, summarize mean ± std, write JSON, markdown and plots.

Each scenario module provides a configuration dataclass and a function ``run(config, seed)``
returning a tidy table (one row per method and, where it applies, per step: budget, batch,
round or attacked fraction). :func:`run_experiment` repeats it over seeds ``0 … n−1`` and
:func:`write_experiment` writes, into one directory:

* ``results.json``: the scenario, its configuration, the seeds, every per-seed row and the
  summary (mean and sample standard deviation over seeds of every metric);
* ``results.md``: the setting, the summary table (``mean ± std``) and the plots;
* one PNG per plotted metric (curves with a ±1 std band, or bars with ±1 std error bars).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from leanfit._version import __version__
from leanfit.checks import check_int
from leanfit.exceptions import bad_value
from leanfit.io import atomic_output
from leanfit.reports import Image, new_figure, save_figure, trimming_curves, write_report
from leanfit.selection.scenarios._common import (
    ScenarioConfig,
)
from leanfit.selection.scenarios.active import ActiveConfig, run_active
from leanfit.selection.scenarios.adaptive import AdaptiveConfig, run_adaptive
from leanfit.selection.scenarios.online import OnlineConfig, run_online
from leanfit.selection.scenarios.poisoning import PoisoningConfig, run_poisoning
from leanfit.selection.scenarios.shift import ShiftConfig, run_shift
from leanfit.selection.scenarios.surrogate import SurrogateConfig, run_surrogate

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _all_rows(summary: pd.DataFrame, config: ScenarioConfig) -> pd.DataFrame:
    return summary


def _shift_rows(summary: pd.DataFrame, config: ScenarioConfig) -> pd.DataFrame:
    """The untrimmed, reweighed and validation-chosen models, and both trimmings at the
    reported budget."""
    budget = getattr(config, "budget", None)
    keep = summary["method"].isin(["none", "reweighing", "influence-val"]) | np.isclose(
        summary["budget"].astype(float), float(budget) if budget is not None else np.nan
    )
    return summary[keep]


@dataclass(frozen=True)
class Scenario:
    """How to run, summarize and show one scenario.

    Attributes
    ----------
    name, title, description : str
    config_type : type
        The configuration dataclass (``config_type()`` is the full run, ``.quick()`` the small
        one).
    run : callable
        ``run(config, seed) -> DataFrame`` of tidy rows with a ``seed`` column.
    keys : tuple of str
        Columns identifying a row across seeds (summary groups).
    metrics : tuple of str
        Columns averaged over seeds.
    step : str or None
        Column of the x-axis for curve plots; None for bar plots.
    plotted : tuple of str
        Metrics drawn (one PNG each).
    pivot : bool
        Show the table pivoted: one row per method, one column per ``step`` value (cells of
        the first metric), the other metrics averaged over the steps.
    table_rows : callable
        ``(summary, config) -> summary subset`` shown in the markdown table.
    """

    name: str
    title: str
    description: str
    config_type: type[ScenarioConfig]
    run: Callable[[Any, int], pd.DataFrame]
    keys: tuple[str, ...]
    metrics: tuple[str, ...]
    step: str | None
    plotted: tuple[str, ...]
    pivot: bool = False
    table_rows: Callable[[pd.DataFrame, ScenarioConfig], pd.DataFrame] = _all_rows


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "shift",
            "Fairness under distribution shift",
            "Train on the source distribution, trim the source samples most harmful to the "
            "demographic parity gap measured on a small labelled target sample, test on the "
            "rest of the target. Baselines: no trimming, random trimming, Kamiran–Calders "
            "reweighing. `influence-val`: budget chosen on the target validation sample.",
            ShiftConfig,
            run_shift,
            ("method", "budget"),
            ("accuracy", "dp", "dp_abs", "eop_abs", "chosen_budget"),
            "budget",
            ("dp_abs", "accuracy"),
            table_rows=_shift_rows,
        ),
        Scenario(
            "poisoning",
            "Defence against anchoring poisoning attacks",
            "Anchoring attack (Mehrabi et al., AAAI 2021) on the training data; defence: "
            "remove the points most harmful to the demographic parity gap on clean validation "
            "data. Precision/recall: overlap of the removed points with the poisoned ones.",
            PoisoningConfig,
            run_poisoning,
            ("method",),
            ("accuracy", "dp", "dp_abs", "eop_abs", "n_removed", "precision", "recall"),
            None,
            ("dp_abs", "accuracy"),
        ),
        Scenario(
            "adaptive",
            "Adaptive evasion attacks",
            "An attacker moves a growing fraction of the test points to their worst case in "
            "an ε-ball against the deployed model (recomputed for each model). Models: "
            "original, trimmed by robustness influence (budget chosen on validation), "
            "randomly trimmed with the same budget. Accuracy over the whole test set.",
            AdaptiveConfig,
            run_adaptive,
            ("method", "fraction"),
            ("accuracy", "budget"),
            "fraction",
            ("accuracy",),
            pivot=True,
        ),
        Scenario(
            "online",
            "Online learning with noisy batches",
            "Batches with flipped labels; before each update (a refit on all kept data), "
            "drop the most harmful fraction of the new batch by utility influence on clean "
            "validation data, or a random fraction, or nothing. `flipped_removed`: share of "
            "the dropped samples whose label was flipped.",
            OnlineConfig,
            run_online,
            ("method", "batch"),
            ("accuracy", "flipped_removed"),
            "batch",
            ("accuracy",),
            pivot=True,
        ),
        Scenario(
            "active",
            "Active learning with the influence tree",
            "Query the pool points with the highest influence predicted by the influence tree "
            "fitted on the labelled points; against random and uncertainty sampling. Test "
            "accuracy after each round.",
            ActiveConfig,
            run_active,
            ("method", "round"),
            ("accuracy",),
            "round",
            ("accuracy",),
            pivot=True,
        ),
        Scenario(
            "surrogate",
            "Non-convex models through a convex surrogate",
            "Influence from a logistic regression on the network's last-layer features; the "
            "network is retrained without the trimmed samples. Adult: MLP on tabular "
            "features (groups: sex). Tweets: MLP head on MiniLM embeddings (utility only).",
            SurrogateConfig,
            run_surrogate,
            ("case", "method"),
            ("accuracy", "dp_abs", "eop_abs", "n_removed", "removed_confidence", "kept_confidence"),
            None,
            ("accuracy", "dp_abs"),
        ),
    ]
}


@dataclass(frozen=True)
class ExperimentResult:
    """Rows of every seed and their summary (see :func:`summarize`)."""

    scenario: str
    config: ScenarioConfig
    seeds: tuple[int, ...]
    quick: bool
    rows: pd.DataFrame
    summary: pd.DataFrame
    elapsed_seconds: float


def get_scenario(name: str) -> Scenario:
    """The :class:`Scenario` called ``name`` (a key of :data:`SCENARIOS`)."""
    if name not in SCENARIOS:
        raise bad_value("scenario", name, f"one of {sorted(SCENARIOS)}")
    return SCENARIOS[name]


def summarize(rows: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of each metric, per key combination.

    Returns one row per key combination (in order of first appearance; missing keys such as
    NaN budgets form their own group) with ``n_seeds`` and ``<metric>_mean`` /
    ``<metric>_std`` for the metrics present in ``rows`` (std is NaN with a single seed).
    """
    present = [m for m in metrics if m in rows.columns]
    grouped = rows.groupby(list(keys), sort=False, dropna=False)
    summary = grouped[present].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary.insert(0, "n_seeds", grouped["seed"].nunique())
    return summary.reset_index()


def run_experiment(
    name: str,
    config: ScenarioConfig | None = None,
    *,
    seeds: int = 3,
    quick: bool = False,
    progress: bool = True,
) -> ExperimentResult:
    """Run scenario ``name`` for seeds ``0 … seeds−1`` and summarize.

    Parameters
    ----------
    name : {"shift", "poisoning", "adaptive", "online", "active", "surrogate"}
    config : ScenarioConfig, optional
        Defaults to the scenario's full configuration, or its quick one with ``quick``.
    seeds : int, default 3
        Number of repetitions (different splits, attacks, noise and random baselines).
    quick : bool, default False
        Use the small-budget configuration when ``config`` is not given.
    progress : bool, default True
        Show a progress bar over seeds.
    """
    scenario = get_scenario(name)
    check_int("seeds", seeds, low=1)
    if config is None:
        config = scenario.config_type.quick() if quick else scenario.config_type()
    elif not isinstance(config, scenario.config_type):
        raise bad_value("config", type(config).__name__, scenario.config_type.__name__)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Categories met in validation or test data but not in training data are encoded as
        # zeros, as make_preprocessor documents; scikit-learn would warn at every call.
        warnings.filterwarnings("ignore", "Found unknown categories", UserWarning)
        parts = [
            scenario.run(config, seed)
            for seed in tqdm(range(seeds), desc=name, disable=not progress)
        ]
    rows = pd.concat(parts, ignore_index=True)
    return ExperimentResult(
        name, config, tuple(range(seeds)), quick, rows,
        summarize(rows, scenario.keys, scenario.metrics), time.perf_counter() - start,
    )  # fmt: skip


def _cell(mean: float, std: float) -> str:
    """``mean ± std`` with 3 decimals (1 from 100 on); a constant integer (e.g. a count that
    does not vary over seeds) without decimals; ``mean`` alone without a std."""
    if pd.isna(mean):
        return ""
    if float(mean).is_integer() and (pd.isna(std) or std == 0):
        return f"{int(mean)}"
    digits = 1 if abs(mean) >= 100 else 3
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(result: ExperimentResult) -> pd.DataFrame:
    """The markdown-ready table: key columns and ``mean ± std`` strings per metric.

    Curve scenarios (a ``step``) are pivoted: one row per method, one column per step value,
    cells of the first metric; scenarios without a step list the selected rows.
    """
    scenario = get_scenario(result.scenario)
    summary = scenario.table_rows(result.summary, result.config)
    metrics = [m for m in scenario.metrics if f"{m}_mean" in summary.columns]
    if scenario.pivot:
        return _pivoted(result, summary, metrics)
    table = summary[list(scenario.keys)].copy()
    for metric in metrics:
        mean, std = summary[f"{metric}_mean"], summary[f"{metric}_std"]
        if mean.notna().any():
            table[metric] = [_cell(m, s) for m, s in zip(mean, std, strict=True)]
    return table.reset_index(drop=True)


def _pivoted(result: ExperimentResult, summary: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """First metric per (method, step) as columns; other metrics averaged over the steps of
    each seed, then mean ± std over seeds."""
    step = get_scenario(result.scenario).step
    first = metrics[0]
    cells = summary.assign(cell=[
        _cell(m, s) for m, s in zip(summary[f"{first}_mean"], summary[f"{first}_std"], strict=True)
    ])  # fmt: skip
    table = cells.pivot(index="method", columns=step, values="cell")
    table = table.reindex(pd.unique(cells["method"]))
    table.columns = [f"{first} @ {step} {c:g}" for c in table.columns]
    for metric in metrics[1:]:
        per_seed = result.rows.groupby(["method", "seed"], sort=False)[metric].mean()
        stats = per_seed.groupby(level="method", sort=False).agg(["mean", "std"])
        if stats["mean"].notna().any():
            table[f"{metric} (mean over the {step} values)"] = [
                _cell(stats.loc[m, "mean"], stats.loc[m, "std"]) for m in table.index
            ]
    return table.reset_index()


def _bars(summary: pd.DataFrame, keys: Sequence[str], metric: str) -> Figure:
    """Bars of a metric's mean per key combination, with ±1 std error bars."""
    fig, ax = new_figure((max(6.4, 0.9 * len(summary)), 4.0))
    labels = [
        " / ".join(str(v) for v in row) for row in summary[list(keys)].itertuples(index=False)
    ]
    std = summary[f"{metric}_std"].fillna(0.0).to_numpy()
    ax.bar(range(len(summary)), summary[f"{metric}_mean"].to_numpy(), yerr=std, capsize=4,
           color="#7fb2e5", edgecolor="grey")  # fmt: skip
    ax.set_xticks(range(len(summary)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _plots(result: ExperimentResult, folder: Path) -> list[Image]:
    scenario = get_scenario(result.scenario)
    images = []
    for metric in scenario.plotted:
        if metric not in result.rows.columns or result.rows[metric].isna().all():
            continue
        path = folder / f"{result.scenario}_{metric}.png"
        if scenario.step is None:
            fig = _bars(result.summary.dropna(subset=[f"{metric}_mean"]), scenario.keys, metric)
        else:
            curve = result.rows.dropna(subset=[scenario.step])
            fig = trimming_curves(curve, x=scenario.step, y=metric, method_col="method",
                                  seed_col="seed", title=scenario.title)  # fmt: skip
        save_figure(fig, path)
        images.append(Image(path, f"{scenario.title}: {metric}"))
    return images


def _json_ready(value: object) -> Any:
    """NaN → None and numpy scalars → Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def result_record(result: ExperimentResult) -> dict:
    """The JSON-ready record of an experiment (what ``results.json`` holds)."""
    scenario = get_scenario(result.scenario)
    return _json_ready({
        "scenario": result.scenario, "title": scenario.title, "leanfit": __version__,
        "quick": result.quick, "seeds": list(result.seeds), "config": result.config.to_dict(),
        "elapsed_seconds": round(result.elapsed_seconds, 1),
        "summary": result.summary.to_dict(orient="records"),
        "rows": result.rows.to_dict(orient="records"),
    })  # fmt: skip


def result_from_record(record: dict) -> ExperimentResult:
    """Inverse of :func:`result_record` (``None`` becomes NaN again): re-render a report
    from a saved ``results.json`` without running anything."""
    scenario = get_scenario(record["scenario"])
    rows = pd.DataFrame(record["rows"]).fillna(value=np.nan)
    summary = pd.DataFrame(record["summary"]).fillna(value=np.nan)
    return ExperimentResult(
        record["scenario"], scenario.config_type.from_dict(record["config"]),
        tuple(record["seeds"]), bool(record["quick"]), rows, summary,
        float(record["elapsed_seconds"]),
    )  # fmt: skip


def write_experiment(result: ExperimentResult, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``results.json``, ``results.md`` and the PNG plots into the directory ``out``.

    The directory is written atomically (a temporary sibling renamed into place); an existing
    ``out`` is replaced only with ``overwrite``.
    """
    scenario = get_scenario(result.scenario)
    out = Path(out)
    with atomic_output(out, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "results.json").write_text(json.dumps(result_record(result), indent=1) + "\n")
        images = _plots(result, tmp)
        settings = ", ".join(f"`{k}={v}`" for k, v in result.config.to_dict().items())
        sections = [
            ("Setting", [scenario.description, f"Configuration: {settings}. Seeds: "
                         f"{len(result.seeds)}{' (quick run)' if result.quick else ''}; "
                         f"{result.elapsed_seconds:.0f} s."]),
            (f"Results (mean ± std over {len(result.seeds)} seeds)", summary_table(result)),
        ]  # fmt: skip
        if images:
            sections.append(("Plots", images))
        write_report(tmp / "results.md", scenario.title, sections)
    return out
