"""Messages of leanfit's dependencies dropped while leanfit itself runs, nowhere else.

Neither is about the user's run:

- PEFT imports bitsandbytes when it is installed; on CPUs with AVX512-BF16, bitsandbytes then
  tries to fetch a hub kernel for its own 4-bit matmul and, without the ``kernels`` package,
  logs "Failed to load CPU gemm_4bit_forward from kernels-community" at import. leanfit's
  layers never run bitsandbytes' kernels.
- PEFT reads the deprecated ``is_gradient_checkpointing`` of transformers >= 5 whenever it
  wraps a model; the FutureWarning (raised inside transformers) is for PEFT's authors.

:func:`dependency_noise_dropped` drops them only inside its block, so importing leanfit
changes no warning filter or logger of the host program. :func:`transformers_loading_quiet`
silences transformers' load report and progress bar while leanfit loads a backbone (leanfit
reports what was dropped or initialized in its own words).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
CHECKPOINTING_WARNING = "`is_gradient_checkpointing` is deprecated"


class _DropMessage(logging.Filter):
    """Drop the log records whose message template starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def dependency_noise_dropped() -> Iterator[None]:
    """Within the block, drop bitsandbytes' kernel notice and PEFT's deprecation warning
    (every other record and warning still shows); both filters are removed on exit."""
    logger = logging.getLogger(KERNEL_LOGGER)
    notice = _DropMessage(KERNEL_NOTICE)
    logger.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=CHECKPOINTING_WARNING,
                category=FutureWarning,
                module="transformers.modeling_utils",
            )
            yield
    finally:
        logger.removeFilter(notice)


@contextlib.contextmanager
def transformers_loading_quiet() -> Iterator[None]:
    """Within the block, transformers logs errors only and shows no progress bar (its load
    report and "Loading weights" bar, which leanfit replaces by its own warnings); its
    verbosity and progress-bar setting are restored on exit."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
