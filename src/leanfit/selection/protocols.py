"""Train / validation / test splits: the paper's protocol on Adult, and the general case.

:func:`adult_protocol` is the experimental protocol of Chhabra et al. (ICLR 2024) on Adult;
:func:`split_dataset` splits the other vendored tables, :func:`split_csv` a user's files.

On Adult, as in the authors' code: rows with a missing value (``"?"``) are dropped from both files,
``fnlwgt`` is dropped, the remaining columns are one-hot encoded (two-valued ``sex`` as one
0/1 column) and standardized (102 columns), the model is an L2 logistic regression with
λ = 2.2622 and no intercept, trained on all 30,162 complete rows of ``adult.data``; the
15,060 complete rows of ``adult.test`` are split 50/50 (shuffled, seed 42000) into test (the
first part) and validation (the second).

One deliberate difference: the authors fit the standardization on the first 75 % of the
training rows only (a leftover of a train/validation split they later undo); here it is
fitted on all training rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from leanfit.checks import check_choice
from leanfit.datasets import TABULAR, TabularDataset, load_adult, load_csv
from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection.defaults import DEFAULT_SEED

#: λ of the paper's Adult model.
ADULT_L2_REG = 2.2622
#: Columns the paper drops from Adult.
ADULT_DROPPED = ("fnlwgt",)


@dataclass(frozen=True)
class ProtocolSplit:
    """Train / validation / test tables and the model settings of a protocol."""

    train: TabularDataset
    val: TabularDataset
    test: TabularDataset
    l2_reg: float
    fit_intercept: bool
    description: str = ""
    """How the parts were made, in a sentence or two (reports quote it)."""


def _part(ds: TabularDataset, frame: pd.DataFrame, name: str) -> TabularDataset:
    """``ds`` with another table (rows keep their index: their row number in the source)."""
    return replace(ds, frame=frame, name=name)


def split_halves(frame: pd.DataFrame, random_state: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's 50/50 split of a held-out file: ``(test, validation)``, shuffled.

    As in the authors' code: ``train_test_split(frame, test_size=0.5, shuffle=True)``, the
    first part is the test set, the second the validation set. Rows keep their index.
    An error names ``test``, the file of :func:`split_csv` that is split.
    """
    if len(frame) < 4:
        raise bad_value("test", f"a table of {len(frame)} rows", "at least 4 rows to split")
    test, val = train_test_split(frame, test_size=0.5, random_state=random_state, shuffle=True)
    return test, val


def adult_protocol(random_state: int = DEFAULT_SEED) -> ProtocolSplit:
    """Adult prepared as in the paper (see the module docstring).

    Returns
    -------
    ProtocolSplit
        ``train`` (30,162 rows), ``val`` and ``test`` (7,530 rows each), without
        ``fnlwgt`` and without missing values, rows indexed by their 0-based row number in
        ``adult.data`` / ``adult.test``; ``l2_reg = 2.2622``, ``fit_intercept =
        False``. Use ``.X``, ``.y`` and ``.s`` of each part; the default preprocessing
        (:func:`leanfit.selection.influence.make_preprocessor`) then gives the paper's features.
    """
    train = load_adult("train")
    test = load_adult("test")
    train_frame = train.frame.dropna().drop(columns=list(ADULT_DROPPED))
    test_frame = test.frame.dropna().drop(columns=list(ADULT_DROPPED))
    test_part, val_part = split_halves(test_frame, random_state)
    return ProtocolSplit(
        train=_part(train, train_frame, "adult-train"),
        val=_part(test, val_part, "adult-val"),
        test=_part(test, test_part, "adult-test"),
        l2_reg=ADULT_L2_REG,
        fit_intercept=False,
        description=(
            "Adult, the paper's protocol: complete rows only, fnlwgt dropped; train = "
            "adult.data, validation and test = the halves of adult.test (shuffled, seed "
            f"{random_state})."
        ),
    )


def _strata(ds: TabularDataset) -> pd.Series:
    """Label × group of each row (4 strata), for stratified splits."""
    return ds.y.astype(str) + "/" + ds.s.astype(str)


def split_dataset(name: str, *, random_state: int = DEFAULT_SEED) -> ProtocolSplit:
    """A vendored table split into train / validation / test.

    ``"adult"`` is :func:`adult_protocol`. The others (``"bank"``, ``"german"``,
    ``"compas"``) are split 60 / 20 / 20, shuffled and stratified by label × sensitive group
    (so that each part has the same base rates), with the model defaults λ = 1 and an
    intercept. Rows keep their index: their row number in the loaded table.
    """
    check_choice("dataset", name, sorted(TABULAR))
    if name == "adult":
        return adult_protocol(random_state)
    ds = TABULAR[name]()
    strata = _strata(ds)
    train, rest = train_test_split(
        ds.frame, test_size=0.4, random_state=random_state, shuffle=True, stratify=strata
    )
    val, test = train_test_split(
        rest, test_size=0.5, random_state=random_state, shuffle=True, stratify=strata[rest.index]
    )
    return ProtocolSplit(
        train=_part(ds, train, f"{name}-train"),
        val=_part(ds, val, f"{name}-val"),
        test=_part(ds, test, f"{name}-test"),
        l2_reg=1.0,
        fit_intercept=True,
        description=(
            f"{name}: 60 / 20 / 20 train / validation / test split, shuffled and stratified by "
            f"label × {ds.sensitive} (seed {random_state})."
        ),
    )


def _as_categorical(ds: TabularDataset, columns: Sequence[str], path: Path) -> TabularDataset:
    """``ds`` with ``columns`` turned into text (missing values stay missing)."""
    unknown = [c for c in columns if c not in ds.frame.columns]
    if unknown:
        raise bad_value("categorical", unknown, f"columns of {path}")
    if ds.target in columns:
        raise bad_value("categorical", ds.target, "feature columns (not the target)")
    frame = ds.frame.copy()
    for column in columns:
        frame[column] = frame[column].astype("string")
    privileged = str(ds.privileged) if ds.sensitive in columns else ds.privileged
    return replace(ds, frame=frame, privileged=privileged)


def split_csv(
    train: str | Path,
    test: str | Path,
    val: str | Path | None = None,
    *,
    target: str,
    sensitive: str,
    positive: object = None,
    privileged: object = None,
    categorical: Sequence[str] = (),
    random_state: int = DEFAULT_SEED,
    assume_conventions: bool = False,
) -> ProtocolSplit:
    """A user's CSV files as train / validation / test.

    Parameters
    ----------
    train, test, val : path
        CSV files with a header row and the same columns. Without ``val``, the test file is
        split 50/50 into test and validation as in the paper (:func:`split_halves`).
    target, sensitive, positive, privileged
        As for :func:`leanfit.datasets.load_csv`; ``positive`` and ``privileged`` are
        resolved on the training file and must name the same values in the others.
    categorical : sequence of str
        Numeric-coded feature columns to treat as categories (one-hot encoded, read as
        "column = value" in rules). Columns of strings are categorical anyway.
    random_state : int
        Seed of the validation / test split.
    assume_conventions : bool, default False
        Without ``positive`` / ``privileged``, choose them by convention on the training file
        (:func:`leanfit.datasets.load_csv`); the choices are in ``train.assumptions``.

    Returns
    -------
    ProtocolSplit
        Rows keep their index: the 0-based data row of their file. λ = 1, intercept.
    """
    paths = {"train": Path(train), "test": Path(test)}
    if val is not None:
        paths["val"] = Path(val)
    first = load_csv(
        paths["train"],
        target=target,
        sensitive=sensitive,
        positive=positive,
        privileged=privileged,
        assume_conventions=assume_conventions,
    )
    parts = {"train": first}
    for part, path in list(paths.items())[1:]:
        ds = load_csv(
            path,
            target=target,
            sensitive=sensitive,
            positive=first.positive,
            privileged=first.privileged,
        )
        if list(ds.frame.columns) != list(first.frame.columns):
            raise BadInputError(
                f"{part} file {str(path)!r} must have the columns of the train file "
                f"{list(first.frame.columns)}; got {list(ds.frame.columns)}"
            )
        parts[part] = ds
    if val is None:
        test_frame, val_frame = split_halves(parts["test"].frame, random_state)
        parts["val"] = replace(parts["test"], frame=val_frame)
        parts["test"] = replace(parts["test"], frame=test_frame)
        how = f"validation and test = the halves of {paths['test'].name} (seed {random_state})"
    else:
        how = f"validation = {paths['val'].name}, test = {paths['test'].name}"
    parts = {k: _as_categorical(v, list(categorical), paths["train"]) for k, v in parts.items()}
    return ProtocolSplit(
        train=_part(parts["train"], parts["train"].frame, f"{first.name}-train"),
        val=_part(parts["val"], parts["val"].frame, f"{first.name}-val"),
        test=_part(parts["test"], parts["test"].frame, f"{first.name}-test"),
        l2_reg=1.0,
        fit_intercept=True,
        description=f"train = {paths['train'].name}, {how}.",
    )
