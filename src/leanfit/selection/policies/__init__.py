"""Trimming policies: which training rows a selection removes, and how many.

* :mod:`~leanfit.selection.policies.budget` — the budget (:class:`Budget`: a count, a fraction
  of the training rows, or ``auto``), parsed once;
* :mod:`~leanfit.selection.policies.trimming` — budgeted trimming by influence (paper
  Algorithm 2), random removal, retraining and the trimming curves;
* :mod:`~leanfit.selection.policies.pareto` — selections that protect utility (constrained,
  scalarized, Pareto);
* :mod:`~leanfit.selection.policies.steering` — the strategies of ``leanfit select`` and the
  budget chosen on validation (:func:`choose_budget`, also used by the scenarios).

They read influence tables and a fitted :class:`~leanfit.selection.InfluenceSelector` (the
influence core in :mod:`leanfit.selection`) and return keep-masks and curves. The public names
are exported by :mod:`leanfit.selection`.
"""
