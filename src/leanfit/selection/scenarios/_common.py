"""Pieces shared by the scenarios: tables, splits, model settings, evaluation, validation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar, Self

import numpy as np
import pandas as pd

from leanfit.checks import check_choice
from leanfit.datasets import TABULAR, TabularDataset, load_adult
from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection.config import ModelSettings
from leanfit.selection.influence import InfluenceSelector
from leanfit.selection.metrics import evaluate
from leanfit.selection.objectives import ObjectiveSpec
from leanfit.selection.policies.steering import choose_budget

#: Columns left out of each vendored table (Adult's census sampling weight is not a feature,
#: as in the paper's preprocessing).
DROPPED = {"adult": ("fnlwgt",)}

#: Test metrics reported by the tabular scenarios (see :func:`test_metrics`).
METRICS = ("accuracy", "dp", "dp_abs", "eop_abs")


#: Adult uses the paper's model (λ = 2.2622, no intercept, features standardized); the smaller
#: tables an intercept and λ = 1.
MODEL_SETTINGS = {"adult": ModelSettings(2.2622, False)}


def model_settings(name: str) -> ModelSettings:
    """Model settings of a data set (:data:`MODEL_SETTINGS`, else λ = 1 with an intercept)."""
    return MODEL_SETTINGS.get(name, ModelSettings())


def load_table(name: str) -> TabularDataset:
    """A vendored table ready for the selection pipeline.

    Rows with a missing value are dropped (the default preprocessing does not impute) and the
    columns of :data:`DROPPED` removed. ``"adult"`` is the training file ``adult.data``
    (30,162 complete rows); ``"adult-test"`` the test file (15,060 complete rows).
    """
    loaders = {**TABULAR, "adult-test": lambda: load_adult("test")}
    check_choice("dataset", name, sorted(loaders))
    ds = loaders[name]()
    frame = ds.frame.dropna().drop(columns=list(DROPPED.get(name.split("-")[0], ())))
    return with_frame(ds, frame, name)


def with_frame(ds: TabularDataset, frame: pd.DataFrame, name: str | None = None) -> TabularDataset:
    """``ds`` with another frame (same target, sensitive attribute and values), index reset."""
    return TabularDataset(
        frame.reset_index(drop=True), ds.target, ds.positive, ds.sensitive, ds.privileged,
        name=ds.name if name is None else name,
    )  # fmt: skip


def subset(ds: TabularDataset, rows: np.ndarray, name: str | None = None) -> TabularDataset:
    """Rows of ``ds`` by position (integer array or boolean mask), index reset."""
    return with_frame(ds, ds.frame.iloc[np.asarray(rows)], name)


def concat(parts: Sequence[TabularDataset], name: str | None = None) -> TabularDataset:
    """Rows of several tables with the same columns, in order, index reset."""
    if not parts:
        raise BadInputError("parts must hold at least one table; got none")
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    return with_frame(parts[0], frame, name)


def random_split(
    ds: TabularDataset, sizes: Sequence[float], rng: np.random.Generator
) -> list[TabularDataset]:
    """Shuffle ``ds`` and cut it into consecutive parts of the given fractions.

    ``sizes`` are fractions summing to at most 1; the parts are disjoint, and the last part
    takes the rounding remainder only if the fractions sum to 1.
    """
    fractions = np.asarray(sizes, dtype=float)
    if np.any(fractions <= 0) or fractions.sum() > 1 + 1e-12:
        raise bad_value("sizes", list(sizes), "positive fractions summing to at most 1")
    order = rng.permutation(len(ds))
    cuts = np.round(np.cumsum(fractions) * len(ds)).astype(int)
    starts = np.concatenate([[0], cuts[:-1]])
    return [
        subset(ds, order[a:b], f"{ds.name}-part{k}")
        for k, (a, b) in enumerate(zip(starts, cuts, strict=True))
    ]


def sample_rows(ds: TabularDataset, n: int | None, rng: np.random.Generator) -> TabularDataset:
    """``n`` rows of ``ds`` drawn without replacement (all rows, shuffled, if ``n`` is None
    or at least ``len(ds)``)."""
    take = len(ds) if n is None else min(n, len(ds))
    return subset(ds, rng.choice(len(ds), size=take, replace=False))


def label_value(ds: TabularDataset, favourable: bool) -> object:
    """The raw target value meaning favourable (``ds.positive``) or not (the other value
    seen in the target column)."""
    if favourable:
        return ds.positive
    others = [v for v in pd.unique(ds.frame[ds.target]) if v != ds.positive]
    if not others:
        raise BadInputError(f"the target column {ds.target!r} has only the positive value")
    return others[0]


def fit_selector(train: TabularDataset, settings: ModelSettings) -> InfluenceSelector:
    """Fit the convex model (default preprocessing: one-hot + standardize) on ``train``."""
    selector = InfluenceSelector(settings.l2_reg, fit_intercept=settings.fit_intercept)
    return selector.fit(train.X, train.y.to_numpy())


def evaluate_model(
    selector: InfluenceSelector, model: object, ds: TabularDataset
) -> dict[str, float]:
    """Accuracy and fairness of ``model`` (fitted in ``selector``'s feature space) on ``ds``.

    Returns ``accuracy``, ``dp`` (signed demographic parity gap of the predictions,
    privileged minus unprivileged), ``dp_abs`` and ``eop_abs`` (fairlearn's absolute gaps of
    selection rate and of true positive rate).
    """
    metrics = evaluate(
        model, selector.transform(ds.X), ds.y.to_numpy(), sensitive_features=ds.s.to_numpy()
    )
    return {name: metrics[name] for name in METRICS}


def influence_scores(
    selector: InfluenceSelector, val: TabularDataset, objective: ObjectiveSpec
) -> np.ndarray:
    """Influence of every training sample of ``selector`` on ``objective`` over ``val``,
    shape ``(n_train,)``; positive = beneficial, negative = harmful."""
    scores = selector.influence(
        val.X, val.y.to_numpy(), sensitive_features=val.s.to_numpy(), objective=objective
    )
    return scores.iloc[:, 0].to_numpy()


class ScenarioConfig:
    """Mixin of the scenario configurations (frozen dataclasses): JSON-ready dict round trip.

    ``QUICK`` holds the field values of the small-budget variant (``--quick``).
    """

    QUICK: ClassVar[dict[str, object]] = {}

    def to_dict(self) -> dict[str, object]:
        """Fields as JSON-ready values (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()  # type: ignore[call-overload]
        }

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> Self:
        """Inverse of :meth:`to_dict` (lists become tuples); unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise bad_value("values", unknown, f"keys among {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @classmethod
    def quick(cls, **overrides: object) -> Self:
        """The small-budget configuration (``QUICK``), with ``overrides`` on top."""
        return cls(**{**cls.QUICK, **overrides})


def choose_budget_on_validation(
    selector: InfluenceSelector,
    keeps: dict[float, np.ndarray],
    val: TabularDataset,
    *,
    cost: Callable[[InfluenceSelector, object, TabularDataset], float] | None = None,
    max_accuracy_drop: float = 0.02,
) -> float:
    """The trimming budget whose retrained model is best on validation data.

    The rule of ``leanfit select --budget auto``
    (:func:`leanfit.selection.policies.steering.choose_budget`) applied to the candidate
    keep-masks (budget → mask over ``selector``'s training rows):
    each is retrained and evaluated on ``val``; among those whose validation accuracy is at
    most ``max_accuracy_drop`` below the untrimmed model's, the one with the lowest validation
    cost (ties: the smaller budget), provided it is below the untrimmed model's. The cost is
    the absolute demographic parity gap of the predictions, or ``cost(selector, model, val)``
    if given. Returns 0.0 (no trimming) when no candidate lowers the cost under that
    constraint.
    """
    n = selector.train_index_.shape[0]
    candidates = [(0.0, np.ones(n, dtype=bool), selector.model_)]
    candidates += [(b, keeps[b], selector.retrain(keeps[b]).model_) for b in sorted(keeps)]
    rows = []
    for budget, keep, model in candidates:
        metrics = evaluate_model(selector, model, val)
        removed = int(n - np.count_nonzero(keep))
        value = metrics["dp_abs"] if cost is None else cost(selector, model, val)
        rows.append({"n_removed": removed, "budget": budget, "rows_removed": removed,
                     **metrics, "cost": value})  # fmt: skip
    choice = choose_budget(
        pd.DataFrame(rows), max_accuracy_drop=max_accuracy_drop, criterion="cost"
    )
    return float(choice.curve.budget[choice.curve.chosen].iloc[0])


def tabular_splits(
    dataset: str, rng: np.random.Generator, *, n_train: int | None = None
) -> tuple[TabularDataset, TabularDataset, TabularDataset]:
    """Train / validation / test tables of a vendored data set.

    Adult follows the paper: training rows from ``adult.data`` (``n_train`` of them at random
    if given), validation and test the two random halves of ``adult.test``. The other tables
    are cut at random 60 / 20 / 20 (then ``n_train`` caps the training part).
    """
    if dataset == "adult":
        train = load_table("adult")
        val, test = random_split(load_table("adult-test"), [0.5, 0.5], rng)
    else:
        train, val, test = random_split(load_table(dataset), [0.6, 0.2, 0.2], rng)
    return sample_rows(train, n_train, rng), val, test
