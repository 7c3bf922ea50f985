"""Explaining influence and reporting a selection run.

* :mod:`~leanfit.selection.explanation.explain` — :class:`InfluenceTree`, a regression tree
  with hierarchical shrinkage fitted on the readable training columns, read as rules;
* :mod:`~leanfit.selection.explanation.report` — the files of
  :func:`leanfit.selection.run_selection` (:class:`SelectionResult`, tables, figures, the
  report and ``config.json``).

The public names are exported by :mod:`leanfit.selection`.
"""
