"""Vendored data: row counts, columns, dtypes, checksums, and errors on damaged files."""

import gzip
import shutil

import pandas as pd
import pytest

from leanfit.datasets import (
    load_adult,
    load_arrests,
    load_bank,
    load_compas,
    load_csv,
    load_german,
    load_text,
    load_tweets,
)
from leanfit.datasets._files import data_dir, manifest, read_vendored
from leanfit.datasets.tabular import ADULT_COLUMNS
from leanfit.exceptions import BadInputError, CorruptArtifactError, MissingResourceError


@pytest.mark.parametrize(
    ("loader", "rows", "target", "sensitive", "positive_rate", "privileged_rate"),
    [
        # Published sizes: Adult 32,561 / 16,281 rows (UCI); German 1,000; COMPAS after
        # ProPublica's filter 6,172; Bank bank.csv 4,521. Rates are the documented class
        # balances (Adult 24.1 % >50K, German 70 % good), to three decimals.
        (load_adult, 32_561, "income", "sex", 0.241, 0.669),
        (lambda: load_adult("test"), 16_281, "income", "sex", 0.236, 0.667),
        (load_german, 1_000, "credit", "sex", 0.700, 0.690),
        (load_compas, 6_172, "two_year_recid", "race", 0.545, 0.341),
        (load_bank, 4_521, "y", "age_group", 0.115, 0.985),
        # carData's Arrests: 5,226 rows, 4,334 released with a summons, 3,938 White.
        (load_arrests, 5_226, "released", "colour", 0.829, 0.754),
    ],
)
def test_tabular_shapes_and_rates(loader, rows, target, sensitive, positive_rate, privileged_rate):
    ds = loader()
    assert len(ds) == rows
    assert ds.target == target and ds.sensitive == sensitive
    assert target not in ds.X.columns and sensitive in ds.X.columns
    assert set(ds.y.unique()) == {0, 1} and set(ds.s.unique()) == {0, 1}
    assert ds.y.mean() == pytest.approx(positive_rate, abs=5e-4)  # rounding to 3 decimals
    assert ds.s.mean() == pytest.approx(privileged_rate, abs=5e-4)


def test_adult_columns_and_dtypes():
    frame = load_adult().frame
    assert list(frame.columns) == ADULT_COLUMNS
    numeric = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
    assert all(frame[c].dtype == "int64" for c in numeric)
    assert all(pd.api.types.is_string_dtype(frame[c]) for c in ["workclass", "sex", "income"])
    assert set(frame["income"].unique()) == {"<=50K", ">50K"}
    assert frame["workclass"].isna().sum() == 1836  # UCI's documented count of "?" there
    assert set(load_adult("test").frame["income"].unique()) == {"<=50K", ">50K"}


def test_german_codes_are_readable():
    frame = load_german().frame
    assert not frame["purpose"].str.match(r"^A\d+$").any()
    assert set(frame["sex"].unique()) == {"male", "female"}
    assert (frame["sex"] == "female").sum() == 310  # A92 + A95 counts in german.data


def test_tweets_and_text():
    tweets = load_tweets()
    assert len(tweets) == 38_158
    assert tweets["sentiment"].value_counts().to_dict() == {
        "negative": 16_186,
        "neutral": 15_018,
        "positive": 6_954,
    }
    book = load_text("pride_and_prejudice")
    assert list(book["chapter"]) == list(range(1, 62))  # the novel has 61 chapters
    assert book["text"].iloc[0].startswith("It is a truth universally acknowledged")


def test_every_vendored_file_matches_manifest():
    for name, entry in manifest().items():
        assert len(read_vendored(name)) == entry["bytes"]


def test_damaged_file_is_reported(tmp_path):
    shutil.copytree(data_dir(), tmp_path, dirs_exist_ok=True)
    target = tmp_path / "german.data.gz"
    content = bytearray(gzip.decompress(target.read_bytes()))
    content[100] ^= 1
    target.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(CorruptArtifactError, match="german.data.gz has sha256"):
        read_vendored("german.data", tmp_path)
    target.write_bytes(b"not gzip at all")
    with pytest.raises(CorruptArtifactError, match="not valid gzip"):
        read_vendored("german.data", tmp_path)
    target.unlink()
    with pytest.raises(MissingResourceError, match="missing"):
        read_vendored("german.data", tmp_path)


def test_bad_split_and_text_name():
    with pytest.raises(BadInputError, match="split must be one of"):
        load_adult("validation")
    with pytest.raises(BadInputError, match="name must be one of"):
        load_text("emma")


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame(
        {"x": [1.0, 2.0, 3.0, 4.0], "g": ["a", "b", "a", "b"], "label": ["no", "yes", "no", "no"]}
    ).to_csv(path, index=False)
    return path


def test_load_csv(table):
    ds = load_csv(table, target="label", sensitive="g", positive="yes", privileged="a")
    assert list(ds.y) == [0, 1, 0, 0] and list(ds.s) == [1, 0, 1, 0]
    assert ds.categorical == ["g"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "nope", "sensitive": "g"}, "target 'nope' is not a column"),
        (
            {"target": "label", "sensitive": "x", "positive": "yes"},
            "sensitive column 'x' must have exactly two distinct values",
        ),
        ({"target": "label", "sensitive": "g", "privileged": "a"}, "positive is needed: column"),
        ({"target": "label", "sensitive": "g", "positive": "maybe"}, "positive must be one of"),
    ],
)
def test_load_csv_errors(table, kwargs, message):
    with pytest.raises(BadInputError, match=message):
        load_csv(table, **kwargs)


def test_load_csv_missing_and_corrupt(tmp_path):
    with pytest.raises(MissingResourceError, match="no such file"):
        load_csv(tmp_path / "absent.csv", target="y", sensitive="s")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b'a,b\n1,"unterminated\n')
    with pytest.raises(CorruptArtifactError, match="not a readable CSV"):
        load_csv(bad, target="a", sensitive="b")
