"""The settings of a selection run and the record of what it decided.

:class:`SelectionConfig` is what :func:`leanfit.selection.run_selection` is asked to do: the
objectives, the :class:`~leanfit.selection.policies.budget.Budget`, the strategy, the model
(:class:`ModelSettings`) and the sizes of the curves, rules and baseline. It is frozen and
checked once, when it is built (``leanfit select`` builds it from its parsed options); the
run reads its typed fields and never changes it.

:class:`RunRecord` is what the run decided on the way (the count of rows removed, the grid of
the curves, the automatic budget's choice, the trees' shrinkage): built once at the end of
the computations and held by :class:`~leanfit.selection.explanation.report.SelectionResult`.
``config.json`` is written from the two (:func:`leanfit.selection.explanation.report.run_json`).

Light enough for the CLI parser to import (no numpy, pandas or scikit-learn): ``leanfit
select`` derives its method options from the fields of :class:`SelectionConfig`
(:func:`leanfit.cli.add_config_options`), each default and help text written once, here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from leanfit.checks import check_choice, check_fraction, check_int, check_number
from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection.defaults import (
    DEFAULT_MAX_ACCURACY_DROP,
    MAX_CATEGORIES,
    STRATEGIES,
)
from leanfit.selection.policies.budget import Budget

if TYPE_CHECKING:
    from leanfit.selection.policies.steering import BudgetChoice

#: Objective names of a selection run, in report order; ``"all"`` means all four.
OBJECTIVES = ("utility", "fairness", "eop", "robustness")


def resolve_objective_names(objectives: str | Sequence[str]) -> tuple[str, ...]:
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
            raise bad_value("objectives", item, f"one of {[*OBJECTIVES, 'all']}")
    return tuple(name for name in OBJECTIVES if name in chosen)


@dataclass(frozen=True)
class ModelSettings:
    """The convex model: L2 logistic regression ``L(θ) = Σᵢ ℓᵢ + (λ/2)‖w‖²``.

    Attributes
    ----------
    l2_reg : float, default 1.0
        The penalty ``λ > 0`` (the paper's Adult model: 2.2622).
    fit_intercept : bool, default True
        Fit an unpenalized intercept ``b`` (the paper's Adult model: no).
    """

    l2_reg: float = 1.0
    fit_intercept: bool = True

    def __post_init__(self) -> None:
        check_number("l2_reg", self.l2_reg, low=0, above=True)
        if not isinstance(self.fit_intercept, bool):
            raise bad_value("fit_intercept", self.fit_intercept, "True or False")


@dataclass(frozen=True)
class SelectionConfig:
    """The settings of :func:`leanfit.selection.run_selection`, checked when built.

    Attributes
    ----------
    objectives : tuple of str, default all four
        Among ``"utility"``, ``"fairness"`` (demographic parity), ``"eop"`` (equal
        opportunity), ``"robustness"``; ``"all"`` is all four. Kept in report order, without
        repeats (:func:`resolve_objective_names`).
    budget : Budget, default 5 %
        Rows each objective removes: a count, a fraction of the training rows, or ``auto``:
        the count chosen on the validation set for the fairness objective
        (:func:`leanfit.selection.policies.steering.choose_budget`; ``objectives`` must include
        ``"fairness"``), used by every objective. An int, a float or ``"auto"`` is turned into
        a :class:`Budget` (:meth:`Budget.of`), a text as the command line gives it (``"0.05"``,
        ``"300"``) by :meth:`Budget.parse`. A count is checked against the training rows when
        the run starts.
    strategy : {"plain", "constrained", "pareto"}, default "plain"
        How the fairness, eop and robustness objectives pick their rows
        (:mod:`leanfit.selection.policies.steering`); not plain: the report also shows plain
        trimming.
    max_accuracy_drop : float in [0, 1] or None
        With ``budget`` auto only: the largest validation accuracy loss allowed; None there
        becomes :data:`~leanfit.selection.defaults.DEFAULT_MAX_ACCURACY_DROP` (0.01).
    target_dp : float in [0, 1] or None
        With ``budget`` auto only: the validation absolute DP gap to reach with the fewest rows.
    model : ModelSettings
        The model (:class:`~leanfit.selection.InfluenceSelector`).
    seeds : int, default 3
        Random-removal repetitions of the baseline (0: no baseline).
    seed : int, default 0
        Seeds the model's preprocessing, the random removals and the trees' folds.
    curve_points : int, default 4
        Budgets of the trimming curves: ``curve_points`` counts evenly spaced up to twice the
        budget (:func:`leanfit.selection.workflow.curve_budgets`), plus 0.
    max_rules : int, default 12
        Leaves of each influence tree, at least 2.
    max_categories : int or None, default 1000
        Refuse a categorical column with more distinct values in the training table
        (:func:`~leanfit.selection.influence.check_cardinality`); None: no limit.

    Raises
    ------
    BadInputError
        Naming the first bad field.
    """

    objectives: tuple[str, ...] = field(
        default=("all",),
        metadata={
            "help": "among utility, fairness, eop, robustness, all (fairness = demographic "
            "parity; repeatable)",
            "option": "--objective",
            "metavar": "NAME[,NAME...]",
        },
    )
    budget: Budget = field(
        default=Budget(fraction=0.05),
        metadata={
            "help": "rows to remove per objective: fraction in (0, 1), count >= 1, or auto "
            "(chosen on the validation fairness curve; see --max-accuracy-drop, --target-dp)",
            "type": str,
        },
    )
    strategy: str = field(
        default="plain",
        metadata={
            "help": "how fairness, eop and robustness pick rows: plain (most harmful), "
            "constrained (most harmful among rows whose removal costs no utility), pareto "
            "(largest gain with no predicted utility loss in total)"
        },
    )
    max_accuracy_drop: float | None = field(
        default=None,
        metadata={
            "help": "with --budget auto: largest validation accuracy loss allowed, in [0, 1] "
            f"(default {DEFAULT_MAX_ACCURACY_DROP})",
            "metavar": "X",
        },
    )
    target_dp: float | None = field(
        default=None,
        metadata={
            "help": "with --budget auto: the smallest budget whose validation |DP| is at most "
            "X (default: the lowest |DP| within --max-accuracy-drop)",
            "metavar": "X",
        },
    )
    model: ModelSettings = ModelSettings()
    seeds: int = field(default=3, metadata={"help": "random-removal repetitions"})
    seed: int = 0
    curve_points: int = 4
    max_rules: int = 12
    max_categories: int | None = field(
        default=MAX_CATEGORIES,
        metadata={
            "help": "refuse a categorical column with more than N distinct values (0: no limit)",
            "metavar": "N",
        },
    )

    def __post_init__(self) -> None:
        # Fields are normalized in place once (names in report order, a Budget, the default
        # accuracy drop of auto); the instance stays frozen afterwards.
        set_field = object.__setattr__
        set_field(self, "objectives", resolve_objective_names(self.objectives))
        budget = self.budget
        set_field(
            self, "budget", Budget.parse(budget) if isinstance(budget, str) else Budget.of(budget)
        )
        set_field(self, "strategy", check_choice("strategy", self.strategy, STRATEGIES))
        set_field(self, "max_accuracy_drop", self._checked_accuracy_drop())
        if self.target_dp is not None:
            set_field(self, "target_dp", check_fraction("target_dp", self.target_dp))
        if not isinstance(self.model, ModelSettings):
            raise bad_value("model", self.model, "a ModelSettings")
        for name, low in (("seeds", 0), ("seed", 0), ("curve_points", 1), ("max_rules", 2)):
            set_field(self, name, check_int(name, getattr(self, name), low=low))
        if self.max_categories is not None:
            set_field(
                self, "max_categories", check_int("max_categories", self.max_categories, low=1)
            )

    def _checked_accuracy_drop(self) -> float | None:
        """``max_accuracy_drop`` checked against the budget: its value (the default with
        ``auto``), or an error for the options of auto given without it."""
        if not self.budget.is_auto:
            given = {"max_accuracy_drop": self.max_accuracy_drop, "target_dp": self.target_dp}
            for name, value in given.items():
                if value is not None:
                    raise BadInputError(
                        f"{name} chooses the budget: use it with the budget 'auto'; got the "
                        f"budget {self.budget.value!r}",
                        param=name,
                        value=value,
                    )
            return None
        if "fairness" not in self.objectives:
            raise bad_value(
                "objectives",
                list(self.objectives),
                "a list with 'fairness' when the budget is 'auto' (the budget is "
                "chosen on the validation demographic-parity gap)",
            )
        if self.max_accuracy_drop is None:
            return DEFAULT_MAX_ACCURACY_DROP
        return check_fraction("max_accuracy_drop", self.max_accuracy_drop)

    @property
    def steered(self) -> tuple[str, ...]:
        """The objectives whose rows the strategy picks: all but utility, none when plain."""
        if self.strategy == "plain":
            return ()
        return tuple(name for name in self.objectives if name != "utility")


@dataclass(frozen=True)
class DataSummary:
    """The tables of a run, as ``config.json`` and the report describe them.

    ``assumptions`` are the choices made for the user (e.g. which target value is
    favourable), stated in the report.
    """

    name: str
    description: str
    target: str
    positive: object
    sensitive: str
    privileged: object
    n_train: int
    n_val: int
    n_test: int
    features: tuple[str, ...]
    categorical: tuple[str, ...]
    assumptions: tuple[str, ...]


@dataclass(frozen=True)
class RunRecord:
    """What a selection run decided, besides its tables.

    Attributes
    ----------
    data : DataSummary
    n_removed : int
        Training rows each objective's trimming may remove: the budget as a count, or with
        ``budget`` auto the count chosen on the validation set (possibly 0).
    curve_budgets : tuple of int
        The counts of the trimming curves (besides 0).
    min_rule_rows : int
        Fewest training rows a rule covers (:func:`leanfit.selection.workflow.min_rule_rows`).
    tree_lambdas : dict of str to float
        The shrinkage ``λ`` each objective's influence tree chose by cross-validation.
    budget_choice : BudgetChoice or None
        With ``budget`` auto: the validation curve and the rule that chose ``n_removed``.
    """

    data: DataSummary
    n_removed: int
    curve_budgets: tuple[int, ...]
    min_rule_rows: int
    tree_lambdas: dict[str, float]
    budget_choice: BudgetChoice | None = None
