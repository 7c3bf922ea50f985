"""The whole selection workflow in one call: influence, trimming, curves, rules, report.

:func:`run_selection` is what ``leanfit select`` runs. Given train / validation / test tables
(:class:`~leanfit.datasets.TabularDataset`, e.g. from :func:`split_dataset` or
:func:`split_csv`) and a :class:`~leanfit.selection.config.SelectionConfig` (whose fields
are named below), it

1. fits an :class:`InfluenceSelector` (L2 logistic regression, one-hot + standardized
   features) on the training table;
2. computes the influence of every training row on each validation objective
   (positive = beneficial, negative = harmful);
3. for each objective, removes the ``budget`` most harmful rows (or the rows a
   utility-protecting ``strategy`` picks, :mod:`leanfit.selection.policies.steering`), retrains
   (preprocessing held fixed) and evaluates on the test table; with an ``auto`` budget it
   first chooses the count on the *validation* table from the fairness trimming curve;
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
``config.json``                every setting, the data description, the assumptions made
                               for the user, what the run decided (:class:`RunRecord`:
                               ``n_removed``, ``curve_budgets``, ``tree_lambdas``), the
                               leanfit version; with an ``auto`` budget,
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

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leanfit.datasets import TabularDataset
from leanfit.exceptions import BadInputError, bad_value
from leanfit.io import atomic_output
from leanfit.selection.config import RunRecord, SelectionConfig
from leanfit.selection.explanation.explain import InfluenceTree
from leanfit.selection.explanation.report import (
    METRICS,
    SelectionResult,
    data_summary,
    table_methods,
    write_outputs,
)
from leanfit.selection.influence import InfluenceSelector, check_cardinality
from leanfit.selection.objectives import (
    DemographicParity,
    EqualOpportunity,
    Objective,
    resolve_objectives,
)
from leanfit.selection.policies.steering import (
    BudgetChoice,
    auto_counts,
    choose_budget,
    masks_curve,
    strategy_keep,
)
from leanfit.selection.policies.trimming import summarize_curve, trimming_curve

logger = logging.getLogger(__name__)


def objective_of(name: str) -> Objective:
    """The influence objective of a workflow objective name, labelled with that name (the
    fairness gaps in absolute value)."""
    if name == "fairness":
        return DemographicParity(absolute=True, label=name)
    if name == "eop":
        return EqualOpportunity(absolute=True, label=name)
    return resolve_objectives(name)[0]


def curve_budgets(count: int, n: int, points: int = 4) -> list[int]:
    """Counts ``round(2·count·k / points)`` for ``k = 1 … points`` and ``count`` itself: a
    grid up to twice the budget, capped at ``n − 1``."""
    grid = {min(n - 1, max(1, round(2 * count * k / points))) for k in range(1, points + 1)}
    return sorted(grid | {count})


def min_rule_rows(n: int) -> int:
    """Fewest training rows a rule may cover: 0.5 % of the ``n`` rows, at least 5 (fewer
    than ``n / 2``), so that every rule speaks of a group rather than a single row."""
    return max(1, min(max(5, round(0.005 * n)), n // 2))


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


def run_selection(
    train: TabularDataset,
    val: TabularDataset,
    test: TabularDataset,
    config: SelectionConfig | None = None,
    *,
    out_dir: str | Path,
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
    config : SelectionConfig, optional
        The objectives, budget, strategy, model and sizes (default: ``SelectionConfig()``,
        all four objectives, 5 % of the rows, plain trimming, λ = 1 with an intercept). A
        budget given as a count must lie in ``[1, n_train − 1]``.
    out_dir : path
        Directory to create; refused if it exists unless ``overwrite``.
    overwrite : bool, default False
        Replace an existing ``out_dir``.
    progress : bool, default True
        Show progress bars.
    description : str, optional
        How the tables were made (e.g. ``ProtocolSplit.description``), quoted in the report.

    Returns
    -------
    SelectionResult
        The tables of the run, its ``config`` and its ``record`` (what it decided).

    Raises
    ------
    BadInputError
        Bad tables (the message names the argument), a budget count out of range, or an
        existing ``out_dir`` without ``overwrite``.
    """
    config = SelectionConfig() if config is None else config
    if not isinstance(config, SelectionConfig):
        raise bad_value("config", type(config).__name__, "a SelectionConfig")
    _check_parts(train, val, test)
    # The budget becomes a count once, here (auto: after the choice on validation).
    count = None if config.budget.is_auto else config.budget.rows(len(train))
    check_cardinality(train.X, config.max_categories, name="train")
    out_dir = Path(out_dir)
    with atomic_output(out_dir, overwrite=overwrite) as tmp:
        result = _select(train, val, test, config, count, out_dir, description, progress)
        tmp.mkdir()
        write_outputs(tmp, result, train)
    return result


def _select(
    train: TabularDataset,
    val: TabularDataset,
    test: TabularDataset,
    config: SelectionConfig,
    count: int | None,
    out_dir: Path,
    description: str,
    progress: bool,
) -> SelectionResult:
    """The computations of :func:`run_selection`; ``count`` is the budget's count, None for
    auto."""
    names, strategy, n = list(config.objectives), config.strategy, len(train)
    selector = InfluenceSelector(
        config.model.l2_reg,
        fit_intercept=config.model.fit_intercept,
        max_categories=config.max_categories,
        random_state=config.seed,
    ).fit(train.X, train.y)
    # The strategies protect utility: its influence is needed even if not an objective.
    scored = [*names, "utility"] if config.steered and "utility" not in names else names
    objectives = [objective_of(name) for name in scored]  # columns named as in ``scored``
    scores = selector.influence(
        val.X, val.y, objective=objectives, sensitive_features=val.s.to_numpy()
    )
    grid = auto_counts(n) if count is None else curve_budgets(count, n, config.curve_points)
    choice = None
    if count is None:
        choice = _choose_budget(selector, scores, val, config, grid, progress)
        count = choice.n_removed
    curve = trimming_curve(
        selector,
        val.X,
        val.y,
        test.X,
        test.y,
        budgets=grid,
        objective=objectives[: len(names)],
        sensitive_features_val=val.s.to_numpy(),
        sensitive_features_test=test.s.to_numpy(),
        n_random=config.seeds,
        influence=scores,
        progress=progress,
    )
    influence = scores[names]
    if config.steered:
        curve = pd.concat(
            [curve, *(_strategy_curve(selector, scores, name, test, strategy, grid)
                      for name in config.steered)],
            ignore_index=True,
        )  # fmt: skip
    trees = {
        name: InfluenceTree(
            max_leaf_nodes=config.max_rules,
            min_samples_leaf=min_rule_rows(n),
            random_state=config.seed,
        ).fit(train.X, influence[name].to_numpy())
        for name in names
    }
    keep = {
        name: strategy_keep(scores, name, count, strategy if name in config.steered else "plain")
        for name in names
    }
    record = RunRecord(
        data=data_summary(train, val, test, description),
        n_removed=count,
        curve_budgets=tuple(grid),
        min_rule_rows=min_rule_rows(n),
        tree_lambdas={name: tree.lambda_ for name, tree in trees.items()},
        budget_choice=choice,
    )
    plain = [name for name in names if name not in config.steered]
    return SelectionResult(
        out_dir=out_dir,
        config=config,
        record=record,
        influence=influence,
        keep=keep,
        metrics=_metrics_table(curve, count, names, strategy),
        curve=curve,
        rules={name: tree.rules() for name, tree in trees.items()},
        selector=selector,
        trees=trees,
        notes=tuple(_overshoots(curve, plain, count)),
    )


def _choose_budget(
    selector: InfluenceSelector,
    scores: pd.DataFrame,
    val: TabularDataset,
    config: SelectionConfig,
    grid: Sequence[int],
    progress: bool,
) -> BudgetChoice:
    """The automatic budget: the strategy's fairness selections evaluated on validation."""
    strategy = config.strategy
    masks = {k: strategy_keep(scores, "fairness", k, strategy) for k in [0, *grid]}
    curve = masks_curve(
        selector, masks, val.X, val.y, val.s.to_numpy(), f"{strategy}:fairness", progress
    )
    assert config.max_accuracy_drop is not None  # set with auto (SelectionConfig)
    return choose_budget(
        curve, max_accuracy_drop=config.max_accuracy_drop, target_dp=config.target_dp
    )


def _strategy_curve(
    selector: InfluenceSelector,
    scores: pd.DataFrame,
    name: str,
    test: TabularDataset,
    strategy: str,
    grid: Sequence[int],
) -> pd.DataFrame:
    """Test metrics of the strategy's selections for ``name`` at 0 and every curve budget."""
    masks = {k: strategy_keep(scores, name, k, strategy) for k in [0, *grid]}
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
