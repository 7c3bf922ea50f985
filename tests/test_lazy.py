"""The lazily loaded packages: what they declare public is what they can load."""

import importlib

import pytest

LAZY_PACKAGES = [
    "leanfit.finetune",
    "leanfit.pipeline",
    "leanfit.quantization",
    "leanfit.selection",
]


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_every_public_name_has_a_home_and_loads_from_it(name):
    package = importlib.import_module(name)
    # __all__ is written out for linters and type checkers; HOMES says where each name lives.
    assert sorted(package.__all__) == sorted(package.HOMES)
    for public in package.__all__:
        module = importlib.import_module(f"{name}.{package.HOMES[public]}")
        assert getattr(package, public) is getattr(module, public)


def test_an_unknown_name_is_an_attribute_error():
    package = importlib.import_module("leanfit.pipeline")
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        package.nothing  # noqa: B018
