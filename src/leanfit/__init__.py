"""leanfit: lean fine-tuning on both ends.

- :mod:`leanfit.quantization` — LoftQ: low-bit quantization with a LoRA initialization
  fitted to the quantization error, stored really packed.
- :mod:`leanfit.selection` — influence-based training-data selection for utility,
  fairness and robustness.
- :mod:`leanfit.datasets` — vendored real data sets.
"""

import logging
import warnings

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


class _DropMessage(logging.Filter):
    """Drop the log records whose message template starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _silence_dependency_noise() -> None:
    """Drop two messages of leanfit's dependencies that are not about the user's run.

    PEFT imports bitsandbytes when it is installed; on CPUs with AVX512-BF16, bitsandbytes
    then tries to fetch a hub kernel for its own 4-bit matmul and, without the ``kernels``
    package, logs "Failed to load CPU gemm_4bit_forward from kernels-community" at import.
    leanfit's layers do not run bitsandbytes' kernels, so that one message is dropped; every
    other record of that logger still shows. Nothing here imports those packages.
    """
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    logger.addFilter(_DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community"))
    # PEFT reads the deprecated ``is_gradient_checkpointing`` of transformers >= 5 whenever it
    # wraps a model; the FutureWarning (raised inside transformers) is for PEFT's authors.
    warnings.filterwarnings(
        "ignore",
        message="`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module="transformers.modeling_utils",
    )


_silence_dependency_noise()
