"""Run LoftQ over a whole model: the walker and who computes its targets.

:func:`quantize_checkpoint` (``leanfit quantize``) streams a checkpoint
(:mod:`leanfit.checkpoints`) tensor by tensor through LoftQ (:mod:`leanfit.quantization`)
into an output directory; :func:`quantize_module` does the same for an in-memory model.
The targets are computed here (:mod:`~leanfit.pipeline.computers`), in worker threads
(:mod:`~leanfit.pipeline.parallel`), on Dask workers (:mod:`~leanfit.pipeline.distributed`)
or calibrated on text (:mod:`~leanfit.pipeline.calibration`); their widths may be allocated
under a budget (:mod:`~leanfit.pipeline.allocation`) and the run kept within a memory budget
(:mod:`~leanfit.pipeline.memory`). A run is described by a :class:`LoftQConfig` (composing
the quantizer and LoRA settings of :mod:`leanfit.quantization.spec`) and reported by a
:class:`LoftQReport` (:mod:`~leanfit.pipeline.config`); its fixed bit plan is
:mod:`~leanfit.pipeline.plan`'s, its report files :mod:`~leanfit.pipeline.report`'s.

The names below are imported from their modules on first use, so that importing the package
(e.g. for :mod:`~leanfit.pipeline.config`, whose fields ``leanfit quantize`` derives its
options from) loads no torch.
"""

from typing import TYPE_CHECKING

from leanfit.lazy import lazy_attributes

if TYPE_CHECKING:
    from leanfit.pipeline.config import LoftQConfig, LoftQReport, MatrixReport
    from leanfit.pipeline.walker import (
        estimate_checkpoint_memory,
        quantize_checkpoint,
        quantize_module,
    )

#: The module of :mod:`leanfit.pipeline` that defines each public name.
HOMES = {
    "LoftQConfig": "config",
    "LoftQReport": "config",
    "MatrixReport": "config",
    "estimate_checkpoint_memory": "walker",
    "quantize_checkpoint": "walker",
    "quantize_module": "walker",
}

__getattr__ = lazy_attributes(__name__, HOMES)

__all__ = [
    "LoftQConfig",
    "LoftQReport",
    "MatrixReport",
    "estimate_checkpoint_memory",
    "quantize_checkpoint",
    "quantize_module",
]
