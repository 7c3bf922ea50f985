"""Tabular classification data sets with a binary target and a binary sensitive attribute."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leanfit.datasets._files import read_vendored
from leanfit.exceptions import (
    BadInputError,
    CorruptArtifactError,
    MissingResourceError,
    bad_value,
)


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
    assumptions : tuple of str
        Choices made for the user while loading (e.g. which target value counts as
        favourable), one sentence each; reports quote them.
    """

    frame: pd.DataFrame
    target: str
    positive: object
    sensitive: str
    privileged: object
    name: str = "table"
    assumptions: tuple[str, ...] = ()

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


def load_arrests() -> TabularDataset:
    """Toronto arrests for simple possession of marijuana, 1997–2002 (``carData::Arrests``).

    5,226 rows from a Toronto Star investigation of police treatment by skin colour: predict
    whether the arrestee was ``released`` with a summons (positive ``"Yes"``, the favourable
    outcome) rather than held for a bail hearing; sensitive attribute ``colour``, privileged
    ``"White"`` (the other value is ``"Black"``). Features: ``year``, ``age``, ``sex``,
    ``employed``, ``citizen`` and ``checks`` (number of police databases the arrestee's name
    appeared in, 0–6).
    """
    frame = _read_table("arrests.csv")
    return TabularDataset(frame, "released", "Yes", "colour", "White", name="arrests")


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


#: Target values favourable by convention, and their unfavourable counterparts (compared in
#: lower case). A target whose two values are one of each is read without ``positive``.
FAVOURABLE_WORDS = ("1", "true", "t", "yes", "y", ">50k", "good", "approved", "positive")
UNFAVOURABLE_WORDS = ("0", "false", "f", "no", "n", "<=50k", "bad", "denied", "negative")


def conventional_favourable(values) -> object | None:
    """The value of a two-valued target that is favourable by convention, or None.

    ``1`` of ``{0, 1}`` and ``True`` of ``{False, True}``; for text, the value among
    :data:`FAVOURABLE_WORDS` when the other is among :data:`UNFAVOURABLE_WORDS` (``"Y"`` of
    ``{"Y", "N"}``, ``"yes"``, ``">50K"``, ``"good"``), case-insensitive.
    """
    distinct = list(values)
    if len(distinct) != 2:
        return None
    if set(distinct) <= {0, 1}:  # also matches True / False
        return next(v for v in distinct if v == 1)
    words = [str(v).strip().lower() for v in distinct]
    for first, second in ((0, 1), (1, 0)):
        if words[first] in FAVOURABLE_WORDS and words[second] in UNFAVOURABLE_WORDS:
            return distinct[first]
    return None


def _two_values(column: pd.Series, role: str) -> np.ndarray:
    distinct = column.dropna().unique()
    if len(distinct) != 2:
        raise BadInputError(
            f"{role} column {column.name!r} must have exactly two "
            f"distinct values; got {len(distinct)}: {sorted(map(str, distinct))[:5]}"
        )
    return distinct


def _given_value(distinct, value: object, name: str) -> object:
    """The value of ``distinct`` that ``value`` names, or an error about parameter ``name``."""
    value = _match_text(value, distinct)
    if value not in set(distinct):
        raise bad_value(name, value, f"one of {sorted(map(str, distinct))}")
    return value


def _favourable(column: pd.Series, assume: bool) -> tuple[object, str | None]:
    """The target value counted as 1 when ``positive`` is not given, and the assumption."""
    distinct = _two_values(column, "target")
    if set(distinct) <= {0, 1}:
        return 1, None
    values = sorted(map(str, distinct))
    if not assume:
        raise BadInputError(
            f"positive is needed: column {column.name!r} has values {values}; say which one "
            "counts as 1",
            param="positive",
        )
    choice = conventional_favourable(distinct)
    if choice is None:
        raise BadInputError(
            f"positive is needed: target column {column.name!r} has values {values} and "
            f"neither is favourable by convention; say which one counts as 1 (e.g. {values[-1]})",
            param="positive",
        )
    other = next(v for v in distinct if v != choice)
    return choice, (
        f"target `{column.name}`: {choice!s} taken as the favourable outcome (label 1) and "
        f"{other!s} as the unfavourable one, by convention; give positive to choose"
    )


def _privileged(
    frame: pd.DataFrame, sensitive: str, y: pd.Series, assume: bool
) -> tuple[object, str | None]:
    """The privileged group when ``privileged`` is not given, and the assumption."""
    distinct = _two_values(frame[sensitive], "sensitive")
    if set(distinct) <= {0, 1}:
        return 1, None
    if not assume:
        raise BadInputError(
            f"privileged is needed: column {sensitive!r} has values "
            f"{sorted(map(str, distinct))}; say which one counts as 1",
            param="privileged",
        )
    rates = y.groupby(frame[sensitive]).mean()
    ordered = sorted(distinct, key=lambda v: (-rates.get(v, 0.0), str(v)))
    choice, other = ordered
    return choice, (
        f"sensitive `{sensitive}`: {choice!s} taken as the privileged group, the group with "
        f"the higher rate of the favourable outcome in this file ({rates[choice]:.3f} vs "
        f"{rates[other]:.3f} for {other!s}); give privileged to choose"
    )


def load_csv(
    path: str | Path,
    *,
    target: str,
    sensitive: str,
    positive: object = None,
    privileged: object = None,
    assume_conventions: bool = False,
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
        group. Needed unless the column holds 0/1 (then 1) or ``assume_conventions``. A
        string also names a numeric value with that text (``"1"`` for ``1``), as typed on a
        command line.
    assume_conventions : bool, default False
        When ``positive`` is not given, take the conventionally favourable value
        (:func:`conventional_favourable`: ``"Y"`` of Y/N, ``"yes"``, ``">50K"``, ``"good"``
        …; an error if neither value is); when ``privileged`` is not given, take the group
        with the higher rate of the favourable outcome in this file. Each choice is stated
        in ``TabularDataset.assumptions``.

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
                f"{argument} {column!r} is not a column of {path}; columns: {list(frame.columns)}",
                param=argument,
                value=column,
            )
    assumptions = []
    if positive is None:
        positive, note = _favourable(frame[target], assume_conventions)
        assumptions.append(note)
    else:
        positive = _given_value(_two_values(frame[target], "target"), positive, "positive")
    if privileged is None:
        y = (frame[target] == positive).astype(float)
        privileged, note = _privileged(frame, sensitive, y, assume_conventions)
        assumptions.append(note)
    else:
        distinct = _two_values(frame[sensitive], "sensitive")
        privileged = _given_value(distinct, privileged, "privileged")
    stated = tuple(note for note in assumptions if note is not None)
    return TabularDataset(
        frame, target, positive, sensitive, privileged, name=path.stem, assumptions=stated
    )
