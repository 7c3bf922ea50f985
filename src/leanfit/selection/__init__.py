"""Influence-based training-data selection (Chhabra et al., ICLR 2024).

A convex model (L2 logistic regression, possibly on embeddings) is fitted; the influence of
each training sample on validation utility, fairness and robustness is computed exactly
with the Hessian; harmful samples (negative influence) are trimmed and the model retrained::

    from leanfit.selection import InfluenceSelector, trim

    selector = InfluenceSelector(l2_reg=2.2622, fit_intercept=False).fit(X, y)
    scores = selector.influence(X_val, y_val, sensitive_features="sex",
                                objective=["utility", "fairness", "robustness"])
    keep = trim(scores["fairness"], 0.05)   # drop the 5 % most harmful for fairness
    trimmed = selector.retrain(keep)

or, end to end with a report (what ``leanfit select`` runs)::

    from leanfit.selection import adult_protocol, run_selection

    from leanfit.selection import ModelSettings, SelectionConfig

    split = adult_protocol()
    config = SelectionConfig(model=ModelSettings(split.l2_reg, split.fit_intercept))
    result = run_selection(split.train, split.val, split.test, config, out_dir="selection-adult")

and, choosing the budget on the validation set and protecting accuracy
(:mod:`leanfit.selection.policies.steering`)::

    from leanfit.selection import Budget

    auto = SelectionConfig(objectives=("fairness",), budget=Budget.of("auto"),
                           strategy="constrained", max_accuracy_drop=0.01)
    result = run_selection(split.train, split.val, split.test, auto, out_dir="selection-auto")

The names below are imported from their modules on first use, so that importing the package
(e.g. for :mod:`~leanfit.selection.config`, which ``leanfit select --help`` reads) loads
neither pandas nor scikit-learn.
"""

from typing import TYPE_CHECKING

from leanfit.lazy import lazy_attributes

if TYPE_CHECKING:
    from leanfit.selection.config import ModelSettings, RunRecord, SelectionConfig
    from leanfit.selection.explanation.explain import InfluenceTree
    from leanfit.selection.influence import InfluenceSelector
    from leanfit.selection.metrics import (
        accuracy,
        demographic_parity_difference,
        equal_opportunity_difference,
        evaluate,
        robust_accuracy,
    )
    from leanfit.selection.models import LogisticRegressionL2
    from leanfit.selection.objectives import (
        DemographicParity,
        EqualOpportunity,
        Objective,
        OvershootRobustness,
        Utility,
        WorstCaseRobustness,
    )
    from leanfit.selection.policies.budget import Budget
    from leanfit.selection.policies.pareto import constrained_trim, pareto_trim
    from leanfit.selection.policies.steering import BudgetChoice, choose_budget
    from leanfit.selection.policies.trimming import (
        iterative_trim,
        random_trim,
        retrain_and_evaluate,
        trim,
        trimming_curve,
    )
    from leanfit.selection.protocols import (
        ADULT_L2_REG,
        ProtocolSplit,
        adult_protocol,
        split_csv,
        split_dataset,
    )
    from leanfit.selection.workflow import SelectionResult, run_selection

#: The module of :mod:`leanfit.selection` that defines each public name.
HOMES = {
    "ADULT_L2_REG": "protocols",
    "Budget": "policies.budget",
    "BudgetChoice": "policies.steering",
    "DemographicParity": "objectives",
    "EqualOpportunity": "objectives",
    "InfluenceSelector": "influence",
    "InfluenceTree": "explanation.explain",
    "LogisticRegressionL2": "models",
    "ModelSettings": "config",
    "Objective": "objectives",
    "OvershootRobustness": "objectives",
    "ProtocolSplit": "protocols",
    "RunRecord": "config",
    "SelectionConfig": "config",
    "SelectionResult": "workflow",
    "Utility": "objectives",
    "WorstCaseRobustness": "objectives",
    "accuracy": "metrics",
    "adult_protocol": "protocols",
    "choose_budget": "policies.steering",
    "constrained_trim": "policies.pareto",
    "demographic_parity_difference": "metrics",
    "equal_opportunity_difference": "metrics",
    "evaluate": "metrics",
    "iterative_trim": "policies.trimming",
    "pareto_trim": "policies.pareto",
    "random_trim": "policies.trimming",
    "retrain_and_evaluate": "policies.trimming",
    "robust_accuracy": "metrics",
    "run_selection": "workflow",
    "split_csv": "protocols",
    "split_dataset": "protocols",
    "trim": "policies.trimming",
    "trimming_curve": "policies.trimming",
}


__getattr__ = lazy_attributes(__name__, HOMES)

__all__ = [
    "ADULT_L2_REG",
    "Budget",
    "BudgetChoice",
    "DemographicParity",
    "EqualOpportunity",
    "InfluenceSelector",
    "InfluenceTree",
    "LogisticRegressionL2",
    "ModelSettings",
    "Objective",
    "OvershootRobustness",
    "ProtocolSplit",
    "RunRecord",
    "SelectionConfig",
    "SelectionResult",
    "Utility",
    "WorstCaseRobustness",
    "accuracy",
    "adult_protocol",
    "choose_budget",
    "constrained_trim",
    "demographic_parity_difference",
    "equal_opportunity_difference",
    "evaluate",
    "iterative_trim",
    "pareto_trim",
    "random_trim",
    "retrain_and_evaluate",
    "robust_accuracy",
    "run_selection",
    "split_csv",
    "split_dataset",
    "trim",
    "trimming_curve",
]
