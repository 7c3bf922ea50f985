"""The trimming budget: how many training rows a selection removes.

A budget is a whole count of rows, a fraction of the training rows, or ``auto`` (chosen on
the validation set, :func:`leanfit.selection.policies.steering.choose_budget`). :class:`Budget` is
parsed once, from the command line's text (:meth:`Budget.parse`) or from the Python value
(:meth:`Budget.of`: an int, a float or ``"auto"``), and turned into a count of rows once the
number of training rows is known (:meth:`Budget.rows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from leanfit.checks import is_int, is_number
from leanfit.exceptions import bad_value

ALLOWED = "auto, a fraction in (0, 1) or a whole count >= 1"


@dataclass(frozen=True)
class Budget:
    """A count of rows (``count``), a fraction of the training rows (``fraction``), or
    ``auto`` (both None).

    Attributes
    ----------
    count : int or None
        Checked against the number of rows, ``[1, n − 1]``, by :meth:`rows`.
    fraction : float or None
        In the open interval (0, 1); removes ``max(1, round(fraction · n))`` of ``n`` rows.
    """

    count: int | None = None
    fraction: float | None = None

    @classmethod
    def of(cls, value: object, name: str = "budget") -> Budget:
        """The budget a Python value means: a :class:`Budget`, ``"auto"``, an int count or a
        float fraction (NumPy scalars too; not a bool)."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, str) and value == "auto":
            return cls()
        if not is_number(value):
            raise bad_value(name, value, ALLOWED)
        if is_int(value):
            return cls(count=int(value))  # type: ignore[call-overload]  # range: rows()
        if not 0.0 < value < 1.0:  # type: ignore[operator]
            raise bad_value(name, value, "a fraction in the open interval (0, 1), or a count")
        return cls(fraction=float(value))  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str, name: str = "budget") -> Budget:
        """The budget a command-line word means: ``auto``, a fraction in (0, 1) or a whole
        count ≥ 1 (``300`` and ``300.0`` alike)."""
        if text.strip().lower() == "auto":
            return cls()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if 0 < value < 1:
            return cls(fraction=value)
        if value >= 1 and value.is_integer():
            return cls(count=int(value))
        raise bad_value(name, text, ALLOWED)

    def __str__(self) -> str:
        return str(self.value)

    @property
    def is_auto(self) -> bool:
        return self.count is None and self.fraction is None

    @property
    def value(self) -> int | float | str:
        """As written in ``config.json``: the count, the fraction or ``"auto"``."""
        if self.count is not None:
            return self.count
        return "auto" if self.fraction is None else self.fraction

    def rows(self, n: int, name: str = "budget") -> int:
        """The number of the ``n`` training rows this budget removes, in ``[1, n − 1]``."""
        if self.is_auto:
            raise bad_value(name, "auto", "a count or a fraction here (auto is chosen first)")
        if self.count is not None:
            if not 1 <= self.count <= n - 1:
                allowed = f"a count in [1, {n - 1}] (n = {n} training samples)"
                raise bad_value(name, self.count, allowed)
            return self.count
        assert self.fraction is not None
        return max(1, round(self.fraction * n))
