"""The trimming budget, parsed once (leanfit.selection.policies.budget)."""

import math

import numpy as np
import pytest

from leanfit.exceptions import BadInputError
from leanfit.selection import Budget


@pytest.mark.parametrize(
    ("value", "rows"),
    [(10, 10), (np.int64(10), 10), (0.05, 5), (np.float32(0.5), 50), (0.001, 1)],
)
def test_counts_and_fractions_of_100_rows(value, rows):
    assert Budget.of(value).rows(100) == rows


@pytest.mark.parametrize(
    ("text", "budget"),
    [("auto", Budget()), (" AUTO ", Budget()), ("0.05", Budget(fraction=0.05)),
     ("300", Budget(count=300)), ("300.0", Budget(count=300))],
)  # fmt: skip
def test_command_line_words(text, budget):
    assert Budget.parse(text) == budget


def test_the_python_value_and_the_word_agree_and_round_trip():
    for value in ("auto", 300, 0.05):
        budget = Budget.of(value)
        assert Budget.parse(str(value)) == budget and budget.value == value
    assert Budget.of(Budget(count=3)) == Budget(count=3) and Budget().is_auto


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("most", "budget must be auto, a fraction in (0, 1) or a whole count >= 1; got 'most'"),
        (True, "budget must be auto"),
        (None, "budget must be auto"),
        (0.0, "budget must be a fraction in the open interval (0, 1)"),
        (1.0, "budget must be a fraction in the open interval (0, 1)"),
        (math.nan, "budget must be a fraction in the open interval"),
    ],
)
def test_values_that_are_no_budget(value, message):
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Budget.of(value)


@pytest.mark.parametrize(("text"), ["1.5", "-3", "x", "", "inf"])
def test_words_that_are_no_budget_are_errors_about_the_budget(text):
    with pytest.raises(BadInputError, match="budget must be auto, a fraction in") as info:
        Budget.parse(text)
    assert (info.value.param, info.value.value) == ("budget", text)


def test_a_count_is_checked_against_the_rows_and_auto_has_none():
    with pytest.raises(BadInputError, match=r"budget must be a count in \[1, 49\]"):
        Budget(count=60).rows(50)
    with pytest.raises(BadInputError, match=r"--budget must be a count in \[1, 49\]"):
        Budget(count=0).rows(50, "--budget")
    with pytest.raises(BadInputError, match="auto is chosen first"):
        Budget().rows(50)
