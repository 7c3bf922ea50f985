"""The whole selection workflow in one call: influence, trimming, curves, rules, report.

:func:`run_selection` is what ``leanfit select`` runs. Given train / validation / test tables
(:class:`~leanfit.datasets.TabularDataset`, e.g. from :func:`split_dataset` or
:func:`split_csv`), it

1. fits an :class:`InfluenceSelector` (L2 logistic regression, one-hot + standardized
   features) on the training table;
2. computes the influence of every training row on each validation objective
   (positive = beneficial, negative = harmful);
3. for each objective, removes the ``budget`` most harmful rows (or the rows a
   utility-protecting ``strategy`` picks, :mod:`leanfit.selection.steering`), retrains
   (preprocessing held fixed) and evaluates on the test table; ``budget="auto"`` first
   chooses the count on the *validation* table from the fairness trimming curve;
4. traces test metrics over a grid of budgets up to twice ``budget``, against removing
   rows at random (mean ± standard deviation over ``seeds`` random orders);
5. explains each objective's influence by an :class:`InfluenceTree` fitted on the original,
   readable training columns, and reads its leaves as rules;
6. writes everything into ``out_dir`` (atomically: a temporary sibling renamed into place).

Output files (``<objective>`` is ``utility``, ``fairness``, ``eop`` or ``robustness``):

=============================  ===============================================================
``report.md``                  setting, before / after table, figures, the most harmful rules
``metrics.csv``                the before / after table (test set)
``trimming_curve.csv``         test metrics per method, seed and budget (tidy)
``influence.csv``              column ``row`` (index of the training table) and one column of
                               influence per objective
``removed.csv``                the rows each objective removes: ``objective``, ``row``,
                               ``influence``, most harmful first
``trimmed_train_<obj>.csv``    the training table without the rows that objective removes,
                               same columns as the input (usable as a new training file)
``rules_<obj>.csv`` / ``.md``  the tree's leaves as rules, most harmful first
``*.png``                      influence by sensitive group, trimming curves, one tree per
                               objective; ``budget_choice.png`` with ``budget="auto"``
``config.json``                every parameter, the data description, the assumptions made
                               for the user, the leanfit version; with ``budget="auto"``,
                               ``budget_choice``: the validation curve, the chosen count and
                               the rule that chose it
=============================  ===============================================================

Fairness is demographic parity (DP): the influence objective is the absolute gap of mean
predicted probability between the groups, ``|mean p | privileged − mean p | unprivileged|``
(:class:`DemographicParity` with ``absolute=True``), so that trimming narrows the gap whichever
group it favours (the paper's signed gap, the same when the privileged group is favoured,
would widen a gap in the other direction); ``eop`` is the same on the rows with label 1
(equal opportunity). The reported metrics are the gaps of selection rate and of true positive
rate, signed (privileged minus unprivileged) and absolute (fairlearn's). Robustness is the
log-loss on the paper's overshoot attack points; robust accuracy is the accuracy on the test
points attacked the same way (attack computed from the untrimmed model).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from leanfit._version import __version__
from leanfit.datasets import TabularDataset
from leanfit.exceptions import BadInputError, bad_value
from leanfit.io import atomic_output
from leanfit.reports import (
    Image,
    influence_histogram,
    markdown_table,
    save_figure,
    trimming_curves,
    write_report,
)
from leanfit.selection.explain import InfluenceTree
from leanfit.selection.influence import MAX_CATEGORIES, InfluenceSelector, check_cardinality
from leanfit.selection.objectives import (
    DemographicParity,
    EqualOpportunity,
    Objective,
    resolve_objectives,
)
from leanfit.selection.steering import (
    DEFAULT_MAX_ACCURACY_DROP,
    BudgetChoice,
    auto_counts,
    check_fraction,
    check_strategy,
    choose_budget,
    masks_curve,
    strategy_keep,
)
from leanfit.selection.trimming import (
    resolve_budget,
    summarize_curve,
    trimming_curve,
)

logger = logging.getLogger(__name__)

#: Objective names ``run_selection`` accepts, in report order; ``"all"`` means all four.
OBJECTIVES = ("utility", "fairness", "eop", "robustness")
#: Test metric that each objective aims at, and its label in figures.
TARGET_METRIC = {
    "utility": ("accuracy", "test accuracy"),
    "fairness": ("dp", "test DP (privileged − unprivileged)"),
    "eop": ("eop", "test EOP (privileged − unprivileged)"),
    "robustness": ("robust_acc", "test robust accuracy (overshoot attack)"),
}
#: Metric columns of the before / after table and their headers.
METRICS = {
    "accuracy": "accuracy",
    "dp": "DP",
    "dp_abs": "abs DP",
    "eop": "EOP",
    "eop_abs": "abs EOP",
    "robust_acc": "robust acc",
}
#: Line colour of each objective's influence curve and of the random baseline.
COLORS = {
    "utility": "tab:blue",
    "fairness": "tab:red",
    "eop": "tab:purple",
    "robustness": "tab:green",
    "random": "tab:gray",
}
#: Line colour of the utility-protecting strategies' curves.
STRATEGY_COLORS = {"constrained": "tab:orange", "pareto": "tab:olive"}
#: How each strategy picks the rows, for the report.
STRATEGY_TEXT = {
    "plain": "the rows with the most negative influence.",
    "constrained": "the rows most harmful to the objective among those whose removal is not "
    "predicted to cost utility (utility influence ≤ 0); utility itself is trimmed plainly, and "
    "the table also shows plain trimming for comparison.",
    "pareto": "the largest predicted objective gain whose summed utility influence is at most "
    "zero (Lagrangian selection); utility itself is trimmed plainly, and the table also shows "
    "plain trimming for comparison.",
}
RULE_FORMATS = {"shrunk_mean": ".3g", "raw_mean": ".3g"}
DESCRIPTIONS = {
    "utility": "validation log-loss",
    "fairness": "absolute demographic parity gap of predicted probabilities (validation)",
    "eop": "absolute equal-opportunity gap of predicted probabilities (validation, label 1)",
    "robustness": "validation log-loss on the overshoot attack points",
}


def objective_of(name: str) -> Objective:
    """The influence objective of a workflow objective name (fairness gaps in absolute value)."""
    if name == "fairness":
        return DemographicParity(absolute=True)
    if name == "eop":
        return EqualOpportunity(absolute=True)
    return resolve_objectives(name)[0]


def resolve_objective_names(objectives: str | Sequence[str]) -> list[str]:
    """Objective names in report order, without repeats; ``"all"`` stands for all four.

    Accepted names: ``"utility"``, ``"fairness"`` (demographic parity), ``"eop"`` (equal
    opportunity), ``"robustness"``, ``"all"``.
    """
    items = [objectives] if isinstance(objectives, str) else list(objectives)
    if not items:
        raise bad_value("objectives", objectives, f"a non-empty list of {[*OBJECTIVES, 'all']}")
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(OBJECTIVES)
        elif item in OBJECTIVES:
            chosen.add(item)
        else:
            raise bad_value("objective", item, f"one of {[*OBJECTIVES, 'all']}")
    return [name for name in OBJECTIVES if name in chosen]


def curve_budgets(count: int, n: int, points: int = 4) -> list[int]:
    """Counts ``round(2·count·k / points)`` for ``k = 1 … points`` and ``count`` itself: a
    grid up to twice the budget, capped at ``n − 1``."""
    grid = {min(n - 1, max(1, round(2 * count * k / points))) for k in range(1, points + 1)}
    return sorted(grid | {count})


def min_rule_rows(n: int) -> int:
    """Fewest training rows a rule may cover: 0.5 % of the ``n`` rows, at least 5 (fewer
    than ``n / 2``), so that every rule speaks of a group rather than a single row."""
    return max(1, min(max(5, round(0.005 * n)), n // 2))


@dataclass(frozen=True)
class SelectionResult:
    """Everything :func:`run_selection` computed (the files in ``out_dir`` hold the same).

    Attributes
    ----------
    out_dir : Path
        The output directory; ``report`` is ``out_dir / "report.md"``.
    objectives : tuple of str
        The objectives, in report order.
    n_removed : int
        Training rows each objective's trimming may remove (the budget as a count; with
        ``budget="auto"`` the count chosen on the validation set, possibly 0).
    influence : DataFrame, shape (n_train, n_objectives)
        Influence of each training row (index: the training table's) on each objective.
    keep : dict of str to ndarray of bool, shape (n_train,)
        Per objective, ``True`` for the training rows kept (selected by ``strategy``; utility
        is always trimmed plainly).
    metrics : DataFrame
        The before / after table on the test set: one row per model (``model``: "untrimmed",
        "<objective> influence", "<objective> influence (<strategy>)" and "<objective>
        influence (plain)" when the strategy is not plain, "random"), ``n_removed`` (rows
        actually removed), the metrics of :func:`leanfit.selection.evaluate` and, for the
        random row, ``<metric>_std`` over seeds.
    curve : DataFrame
        The trimming curves (:func:`leanfit.selection.trimming_curve`, tidy), plus the rows
        of the strategy (``method`` "<strategy>:<objective>",
        :func:`leanfit.selection.steering.masks_curve`) when it is not plain.
    rules : dict of str to DataFrame
        Per objective, :meth:`InfluenceTree.rules` (most harmful first).
    selector : InfluenceSelector
        The model fitted on the whole training table.
    trees : dict of str to InfluenceTree
    config : dict
        What ``config.json`` holds.
    notes : tuple of str
        Warnings about the run, also logged and written in the report: each objective whose
        validation cost *rose* after trimming ``n_removed`` rows (the budget overshoots what
        first-order influence predicts; a smaller budget helps).
    strategy : str
        ``"plain"``, ``"constrained"`` or ``"pareto"`` (:mod:`leanfit.selection.steering`).
    budget_choice : BudgetChoice or None
        With ``budget="auto"``: the validation curve and the rule that chose ``n_removed``.
    """

    out_dir: Path
    objectives: tuple[str, ...]
    n_removed: int
    influence: pd.DataFrame
    keep: dict[str, np.ndarray]
    metrics: pd.DataFrame
    curve: pd.DataFrame
    rules: dict[str, pd.DataFrame]
    selector: InfluenceSelector
    trees: dict[str, InfluenceTree]
    config: dict[str, Any]
    notes: tuple[str, ...] = ()
    strategy: str = "plain"
    budget_choice: BudgetChoice | None = None

    @property
    def report(self) -> Path:
        """The markdown report."""
        return self.out_dir / "report.md"

    def summary(self) -> str:
        """A few lines for a terminal: the before / after table and where the report is."""
        n = self.influence.shape[0]
        table = metrics_markdown(self.metrics, precision=3)
        how = "" if self.budget_choice is None else " (budget chosen on validation)"
        assumed = "".join(f"assumed: {note}\n" for note in self.config["assumptions"])
        return (
            f"{self.config['data']['name']}: {n:,} training rows; each objective removes "
            f"up to {self.n_removed:,} ({self.n_removed / n:.1%}){how}, strategy "
            f"{self.strategy}; test-set metrics:\n\n{table}\n{assumed}report: {self.report}"
        )


def _check_parts(train: TabularDataset, val: TabularDataset, test: TabularDataset) -> None:
    for name, part in (("train", train), ("val", val), ("test", test)):
        if not isinstance(part, TabularDataset):
            raise bad_value(name, type(part).__name__, "a leanfit.datasets.TabularDataset")
    for name, part in (("val", val), ("test", test)):
        if list(part.X.columns) != list(train.X.columns):
            raise BadInputError(
                f"{name} must have the feature columns of train {list(train.X.columns)}; "
                f"got {list(part.X.columns)}"
            )
        for field in ("target", "positive", "sensitive", "privileged"):
            if getattr(part, field) != getattr(train, field):
                raise BadInputError(
                    f"{name}.{field} must equal train.{field} ({getattr(train, field)!r}); "
                    f"got {getattr(part, field)!r}"
                )


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise bad_value(name, value, f"an integer >= {low}")
    return int(value)


def table_methods(names: Sequence[str], strategy: str) -> list[tuple[str, str]]:
    """(row label, curve method) of each objective's rows in the before / after table: the
    strategy's selection, then plain trimming for comparison, when the strategy is not plain
    (utility is always trimmed plainly)."""
    rows = []
    for name in names:
        if strategy == "plain" or name == "utility":
            rows.append((f"{name} influence", f"influence:{name}"))
        else:
            rows.append((f"{name} influence ({strategy})", f"{strategy}:{name}"))
            rows.append((f"{name} influence (plain)", f"influence:{name}"))
    return rows


def _metrics_table(
    curve: pd.DataFrame, count: int, names: Sequence[str], strategy: str
) -> pd.DataFrame:
    """The before / after table, read off the curves: untrimmed, each objective's trimming
    at ``count`` (the same rows as ``keep``), random at ``count`` (mean ± std)."""
    summary = summarize_curve(curve)

    def row(model: str, method: str, n_removed: int) -> dict:
        point = summary[(summary.method == method) & (summary.n_removed == n_removed)].iloc[0]
        values = {m: point[f"{m}_mean"] for m in METRICS}
        removed = point.get("rows_removed_mean", np.nan)
        actual = n_removed if pd.isna(removed) else int(removed)
        if method != "random":
            return {"model": model, "n_removed": actual, **values}
        stds = {f"{m}_std": point[f"{m}_std"] for m in METRICS}
        return {"model": model, "n_removed": actual, "n_seeds": point["n_seeds"]} | values | stds

    rows = [row("untrimmed", f"influence:{names[0]}", 0)]
    rows += [row(label, method, count) for label, method in table_methods(names, strategy)]
    if (curve.method == "random").any():
        rows.append(row("random", "random", count))
    table = pd.DataFrame(rows)
    order = ["model", "n_removed", "n_seeds", *METRICS, *(f"{m}_std" for m in METRICS)]
    return table[[c for c in order if c in table.columns]]


def metrics_markdown(metrics: pd.DataFrame, precision: int = 4) -> str:
    """The before / after table as markdown: ``mean ± std`` for the random row."""

    def cell(row: pd.Series, metric: str) -> str:
        text = f"{row[metric]:.{precision}f}"
        std = row.get(f"{metric}_std", np.nan)
        return text if pd.isna(std) else f"{text} ± {std:.{precision}f}"

    records = []
    for _, row in metrics.iterrows():
        label = row["model"]
        if label == "random":
            seeds = int(row["n_seeds"])
            label = f"random ({seeds} seed{'s' if seeds != 1 else ''})"
        records.append(
            {"model": label, "removed": f"{int(row['n_removed']):,}"}
            | {header: cell(row, metric) for metric, header in METRICS.items()}
        )
    return markdown_table(records)


def _group_labels(train: TabularDataset) -> np.ndarray:
    """The sensitive value of each training row, or "not <privileged>" when it has more."""
    values = train.frame[train.sensitive]
    if values.nunique() == 2:
        return values.astype(str).to_numpy()
    return np.where(train.s == 1, str(train.privileged), f"not {train.privileged}")


def _panels(n: int, ncols: int = 2, size=(5.4, 3.6)) -> tuple[Figure, list]:
    """A figure with ``n`` axes on a grid of ``ncols`` columns (unused cells hidden)."""
    nrows = -(-n // ncols)
    cols = min(ncols, n)
    fig = Figure(figsize=(size[0] * cols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def _histogram_figure(influence: pd.DataFrame, groups: np.ndarray, sensitive: str) -> Figure:
    fig, axes = _panels(influence.shape[1])
    for ax, name in zip(axes, influence.columns, strict=True):
        values = influence[name].to_numpy()
        # Influence has long tails; the central 99 % of rows sets the range so that the bulk
        # is readable, and the rows outside it are counted in the title.
        low, high = np.quantile(values, [0.005, 0.995])
        inside = (values >= low) & (values <= high)
        influence_histogram(
            values[inside],
            groups[inside],
            xlabel=f"influence on {name} (< 0: harmful)",
            title=f"{name} (central 99 %; {np.sum(~inside):,} extreme rows left out)",
            ax=ax,
        )
        ax.get_legend().set_title(sensitive)
    return fig


def _method_color(method: str) -> str:
    """Line colour of a curve method ("influence: fairness", "constrained: fairness", …)."""
    kind, _, name = method.partition(": ")
    if kind == "influence":
        return COLORS[name]
    return STRATEGY_COLORS.get(kind, COLORS["random"])


def _curve_figure(
    curve: pd.DataFrame, objectives: list[str], count: int, n: int, strategy: str
) -> Figure:
    frame = curve.copy()
    frame["seed"] = frame["seed"].fillna(0)
    frame["method"] = frame["method"].str.replace(":", ": ", regex=False)
    fig, axes = _panels(len(objectives) + 1)
    panels = [
        (
            [m.replace(":", ": ") for _, m in table_methods([name], strategy)],
            *TARGET_METRIC[name],
            f"trimming by {name} influence",
        )
        for name in objectives
    ]
    # Accuracy of each objective's own selection (the strategy's when it is not plain).
    accuracy_methods = [methods[0] for methods, *_ in panels]
    panels.append((accuracy_methods, "accuracy", "test accuracy", "accuracy, every objective"))
    for ax, (methods, metric, label, title) in zip(axes, panels, strict=True):
        methods = [*methods, "random"]
        ax.set_prop_cycle(color=[_method_color(m) for m in methods])
        part = pd.concat([frame[frame.method == method] for method in methods])
        trimming_curves(part, y=metric, ylabel=label, title=title, ax=ax)
        ax.axvline(count / n, color="grey", linestyle=":", linewidth=1)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.set_xlabel("training rows removed")
        handles, labels = ax.get_legend_handles_labels()
        # One influence order per objective: the "(1 seed)" of the generic label says nothing.
        ax.legend(handles, [t.removesuffix(" (1 seed)") for t in labels], fontsize=8)
    return fig


def _budget_figure(choice: BudgetChoice, strategy: str) -> Figure:
    """Validation accuracy and |DP| over the grid, the limits, and the chosen point."""
    table = choice.curve
    fig, axes = _panels(2)
    base = table.iloc[0]
    point = table[table.chosen].iloc[0]
    lines = [
        ("accuracy", "validation accuracy", base.accuracy - choice.max_accuracy_drop, "limit"),
        ("dp_abs", "validation |DP|", choice.target_dp, "target"),
    ]
    for ax, (column, label, level, name) in zip(axes, lines, strict=True):
        ax.plot(table.budget, table[column], marker="o", color=STRATEGY_COLORS.get(strategy, "C3"))
        if level is not None:
            ax.axhline(level, color="grey", linestyle="--", linewidth=1, label=name)
        ax.plot(
            [point.budget], [point[column]], marker="*", markersize=16, color="black",
            linestyle="none", label=f"chosen: {int(point.n_removed):,} rows",
        )  # fmt: skip
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.set_xlabel("training rows removed (requested)")
        ax.set_ylabel(label)
        ax.set_title(f"{label}, {strategy} fairness trimming")
        ax.legend(fontsize=8)
    return fig


def _tree_figure(tree: InfluenceTree, name: str) -> Figure:
    fig = tree.plot()
    fig.axes[0].set_title(
        f"Influence on {name} explained by a tree (hierarchical shrinkage, λ = {tree.lambda_:g})"
    )
    return fig


def _json_default(value: object) -> object:
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _data_config(train, val, test, description: str) -> dict:
    return {
        "name": train.name.removesuffix("-train"),
        "description": description,
        "target": train.target,
        "positive": train.positive,
        "sensitive": train.sensitive,
        "privileged": train.privileged,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "features": list(train.X.columns),
        "categorical": train.categorical,
    }


def _write_tables(tmp: Path, train: TabularDataset, result: SelectionResult) -> None:
    influence = result.influence
    influence.rename_axis("row").to_csv(tmp / "influence.csv")
    result.metrics.to_csv(tmp / "metrics.csv", index=False)
    result.curve.to_csv(tmp / "trimming_curve.csv", index=False)
    removed = []
    for name, mask in result.keep.items():
        train.frame.loc[mask].to_csv(tmp / f"trimmed_train_{name}.csv", index=False)
        rows = influence.loc[~mask, name].sort_values(kind="stable")
        removed.append(pd.DataFrame({"objective": name, "row": rows.index, "influence": rows}))
    pd.concat(removed).to_csv(tmp / "removed.csv", index=False)


def _write_rules(tmp: Path, name: str, tree: InfluenceTree, rules: pd.DataFrame) -> None:
    rules.to_csv(tmp / f"rules_{name}.csv", index=False)
    text = (
        f"# Rules explaining the influence on {name}\n\n"
        f"Leaves of a regression tree (hierarchical shrinkage, λ = {tree.lambda_:g} chosen by "
        f"{tree.cv}-fold cross-validation) fitted on the original training columns; "
        "`shrunk_mean` < 0: the rows matching the rule are harmful on average.\n\n"
        + markdown_table(rules.drop(columns="leaf"), floatfmt=RULE_FORMATS)
    )
    (tmp / f"rules_{name}.md").write_text(text, encoding="utf-8")


def _budget_section(choice: BudgetChoice, figure: Path) -> tuple[str, list]:
    """Report section: the validation curve of the automatic budget and the chosen point."""
    rows = [
        {
            "requested": f"{row.budget:.2%} ({int(row.n_removed):,})",
            "removed": f"{int(row.rows_removed):,}",
            "val accuracy": f"{row.accuracy:.4f}",
            "drop": f"{row.accuracy_drop:+.4f}",
            "val DP": f"{row.dp:+.4f}",
            "val abs DP": f"{row.dp_abs:.4f} ± {row.dp_se:.4f}",
            "within limit": "yes" if row.admissible else ("–" if row.n_removed == 0 else "no"),
            "chosen": "**←**" if row.chosen else "",
        }
        for row in choice.curve.itertuples()
    ]
    target = "none" if choice.target_dp is None else f"{choice.target_dp:.4f}"
    text = (
        "The budget is chosen on the validation set only: the fairness selection is "
        "retrained at every budget of the grid and evaluated on the validation rows. "
        f"Accuracy drop allowed: {choice.max_accuracy_drop:.4f}; target |DP|: {target}; ± is "
        "the standard error of the validation gap. "
        f"**Chosen: {choice.n_removed:,} rows** ({choice.rule}): {choice.reason}"
    )
    return (
        "Budget chosen on the validation set",
        [text, markdown_table(rows), Image(figure, "budget chosen on validation")],
    )


def _report_sections(result: SelectionResult, figures: dict[str, Path]) -> list:
    config = result.config
    n = result.influence.shape[0]
    data = config["data"]
    setting = (
        f"{data['description']}\n\n"
        f"Train / validation / test: {data['n_train']:,} / {data['n_val']:,} / "
        f"{data['n_test']:,} rows; target `{data['target']}` = {data['positive']!s} is the "
        f"favourable outcome; sensitive attribute `{data['sensitive']}`, privileged group "
        f"{data['privileged']!s}. L2 logistic regression, λ = {config['l2_reg']:g}, "
        f"{'with' if config['fit_intercept'] else 'no'} intercept, "
        f"{result.selector.model_.coef_.shape[0]} features after one-hot encoding and "
        "standardization.\n\n"
        "Influence of a training row on a validation objective f: "
        "I(z) = ∇ℓ(z)ᵀ H⁻¹ ∇f ≈ f(without z) − f. Every objective is a cost, so a positive "
        "influence marks a beneficial row, a negative one a harmful row. Objectives: "
        + "; ".join(f"**{name}**: {DESCRIPTIONS[name]}" for name in result.objectives)
        + ".\n\n"
        f"Trimming removes up to {result.n_removed:,} rows ({result.n_removed / n:.1%}) for "
        f"each objective{' (chosen on the validation set, below)' if result.budget_choice else ''}"
        f", selected by the **{result.strategy}** strategy: {STRATEGY_TEXT[result.strategy]} "
        "It retrains (preprocessing fixed) and evaluates on the test set, which plays no part "
        "in any choice."
    )
    if config["assumptions"]:
        setting += "\n\nAssumed (no option given): " + "; ".join(config["assumptions"]) + "."
    before_after = (
        "DP and EOP: difference of selection rate and of true positive rate, privileged minus "
        "unprivileged (signed), and fairlearn's absolute difference. Robust accuracy: "
        "accuracy on the test points pushed across the untrimmed model's boundary (the "
        "paper's overshoot attack, factor 1.3). Random: the same number of rows removed at "
        "random, mean ± standard deviation over seeds."
    )
    sections: list = [("Setting", setting)]
    if result.budget_choice is not None:
        sections.append(_budget_section(result.budget_choice, figures["budget"]))
    sections += [
        (
            "Before and after trimming (test set)",
            [metrics_markdown(result.metrics), before_after]
            + [f"**Warning**: {note}." for note in result.notes],
        ),
        (
            "Influence by sensitive group",
            [
                "Distribution of the influence of the training rows, per group (density). The "
                "dashed line is zero: rows to its left are harmful.",
                Image(figures["histogram"], "influence by sensitive group"),
            ],
        ),
        (
            "Trimming curves",
            [
                "Test metrics after removing the most harmful rows of each objective (plain, "
                "and by the strategy when it is not plain), and the same number at random "
                "(band: ± one standard deviation over seeds). The dotted line marks the "
                "budget.",
                Image(figures["curves"], "trimming curves"),
            ],
        ),
    ]
    for name in result.objectives:
        rules = result.rules[name]
        top = rules.head(5).drop(columns="leaf")
        sections.append(
            (
                f"Rules: {name}",
                [
                    f"The most harmful of {len(rules)} rules (all in `rules_{name}.md`):",
                    markdown_table(top, floatfmt=RULE_FORMATS),
                    Image(figures[f"tree_{name}"], f"influence tree for {name}"),
                ],
            )
        )
    return sections


def run_selection(
    train: TabularDataset,
    val: TabularDataset,
    test: TabularDataset,
    *,
    out_dir: str | Path,
    objectives: str | Sequence[str] = "all",
    budget: int | float | str = 0.05,
    strategy: str = "plain",
    max_accuracy_drop: float | None = None,
    target_dp: float | None = None,
    l2_reg: float = 1.0,
    fit_intercept: bool = True,
    seeds: int = 3,
    seed: int = 0,
    curve_points: int = 4,
    max_rules: int = 12,
    max_categories: int | None = MAX_CATEGORIES,
    overwrite: bool = False,
    progress: bool = True,
    description: str = "",
) -> SelectionResult:
    """Influence-based data selection, end to end, with a report (see the module docstring).

    Parameters
    ----------
    train, val, test : TabularDataset
        The tables (same columns, target and sensitive attribute). Influence is measured on
        ``val``, metrics on ``test``. A sensitive column with more than two values is
        reduced to privileged versus the rest (``TabularDataset.s``). Not modified.
    out_dir : path
        Directory to create; refused if it exists unless ``overwrite``.
    objectives : str or sequence of str, default "all"
        Among ``"utility"``, ``"fairness"`` (demographic parity), ``"eop"`` (equal
        opportunity), ``"robustness"``; ``"all"`` is all four.
    budget : int, float or "auto", default 0.05
        Rows each objective removes: a count ``≥ 1`` or a fraction in ``(0, 1)`` of the
        training rows; ``"auto"``: the count chosen on the validation set for the fairness
        objective (:func:`leanfit.selection.steering.choose_budget`; ``objectives`` must
        include ``"fairness"``), used by every objective.
    strategy : {"plain", "constrained", "pareto"}, default "plain"
        How the fairness, eop and robustness objectives pick their rows
        (:mod:`leanfit.selection.steering`); not plain: the report also shows plain trimming.
    max_accuracy_drop : float in [0, 1], optional
        With ``budget="auto"``: the largest validation accuracy loss allowed (default 0.01).
    target_dp : float in [0, 1], optional
        With ``budget="auto"``: the validation absolute DP gap to reach with the fewest rows.
    l2_reg, fit_intercept
        The model (:class:`InfluenceSelector`); the paper's Adult model is λ = 2.2622
        without intercept.
    seeds : int, default 3
        Random-removal repetitions of the baseline (0: no baseline).
    seed : int, default 0
        Seeds the random removals and the trees' cross-validation folds.
    curve_points : int, default 4
        Budgets of the trimming curves: ``curve_points`` counts evenly spaced up to twice
        ``budget`` (:func:`curve_budgets`), plus 0.
    max_rules : int, default 12
        Leaves of each influence tree; each covers at least :func:`min_rule_rows` rows.
    max_categories : int or None, default 1000
        Refuse a categorical column with more distinct values in ``train``
        (:func:`~leanfit.selection.influence.check_cardinality`); None: no limit.
    overwrite : bool, default False
        Replace an existing ``out_dir``.
    progress : bool, default True
        Show progress bars.
    description : str, optional
        How the tables were made (e.g. ``ProtocolSplit.description``), quoted in the report.

    Returns
    -------
    SelectionResult

    Raises
    ------
    BadInputError
        Bad parameters or tables (the message names the argument), or an existing
        ``out_dir`` without ``overwrite``.
    """
    _check_parts(train, val, test)
    names = resolve_objective_names(objectives)
    n = len(train)
    strategy = check_strategy(strategy)
    auto = _check_auto(budget, names, max_accuracy_drop, target_dp)
    count = 0 if auto else resolve_budget(budget, n)
    seeds = _check_int("seeds", seeds, 0)
    curve_points = _check_int("curve_points", curve_points, 1)
    max_rules = _check_int("max_rules", max_rules, 2)
    if not isinstance(fit_intercept, bool):
        raise bad_value("fit_intercept", fit_intercept, "True or False")
    check_cardinality(train.X, max_categories, name="train")
    out_dir = Path(out_dir)
    config: dict[str, Any] = {
        "leanfit_version": __version__,
        "data": _data_config(train, val, test, description),
        "objectives": names,
        "budget": budget,
        "n_removed": count,
        "strategy": strategy,
        "max_accuracy_drop": (
            (DEFAULT_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop)
            if auto
            else None
        ),
        "target_dp": target_dp,
        "assumptions": list(train.assumptions),
        "l2_reg": l2_reg,
        "fit_intercept": fit_intercept,
        "seeds": seeds,
        "seed": seed,
        "curve_budgets": auto_counts(n) if auto else curve_budgets(count, n, curve_points),
        "max_rules": max_rules,
        "max_categories": max_categories,
        "min_rule_rows": min_rule_rows(n),
    }
    with atomic_output(out_dir, overwrite=overwrite) as tmp:
        result = _select(train, val, test, out_dir, config, progress)
        tmp.mkdir()
        _write_outputs(tmp, result, train)
    return result


def _check_auto(budget, names: list[str], max_accuracy_drop, target_dp) -> bool:
    """Whether ``budget`` is ``"auto"``; its options are checked (and refused without it)."""
    if isinstance(budget, str):
        if budget != "auto":
            raise bad_value("budget", budget, "a count >= 1, a fraction in (0, 1) or 'auto'")
        if "fairness" not in names:
            raise bad_value(
                "objectives",
                names,
                "a list with 'fairness' when budget='auto' (the budget is "
                "chosen on the validation demographic-parity gap)",
            )
        if max_accuracy_drop is not None:
            check_fraction(max_accuracy_drop, "max_accuracy_drop")
        if target_dp is not None:
            check_fraction(target_dp, "target_dp")
        return True
    if max_accuracy_drop is not None or target_dp is not None:
        raise BadInputError(
            "max_accuracy_drop and target_dp choose the budget: use them with budget='auto'; "
            f"got budget={budget!r}"
        )
    return False


def _select(train, val, test, out_dir: Path, config: dict, progress: bool) -> SelectionResult:
    """The computations of :func:`run_selection` (parameters already checked, in ``config``)."""
    names, strategy = config["objectives"], config["strategy"]
    selector = InfluenceSelector(
        config["l2_reg"],
        fit_intercept=config["fit_intercept"],
        max_categories=config["max_categories"],
        random_state=config["seed"],
    ).fit(train.X, train.y)
    # The strategies protect utility: its influence is needed even if not an objective.
    scored = [*names, "utility"] if strategy != "plain" and "utility" not in names else names
    objectives = [objective_of(name) for name in scored]
    scores = selector.influence(
        val.X, val.y, objective=objectives, sensitive_features=val.s.to_numpy()
    )
    choice = None
    if config["budget"] == "auto":
        choice = _choose_budget(selector, scores.set_axis(scored, axis=1), val, config, progress)
        config["n_removed"] = choice.n_removed
        config["budget_choice"] = choice.as_dict()
    count = config["n_removed"]
    curve = trimming_curve(
        selector,
        val.X,
        val.y,
        test.X,
        test.y,
        budgets=config["curve_budgets"],
        objective=objectives[: len(names)],
        sensitive_features_val=val.s.to_numpy(),
        sensitive_features_test=test.s.to_numpy(),
        n_random=config["seeds"],
        influence=scores,
        progress=progress,
    )
    # Columns and methods named by the workflow's names ("fairness", not "fairness_abs").
    scores = scores.set_axis(scored, axis=1)
    influence = scores[names]
    renamed = {
        f"influence:{o.name}": f"influence:{n}" for o, n in zip(objectives, names, strict=False)
    }
    curve["method"] = curve["method"].replace(renamed)
    steered = [name for name in names if name != "utility"] if strategy != "plain" else []
    if steered:
        curve = pd.concat(
            [curve, *(_strategy_curve(selector, scores, name, test, config) for name in steered)],
            ignore_index=True,
        )
    trees = {
        name: InfluenceTree(
            max_leaf_nodes=config["max_rules"],
            min_samples_leaf=config["min_rule_rows"],
            random_state=config["seed"],
        ).fit(train.X, influence[name].to_numpy())
        for name in names
    }
    config["tree_lambdas"] = {name: tree.lambda_ for name, tree in trees.items()}
    keep = {
        name: strategy_keep(scores, name, count, strategy if name in steered else "plain")
        for name in names
    }
    return SelectionResult(
        out_dir=out_dir,
        objectives=tuple(names),
        n_removed=count,
        influence=influence,
        keep=keep,
        metrics=_metrics_table(curve, count, names, strategy),
        curve=curve,
        rules={name: tree.rules() for name, tree in trees.items()},
        selector=selector,
        trees=trees,
        config=config,
        notes=tuple(_overshoots(curve, [n for n in names if n not in steered], count)),
        strategy=strategy,
        budget_choice=choice,
    )


def _choose_budget(selector, scores: pd.DataFrame, val, config: dict, progress) -> BudgetChoice:
    """The automatic budget: the strategy's fairness selections evaluated on validation."""
    strategy = config["strategy"]
    masks = {
        k: strategy_keep(scores, "fairness", k, strategy) for k in [0, *config["curve_budgets"]]
    }
    curve = masks_curve(
        selector, masks, val.X, val.y, val.s.to_numpy(), f"{strategy}:fairness", progress
    )
    return choose_budget(
        curve, max_accuracy_drop=config["max_accuracy_drop"], target_dp=config["target_dp"]
    )


def _strategy_curve(selector, scores: pd.DataFrame, name: str, test, config: dict):
    """Test metrics of the strategy's selections for ``name`` at 0 and every curve budget."""
    strategy = config["strategy"]
    masks = {k: strategy_keep(scores, name, k, strategy) for k in [0, *config["curve_budgets"]]}
    return masks_curve(selector, masks, test.X, test.y, test.s.to_numpy(), f"{strategy}:{name}")


def _overshoots(curve: pd.DataFrame, names: list[str], count: int) -> list[str]:
    """A note, also logged, for each objective whose validation cost rose after trimming."""
    notes = []
    for name in names:
        cost = curve[curve.method == f"influence:{name}"].set_index("n_removed")["val_objective"]
        if cost.loc[count] > cost.loc[0]:
            notes.append(
                f"trimming {count:,} rows by {name} influence raised the validation {name} cost "
                f"from {cost.loc[0]:.4g} to {cost.loc[count]:.4g}: the influence of single rows "
                "does not add up over that many (see the trimming curves); try a smaller budget"
            )
            logger.warning("warning: %s", notes[-1])
    return notes


def _write_outputs(tmp: Path, result: SelectionResult, train: TabularDataset) -> None:
    """Every file of :func:`run_selection` into the directory ``tmp``."""
    _write_tables(tmp, train, result)
    for name, tree in result.trees.items():
        _write_rules(tmp, name, tree, result.rules[name])
    n = result.influence.shape[0]
    figures = {
        "histogram": save_figure(
            _histogram_figure(result.influence, _group_labels(train), train.sensitive),
            tmp / "influence_by_group.png",
        ),
        "curves": save_figure(
            _curve_figure(
                result.curve, list(result.objectives), result.n_removed, n, result.strategy
            ),
            tmp / "trimming_curves.png",
        ),
    }
    if result.budget_choice is not None:
        figures["budget"] = save_figure(
            _budget_figure(result.budget_choice, result.strategy), tmp / "budget_choice.png"
        )
    for name, tree in result.trees.items():
        figures[f"tree_{name}"] = save_figure(_tree_figure(tree, name), tmp / f"tree_{name}.png")
    title = f"Influence-based data selection: {result.config['data']['name']}"
    write_report(tmp / "report.md", title, _report_sections(result, figures))
    text = json.dumps(result.config, indent=2, ensure_ascii=False, default=_json_default)
    (tmp / "config.json").write_text(text + "\n", encoding="utf-8")
