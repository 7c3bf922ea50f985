"""LoRA fine-tuning and evaluation of a LoftQ output (through PEFT).

- :mod:`~leanfit.finetune.training`: :func:`finetune`, the training loop with checkpoints
  and resume, configured by :class:`FinetuneConfig`;
- :mod:`~leanfit.finetune.data`: causal-LM blocks and classification data;
- :mod:`~leanfit.finetune.evaluate`: perplexity, accuracy, KL to the original model;
- :mod:`~leanfit.finetune.runs`: the directories of ``leanfit finetune`` and
  ``leanfit evaluate`` (:func:`finetune_directory`, :func:`evaluate_directory`,
  :func:`load_run`).
"""

from leanfit.finetune.runs import DataSpec, evaluate_directory, finetune_directory, load_run
from leanfit.finetune.training import FinetuneConfig, FinetuneResult, finetune

__all__ = [
    "DataSpec",
    "FinetuneConfig",
    "FinetuneResult",
    "evaluate_directory",
    "finetune",
    "finetune_directory",
    "load_run",
]
