"""Shared fixtures: the paper's Adult setting (fitted once) and small synthetic problems."""

import numpy as np
import pytest

from leanfit.selection import InfluenceSelector, adult_protocol


@pytest.fixture(scope="session")
def adult():
    """The paper's Adult split and a selector fitted on it (λ = 2.2622, no intercept)."""
    split = adult_protocol()
    selector = InfluenceSelector(split.l2_reg, fit_intercept=split.fit_intercept)
    return split, selector.fit(split.train.X, split.train.y)


def make_problem(n=60, d=4, seed=0, intercept_shift=0.7):
    """Overlapping classes (no separation, so the optimum is well conditioned), and a
    sensitive attribute correlated with the label."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    logits = X @ rng.normal(size=d) + intercept_shift + rng.normal(scale=1.5, size=n)
    y = (logits > 0).astype(float)
    s = (rng.random(n) < 0.3 + 0.4 * y).astype(np.int64)
    return X, y, s
