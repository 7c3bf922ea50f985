"""Defence against fairness poisoning: anchoring attacks, trimmed by fairness influence.

The attack is the *anchoring attack* of Mehrabi, Naveed, Morstatter and Galstyan,
"Exacerbating Algorithmic Bias through Fairness Attacks", AAAI 2021 (arXiv 2012.08723). The
attacker adds ``ε·n`` poisoned points to the ``n`` clean training points so as to skew the
decision boundary against the disadvantaged group, without touching the clean points:

1. pick two *target* points of the clean data: ``x_target−``, a negative example (y = 0) of
   the advantaged group, and ``x_target+``, a positive example (y = 1) of the disadvantaged
   group (the advantaged group is the one with the higher rate of positive labels);
2. place positive poisoned points ``(x̃, ỹ = 1)`` of the advantaged group in the vicinity
   ``‖x̃ − x_target−‖ ≤ τ`` of ``x_target−``, and negative poisoned points ``(x̃, ỹ = 0)`` of
   the disadvantaged group around ``x_target+``: each poisoned point keeps its target's
   group and takes the opposite label, so that the model learns to favour the advantaged
   group around the targets. Their numbers follow the inverse class balance (positive
   poison ``≈ ε n P(y = 0)``), as in the authors' code.

The targets are drawn uniformly at random in their cell (*random anchoring*, RAA) or chosen
as the most "popular" point of the cell, the one with the most neighbours within a radius
(*non-random anchoring*, NRAA), so that moving the boundary near it affects many points.

Differences from the paper, on purpose: the authors iterate the attack while retraining and
project the poisoned points onto the feasible set of a sphere-and-slab sanitization defence;
here the targets are drawn once, and the poisoned points are kept plausible by clipping each
numeric feature to its range in the clean data and rounding integer features. The poisoned
points are real table rows (categorical features copied from the target, numeric features
perturbed in standardized units), so the defender's pipeline sees them like any other row.

The defence (Chhabra et al., ICLR 2024): score every training point of the poisoned data by
its influence on the demographic parity gap over *clean* validation data, remove the most
harmful ones, retrain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd

from leanfit.checks import check_choice, check_fraction, check_number
from leanfit.datasets import TabularDataset
from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection.objectives import DemographicParity
from leanfit.selection.policies.trimming import random_trim, trim
from leanfit.selection.scenarios._common import (
    ScenarioConfig,
    choose_budget_on_validation,
    concat,
    evaluate_model,
    fit_selector,
    influence_scores,
    label_value,
    load_table,
    model_settings,
    random_split,
    with_frame,
)

ANCHORING = ("random", "non-random")
POISONING_DATASETS = ("german", "compas", "adult", "bank")


class PoisonedData(NamedTuple):
    """Result of :func:`anchoring_attack`.

    Attributes
    ----------
    data : TabularDataset
        The clean rows followed by the poisoned rows.
    is_poison : ndarray of bool, shape (len(data),)
        True for the poisoned rows (the last ``n_poison``).
    targets : tuple of int
        Positions in the clean table of ``x_target−`` (advantaged, y = 0) and ``x_target+``
        (disadvantaged, y = 1).
    """

    data: TabularDataset
    is_poison: np.ndarray
    targets: tuple[int, int]


def advantaged_group(ds: TabularDataset) -> int:
    """The group (1 = privileged, 0 = unprivileged) with the higher rate of ``y = 1``."""
    y, s = ds.y.to_numpy(), ds.s.to_numpy()
    if s.min() == s.max():
        raise BadInputError(f"{ds.name} must contain both groups of {ds.sensitive!r}")
    return int(y[s == 1].mean() >= y[s == 0].mean())


def standardized_numeric(ds: TabularDataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Numeric feature columns, their means and standard deviations (1 where constant)."""
    columns = [c for c in ds.X.columns if c not in ds.categorical]
    values = ds.frame[columns].to_numpy(dtype=float)
    std = values.std(axis=0) if columns else np.zeros(0)
    return columns, values.mean(axis=0), np.where(std > 0, std, 1.0)


def encoded_features(ds: TabularDataset) -> np.ndarray:
    """Standardized numeric features and 0/1 category indicators, shape ``(n, k)``: the
    space in which neighbourhoods are measured (distances between table rows)."""
    columns, mean, std = standardized_numeric(ds)
    numeric = (ds.frame[columns].to_numpy(dtype=float) - mean) / std
    dummies = pd.get_dummies(ds.X[ds.categorical].astype(object), dtype=float).to_numpy()
    return np.hstack([numeric, dummies])


def most_popular(points: np.ndarray, quantile: float = 0.1) -> int:
    """Index of the row of ``points`` (m, k) with the most other rows within radius ``r``.

    ``r`` is the ``quantile`` of all pairwise Euclidean distances among the rows, so that a
    typical row has about that fraction of the others as neighbours. Ties go to the first.
    """
    sq = np.sum(points**2, axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * points @ points.T, 0.0))
    off_diagonal = dist[~np.eye(len(points), dtype=bool)]
    radius = np.quantile(off_diagonal, quantile) if off_diagonal.size else 0.0
    return int(np.argmax((dist <= radius).sum(axis=1)))


def ball_offsets(n: int, k: int, tau: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` vectors drawn uniformly in the k-dimensional Euclidean ball of radius ``tau``."""
    direction = rng.standard_normal((n, k))
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-300)
    return direction * (tau * rng.random((n, 1)) ** (1.0 / max(k, 1)))


def _poison_rows(
    ds: TabularDataset, target: int, n: int, favourable: bool, tau: float,
    rng: np.random.Generator,
) -> pd.DataFrame:  # fmt: skip
    """``n`` copies of row ``target`` with numeric features moved within τ (standardized
    units), clipped to the clean range and rounded where the column is integer, and the
    label set to favourable or not."""
    rows = ds.frame.iloc[[target] * n].reset_index(drop=True)
    columns, _, std = standardized_numeric(ds)
    if columns and n:
        moved = rows[columns].to_numpy(dtype=float) + ball_offsets(n, len(columns), tau, rng) * std
        low = ds.frame[columns].min().to_numpy(dtype=float)
        high = ds.frame[columns].max().to_numpy(dtype=float)
        moved = np.clip(moved, low, high)
        for j, col in enumerate(columns):
            integer = pd.api.types.is_integer_dtype(ds.frame[col])
            rows[col] = (
                np.round(moved[:, j]).astype(ds.frame[col].dtype) if integer else moved[:, j]
            )
    rows[ds.target] = label_value(ds, favourable)
    return rows


def anchoring_attack(
    train: TabularDataset,
    *,
    fraction: float = 0.1,
    method: str = "random",
    tau: float = 0.5,
    seed: int | np.random.Generator | None = None,
) -> PoisonedData:
    """Poison ``train`` with the anchoring attack of Mehrabi et al. (AAAI 2021).

    See the module docstring for the algorithm and the two differences from the paper.

    Parameters
    ----------
    train : TabularDataset
        Clean training rows (no missing values).
    fraction : float, default 0.1
        ``ε``: number of poisoned points as a fraction of the clean rows
        (``round(ε n)``, at least one of each kind).
    method : {"random", "non-random"}
        Random anchoring (targets drawn uniformly in their cell) or non-random anchoring
        (the most popular point of the cell, :func:`most_popular` on
        :func:`encoded_features`).
    tau : float, default 0.5
        Radius of the vicinity, in units of the numeric features' standard deviations
        (Euclidean norm over the numeric features, before clipping and rounding); 0 copies
        the targets' features exactly.
    seed : int, Generator or None
        Seeds the target draw (random anchoring) and the perturbations.

    Returns
    -------
    PoisonedData
        ``(data, is_poison, targets)``.
    """
    check_fraction("fraction", fraction, ends="()")
    check_choice("method", method, ANCHORING)
    check_number("tau", tau, low=0)
    rng = np.random.default_rng(seed)
    y, s = train.y.to_numpy(), train.s.to_numpy()
    advantaged = advantaged_group(train)
    cells = {False: (y == 0) & (s == advantaged), True: (y == 1) & (s != advantaged)}
    for positive_target, cell in cells.items():
        if not cell.any():
            kind = "positive disadvantaged" if positive_target else "negative advantaged"
            raise BadInputError(f"{train.name} has no {kind} example to anchor the attack on")
    if method == "random":
        targets = {k: int(rng.choice(np.flatnonzero(cell))) for k, cell in cells.items()}
    else:
        features = encoded_features(train)
        targets = {
            k: int(np.flatnonzero(cell)[most_popular(features[cell])]) for k, cell in cells.items()
        }
    n_poison = max(2, round(fraction * len(train)))
    n_favourable = min(max(1, round(n_poison * np.mean(y == 0))), n_poison - 1)
    poison = pd.concat(
        [
            # positive points of the advantaged group around the advantaged negative target
            _poison_rows(train, targets[False], n_favourable, True, tau, rng),
            # negative points of the disadvantaged group around the disadvantaged positive one
            _poison_rows(train, targets[True], n_poison - n_favourable, False, tau, rng),
        ],
        ignore_index=True,
    )
    data = concat([train, with_frame(train, poison)], name=f"{train.name}-poisoned")
    is_poison = np.arange(len(data)) >= len(train)
    return PoisonedData(data, is_poison, (targets[False], targets[True]))


def detection_scores(removed: np.ndarray, is_poison: np.ndarray) -> dict[str, float]:
    """Precision and recall of a removal mask against the poison mask.

    ``precision = |removed ∩ poison| / |removed|``, ``recall = |removed ∩ poison| / |poison|``
    (NaN when the denominator is 0).
    """
    removed = np.asarray(removed, dtype=bool)
    is_poison = np.asarray(is_poison, dtype=bool)
    hits = float(np.sum(removed & is_poison))
    return {
        "precision": hits / removed.sum() if removed.any() else float("nan"),
        "recall": hits / is_poison.sum() if is_poison.any() else float("nan"),
    }


@dataclass(frozen=True)
class PoisoningConfig(ScenarioConfig):
    """Settings of the poisoning scenario (see :func:`run_poisoning`).

    ``fraction``, ``method``, ``tau``: the attack. ``budgets``: the fractions of the
    poisoned training data among which the validation-chosen defence picks its budget
    (``max_accuracy_drop``: its constraint). ``splits``: train / validation / test
    fractions of the table.
    """

    dataset: str = "german"
    fraction: float = 0.1
    method: str = "random"
    tau: float = 0.5
    budgets: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)
    max_accuracy_drop: float = 0.02
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2)

    QUICK: ClassVar[dict[str, object]] = {}

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, POISONING_DATASETS)
        check_fraction("fraction", self.fraction, ends="()")
        check_choice("method", self.method, ANCHORING)
        for b in self.budgets:
            check_fraction("budgets", b, ends="()")
        if len(self.splits) != 3 or abs(sum(self.splits) - 1.0) > 1e-9:
            raise bad_value("splits", self.splits, "three fractions summing to 1")


def run_poisoning(config: PoisoningConfig, seed: int = 0) -> pd.DataFrame:
    """One run of the poisoning scenario.

    The table is split at random into train / clean validation / test; the training part is
    poisoned by :func:`anchoring_attack`. Five models are evaluated on the test set, trained
    on: the clean data (``clean``); the poisoned data (``poisoned``); the poisoned data
    minus as many points as were injected, those with the most negative influence on the
    absolute demographic parity gap over the clean validation data (``defended``: the
    defender is told the attack size); the poisoned data minus the most harmful points at the
    budget among ``budgets`` that is fairest on the validation data
    (``defended-val``, :func:`choose_budget_on_validation`: no knowledge of the attack); the
    poisoned data minus as many random points as were injected (``random``).

    Returns
    -------
    DataFrame
        One row per method with ``method``, ``seed``, ``n_removed``, the test metrics of
        :func:`evaluate_model`, and for the trimmed models ``precision`` / ``recall`` of
        the removed points against the poisoned ones.
    """
    rng = np.random.default_rng([seed, 2])
    train, val, test = random_split(load_table(config.dataset), config.splits, rng)
    attack = anchoring_attack(train, fraction=config.fraction, method=config.method,
                              tau=config.tau, seed=rng)  # fmt: skip
    settings = model_settings(config.dataset)
    clean = fit_selector(train, settings)
    poisoned = fit_selector(attack.data, settings)
    n = len(attack.data)
    n_poison = int(attack.is_poison.sum())
    scores = influence_scores(poisoned, val, DemographicParity(absolute=True))
    candidates = {b: trim(scores, b) for b in config.budgets}
    chosen = choose_budget_on_validation(
        poisoned, candidates, val, max_accuracy_drop=config.max_accuracy_drop
    )
    keeps = {
        "defended": trim(scores, n_poison),
        "defended-val": candidates[chosen] if chosen else np.ones(n, dtype=bool),
        "random": random_trim(n, n_poison, random_state=rng),
    }
    rows = [
        {"method": "clean", "n_removed": 0, **evaluate_model(clean, clean.model_, test)},
        {"method": "poisoned", "n_removed": 0, **evaluate_model(poisoned, poisoned.model_, test)},
    ]
    for method, keep in keeps.items():
        model = poisoned.retrain(keep).model_
        rows.append({"method": method, "n_removed": int(n - keep.sum()),
                     **evaluate_model(poisoned, model, test),
                     **detection_scores(~keep, attack.is_poison)})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.insert(1, "seed", seed)
    return frame
