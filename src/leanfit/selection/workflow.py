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

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leanfit._version import __version__
from leanfit.datasets import TabularDataset
from leanfit.exceptions import BadInputError, bad_value
from leanfit.io import atomic_output
from leanfit.selection.budget import Budget
from leanfit.selection.explain import InfluenceTree
from leanfit.selection.influence import MAX_CATEGORIES, InfluenceSelector, check_cardinality
from leanfit.selection.objectives import (
    DemographicParity,
    EqualOpportunity,
    Objective,
    resolve_objectives,
)
from leanfit.selection.report import (
    METRICS,
    SelectionResult,
    data_config,
    table_methods,
    write_outputs,
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
from leanfit.selection.trimming import summarize_curve, trimming_curve

logger = logging.getLogger(__name__)

#: Objective names ``run_selection`` accepts, in report order; ``"all"`` means all four.
OBJECTIVES = ("utility", "fairness", "eop", "robustness")


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
            raise bad_value("objectives", item, f"names among {[*OBJECTIVES, 'all']}")
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
    *,
    out_dir: str | Path,
    objectives: str | Sequence[str] = "all",
    budget: Budget | int | float | str = 0.05,
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
    budget : Budget, int, float or "auto", default 0.05
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
    budget = Budget.of(budget)
    auto = _check_auto(budget, names, max_accuracy_drop, target_dp)
    count = 0 if auto else budget.rows(n)
    seeds = _check_int("seeds", seeds, 0)
    curve_points = _check_int("curve_points", curve_points, 1)
    max_rules = _check_int("max_rules", max_rules, 2)
    if not isinstance(fit_intercept, bool):
        raise bad_value("fit_intercept", fit_intercept, "True or False")
    check_cardinality(train.X, max_categories, name="train")
    out_dir = Path(out_dir)
    config: dict[str, Any] = {
        "leanfit_version": __version__,
        "data": data_config(train, val, test, description),
        "objectives": names,
        "budget": budget.value,
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
        write_outputs(tmp, result, train)
    return result


def _check_auto(
    budget: Budget,
    names: list[str],
    max_accuracy_drop: float | None,
    target_dp: float | None,
) -> bool:
    """Whether ``budget`` is ``auto``; its options are checked (and refused without it)."""
    if budget.is_auto:
        if "fairness" not in names:
            raise bad_value(
                "objectives",
                names,
                "a list with 'fairness' when the budget is 'auto' (the budget is "
                "chosen on the validation demographic-parity gap)",
            )
        if max_accuracy_drop is not None:
            check_fraction(max_accuracy_drop, "max_accuracy_drop")
        if target_dp is not None:
            check_fraction(target_dp, "target_dp")
        return True
    given = {"max_accuracy_drop": max_accuracy_drop, "target_dp": target_dp}
    for name, value in given.items():
        if value is not None:
            raise BadInputError(
                f"{name} chooses the budget: use it with the budget 'auto'; got the budget "
                f"{budget.value!r}",
                param=name,
                value=value,
            )
    return False


def _select(
    train: TabularDataset,
    val: TabularDataset,
    test: TabularDataset,
    out_dir: Path,
    config: dict,
    progress: bool,
) -> SelectionResult:
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


def _choose_budget(
    selector: InfluenceSelector,
    scores: pd.DataFrame,
    val: TabularDataset,
    config: dict,
    progress: bool,
) -> BudgetChoice:
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


def _strategy_curve(
    selector: InfluenceSelector, scores: pd.DataFrame, name: str, test: TabularDataset, config: dict
) -> pd.DataFrame:
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
