"""These tests run on one torch thread (:func:`tests.shared._one_thread`); their other
fixtures are in tests/conftest.py."""

from tests.shared import _one_thread  # noqa: F401 (autouse: one torch thread)
