"""The files of :func:`leanfit.selection.run_selection`: tables, figures, rules, report.

:class:`SelectionResult` holds what a run computed; :func:`write_outputs` writes it into a
directory (the list of files is in :mod:`leanfit.selection.workflow`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from leanfit._version import __version__
from leanfit.datasets import TabularDataset
from leanfit.reports import (
    Image,
    influence_histogram,
    markdown_table,
    save_figure,
    trimming_curves,
    write_report,
)
from leanfit.selection.config import DataSummary, RunRecord, SelectionConfig
from leanfit.selection.explanation.explain import InfluenceTree
from leanfit.selection.influence import InfluenceSelector
from leanfit.selection.policies.steering import BudgetChoice

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class SelectionResult:
    """Everything :func:`run_selection` computed (the files in ``out_dir`` hold the same).

    Attributes
    ----------
    out_dir : Path
        The output directory; ``report`` is ``out_dir / "report.md"``.
    config : SelectionConfig
        The settings of the run.
    record : RunRecord
        What the run decided: the count removed, the grid of the curves, the automatic
        budget's choice, the trees' shrinkage.
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
        :func:`leanfit.selection.policies.steering.masks_curve`) when it is not plain.
    rules : dict of str to DataFrame
        Per objective, :meth:`InfluenceTree.rules` (most harmful first).
    selector : InfluenceSelector
        The model fitted on the whole training table.
    trees : dict of str to InfluenceTree
    notes : tuple of str
        Warnings about the run, also logged and written in the report: each objective whose
        validation cost *rose* after trimming ``n_removed`` rows (the budget overshoots what
        first-order influence predicts; a smaller budget helps).
    """

    out_dir: Path
    config: SelectionConfig
    record: RunRecord
    influence: pd.DataFrame
    keep: dict[str, np.ndarray]
    metrics: pd.DataFrame
    curve: pd.DataFrame
    rules: dict[str, pd.DataFrame]
    selector: InfluenceSelector
    trees: dict[str, InfluenceTree]
    notes: tuple[str, ...] = ()

    @property
    def n_removed(self) -> int:
        """Training rows each objective's trimming may remove (``record.n_removed``)."""
        return self.record.n_removed

    @property
    def budget_choice(self) -> BudgetChoice | None:
        """With ``budget`` auto, how the count was chosen (``record.budget_choice``)."""
        return self.record.budget_choice

    @property
    def report(self) -> Path:
        """The markdown report."""
        return self.out_dir / "report.md"

    def summary(self) -> str:
        """A few lines for a terminal: the before / after table and where the report is."""
        n = self.influence.shape[0]
        table = metrics_markdown(self.metrics, precision=3)
        how = "" if self.budget_choice is None else " (budget chosen on validation)"
        assumed = "".join(f"assumed: {note}\n" for note in self.record.data.assumptions)
        return (
            f"{self.record.data.name}: {n:,} training rows; each objective removes "
            f"up to {self.n_removed:,} ({self.n_removed / n:.1%}){how}, strategy "
            f"{self.config.strategy}; test-set metrics:\n\n{table}\n{assumed}"
            f"report: {self.report}"
        )


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


def _panels(n: int, ncols: int = 2, size: tuple[float, float] = (5.4, 3.6)) -> tuple[Figure, list]:
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


def data_summary(
    train: TabularDataset, val: TabularDataset, test: TabularDataset, description: str
) -> DataSummary:
    """The description of the tables (``description``: how they were made)."""
    return DataSummary(
        name=train.name.removesuffix("-train"),
        description=description,
        target=train.target,
        positive=train.positive,
        sensitive=train.sensitive,
        privileged=train.privileged,
        n_train=len(train),
        n_val=len(val),
        n_test=len(test),
        features=tuple(train.X.columns),
        categorical=tuple(train.categorical),
        assumptions=tuple(train.assumptions),
    )


def run_json(config: SelectionConfig, record: RunRecord) -> dict[str, object]:
    """What ``config.json`` holds: every setting, the data, what the run decided, the version.

    ``budget`` is the count, the fraction or ``"auto"``; ``n_removed`` the count removed;
    ``budget_choice`` (auto only) the validation curve and the rule
    (:meth:`BudgetChoice.as_dict`); ``tree_lambdas`` the trees' shrinkage.
    """
    data = record.data
    values: dict[str, object] = {
        "leanfit_version": __version__,
        "data": {
            "name": data.name,
            "description": data.description,
            "target": data.target,
            "positive": data.positive,
            "sensitive": data.sensitive,
            "privileged": data.privileged,
            "n_train": data.n_train,
            "n_val": data.n_val,
            "n_test": data.n_test,
            "features": list(data.features),
            "categorical": list(data.categorical),
        },
        "objectives": list(config.objectives),
        "budget": config.budget.value,
        "n_removed": record.n_removed,
        "strategy": config.strategy,
        "max_accuracy_drop": config.max_accuracy_drop,
        "target_dp": config.target_dp,
        "assumptions": list(data.assumptions),
        "l2_reg": config.model.l2_reg,
        "fit_intercept": config.model.fit_intercept,
        "seeds": config.seeds,
        "seed": config.seed,
        "curve_budgets": list(record.curve_budgets),
        "max_rules": config.max_rules,
        "max_categories": config.max_categories,
        "min_rule_rows": record.min_rule_rows,
    }
    if record.budget_choice is not None:
        values["budget_choice"] = record.budget_choice.as_dict()
    return values | {"tree_lambdas": dict(record.tree_lambdas)}


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
    config, data = result.config, result.record.data
    n = result.influence.shape[0]
    setting = (
        f"{data.description}\n\n"
        f"Train / validation / test: {data.n_train:,} / {data.n_val:,} / "
        f"{data.n_test:,} rows; target `{data.target}` = {data.positive!s} is the "
        f"favourable outcome; sensitive attribute `{data.sensitive}`, privileged group "
        f"{data.privileged!s}. L2 logistic regression, λ = {config.model.l2_reg:g}, "
        f"{'with' if config.model.fit_intercept else 'no'} intercept, "
        f"{result.selector.model_.coef_.shape[0]} features after one-hot encoding and "
        "standardization.\n\n"
        "Influence of a training row on a validation objective f: "
        "I(z) = ∇ℓ(z)ᵀ H⁻¹ ∇f ≈ f(without z) − f. Every objective is a cost, so a positive "
        "influence marks a beneficial row, a negative one a harmful row. Objectives: "
        + "; ".join(f"**{name}**: {DESCRIPTIONS[name]}" for name in config.objectives)
        + ".\n\n"
        f"Trimming removes up to {result.n_removed:,} rows ({result.n_removed / n:.1%}) for "
        f"each objective{' (chosen on the validation set, below)' if result.budget_choice else ''}"
        f", selected by the **{config.strategy}** strategy: {STRATEGY_TEXT[config.strategy]} "
        "It retrains (preprocessing fixed) and evaluates on the test set, which plays no part "
        "in any choice."
    )
    if data.assumptions:
        setting += "\n\nAssumed (no option given): " + "; ".join(data.assumptions) + "."
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
    for name in config.objectives:
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


def write_outputs(tmp: Path, result: SelectionResult, train: TabularDataset) -> None:
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
                result.curve,
                list(result.config.objectives),
                result.n_removed,
                n,
                result.config.strategy,
            ),
            tmp / "trimming_curves.png",
        ),
    }
    if result.budget_choice is not None:
        figures["budget"] = save_figure(
            _budget_figure(result.budget_choice, result.config.strategy),
            tmp / "budget_choice.png",
        )
    for name, tree in result.trees.items():
        figures[f"tree_{name}"] = save_figure(_tree_figure(tree, name), tmp / f"tree_{name}.png")
    title = f"Influence-based data selection: {result.record.data.name}"
    write_report(tmp / "report.md", title, _report_sections(result, figures))
    values = run_json(result.config, result.record)
    text = json.dumps(values, indent=2, ensure_ascii=False, default=_json_default)
    (tmp / "config.json").write_text(text + "\n", encoding="utf-8")


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
