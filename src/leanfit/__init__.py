"""leanfit: lean fine-tuning on both ends.

- :mod:`leanfit.quantization` — LoftQ: low-bit quantization with a LoRA initialization
  fitted to the quantization error, stored really packed.
- :mod:`leanfit.selection` — influence-based training-data selection for utility,
  fairness and robustness.
- :mod:`leanfit.datasets` — vendored real data sets.
"""

from leanfit._version import __version__
from leanfit.exceptions import (
    BadInputError,
    CorruptArtifactError,
    LeanfitError,
    MissingResourceError,
    NotFittedError,
)

__all__ = [
    "BadInputError",
    "CorruptArtifactError",
    "LeanfitError",
    "MissingResourceError",
    "NotFittedError",
    "__version__",
]
