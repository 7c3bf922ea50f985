"""Errors raised by leanfit.

Every error leanfit raises on purpose is a :class:`LeanfitError`. The subclasses also
derive from the built-in exception a Python user would expect (``ValueError`` for bad
input, ``FileNotFoundError`` for a missing resource), so ``except ValueError`` keeps
working.
"""

from __future__ import annotations


class LeanfitError(Exception):
    """Base class of every error leanfit raises on purpose."""


class BadInputError(LeanfitError, ValueError):
    """An argument, a table or a tensor is not acceptable.

    The message names the argument, the allowed values and the value received.
    """


class NotFittedError(LeanfitError, ValueError, AttributeError):
    """An estimator was used before ``fit``."""


class CorruptArtifactError(LeanfitError, ValueError):
    """A file leanfit reads is truncated, tampered with, or of an unknown version."""


class MissingResourceError(LeanfitError, FileNotFoundError):
    """A file or an optional package leanfit needs is not there; the message says how to get it."""


class OutputWriteError(LeanfitError, OSError):
    """An output could not be written (disk full, no permission, ...); nothing was left in
    its place. The message names the output and the operating system's reason."""


class MemoryBudgetError(LeanfitError, MemoryError):
    """A run went over the memory budget it was given and stopped before the operating
    system would kill it; the message says what was measured and how to continue."""


def bad_value(name: str, value: object, allowed: str) -> BadInputError:
    """Build the standard message for a rejected argument.

    Parameters
    ----------
    name : str
        The argument's name as the user wrote it.
    value : object
        The value received.
    allowed : str
        A short description of what is accepted.
    """
    return BadInputError(f"{name} must be {allowed}; got {value!r}")
