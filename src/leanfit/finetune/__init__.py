"""LoRA fine-tuning and evaluation of a LoftQ output (through PEFT).

- :mod:`~leanfit.finetune.training`: :func:`finetune`, the training loop with checkpoints
  and resume, configured by :class:`FinetuneConfig` (:mod:`~leanfit.finetune.options`);
- :mod:`~leanfit.finetune.data`: causal-LM blocks and classification data;
- :mod:`~leanfit.finetune.evaluate`: perplexity, accuracy, KL to the original model;
- :mod:`~leanfit.finetune.losses`: causal-LM losses a chunk of tokens at a time;
- :mod:`~leanfit.finetune.memory`: gradient checkpointing, bfloat16 storage, peak memory;
- :mod:`~leanfit.finetune.runs`: the directories of ``leanfit finetune`` and
  ``leanfit evaluate`` (:func:`finetune_directory`, :func:`evaluate_directory`,
  :func:`load_run`).

The names below are imported from their modules on first use, so that importing the package
(e.g. for :mod:`~leanfit.finetune.options`, which ``leanfit finetune --help`` reads) loads
neither torch nor PEFT.
"""

from typing import TYPE_CHECKING

from leanfit.lazy import lazy_attributes

if TYPE_CHECKING:
    from leanfit.finetune.options import DataSpec, EvaluateConfig, FinetuneConfig
    from leanfit.finetune.runs import evaluate_directory, finetune_directory, load_run
    from leanfit.finetune.training import FinetuneResult, finetune

#: The module of :mod:`leanfit.finetune` that defines each public name.
HOMES = {
    "DataSpec": "options",
    "EvaluateConfig": "options",
    "evaluate_directory": "runs",
    "finetune_directory": "runs",
    "load_run": "runs",
    "FinetuneConfig": "options",
    "FinetuneResult": "training",
    "finetune": "training",
}


__getattr__ = lazy_attributes(__name__, HOMES)

__all__ = [
    "DataSpec",
    "EvaluateConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "evaluate_directory",
    "finetune",
    "finetune_directory",
    "load_run",
]
