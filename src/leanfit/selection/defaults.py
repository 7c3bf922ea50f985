"""Defaults and allowed values that several modules of selection share.

It imports nothing, so that the influence core, the policies, the protocols and the settings
(:mod:`leanfit.selection.config`, read by the command-line parser) can all use them.
"""

#: Trimming strategies, in report order (:mod:`leanfit.selection.policies.steering`).
STRATEGIES = ("plain", "constrained", "pareto")
#: Default largest validation accuracy loss of the automatic budget (one point).
DEFAULT_MAX_ACCURACY_DROP = 0.01
#: Default limit on the distinct values of a categorical column
#: (:func:`leanfit.selection.influence.check_cardinality`).
MAX_CATEGORIES = 1000
#: Seed of the paper's validation / test split, the default of every split
#: (:mod:`leanfit.selection.protocols`) and of ``leanfit select --seed``.
DEFAULT_SEED = 42000
