"""Fine-tune and evaluate the output of ``leanfit quantize`` (``leanfit finetune``/``evaluate``).

A *quantized directory* (``DIR``) is written by
:func:`~leanfit.pipeline.quantize_checkpoint`. :func:`finetune_directory` trains a LoRA
adapter on it and writes a *run directory*: the layout of
:func:`~leanfit.finetune.training.finetune` plus ``leanfit_run.json``, which records
``DIR``, the initialization and the data, so :func:`load_run` and :func:`evaluate_directory`
can rebuild the model.

Initializations (``init``), all with the rank, alpha and target modules of ``DIR/adapter``:

- ``"loftq"``: the adapter as saved in ``DIR`` (LoftQ factors, or QLoRA's if ``DIR`` was
  quantized with ``init="qlora"``); every target starts at ``Q + (alpha/r)·B·A``;
- ``"qlora"``: the same Q with PEFT's default LoRA init (``lora_A`` Kaiming-uniform drawn
  with ``seed``, ``lora_B = 0``): every target starts exactly at ``Q``;
- ``"full-precision"``: plain LoRA, PEFT's default init, on the original weights (the source
  checkpoint recorded in ``DIR/loftq_report.json``, or ``base``).

For classification the head is new (initialized with ``seed``) and trained in full through
PEFT's ``modules_to_save``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from leanfit.checkpoints.layout import (
    ADAPTER,
    BACKBONE,
    lora_config,
    read_quantization_config,
)
from leanfit.checkpoints.loading import load
from leanfit.datasets.text import causal_lm_blocks, paragraph_chapters, split_chapters
from leanfit.exceptions import BadInputError, CorruptArtifactError, bad_value
from leanfit.finetune.data import (
    BUILTIN_DATA,
    ClassificationData,
    classification_data,
    load_data,
    split_rows,
)
from leanfit.finetune.evaluate import (
    classification_metrics,
    embedding_cosine,
    next_token_kl,
    perplexity,
)
from leanfit.finetune.options import DataSpec, EvaluateConfig, FinetuneConfig
from leanfit.finetune.training import FinetuneResult, finetune, refuse_existing_run
from leanfit.io import read_json
from leanfit.quantization.nn import QuantLinear
from leanfit.quiet import dependency_noise_dropped, transformers_loading_quiet

with dependency_noise_dropped():  # PEFT imports bitsandbytes (its CPU kernel notice)
    from peft import PeftModel, get_peft_model, set_peft_model_state_dict

INITS = ("loftq", "qlora", "full-precision")
RUN_FILE = "leanfit_run.json"
PEFT_TASKS = {"causal-lm": "CAUSAL_LM", "classification": "SEQ_CLS"}
LOAD_TASKS = {"causal-lm": "causal-lm", "classification": "sequence-classification"}


def tokenizer_of(directory: str | Path) -> Any:
    """The tokenizer saved in ``DIR/backbone`` (pad token set to EOS when it has none)."""
    from transformers import AutoTokenizer

    read_quantization_config(directory)
    backbone = Path(directory) / BACKBONE
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise BadInputError(
            f"{str(backbone)!r} holds no tokenizer transformers can load ({err}); copy the "
            "tokenizer files of the original model there (leanfit quantize copies them when "
            "the source has them)"
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_data(
    spec: DataSpec, task: str, tokenizer: Any, *, max_length: int
) -> tuple[torch.Tensor | ClassificationData, torch.Tensor | ClassificationData]:
    """Training and held-out data of ``spec`` for ``task`` (see :class:`DataSpec`).

    Returns
    -------
    (train, held_out)
        ``LongTensor`` blocks of ``max_length`` tokens (causal LM, see
        :func:`~leanfit.finetune.data.causal_lm_blocks`) or
        :class:`~leanfit.finetune.data.ClassificationData` (held-out rows encoded with the
        training label names).

    Raises
    ------
    BadInputError
        A built-in of the other task, a missing file or column, a single class.
    """
    if task not in PEFT_TASKS:
        raise bad_value("task", task, f"one of {sorted(PEFT_TASKS)}")
    if spec.source in BUILTIN_DATA:
        builtin_task = BUILTIN_DATA[spec.source][0]
        if builtin_task != task:
            raise BadInputError(
                f"data {spec.source!r} is a {builtin_task} data set, not for task {task!r}"
            )
        return load_data(
            spec.source,
            tokenizer,
            max_length=max_length,
            eval_fraction=spec.eval_fraction,
            seed=spec.seed,
            max_examples=spec.max_examples,
        )
    path = Path(spec.source)
    if not path.is_file():
        raise bad_value(
            "data", spec.source, f"a file or a built-in data set ({sorted(BUILTIN_DATA)})"
        )
    if task == "causal-lm":
        frame = paragraph_chapters(path, "data file")
        parts = split_chapters(frame, held_out=spec.eval_fraction)
        blocks = [
            causal_lm_blocks(part["text"].tolist(), tokenizer, max_length)[: spec.max_examples]
            for part in parts
        ]
        return blocks[0], blocks[1]
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise BadInputError(f"data {str(path)!r} is not a readable CSV file: {err}") from err
    train_rows, held_rows = split_rows(table, spec.eval_fraction, seed=spec.seed)
    columns = {"text_column": spec.text_column, "label_column": spec.label_column}
    train = classification_data(
        train_rows.iloc[: spec.max_examples], tokenizer, max_length=max_length, **columns
    )
    held = classification_data(
        held_rows.iloc[: spec.max_examples],
        tokenizer,
        max_length=max_length,
        label_names=train.label_names,
        **columns,
    )
    return train, held


def source_checkpoint(directory: str | Path) -> Path:
    """The checkpoint ``DIR`` was quantized from (``source`` in ``loftq_report.json``).

    Raises
    ------
    BadInputError
        The report names no existing checkpoint (pass ``base`` to the callers instead).
    """
    report = read_json(Path(directory) / "loftq_report.json")
    recorded = report.get("source") if isinstance(report, dict) else None
    if not isinstance(recorded, str) or not recorded or not Path(recorded).exists():
        raise BadInputError(
            f"{str(directory)!r} records source {recorded!r}, which is not an "
            "existing checkpoint; give the original model with base (--base MODEL)"
        )
    return Path(recorded)


def load_original(source: str | Path, task: str, *, num_labels: int | None = None) -> Any:
    """The full-precision transformers model of ``source`` (a directory or a ``.gguf`` file)
    for ``task`` (``"causal-lm"``, ``"classification"`` or ``"base"``), in float32."""
    import transformers

    path = Path(source)
    if not path.exists():
        raise bad_value("base", str(source), "an existing transformers directory or .gguf file")
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if path.suffix == ".gguf":
        path, kwargs["gguf_file"] = path.parent, path.name
    if task == "classification":
        kwargs["num_labels"] = num_labels
    cls = {
        "causal-lm": transformers.AutoModelForCausalLM,
        "classification": transformers.AutoModelForSequenceClassification,
        "base": transformers.AutoModel,
    }[task]
    return cls.from_pretrained(path, **kwargs)


def load_reference(source: str | Path, task: str) -> Any:
    """:func:`load_original` in eval mode, as the reference of a fidelity measure, without
    transformers' loading report and progress bar: the reference is built for a measure
    leanfit chose (e.g. the base model of a masked-LM checkpoint, whose head is dropped and
    pooler absent), so the mismatches the report lists are expected and not about the
    user's run."""
    with transformers_loading_quiet():
        return load_original(source, task).eval()


def _lora_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}


def build_model(
    directory: str | Path,
    task: str,
    *,
    init: str = "loftq",
    num_labels: int | None = None,
    seed: int = 0,
    base: str | Path | None = None,
) -> PeftModel:
    """A trainable PEFT model on ``DIR`` with the LoRA initialization ``init`` (module docstring).

    Parameters
    ----------
    directory : path
        Output of ``leanfit quantize``.
    task : {"causal-lm", "classification"}
    init : {"loftq", "qlora", "full-precision"}
    num_labels : int
        Classes of the new head (classification only).
    seed : int
        Seeds PEFT's ``lora_A`` init (qlora, full-precision) and the classification head.
    base : path, optional
        The original checkpoint for ``"full-precision"`` (default: the recorded source).

    Returns
    -------
    peft.PeftModel
        On CPU in float32, LoRA factors (and the head) trainable, LoRA dropout 0.
    """
    if init not in INITS:
        raise bad_value("init", init, f"one of {list(INITS)}")
    if task not in PEFT_TASKS:
        raise bad_value("task", task, f"one of {sorted(PEFT_TASKS)}")
    if task == "classification" and (not isinstance(num_labels, int) or num_labels < 2):
        raise bad_value("num_labels", num_labels, "an int >= 2 for classification")
    directory = Path(directory)
    read_quantization_config(directory)
    lora = lora_config(directory / ADAPTER, PEFT_TASKS[task])
    with torch.random.fork_rng(devices=[]), dependency_noise_dropped():
        torch.manual_seed(seed)
        if init == "full-precision":
            original = load_original(
                base if base is not None else source_checkpoint(directory),
                task,
                num_labels=num_labels,
            )
            return get_peft_model(original, lora)
        loaded = load(directory, task=LOAD_TASKS[task], num_labels=num_labels)
        saved = _lora_weights(loaded)
        model = get_peft_model(loaded.unload(), lora)
    if init == "loftq":
        current = dict(model.named_parameters())
        if set(saved) != {n for n in current if ".lora_" in n}:
            raise CorruptArtifactError(f"{str(directory)!r}: the adapter does not fit the model")
        with torch.no_grad():
            for name, value in saved.items():
                current[name].copy_(value)
    return model


def finetune_directory(
    directory: str | Path,
    out_dir: str | Path,
    data: DataSpec,
    config: FinetuneConfig,
    *,
    init: str = "loftq",
    base: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune a LoRA adapter on a quantized directory (``leanfit finetune``).

    Builds the model with :func:`build_model` (seeded with ``config.seed``), prepares the
    data with :func:`prepare_data` (blocks / truncation of ``config.max_length`` tokens),
    trains with :func:`~leanfit.finetune.training.finetune`, which writes
    ``leanfit_run.json`` with the other outputs (``out_dir`` appears whole or not at all).

    Raises
    ------
    BadInputError
        ``directory`` is not a leanfit quantize output, bad data, or an invalid argument.
    """
    if not isinstance(config, FinetuneConfig):
        raise bad_value("config", type(config).__name__, "a FinetuneConfig")
    if init not in INITS:
        raise bad_value("init", init, f"one of {list(INITS)}")
    directory = Path(directory)
    read_quantization_config(directory)
    refuse_existing_run(Path(out_dir), overwrite)
    train, held = prepare_data(
        data, config.task, tokenizer_of(directory), max_length=config.max_length
    )
    labels = train.label_names if isinstance(train, ClassificationData) else ()
    model = build_model(
        directory,
        config.task,
        init=init,
        num_labels=len(labels) or None,
        seed=config.seed,
        base=base,
    )
    record = {
        "quantized": str(directory.resolve()),
        "init": init,
        "base": None if base is None else str(Path(base).resolve()),
        "task": config.task,
        "data": data.to_dict(),
        "label_names": list(labels),
    }
    return finetune(
        model,
        train,
        held,
        config,
        out_dir,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        extra_json={RUN_FILE: record},
    )


def _valid_spec(values: dict[str, Any]) -> bool:
    try:
        DataSpec(**values)
    except (TypeError, BadInputError):
        return False
    return True


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The record ``leanfit_run.json`` of a run directory, its fields checked.

    Raises
    ------
    BadInputError
        ``run_dir`` has no record.
    CorruptArtifactError
        The record is unreadable, or a field is missing or invalid.
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise BadInputError(f"{str(run_dir)!r} is not a leanfit finetune output (no {RUN_FILE})")
    record = read_json(path)
    if not isinstance(record, dict):
        raise CorruptArtifactError(f"{str(path)!r} is not a JSON object")
    data, labels = record.get("data"), record.get("label_names")
    checks = {
        "quantized": isinstance(record.get("quantized"), str),
        "init": record.get("init") in INITS,
        "base": isinstance(record.get("base"), str | None),
        "task": isinstance(record.get("task"), str) and record["task"] in PEFT_TASKS,
        "data": isinstance(data, dict) and _valid_spec(data),
        "label_names": isinstance(labels, list) and all(isinstance(n, str) for n in labels),
    }
    invalid = [name for name, ok in checks.items() if not ok]
    if invalid:
        raise CorruptArtifactError(f"{str(path)!r} has missing or invalid fields {invalid}")
    return record


def load_run(run_dir: str | Path) -> PeftModel:
    """The fine-tuned model of a run: its base (quantized ``DIR`` or the original weights)
    with the trained adapter (and classification head) of ``run_dir/adapter``."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    config = FinetuneConfig.load(run_dir / "config.json")
    labels = record["label_names"]
    model = build_model(
        record["quantized"],
        record["task"],
        init=record["init"],
        num_labels=len(labels) or None,
        seed=config.seed,
        base=record["base"],
    )
    weights_path = run_dir / ADAPTER / "adapter_model.safetensors"
    try:
        result = set_peft_model_state_dict(model, load_file(weights_path))
    except (OSError, SafetensorError, RuntimeError) as err:
        raise CorruptArtifactError(f"cannot load the adapter {str(weights_path)!r}: {err}") from err
    missing = [
        key
        for key in [*getattr(result, "unexpected_keys", []), *getattr(result, "missing_keys", [])]
        if ".lora_" in key or "modules_to_save" in key
    ]
    if missing:
        raise CorruptArtifactError(f"{str(run_dir)!r}: adapter tensors {missing[:3]} do not fit")
    return model.eval()


def backbone_memory(model: torch.nn.Module) -> dict[str, float]:
    """Bytes the model holds in memory, and how the quantized layers compare with fp16.

    Returns
    -------
    dict
        ``model_bytes``: Σ over parameters and buffers of ``numel · element_size`` (LoRA and
        head included); ``lora_bytes``: the LoRA factors' share; ``quantized_bytes``: buffers of
        :class:`~leanfit.quantization.QuantLinear` layers (codes + scales, biases excluded);
        ``quantized_fp16_bytes``: ``2 · out · in`` for those layers; ``quantized_ratio``:
        their quotient (about ``bits/16`` plus the scales' share).
    """
    named = [*model.named_parameters(), *model.named_buffers()]
    total = sum(t.numel() * t.element_size() for _, t in named)
    lora = sum(t.numel() * t.element_size() for n, t in named if ".lora_" in n)
    quantized = fp16 = 0
    for module in model.modules():
        if isinstance(module, QuantLinear):
            quantized += sum(b.numel() * b.element_size() for b in module.buffers(recurse=False))
            fp16 = fp16 + 2 * module.in_features * module.out_features
    return {
        "model_bytes": float(total),
        "lora_bytes": float(lora),
        "quantized_bytes": float(quantized),
        "quantized_fp16_bytes": float(fp16),
        "quantized_ratio": quantized / fp16 if fp16 else math.nan,
    }


def evaluate_directory(
    path: str | Path,
    *,
    task: str | None = None,
    data: DataSpec | None = None,
    base: str | Path | None = None,
    settings: EvaluateConfig | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Held-out quality and fidelity of a run directory or a quantized directory.

    A run directory (``leanfit finetune`` output) is evaluated on its own held-out data with
    its trained adapter; a quantized directory with its saved adapter (causal LM) or as an
    encoder (fidelity only: an untrained head has no meaningful accuracy). ``settings``
    (default :class:`~leanfit.finetune.options.EvaluateConfig`) sets how much is scored.

    Metrics
    -------
    causal LM
        ``perplexity``: sliding-window perplexity (:func:`~leanfit.finetune.evaluate.
        perplexity`, windows of ``window`` tokens moved by ``stride``, so every scored token
        after the first window has at least ``window - stride`` tokens of context) on the
        first ``max_tokens`` tokens of the held-out text; ``next_token_kl``: mean KL from the
        original full-precision model's next-token distribution to the model's, over the
        first ``fidelity_examples`` held-out blocks.
    classification
        ``accuracy``, ``macro_f1``, ``loss`` on the held-out rows; ``embedding_cosine``: mean
        cosine of mean-pooled last hidden states against the original encoder, on the first
        ``fidelity_examples`` held-out texts.

    Returns
    -------
    dict
        The metrics plus ``task``, ``init``, ``path`` and the evaluation settings.
    """
    path = Path(path)
    settings = EvaluateConfig() if settings is None else settings
    max_tokens, window, stride = settings.max_tokens, settings.window, settings.stride
    fidelity_examples = settings.fidelity_examples
    if (path / RUN_FILE).is_file():
        record = read_run(path)
        config = FinetuneConfig.load(path / "config.json")
        quantized, init = Path(record["quantized"]), record["init"]
        task = record["task"]
        spec = data if data is not None else DataSpec(**record["data"])
        max_length = config.max_length
        base = base if base is not None else record["base"]
        model = load_run(path)
    else:
        read_quantization_config(path)
        quantized, init = path, "loftq"
        architecture = read_quantization_config(path).get("architecture") or ""
        causal = architecture.endswith(("ForCausalLM", "LMHeadModel"))
        task = task or ("causal-lm" if causal else "classification")
        if task not in PEFT_TASKS:
            raise bad_value("task", task, f"one of {sorted(PEFT_TASKS)}")
        default = "pride_and_prejudice" if task == "causal-lm" else "tweets"
        spec = data if data is not None else DataSpec(default, max_examples=fidelity_examples)
        max_length = window if task == "causal-lm" else 128
        model = load(path, task="causal-lm" if task == "causal-lm" else "base").eval()
    tokenizer = tokenizer_of(quantized)
    _, held = prepare_data(spec, task, tokenizer, max_length=max_length)
    original = base if base is not None else source_checkpoint(quantized)
    result: dict[str, Any] = {"path": str(path), "task": task, "init": init}
    if task == "causal-lm":
        assert isinstance(held, torch.Tensor)  # prepare_data gives blocks for causal LM
        stream = held.reshape(-1)[:max_tokens]
        reference = load_reference(original, "causal-lm")
        result.update(
            perplexity=perplexity(
                model, stream, max_length=min(window, len(stream)), stride=stride, progress=progress
            ),
            held_out_tokens=len(stream),
            window=window,
            stride=stride,
            next_token_kl=next_token_kl(
                model, reference, held[:fidelity_examples], batch_size=batch_size
            ),
            kl_blocks=min(len(held), fidelity_examples),
        )
        return result
    assert isinstance(held, ClassificationData)  # prepare_data gives rows for classification
    if (path / RUN_FILE).is_file():
        result.update(classification_metrics(model, held, batch_size=batch_size))
    texts = [
        tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
        for ids, mask in zip(
            held.input_ids[:fidelity_examples], held.attention_mask[:fidelity_examples], strict=True
        )
    ]
    reference = load_reference(original, "base")
    result["embedding_cosine"] = embedding_cosine(
        model, reference, texts, tokenizer, batch_size=batch_size
    )
    result["fidelity_examples"] = len(texts)
    return result


__all__ = [
    "INITS",
    "backbone_memory",
    "build_model",
    "evaluate_directory",
    "finetune_directory",
    "load_original",
    "load_run",
    "prepare_data",
    "source_checkpoint",
    "tokenizer_of",
]
