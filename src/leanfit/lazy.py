"""Public names of a package imported from their modules on first use.

A package whose modules are heavy to import (``leanfit.finetune``: torch and PEFT;
``leanfit.selection``: pandas and scikit-learn) names where each public name is defined and
sets its module's ``__getattr__`` to :func:`lazy_attributes`, so that importing the package,
or a light module of it that the command-line parser reads, imports none of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package`` that imports each name of ``homes`` from
    its module on first use.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    homes : mapping of str to str
        Each public name -> the module of ``package`` that defines it (``"options"``,
        ``"policies.budget"``).
    """

    def attribute(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{homes[name]}"), name)
        setattr(sys.modules[package], name, value)  # later uses skip this function
        return value

    return attribute
