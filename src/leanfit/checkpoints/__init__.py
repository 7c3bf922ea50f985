"""Checkpoints in and out: read a source tensor by tensor, write and load LoftQ outputs.

- :mod:`~leanfit.checkpoints.source`: :func:`open_checkpoint` streams a transformers
  safetensors directory (or, through :mod:`~leanfit.checkpoints.gguf_source`, a GGUF file) in
  Hugging Face names and layout; :class:`ModuleSource` does the same for an in-memory model.
- :mod:`~leanfit.checkpoints.targets`: which weights are quantized, and their matrix view.
- :mod:`~leanfit.checkpoints.layout`, :mod:`~leanfit.checkpoints.writer`,
  :mod:`~leanfit.checkpoints.loading`: the output directory's format, its streaming writer,
  and :func:`load` (a ``PeftModel`` on :class:`~leanfit.quantization.QuantLinear` layers,
  built by ``from_pretrained``); :mod:`~leanfit.checkpoints.assign` fills a model tensor by
  tensor where ``from_pretrained`` cannot (:func:`load_into`), and :func:`merge_into`;
  :mod:`~leanfit.checkpoints.swap` puts the packed layers in place for both.
- :mod:`~leanfit.checkpoints.hf`: quant_method ``"leanfit"`` for transformers, so that
  ``from_pretrained(OUT/backbone)`` loads the backbone packed (imported on demand).
- :mod:`~leanfit.checkpoints.resume`: the journal that lets a killed run continue.
- :mod:`~leanfit.checkpoints.synthetic`: large synthetic checkpoints for load tests.
"""

from leanfit.checkpoints.assign import merge_into
from leanfit.checkpoints.base import Checkpoint, ModuleSource, TensorSource
from leanfit.checkpoints.layout import read_quantization_config
from leanfit.checkpoints.loading import load, load_into
from leanfit.checkpoints.source import open_checkpoint

__all__ = [
    "Checkpoint",
    "ModuleSource",
    "TensorSource",
    "load",
    "load_into",
    "merge_into",
    "open_checkpoint",
    "read_quantization_config",
]
