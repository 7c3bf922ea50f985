"""Online learning from noisy batches: trim each batch by utility influence before the update.

Training data arrive in batches, each with a fraction of its labels flipped (annotation
noise). Before each update, every sample of the new batch is scored by its influence on the
log-loss over a small *clean* validation set, and the most harmful fraction of the batch is
dropped. The *update* here is a refit from scratch (same model, exact optimum) on all the
data kept so far plus the kept part of the new batch; influence is computed with the model
fitted on the data kept so far plus the whole new batch, so that the new samples are part of
the training set whose Hessian defines their influence. Compared with no trimming and with
dropping the same fraction of each batch at random.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from leanfit.checks import check_choice, check_fraction, check_int
from leanfit.datasets import TabularDataset
from leanfit.selection.influence import InfluenceSelector
from leanfit.selection.policies.trimming import random_trim, trim
from leanfit.selection.scenarios._common import (
    ScenarioConfig,
    concat,
    evaluate_model,
    fit_selector,
    influence_scores,
    label_value,
    model_settings,
    subset,
    tabular_splits,
    with_frame,
)

ONLINE_DATASETS = ("adult", "compas", "bank")
ONLINE_METHODS = ("none", "random", "influence")


def flip_labels(ds: TabularDataset, rows: np.ndarray) -> TabularDataset:
    """``ds`` with the labels of ``rows`` (boolean mask) swapped between favourable and not."""
    rows = np.asarray(rows, dtype=bool)
    frame = ds.frame.copy()
    favourable = ds.y.to_numpy() == 1
    frame.loc[rows & favourable, ds.target] = label_value(ds, False)
    frame.loc[rows & ~favourable, ds.target] = label_value(ds, True)
    return with_frame(ds, frame)


def batch_stream(
    ds: TabularDataset, n_batches: int, flip_fraction: float, rng: np.random.Generator
) -> list[tuple[TabularDataset, np.ndarray]]:
    """Cut ``ds`` at random into ``n_batches`` near-equal batches and flip labels in each.

    In every batch exactly ``round(flip_fraction · len(batch))`` labels, at random, are
    swapped (favourable ↔ not).

    Returns
    -------
    list of (TabularDataset, ndarray of bool)
        Each batch (its noisy labels) with the mask of its flipped rows. The batches
        partition the rows of ``ds``.
    """
    check_int("n_batches", n_batches, low=1)
    check_fraction("flip_fraction", flip_fraction, ends="[)")
    batches = []
    for rows in np.array_split(rng.permutation(len(ds)), n_batches):
        batch = subset(ds, rows)
        flipped = np.zeros(len(batch), dtype=bool)
        flipped[rng.choice(len(batch), size=round(flip_fraction * len(batch)), replace=False)] = (
            True
        )
        batches.append((flip_labels(batch, flipped), flipped))
    return batches


@dataclass(frozen=True)
class OnlineConfig(ScenarioConfig):
    """Settings of the online scenario (see :func:`run_online`).

    ``n_train`` rows of the training data (all if None) arrive in ``n_batches`` batches, each
    with a fraction ``flip_fraction`` of its labels flipped; ``trim_fraction`` of every batch
    is dropped before the update. ``n_val``: size of the clean validation set (all
    validation rows if None).
    """

    dataset: str = "adult"
    n_batches: int = 10
    flip_fraction: float = 0.35
    trim_fraction: float = 0.1
    n_train: int | None = None
    n_val: int | None = 2000

    QUICK: ClassVar[dict[str, object]] = {"n_train": 6000, "n_val": 1000}

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, ONLINE_DATASETS)
        check_int("n_batches", self.n_batches, low=1)
        check_fraction("flip_fraction", self.flip_fraction, ends="[)")
        check_fraction("trim_fraction", self.trim_fraction, ends="()")
        if self.n_val is not None:
            check_int("n_val", self.n_val, low=10)


def _batch_keep(
    method: str,
    selector: InfluenceSelector,
    batch_start: int,
    val: TabularDataset,
    fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Keep-mask over the training rows of ``selector`` dropping ``fraction`` of the rows from
    ``batch_start`` on (the new batch) by ``method``; earlier rows are all kept."""
    n = selector.train_index_.shape[0]
    keep = np.ones(n, dtype=bool)
    size = n - batch_start
    if method == "influence":
        batch_scores = influence_scores(selector, val, "utility")[batch_start:]
        keep[batch_start:] = trim(batch_scores, fraction)
    elif method == "random":
        keep[batch_start:] = random_trim(size, fraction, random_state=rng)
    return keep


def run_online(config: OnlineConfig, seed: int = 0) -> pd.DataFrame:
    """One run of the online scenario (see the module docstring).

    Returns
    -------
    DataFrame
        One row per (method, batch): ``method`` in ``none``, ``random``, ``influence``;
        ``seed``; ``batch`` (1-based); ``accuracy`` on the test set after the update;
        ``n_kept`` training rows; ``flipped_removed``, the fraction of the dropped rows that
        had a flipped label (NaN for ``none``).
    """
    rng = np.random.default_rng([seed, 4])
    train, val, test = tabular_splits(config.dataset, rng, n_train=config.n_train)
    if config.n_val is not None and config.n_val < len(val):
        val = subset(val, rng.choice(len(val), size=config.n_val, replace=False))
    stream = batch_stream(train, config.n_batches, config.flip_fraction, rng)
    settings = model_settings(config.dataset)
    rows = []
    for method in ONLINE_METHODS:
        kept: list[TabularDataset] = []
        method_rng = np.random.default_rng([seed, 4, ONLINE_METHODS.index(method)])
        for number, (batch, flipped) in enumerate(stream, start=1):
            start = sum(len(part) for part in kept)
            selector = fit_selector(concat([*kept, batch]), settings)
            keep = _batch_keep(method, selector, start, val, config.trim_fraction, method_rng)
            updated = selector.retrain(keep) if not keep.all() else selector
            kept.append(subset(batch, keep[start:]))
            dropped = ~keep[start:]
            rows.append({
                "method": method, "seed": seed, "batch": number,
                "accuracy": evaluate_model(updated, updated.model_, test)["accuracy"],
                "n_kept": int(sum(len(part) for part in kept)),
                "flipped_removed": float(flipped[dropped].mean()) if dropped.any() else np.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)
