"""Selection on Dask (LocalCluster, threads) against the single-process InfluenceSelector."""

import numpy as np
import pandas as pd
import pytest

from leanfit.exceptions import BadInputError
from leanfit.selection import InfluenceSelector

from .conftest import make_problem

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from leanfit.selection.distributed import fit_dask, read_table, select_dask  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def table(n=500, d=4, seed=5):
    X, y, _ = make_problem(n=n, d=d, seed=seed)
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(d)])
    frame["label"] = y.astype(np.int64)
    frame.index = pd.RangeIndex(1000, 1000 + n, name="row")
    return frame, X, y


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_influence_on_dask_equals_the_single_process_selector(client, tmp_path, fmt):
    frame, X, y = table()
    X_val, y_val, s_val = make_problem(n=120, d=4, seed=6)
    source = tmp_path / f"train.{fmt}"
    parts = dd.from_pandas(frame, npartitions=3)
    if fmt == "parquet":
        parts.to_parquet(source)
    else:
        frame.to_csv(source)
    objectives = ["utility", "fairness"]
    model = select_dask(
        source,
        X_val,
        y_val,
        target="label",
        features=["x0", "x1", "x2", "x3"],
        output=tmp_path / "influence",
        l2_reg=0.7,
        fit_intercept=True,
        objective=objectives,
        sensitive=s_val,
    )
    written = pd.read_parquet(tmp_path / "influence")
    selector = InfluenceSelector(0.7, fit_intercept=True, preprocessor=None).fit(X, y)
    expected = selector.influence(X_val, y_val, sensitive_features=s_val, objective=objectives)
    # Both Newton loops stop when the step is <= 1e-10 (relative) on the same strictly convex
    # objective; the partition sums differ from the one-matrix sums only in the order of
    # additions (~1e-15 relative), so θ agrees to ~1e-10 and the influences (linear in the
    # gradients at θ, solved with a well-conditioned Hessian) to 1e-8.
    np.testing.assert_allclose(model.theta_, selector.model_.theta_, rtol=1e-9)
    assert list(written.columns) == objectives and len(written) == len(frame)
    if fmt == "parquet":
        assert list(written.index) == list(frame.index)  # the training table's index is kept
    np.testing.assert_allclose(written.to_numpy(), expected.to_numpy(), rtol=1e-8, atol=1e-12)


def test_dask_errors_name_the_argument(client, tmp_path):
    frame, _, _ = table(n=50)
    parts = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(BadInputError, match="target"):
        fit_dask(parts, "missing")
    with pytest.raises(BadInputError, match="features"):
        fit_dask(parts, "label", features=["x0", "nope"])
    with pytest.raises(BadInputError, match="path"):
        read_table(tmp_path / "train.txt")
    (tmp_path / "out").mkdir()
    with pytest.raises(BadInputError, match="exists"):
        select_dask(parts, [[0.0] * 4], [1], target="label", output=tmp_path / "out")
