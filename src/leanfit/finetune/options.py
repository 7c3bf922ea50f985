"""The settings of a fine-tuning run (:class:`FinetuneConfig`, :class:`DataSpec`) and of its
evaluation (:class:`EvaluateConfig`), and their allowed values.

Light enough for the CLI parser to import: ``leanfit finetune`` and ``leanfit evaluate``
derive their options from the configs' fields (:func:`leanfit.cli.add_config_options`),
each default written once, here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from leanfit.checks import check_choice, check_fraction, check_int, check_number
from leanfit.exceptions import BadInputError, CorruptArtifactError, bad_value
from leanfit.io import read_json

TASKS = ("causal-lm", "classification")
SCHEDULES = ("linear", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tuning run, saved as ``config.json`` beside its outputs.

    Parameters
    ----------
    task : {"causal-lm", "classification"}
    steps : int, optional
        Optimizer steps. Give ``steps`` or ``epochs``, not both; with neither, one epoch.
    epochs : int, optional
        Passes over the training data; the run makes ``ceil(epochs * ceil(n / batch_size) /
        grad_accum)`` steps.
    batch_size : int
        Examples per micro-batch (also the evaluation batch size).
    grad_accum : int
        Micro-batches per optimizer step.
    learning_rate : float
        Peak learning rate of AdamW.
    schedule : {"linear", "cosine", "constant"}
        Decay after warmup, see :func:`lr_multiplier`.
    warmup_steps : int
        Steps of linear warmup.
    weight_decay : float
        AdamW's decoupled weight decay, applied to matrices only (not to biases or other
        1-D parameters).
    max_grad_norm : float or None
        Clip the global gradient norm to this value; ``None`` disables clipping.
    seed : int
        Seeds the data order and dropout.
    eval_every : int
        Evaluate every this many steps (0: only after the last step); the last step is
        always evaluated when evaluation data is given.
    checkpoint_every : int
        Checkpoint every this many steps (0: no checkpoints, no resume).
    max_length : int
        Tokens per sequence: the block length for causal LM, the truncation length for
        classification. The data preparation uses it; training checks the data respects it.
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` picks CUDA when available.
    dtype : {"float32", "bfloat16"}
        Compute precision; ``"bfloat16"`` runs the forward pass under autocast (packed
        layers dequantize straight to bfloat16), while the trainable parameters and
        optimizer state stay in their own (float32) precision.
    frozen_dtype : {"float32", "bfloat16"}
        Storage of the frozen floating-point tensors (embeddings, norms, biases, an untrained
        output head); ``"bfloat16"`` halves them and needs ``dtype="bfloat16"``. Packed
        weights and their statistics, and the trained parameters, are never converted.
    gradient_checkpointing : bool
        Keep only each block's input for backward and recompute the block there
        (transformers' ``gradient_checkpointing_enable``, non-reentrant): activation memory
        drops from every intermediate tensor of every block to one hidden state per block,
        for one more forward pass of compute. On by default, because holding the model in
        little memory while it trains is why a backbone is quantized; the losses and
        gradients are the same.
    """

    task: str = field(
        default="causal-lm", metadata={"help": "what the model learns", "choices": TASKS}
    )
    steps: int | None = field(default=None, metadata={"help": "optimizer steps", "group": "length"})
    epochs: int | None = field(
        default=None,
        metadata={
            "help": "passes over the data (default: one, without --steps)",
            "group": "length",
        },
    )
    batch_size: int = field(default=8, metadata={"help": "examples per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per step"})
    learning_rate: float = field(
        default=2e-4, metadata={"help": "peak learning rate", "option": "--lr"}
    )
    schedule: str = field(
        default="linear", metadata={"help": "decay after warmup", "choices": SCHEDULES}
    )
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps"})
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = field(default=0, metadata={"help": "seed of the data order and split"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps; 0: at the end"})
    checkpoint_every: int = field(default=0, metadata={"help": "checkpoint every N steps; 0: none"})
    max_length: int = field(default=256, metadata={"help": "tokens per block / truncation"})
    device: str = field(default="auto", metadata={"help": "where to train", "choices": DEVICES})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "compute precision: bfloat16 runs under autocast, LoRA weights and "
            "optimizer state stay float32",
            "choices": DTYPES,
        },
    )
    frozen_dtype: str = field(
        default="float32",
        metadata={
            "help": "storage of the frozen float tensors (embeddings, norms); bfloat16 needs "
            "--dtype bfloat16",
            "choices": DTYPES,
        },
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata={
            "help": "keep every activation for backward: faster steps, much more memory "
            "(default: checkpoint each block and recompute it in backward, and map large "
            "blocks of memory on their own so that freed activations leave the process)",
            "option": "--no-gradient-checkpointing",
        },
    )

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("device", self.device, DEVICES)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("frozen_dtype", self.frozen_dtype, DTYPES)
        if self.frozen_dtype == "bfloat16" and self.dtype != "bfloat16":
            raise bad_value(
                "frozen_dtype", self.frozen_dtype, "'float32' unless dtype is 'bfloat16'"
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise bad_value("gradient_checkpointing", self.gradient_checkpointing, "a bool")
        if self.steps is not None and self.epochs is not None:
            raise BadInputError(
                f"give steps or epochs, not both; got steps {self.steps!r} and epochs "
                f"{self.epochs!r}",
                param="epochs",
                value=self.epochs,
            )
        if self.steps is None and self.epochs is None:
            object.__setattr__(self, "epochs", 1)  # the documented default: one epoch
        if self.steps is not None:
            check_int("steps", self.steps, low=1)
        if self.epochs is not None:
            check_int("epochs", self.epochs, low=1)
        for name in ("batch_size", "grad_accum"):
            check_int(name, getattr(self, name), low=1)
        check_int("max_length", self.max_length, low=2)
        for name in ("warmup_steps", "seed", "eval_every", "checkpoint_every"):
            check_int(name, getattr(self, name), low=0)
        check_number("learning_rate", self.learning_rate, low=0, above=True)
        check_number("weight_decay", self.weight_decay, low=0)
        if self.max_grad_norm is not None:
            check_number("max_grad_norm", self.max_grad_norm, low=0, above=True)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        if not isinstance(values, Mapping):
            raise bad_value("values", type(values).__name__, "a mapping of FinetuneConfig fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BadInputError(
                f"unknown FinetuneConfig fields {unknown}; known are {sorted(known)}"
            )
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FinetuneConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> FinetuneConfig:
        """Read a run's ``config.json``; CorruptArtifactError if unreadable or invalid."""
        try:
            return cls.from_dict(read_json(path))
        except BadInputError as err:
            raise CorruptArtifactError(f"invalid FinetuneConfig {str(path)!r}: {err}") from err


@dataclass(frozen=True)
class DataSpec:
    """Where the training and held-out data come from.

    Parameters
    ----------
    source : str
        A built-in name (``"pride_and_prejudice"`` for causal LM, ``"tweets"`` for
        classification) or a file: plain text (causal LM) or CSV (classification).
    text_column, label_column : str
        CSV columns (classification). A built-in knows its own: other names are refused.
    eval_fraction : float in (0, 1)
        Held out: the last chapters (built-in book), the last paragraphs (a text file, split on
        blank lines), or a random ``eval_fraction`` of the rows drawn with ``seed`` (tables).
    seed : int
        Seeds the row split of tables.
    max_examples : int, optional
        At most this many training and this many held-out examples (blocks or rows).
    """

    source: str
    text_column: str = field(default="text", metadata={"help": "CSV text column"})
    label_column: str = field(default="label", metadata={"help": "CSV label column"})
    eval_fraction: float = field(default=0.1, metadata={"help": "held-out share of the data"})
    seed: int = 0
    max_examples: int | None = field(
        default=None, metadata={"help": "at most this many training / held-out examples"}
    )

    def __post_init__(self) -> None:
        from leanfit.finetune.data import BUILTIN_DATA  # pandas: not for the CLI parser

        for name in ("source", "text_column", "label_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad_value(name, getattr(self, name), "a non-empty string")
        check_fraction("eval_fraction", self.eval_fraction, ends="()")
        check_int("seed", self.seed, low=0)
        if self.max_examples is not None:
            check_int("max_examples", self.max_examples, low=1)
        chosen = [
            f
            for f in fields(self)
            if f.name.endswith("_column") and getattr(self, f.name) != f.default
        ]
        if self.source in BUILTIN_DATA and chosen:
            raise BadInputError(
                f"{chosen[0].name} {getattr(self, chosen[0].name)}: columns are chosen in a CSV "
                f"file only; the built-in data set {self.source!r} has its own",
                param=chosen[0].name,
                value=getattr(self, chosen[0].name),
            )

    def to_dict(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        if Path(self.source).exists():
            values["source"] = str(Path(self.source).resolve())
        return values


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of :func:`~leanfit.finetune.runs.evaluate_directory`.

    Parameters
    ----------
    max_tokens : int
        Held-out tokens scored by the perplexity (causal LM).
    window, stride : int
        Perplexity windows of ``window`` tokens moved by ``stride`` (``stride < window``):
        every scored token after the first window has at least ``window - stride`` tokens of
        context.
    fidelity_examples : int
        Held-out blocks (causal LM: next-token KL) or texts (classification: embedding
        cosine) compared with the original model.
    """

    max_tokens: int = field(default=4096, metadata={"help": "held-out tokens scored"})
    window: int = field(default=256, metadata={"help": "perplexity window"})
    stride: int = field(default=128, metadata={"help": "perplexity stride"})
    fidelity_examples: int = field(default=64, metadata={"help": "blocks/texts for KL or cosine"})

    def __post_init__(self) -> None:
        check_int("max_tokens", self.max_tokens, low=2)
        check_int("window", self.window, low=2)
        check_int("stride", self.stride, low=1, high=self.window - 1)
        check_int("fidelity_examples", self.fidelity_examples, low=1)
