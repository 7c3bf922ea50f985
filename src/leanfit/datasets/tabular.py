"""Tabular classification data sets with a binary target and a binary sensitive attribute."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leanfit.datasets._files import read_vendored
from leanfit.exceptions import BadInputError, CorruptArtifactError, MissingResourceError


@dataclass(frozen=True)
class TabularDataset:
    """A table with a binary target and a binary sensitive attribute.

    Attributes
    ----------
    frame : pandas.DataFrame
        All columns, target included, with their original (readable) values: strings for
        categorical columns, numbers for numeric ones; missing values are ``NaN``.
    target : str
        Name of the target column.
    positive : object
        The target value that counts as the favourable outcome (label 1).
    sensitive : str
        Name of the sensitive attribute column (it stays among the features).
    privileged : object
        The sensitive value of the privileged group (group 1).
    name : str
        Short name of the data set.
    """

    frame: pd.DataFrame
    target: str
    positive: object
    sensitive: str
    privileged: object
    name: str = "table"

    @property
    def X(self) -> pd.DataFrame:
        """Features: every column but the target, shape (n, d)."""
        return self.frame.drop(columns=[self.target])

    @property
    def y(self) -> pd.Series:
        """Labels, 1 for the favourable outcome and 0 otherwise, shape (n,)."""
        return (self.frame[self.target] == self.positive).astype("int64").rename("y")

    @property
    def s(self) -> pd.Series:
        """Group membership, 1 for the privileged group and 0 otherwise, shape (n,)."""
        return (self.frame[self.sensitive] == self.privileged).astype("int64").rename("s")

    @property
    def categorical(self) -> list[str]:
        """Feature columns that hold strings (one-hot encoded by the selection pipeline)."""
        return [c for c in self.X.columns if not pd.api.types.is_numeric_dtype(self.X[c])]

    def __len__(self) -> int:
        return len(self.frame)


ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status",
    "occupation", "relationship", "race", "sex", "capital_gain", "capital_loss",
    "hours_per_week", "native_country", "income",
]  # fmt: skip

GERMAN_COLUMNS = [
    "status", "duration", "credit_history", "purpose", "credit_amount", "savings",
    "present_employment", "installment_rate", "status_sex", "other_debtors",
    "present_residence", "property", "age", "installment_plans", "housing",
    "number_of_credits", "job", "people_liable", "telephone", "foreign_worker", "credit",
]  # fmt: skip

COMPAS_COLUMNS = [
    "sex", "age", "age_cat", "race", "juv_fel_count", "juv_misd_count", "juv_other_count",
    "priors_count", "c_charge_degree", "two_year_recid",
]  # fmt: skip


def _read_table(name: str, **read_csv_kwargs) -> pd.DataFrame:
    text = read_vendored(name).decode("utf-8")
    return pd.read_csv(io.StringIO(text), **read_csv_kwargs)


def load_adult(split: str = "train") -> TabularDataset:
    """UCI Adult census income: predict income > 50K; sensitive attribute ``sex``.

    Parameters
    ----------
    split : {"train", "test"}
        ``adult.data`` (32,561 rows) or ``adult.test`` (16,281 rows).

    Returns
    -------
    TabularDataset
        Columns ``ADULT_COLUMNS`` (snake_case of the UCI names); target ``income`` with
        positive value ``">50K"`` (the test file's trailing dots removed); sensitive ``sex``
        with privileged value ``"Male"``. ``"?"`` becomes ``NaN``.
    """
    files = {"train": "adult.data", "test": "adult.test"}
    if split not in files:
        raise BadInputError(f"split must be one of {sorted(files)}; got {split!r}")
    frame = _read_table(
        files[split],
        header=None,
        names=ADULT_COLUMNS,
        skipinitialspace=True,
        na_values="?",
        comment="|",
    )
    frame["income"] = frame["income"].str.rstrip(".")
    return TabularDataset(frame, "income", ">50K", "sex", "Male", name=f"adult-{split}")


def load_german() -> TabularDataset:
    """Statlog German credit: predict good credit; sensitive attribute ``sex``.

    Attribute codes (``A11`` …) are replaced by their readable descriptions. ``sex``
    (``"male"`` / ``"female"``) is derived from ``status_sex``; privileged ``"male"``.
    Target ``credit`` with positive value ``"good"``. 1,000 rows.
    """
    frame = _read_table("german.data", sep=" ", header=None, names=GERMAN_COLUMNS)
    values = json.loads(read_vendored("german_values.json"))
    for column, mapping in values.items():
        codes = frame[column].astype(str)
        frame[column] = codes.map({k: str(v).strip() for k, v in mapping.items()}).fillna(codes)
    frame["sex"] = frame["status_sex"].str.split(":").str[0].str.strip().astype(str)
    return TabularDataset(frame, "credit", "good", "sex", "male", name="german")


def load_compas() -> TabularDataset:
    """ProPublica COMPAS two-year recidivism; sensitive attribute ``race``.

    Rows are filtered as in ProPublica's analysis (charge within 30 days of screening,
    a known recidivism flag, not an ordinary traffic offence), which leaves 6,172 rows. The
    favourable outcome is *no* recidivism: ``positive = 0`` for ``two_year_recid``.
    Privileged group ``race == "Caucasian"``. COMPAS's own scores are not included.
    """
    frame = _read_table("compas-scores-two-years.csv")
    keep = (
        frame["days_b_screening_arrest"].between(-30, 30)
        & (frame["is_recid"] != -1)
        & (frame["c_charge_degree"] != "O")
        & (frame["score_text"] != "N/A")
    )
    frame = frame.loc[keep, COMPAS_COLUMNS].reset_index(drop=True)
    return TabularDataset(frame, "two_year_recid", 0, "race", "Caucasian", name="compas")


def load_bank() -> TabularDataset:
    """UCI Bank marketing (``bank.csv``, 4,521 rows): predict a term deposit; sensitive age.

    Target ``y`` with positive ``"yes"``. ``age_group`` (``"25 or older"`` / ``"under 25"``)
    is derived from ``age``, privileged ``"25 or older"``, the usual convention for this table.
    """
    frame = _read_table("bank.csv").drop(columns=["id"])
    frame["age_group"] = (frame["age"] >= 25).map({True: "25 or older", False: "under 25"})
    return TabularDataset(frame, "y", "yes", "age_group", "25 or older", name="bank")


def _match_text(value: object, distinct) -> object:
    """The column value that ``value`` names: itself, or the one whose text it is.

    A value typed on a command line is a string; it names a numeric column's value when it
    parses to the same number (``"1"`` names ``1`` and ``1.0``).
    """
    if not isinstance(value, str) or value in set(distinct):
        return value
    for candidate in distinct:
        if str(candidate) == value:
            return candidate
        if isinstance(candidate, int | float | np.integer | np.floating):
            try:
                if float(value) == candidate:
                    return candidate
            except ValueError:
                continue
    return value


def _binary_value(column: pd.Series, value: object, argument: str, role: str) -> object:
    """Check that ``column`` has exactly two values and return the one that counts as 1."""
    distinct = column.dropna().unique()
    if len(distinct) != 2:
        raise BadInputError(
            f"{role} column {column.name!r} must have exactly two "
            f"distinct values; got {len(distinct)}: {sorted(map(str, distinct))[:5]}"
        )
    if value is not None:
        value = _match_text(value, distinct)
        if value not in set(distinct):
            raise BadInputError(
                f"{argument} must be one of {sorted(map(str, distinct))}; got {value!r}"
            )
        return value
    if set(distinct) <= {0, 1}:
        return 1
    raise BadInputError(
        f"column {column.name!r} has values {sorted(map(str, distinct))}; pass {argument} to say "
        "which one counts as 1"
    )


def load_csv(
    path: str | Path,
    *,
    target: str,
    sensitive: str,
    positive: object = None,
    privileged: object = None,
) -> TabularDataset:
    """Load a user's own table.

    Parameters
    ----------
    path : str or Path
        A CSV file with a header row.
    target, sensitive : str
        Names of the target and sensitive columns; each must have exactly two values.
    positive, privileged : optional
        The target value counted as favourable and the sensitive value of the privileged
        group. Needed unless the column holds 0/1. A string also names a numeric value with
        that text (``"1"`` for ``1``), as typed on a command line.

    Raises
    ------
    MissingResourceError
        The file does not exist.
    BadInputError
        The file is not a readable CSV, a column is missing, or a column is not binary.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"path: no such file {str(path)!r}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise CorruptArtifactError(f"{path} is not a readable CSV file: {reason}") from err
    for argument, column in (("target", target), ("sensitive", sensitive)):
        if column not in frame.columns:
            raise BadInputError(
                f"{argument}={column!r} is not a column of {path}; columns: {list(frame.columns)}"
            )
    positive = _binary_value(frame[target], positive, "positive=", "target")
    privileged = _binary_value(frame[sensitive], privileged, "privileged=", "sensitive")
    return TabularDataset(frame, target, positive, sensitive, privileged, name=path.stem)
