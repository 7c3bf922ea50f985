"""Influence-based training-data selection: which samples help or hurt a classifier, and why."""

from leanfit.selection.explain import InfluenceTree, shrunk_node_values

__all__ = ["InfluenceTree", "shrunk_node_values"]
