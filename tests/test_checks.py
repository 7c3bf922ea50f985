"""The shared validators of :mod:`leanfit.checks`: what each accepts, and the error it raises."""

import math

import numpy as np
import pytest

from leanfit.checks import check_fraction
from leanfit.exceptions import BadInputError


@pytest.mark.parametrize(
    ("ends", "accepted", "refused", "allowed"),
    [
        ("[]", [0, 0.5, 1.0, np.float32(1)], [-0.1, 1.1], "a number in [0, 1]"),
        ("()", [0.5, 1e-9], [0, 1.0], "a number in the open interval (0, 1)"),
        ("(]", [1.0, 0.5], [0.0, 1.0 + 1e-9], "a number in (0, 1]"),
        ("[)", [0.0, 0.5], [1.0, -1e-9], "a number in [0, 1)"),
    ],
)
def test_check_fraction_takes_the_interval_its_brackets_say(ends, accepted, refused, allowed):
    for value in accepted:
        assert check_fraction("share", value, ends=ends) == float(value)
    for value in [*refused, math.nan, True, "0.5", None]:
        with pytest.raises(BadInputError) as caught:
            check_fraction("share", value, ends=ends)
        assert (caught.value.param, caught.value.allowed) == ("share", allowed)
        assert str(caught.value) == f"share must be {allowed}; got {value!r}"
