"""LoftQ maths: low-bit quantization with a LoRA initialization fitted to the quantization error.

Pure tensor functions, no I/O and no models: :func:`quantize` (blockwise NormalFloat-k and
uniform-k, really packed by :func:`pack`), :func:`truncated_svd` (exact or randomized) and
:func:`loftq_decompose` (one weight matrix → Q plus PEFT-convention LoRA factors);
:class:`QuantLinear` runs a packed weight and can be wrapped by PEFT's LoRA. The quantizer
setting (:class:`QuantSpec`) and the LoRA setting (:class:`LoraSpec`) are frozen values,
validated when built and passed whole.

The rest of the LoftQ workflow builds on this package:

- :mod:`leanfit.checkpoints`: stream a safetensors or GGUF checkpoint tensor by tensor, choose
  the targets, write and load the output directory (:func:`leanfit.checkpoints.load`);
- :mod:`leanfit.pipeline`: run LoftQ over a checkpoint
  (:func:`leanfit.pipeline.quantize_checkpoint`, ``leanfit quantize``), described by a
  :class:`leanfit.pipeline.LoftQConfig` and reported by a :class:`leanfit.pipeline.LoftQReport`;
- :mod:`leanfit.finetune`: LoRA fine-tuning and evaluation of the result.

The names below are imported from their modules on first use, so that importing the package
(e.g. for :mod:`~leanfit.quantization.spec`, which ``leanfit quantize --help`` reads through
:class:`leanfit.pipeline.LoftQConfig`) loads no torch.
"""

from typing import TYPE_CHECKING

from leanfit.lazy import lazy_attributes

if TYPE_CHECKING:
    from leanfit.quantization.loftq import LoftQResult, LowRankFit, fit_low_rank, loftq_decompose
    from leanfit.quantization.lowrank import truncated_svd
    from leanfit.quantization.nn import QuantLinear
    from leanfit.quantization.packing import pack, packed_length, unpack
    from leanfit.quantization.quantizers import (
        DoubleQuantized,
        QuantizedTensor,
        levels,
        nf_table,
        quantize,
    )
    from leanfit.quantization.spec import LoraSpec, QuantSpec

#: The module of :mod:`leanfit.quantization` that defines each public name.
HOMES = {
    "DoubleQuantized": "quantizers",
    "LoftQResult": "loftq",
    "LoraSpec": "spec",
    "LowRankFit": "loftq",
    "QuantLinear": "nn",
    "QuantSpec": "spec",
    "QuantizedTensor": "quantizers",
    "fit_low_rank": "loftq",
    "levels": "quantizers",
    "loftq_decompose": "loftq",
    "nf_table": "quantizers",
    "pack": "packing",
    "packed_length": "packing",
    "quantize": "quantizers",
    "truncated_svd": "lowrank",
    "unpack": "packing",
}

__getattr__ = lazy_attributes(__name__, HOMES)

__all__ = [
    "DoubleQuantized",
    "LoftQResult",
    "LoraSpec",
    "LowRankFit",
    "QuantLinear",
    "QuantSpec",
    "QuantizedTensor",
    "fit_low_rank",
    "levels",
    "loftq_decompose",
    "nf_table",
    "pack",
    "packed_length",
    "quantize",
    "truncated_svd",
    "unpack",
]
