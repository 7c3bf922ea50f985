"""Errors raised by leanfit.

Every error leanfit raises on purpose is a :class:`LeanfitError`. The subclasses also
derive from the built-in exception a Python user would expect (``ValueError`` for bad
input, ``FileNotFoundError`` for a missing resource), so ``except ValueError`` keeps
working.
"""

from __future__ import annotations


class LeanfitError(Exception):
    """Base class of every error leanfit raises on purpose.

    An error about a parameter carries it, with the value received and what is allowed,
    so that a caller that calls the parameter otherwise (the command line calls
    ``learning_rate`` ``--lr``) can say it in its own words with :meth:`naming`.

    Parameters
    ----------
    message : str
        The whole message, in the words of the Python API. When ``param`` is given, the
        message starts with it (its subject) or is about it.
    param : str, optional
        The parameter of the Python API the error is about (``"rank"``, ``"budget"``).
    value : object, optional
        The value received.
    allowed : str, optional
        What is accepted, as in "must be ALLOWED" (``"an int >= 1"``).
    """

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        value: object = None,
        allowed: str | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        self.value = value
        self.allowed = allowed

    def naming(self, name: str) -> str:
        """The message with the parameter called ``name``.

        An error built from ``allowed`` is said again as ``NAME must be ALLOWED; got
        VALUE``; a message whose subject is the parameter gets ``name`` as its subject; any
        other message is prefixed with ``NAME: ``.

        Parameters
        ----------
        name : str
            What the caller calls :attr:`param` (a command-line option, say).
        """
        message = str(self)
        if self.allowed is not None:
            return must_be(name, self.value, self.allowed)
        if self.param is not None and message.startswith(f"{self.param} "):
            return name + message[len(self.param) :]
        return f"{name}: {message}"


class BadInputError(LeanfitError, ValueError):
    """An argument, a table or a tensor is not acceptable.

    The message names the argument, the allowed values and the value received; an error
    about a parameter also carries them (:class:`LeanfitError`).
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


def must_be(name: str, value: object, allowed: str) -> str:
    """The standard message for a rejected argument: ``NAME must be ALLOWED; got VALUE``."""
    return f"{name} must be {allowed}; got {value!r}"


def bad_value(name: str, value: object, allowed: str) -> BadInputError:
    """The error of a rejected argument, with the standard message and its parts.

    Parameters
    ----------
    name : str
        The parameter's name in the Python API (the error's :attr:`~BadInputError.param`).
    value : object
        The value received.
    allowed : str
        A short description of what is accepted.
    """
    return BadInputError(must_be(name, value, allowed), param=name, value=value, allowed=allowed)
