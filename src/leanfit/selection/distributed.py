"""Influence-based selection on Dask: training rows in partitions, influence written back.

The training table is a ``dask.dataframe`` (read from Parquet or CSV); its columns are the
model-space features (numbers, already preprocessed) and a 0/1 target. Then:

* the L2 logistic regression is fitted by the Newton loop of
  :func:`leanfit.selection.scale.newton_fit`, each pass a map-reduce: every partition gives
  its sums of loss, gradient and Hessian (:func:`~leanfit.selection.scale.chunk_statistics`)
  and the driver adds them, so the result equals the single-process fit up to the order of
  floating-point additions;
* ``H⁻¹ ∇f`` is solved once on the driver (the validation set is small and in memory);
* the influence of every row is a ``map_partitions`` (no data moves to the driver) and is
  written as Parquet, one file per partition, with the training table's index.

Same maths, sign (positive = beneficial) and summed-loss convention as
:class:`~leanfit.selection.InfluenceSelector`. Needs the ``distributed`` extra
(``dask[distributed]``, ``pyarrow``). Work runs on the default Dask scheduler, i.e. on a
``distributed.Client``'s cluster when one is active.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from leanfit.exceptions import BadInputError, MissingResourceError, bad_value
from leanfit.io import atomic_output
from leanfit.selection.models import LogisticRegressionL2
from leanfit.selection.objectives import ObjectiveSpec
from leanfit.selection.scale import (
    ChunkStats,
    chunk_statistics,
    influence_chunks,
    influence_directions,
    newton_fit,
)

if TYPE_CHECKING:
    import dask.dataframe as dd


def _dask() -> tuple[ModuleType, ModuleType]:
    try:
        import dask
        import dask.dataframe as dd
    except ImportError as err:  # pragma: no cover - exercised without the extra only
        raise MissingResourceError(
            'leanfit.selection.distributed needs Dask: pip install "leanfit[distributed]"'
        ) from err
    return dask, dd


def read_table(path: str | Path, **kwargs: object) -> dd.DataFrame:
    """A ``dask.dataframe`` from a Parquet file or directory, or CSV file(s) (by suffix).

    ``kwargs`` go to ``dask.dataframe.read_parquet`` / ``read_csv`` (e.g. ``blocksize``).
    """
    _, dd = _dask()
    text = str(path)
    if ".csv" in Path(text).name:  # file.csv, file.csv.gz, part-*.csv
        return dd.read_csv(text, **kwargs)
    if text.endswith(".parquet") or Path(text).is_dir():
        return dd.read_parquet(text, **kwargs)
    raise bad_value("path", text, "a .parquet file or directory, or .csv file(s)")


def _columns(frame: dd.DataFrame, target: str, features: Sequence[str] | None) -> list[str]:
    if target not in frame.columns:
        raise bad_value("target", target, f"a column of the table ({list(frame.columns)[:10]})")
    chosen = [c for c in frame.columns if c != target] if features is None else list(features)
    unknown = [c for c in chosen if c not in frame.columns or c == target]
    if unknown or not chosen:
        raise bad_value("features", unknown or chosen, "non-empty, columns other than target")
    return chosen


def _partition_stats(
    part: pd.DataFrame, theta: np.ndarray, features: list[str], target: str
) -> ChunkStats | None:
    if len(part) == 0:
        return None
    return chunk_statistics(theta, part[features].to_numpy(), part[target].to_numpy())


def _add(parts: list[ChunkStats | None]) -> ChunkStats:
    present = [p for p in parts if p is not None]
    if not present:
        raise BadInputError("the training table has no rows")
    total = present[0]
    for part in present[1:]:
        total = total + part
    return total


def fit_dask(
    frame: dd.DataFrame,
    target: str,
    *,
    features: Sequence[str] | None = None,
    l2_reg: float = 1.0,
    fit_intercept: bool = False,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> LogisticRegressionL2:
    """Fit the L2 logistic regression on a ``dask.dataframe``, one map-reduce per Newton pass.

    Parameters
    ----------
    frame : dask.dataframe.DataFrame
        Numeric feature columns and the 0/1 ``target`` column. Persist it first
        (``frame.persist()``) to avoid re-reading the source at every pass.
    target : str
    features : list of str, optional
        Feature columns in model order; default every column but ``target``.
    l2_reg, fit_intercept, tol, max_iter
        As :class:`~leanfit.selection.LogisticRegressionL2`.
    """
    dask, _ = _dask()
    columns = _columns(frame, target, features)
    partitions = frame.to_delayed()
    partial = dask.delayed(_partition_stats)
    total = dask.delayed(_add)

    def statistics(theta: np.ndarray) -> ChunkStats:
        parts = [partial(p, theta, columns, target) for p in partitions]
        return total(parts).compute()

    return newton_fit(
        statistics,
        len(columns),
        l2_reg=l2_reg,
        fit_intercept=fit_intercept,
        tol=tol,
        max_iter=max_iter,
    )


def _partition_influence(
    part: pd.DataFrame,
    theta: np.ndarray,
    directions: np.ndarray,
    features: list[str],
    target: str,
    names: list[str],
) -> pd.DataFrame:
    if len(part) == 0:
        return pd.DataFrame({name: pd.Series(dtype=np.float64) for name in names}, index=part.index)
    model = LogisticRegressionL2()
    model.theta_ = theta
    chunk = [(part[features].to_numpy(), part[target].to_numpy())]
    (scores,) = influence_chunks(model, chunk, directions)
    return pd.DataFrame(scores, index=part.index, columns=names)


def influence_dask(
    frame: dd.DataFrame,
    model: LogisticRegressionL2,
    X_val: ArrayLike,
    y_val: ArrayLike,
    *,
    target: str,
    features: Sequence[str] | None = None,
    objective: ObjectiveSpec = "utility",
    sensitive: ArrayLike | None = None,
) -> dd.DataFrame:
    """Influence of every row of ``frame`` as a lazy ``dask.dataframe`` (one column per objective).

    ``X_val`` (m, d) are validation rows in the same model space and column order, ``y_val``
    their 0/1 labels, ``sensitive`` their 0/1 groups for fairness objectives.
    """
    columns = _columns(frame, target, features)
    directions, names = influence_directions(
        model, X_val, y_val, objective=objective, sensitive=sensitive
    )
    # the training index (name and dtype included) is kept, so that Parquet writes it back
    empty = frame._meta.index[:0]
    meta = pd.DataFrame({name: pd.Series(index=empty, dtype=np.float64) for name in names})
    return frame.map_partitions(
        _partition_influence, model.theta_, directions, columns, target, names, meta=meta
    )


def select_dask(
    source: str | Path | dd.DataFrame,
    X_val: ArrayLike,
    y_val: ArrayLike,
    *,
    target: str,
    output: str | Path,
    features: Sequence[str] | None = None,
    l2_reg: float = 1.0,
    fit_intercept: bool = False,
    objective: ObjectiveSpec = "utility",
    sensitive: ArrayLike | None = None,
    overwrite: bool = False,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> LogisticRegressionL2:
    """Read, fit, score every training row and write the influence as Parquet.

    Parameters
    ----------
    source : path or dask.dataframe.DataFrame
        Training table (see :func:`read_table`); it is persisted for the Newton passes.
    output : path
        Parquet directory written atomically (one file per partition), columns = objective
        names, index = the training table's index.

    Returns
    -------
    LogisticRegressionL2
        The fitted model.
    """
    if Path(output).exists() and not overwrite:  # before any work, not after it
        raise BadInputError(f"output {str(output)!r} exists; pass overwrite=True to replace it")
    # cast: mypy's hasattr() narrowing keeps str and Path in the first branch.
    frame = (
        cast("dd.DataFrame", source) if hasattr(source, "map_partitions") else read_table(source)
    )
    frame = frame.persist()
    model = fit_dask(
        frame,
        target,
        features=features,
        l2_reg=l2_reg,
        fit_intercept=fit_intercept,
        tol=tol,
        max_iter=max_iter,
    )
    scores = influence_dask(
        frame,
        model,
        X_val,
        y_val,
        target=target,
        features=features,
        objective=objective,
        sensitive=sensitive,
    )
    with atomic_output(output, overwrite=overwrite) as tmp:
        scores.to_parquet(tmp)
    return model
