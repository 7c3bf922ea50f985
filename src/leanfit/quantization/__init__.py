"""LoftQ: low-bit quantization with a LoRA initialization fitted to the quantization error.

The core is model-agnostic and pure: :func:`quantize` (blockwise NormalFloat-k and
uniform-k, really packed), :func:`truncated_svd` (exact or randomized) and
:func:`loftq_decompose` (one weight matrix → Q plus PEFT-convention LoRA factors).
:class:`QuantLinear` runs a packed weight and can be wrapped by PEFT's LoRA.

Checkpoints: :mod:`leanfit.quantization.checkpoint` streams a safetensors or GGUF
checkpoint tensor by tensor, in Hugging Face names and layout; :mod:`leanfit.quantization.targets`
says which weights are quantized, with how many bits, and gives their matrix view.

Whole models: :func:`quantize_checkpoint` (``leanfit quantize``) streams a checkpoint through
LoftQ into a directory holding the packed backbone and a PEFT LoRA adapter;
:func:`load` rebuilds it as a ``PeftModel`` on :class:`QuantLinear` layers.

Fine-tuning and evaluation of PEFT models live in :mod:`leanfit.quantization.finetune`,
:mod:`leanfit.quantization.data` and :mod:`leanfit.quantization.evaluate`.
"""

from leanfit.quantization.apply import (
    LoftQConfig,
    LoftQReport,
    estimate_checkpoint_memory,
    quantize_checkpoint,
    quantize_module,
)
from leanfit.quantization.artifacts import load, load_into, merge_into
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

__all__ = [
    "DoubleQuantized",
    "LoftQConfig",
    "LoftQReport",
    "LoftQResult",
    "LowRankFit",
    "QuantLinear",
    "QuantizedTensor",
    "estimate_checkpoint_memory",
    "fit_low_rank",
    "levels",
    "load",
    "load_into",
    "loftq_decompose",
    "merge_into",
    "nf_table",
    "pack",
    "packed_length",
    "quantize",
    "quantize_checkpoint",
    "quantize_module",
    "truncated_svd",
    "unpack",
]
