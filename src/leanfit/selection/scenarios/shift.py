"""Fairness under distribution shift: trim the source data by fairness influence on the target.

The model is trained on a *source* distribution and deployed on a *target* one. A small
labelled sample of the target (the validation set) is available: the influence of each source
training sample on the demographic parity gap measured on that target sample tells which
source samples make the deployed model unfair *on the target*. Removing the most harmful ones
and retraining is compared, on the rest of the target (the test set), with

* no trimming;
* removing as many source samples at random;
* reweighing (Kamiran & Calders, "Data preprocessing techniques for classification without
  discrimination", KAIS 2012): each training sample gets the weight
  ``w(s, y) = P(s) P(y) / P(s, y)`` (empirical frequencies on the training data), which makes
  the label statistically independent of the group in the weighted training data.

Shifts are built from the vendored tables by *exponential tilting*: the table is cut at random
into two halves; from one half the source is drawn without replacement with probabilities
``∝ exp(−strength · g(x))``, from the other the target with probabilities
``∝ exp(+strength · g(x))``, where ``g`` is the standardized age (``kind="age"``), the
unprivileged-group indicator (``kind="group"``: the target has more unprivileged people, e.g.
a higher share of women in Adult) or the foreign-born indicator (``kind="country"``, Adult only:
``native_country ≠ United-States``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from leanfit.checks import check_choice, check_fraction, check_int, check_number
from leanfit.datasets import TabularDataset, load_csv
from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection.config import ModelSettings
from leanfit.selection.models import LogisticRegressionL2
from leanfit.selection.objectives import DemographicParity
from leanfit.selection.policies.trimming import random_trim, trim
from leanfit.selection.scenarios._common import (
    ScenarioConfig,
    choose_budget_on_validation,
    evaluate_model,
    fit_selector,
    influence_scores,
    load_table,
    model_settings,
    random_split,
    sample_rows,
    subset,
    with_frame,
)

SHIFT_DATASETS = ("adult", "german", "compas")
SHIFT_KINDS = ("age", "group", "country")


class ShiftSplit(NamedTuple):
    """Source training data, a small labelled target sample, and the rest of the target."""

    train: TabularDataset
    val: TabularDataset
    test: TabularDataset


def shift_score(ds: TabularDataset, kind: str) -> np.ndarray:
    """The tilting variable ``g(x)`` of each row, shape ``(n,)``.

    ``"age"``: age standardized over ``ds``; ``"group"``: 1 for the unprivileged group, 0
    for the privileged one; ``"country"``: 1 if ``native_country`` is not ``United-States`` (Adult).
    """
    check_choice("kind", kind, SHIFT_KINDS)
    if kind == "group":
        return 1.0 - ds.s.to_numpy(dtype=float)
    column = {"age": "age", "country": "native_country"}[kind]
    if column not in ds.frame.columns:
        raise bad_value("kind", kind, f"a kind whose column exists in {ds.name}; no {column!r}")
    if kind == "country":
        return (ds.frame[column] != "United-States").to_numpy(dtype=float)
    age = ds.frame[column].to_numpy(dtype=float)
    return (age - age.mean()) / age.std()


def tilted_sample(
    ds: TabularDataset, score: np.ndarray, strength: float, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Positions of ``n`` rows drawn without replacement with probability ``∝ exp(strength·g)``.

    Returns an integer array of shape ``(n,)`` (distinct positions into ``ds``).
    """
    logits = strength * np.asarray(score, dtype=float)
    weights = np.exp(logits - logits.max())
    return rng.choice(len(ds), size=n, replace=False, p=weights / weights.sum())


def make_shift(
    dataset: str | TabularDataset = "adult",
    *,
    kind: str = "group",
    strength: float = 1.5,
    seed: int = 0,
    sample_fraction: float = 0.5,
    val_fraction: float = 0.2,
    n_rows: int | None = None,
) -> ShiftSplit:
    """Build a source / target shift from a table (see the module docstring).

    Parameters
    ----------
    dataset : {"adult", "german", "compas"} or TabularDataset
        A vendored table (complete rows, :func:`load_table`) or any table without missing
        values.
    kind : {"age", "group", "country"}
        The tilting variable: age (the target is older for ``strength > 0``), unprivileged
        group membership (the target has more unprivileged people for ``strength > 0``), or
        being foreign-born (Adult; the target has more foreign-born people).
    strength : float, default 1.5
        Tilt ``τ``: selection odds ``exp(±τ g)``; 0 gives no shift.
    seed : int
        Seeds the halves, the draws and the validation/test cut.
    sample_fraction : float, default 0.5
        Fraction of each half drawn (without replacement: the larger it is, the weaker the
        shift a given ``strength`` can create).
    val_fraction : float, default 0.2
        Fraction of the target used as the labelled target sample; the rest is the test set.
    n_rows : int, optional
        Use a random subset of this many rows of the table first (faster experiments).

    Returns
    -------
    ShiftSplit
        ``(train, val, test)``: disjoint tables, ``train`` from the source distribution,
        ``val`` and ``test`` from the target distribution.
    """
    check_number("strength", strength)
    check_fraction("sample_fraction", sample_fraction, ends="(]")
    check_fraction("val_fraction", val_fraction, ends="()")
    rng = np.random.default_rng(seed)
    if isinstance(dataset, str):
        check_choice("dataset", dataset, SHIFT_DATASETS)
    table = load_table(dataset) if isinstance(dataset, str) else dataset
    if n_rows is not None:
        table = sample_rows(table, check_int("n_rows", n_rows, low=20), rng)
    score = shift_score(table, kind)
    halves = rng.permutation(len(table))
    source_pool, target_pool = np.array_split(halves, 2)
    parts = []
    for pool, sign in ((source_pool, -1.0), (target_pool, 1.0)):
        pool_table = subset(table, pool)
        n = max(2, round(sample_fraction * len(pool)))
        drawn = tilted_sample(pool_table, score[pool], sign * strength, n, rng)
        parts.append(subset(pool_table, drawn))
    source, target = parts
    val, test = random_split(target, [val_fraction, 1.0 - val_fraction], rng)
    name = table.name
    return ShiftSplit(
        with_frame(source, source.frame, f"{name}-source"),
        with_frame(val, val.frame, f"{name}-target-val"),
        with_frame(test, test.frame, f"{name}-target-test"),
    )


def load_shift_csv(
    train: str | Path,
    val: str | Path,
    test: str | Path,
    *,
    target: str,
    sensitive: str,
    positive: object = None,
    privileged: object = None,
) -> ShiftSplit:
    """A user's own source training table and target validation / test tables (CSV files).

    Same columns in the three files; rows with a missing value are dropped. ``positive`` and
    ``privileged`` as in :func:`leanfit.datasets.load_csv` (needed unless the column is 0/1).
    """
    tables = []
    for path in (train, val, test):
        ds = load_csv(path, target=target, sensitive=sensitive, positive=positive,
                      privileged=privileged)  # fmt: skip
        tables.append(with_frame(ds, ds.frame.dropna(), Path(path).stem))
    columns = list(tables[0].frame.columns)
    for path, ds in zip((val, test), tables[1:], strict=True):
        if sorted(ds.frame.columns) != sorted(columns):
            raise BadInputError(
                f"{path} must have the columns of {train} ({columns}); got {list(ds.frame.columns)}"
            )
    return ShiftSplit(*(with_frame(ds, ds.frame[columns]) for ds in tables))


def reweighing_weights(y: ArrayLike, s: ArrayLike) -> np.ndarray:
    """Kamiran–Calders reweighing: ``w(s, y) = P(s) P(y) / P(s, y)``, shape ``(n,)``.

    Frequencies are taken over the given samples. In the weighted data, label and group are
    independent: ``Σ_{i: sᵢ=a, yᵢ=b} wᵢ / n = P(s=a) P(y=b)`` for every cell, and the total
    weight is ``n``.

    Parameters
    ----------
    y, s : array-like of shape (n,)
        Labels and group memberships (any two values each, e.g. 0/1).
    """
    y = np.asarray(y)
    s = np.asarray(s)
    if y.ndim != 1 or s.shape != y.shape or y.size == 0:
        raise bad_value("s", f"shape {s.shape}", f"a 1-D array of the shape of y {y.shape}")
    n = y.size
    weights = np.empty(n)
    for a in np.unique(s):
        for b in np.unique(y):
            cell = (s == a) & (y == b)
            if cell.any():
                weights[cell] = np.mean(s == a) * np.mean(y == b) / (cell.sum() / n)
    return weights


@dataclass(frozen=True)
class ShiftConfig(ScenarioConfig):
    """Settings of the distribution-shift scenario (see :func:`run_shift`).

    ``dataset``, ``kind``, ``strength``, ``val_fraction``, ``n_rows`` go to
    :func:`make_shift` (or, with ``train_csv``/``val_csv``/``test_csv``, the user's files are
    read with ``target``, ``sensitive``, ``positive``, ``privileged``). ``budgets``: fractions
    of the source training data removed; ``budget``: the one reported in the summary table;
    ``max_accuracy_drop``: constraint of the budget chosen on the target validation sample
    (:func:`~leanfit.selection.scenarios._common.choose_budget_on_validation`).
    """

    dataset: str = "adult"
    kind: str = "group"
    strength: float = 1.5
    val_fraction: float = 0.2
    n_rows: int | None = None
    budgets: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)
    budget: float = 0.05
    max_accuracy_drop: float = 0.02
    train_csv: str | None = None
    val_csv: str | None = None
    test_csv: str | None = None
    target: str | None = None
    sensitive: str | None = None
    positive: object = None
    privileged: object = None

    QUICK: ClassVar[dict[str, object]] = {"n_rows": 8000}

    def __post_init__(self) -> None:
        csv = (self.train_csv, self.val_csv, self.test_csv)
        if any(p is not None for p in csv):
            if any(p is None for p in csv) or self.target is None or self.sensitive is None:
                raise BadInputError(
                    "train_csv, val_csv and test_csv must be given together, with target and "
                    f"sensitive; got {csv}, target={self.target!r}, sensitive={self.sensitive!r}"
                )
        else:
            check_choice("dataset", self.dataset, SHIFT_DATASETS)
            check_choice("kind", self.kind, SHIFT_KINDS)
        for b in self.budgets:
            check_fraction("budgets", b, ends="()")
        if self.budget not in self.budgets:
            raise bad_value("budget", self.budget, f"one of budgets {list(self.budgets)}")

    def split(self, seed: int) -> ShiftSplit:
        """The train / target-val / target-test tables for one seed."""
        if self.train_csv is not None:
            return load_shift_csv(
                self.train_csv, self.val_csv, self.test_csv,  # type: ignore[arg-type]
                target=self.target, sensitive=self.sensitive,  # type: ignore[arg-type]
                positive=self.positive, privileged=self.privileged,
            )  # fmt: skip
        return make_shift(
            self.dataset, kind=self.kind, strength=self.strength, seed=seed,
            val_fraction=self.val_fraction, n_rows=self.n_rows,
        )  # fmt: skip

    def settings(self) -> ModelSettings:
        return model_settings("csv" if self.train_csv is not None else self.dataset)


def run_shift(config: ShiftConfig, seed: int = 0) -> pd.DataFrame:
    """One run of the distribution-shift scenario.

    Steps: build the shift (``config.split(seed)``); fit the L2 logistic regression on the
    source; score every source sample by its influence on the absolute demographic parity
    gap ``|mean σ(z) | s=1 − mean σ(z) | s=0|`` over the target validation sample; for each
    budget remove the most harmful samples (most negative influence) or as many random ones
    and retrain; fit the reweighed model (same model, Kamiran–Calders sample weights);
    finally pick, among the budgets, the one whose trimmed model is fairest on the target
    validation sample (accuracy there at most ``max_accuracy_drop`` below the untrimmed
    model's), as a user without test labels would.

    Returns
    -------
    DataFrame
        One row per (method, budget): ``method`` in ``none``, ``reweighing``, ``random``,
        ``influence``, ``influence-val``; ``budget`` (fraction removed: 0 for the first two,
        NaN for ``influence-val``, whose budget is in ``chosen_budget``); ``seed``; the
        test metrics of :func:`evaluate_model` on the target test set; ``shift`` (the
        target-minus-source difference of the privileged share, for the record).
    """
    train, val, test = config.split(seed)
    selector = fit_selector(train, config.settings())
    rng = np.random.default_rng([seed, 1])
    scores = influence_scores(selector, val, DemographicParity(absolute=True))
    rows = [{"method": "none", "budget": 0.0, **evaluate_model(selector, selector.model_, test)}]
    weighted = LogisticRegressionL2(
        selector.l2_reg, fit_intercept=selector.fit_intercept
    ).fit(
        selector.transform(train.X), train.y.to_numpy(),
        sample_weight=reweighing_weights(train.y.to_numpy(), train.s.to_numpy()),
    )  # fmt: skip
    rows.append({"method": "reweighing", "budget": 0.0, **evaluate_model(selector, weighted, test)})
    influence_keeps = {budget: trim(scores, budget) for budget in config.budgets}
    for budget in config.budgets:
        keeps = {
            "influence": influence_keeps[budget],
            "random": random_trim(len(train), budget, random_state=rng),
        }
        for method, keep in keeps.items():
            model = selector.retrain(keep).model_
            rows.append(
                {"method": method, "budget": budget, **evaluate_model(selector, model, test)}
            )
    chosen = choose_budget_on_validation(
        selector, influence_keeps, val, max_accuracy_drop=config.max_accuracy_drop
    )
    model = selector.retrain(influence_keeps[chosen]).model_ if chosen else selector.model_
    rows.append({"method": "influence-val", "budget": np.nan, "chosen_budget": chosen,
                 **evaluate_model(selector, model, test)})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.insert(2, "seed", seed)
    frame["shift"] = float(test.s.mean() - train.s.mean())
    return frame
