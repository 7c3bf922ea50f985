"""LoRA fine-tuning of a PEFT model with a small, deterministic, resumable torch loop.

The model is any ``peft.PeftModel`` (a LoRA adapter on a full-precision or a quantized
backbone). Only parameters with ``requires_grad`` are trained: the LoRA factors, and for
classification the head that PEFT keeps trainable through ``modules_to_save``.

One optimizer *step* consumes ``grad_accum`` micro-batches of ``batch_size`` examples; its
reported loss is the mean of their losses, taken before the update. Micro-batches follow a
fixed order: epoch ``e`` visits the examples in the permutation drawn by
``numpy.random.default_rng([seed, e])``, cut into consecutive batches (the last one may be
smaller). Dropout draws from torch's global generator, seeded with ``seed`` inside a forked
RNG state, so the caller's RNG is untouched and a run is reproducible.

Output directory (written as ``OUT.partial`` next to ``OUT`` and renamed to ``OUT`` at the end)::

    OUT/config.json          the FinetuneConfig
    OUT/run.json             fingerprint of the training data, total steps
    OUT/adapter/             final adapter, PEFT format (adapter_config.json + safetensors)
    OUT/metrics.json         losses, learning rates, seconds per step, evaluations, peak memory
    OUT/labels.json          classification only: label names in class-index order
    OUT/checkpoints/step-N/  adapter/, trainable.safetensors, optimizer.safetensors,
                             optimizer.json, scheduler.json, rng.safetensors, state.json

Each checkpoint is written to a hidden sibling and renamed into place, so an interrupted run
leaves only complete checkpoints; ``resume=True`` continues ``OUT.partial`` from its latest one
and reproduces the uninterrupted run (same data order, optimizer, schedule and RNG state).
No pickle is written or read: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from leanfit.checkpoints.layout import sort_adapter_targets
from leanfit.checks import check_choice
from leanfit.exceptions import BadInputError, CorruptArtifactError, bad_value
from leanfit.finetune.data import ClassificationData, fingerprint
from leanfit.finetune.evaluate import causal_lm_metrics, classification_metrics
from leanfit.finetune.losses import CausalLMSplit, causal_lm_loss, split_causal_lm
from leanfit.finetune.memory import checkpointing, peak_memory, store_frozen
from leanfit.finetune.options import DEVICES, SCHEDULES, FinetuneConfig
from leanfit.io import atomic_output, read_json, write_json
from leanfit.quiet import dependency_noise_dropped

with dependency_noise_dropped():  # PEFT imports bitsandbytes (its CPU kernel notice)
    from peft import PeftModel

CHECKPOINT = re.compile(r"^step-(\d+)$")
MEASURED = ("memory", "step_seconds")  # metrics.json fields that measure the run, not results
LAYOUT = ("adapter", "checkpoints", "config.json", "labels.json", "metrics.json", "run.json")

TrainData = torch.Tensor | ClassificationData


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced.

    Attributes
    ----------
    losses : list of float
        Training loss of each optimizer step (mean over its micro-batches, before the update).
    learning_rates : list of float
        Learning rate used by each step.
    evals : list of dict
        One per evaluation: ``{"step": s, **metrics}`` with the metrics of
        :func:`~leanfit.finetune.evaluate.causal_lm_metrics` or
        :func:`~leanfit.finetune.evaluate.classification_metrics`, after step ``s``.
    out_dir : Path
        The run's output directory.
    adapter_path : Path
        The final adapter in PEFT format (load with ``PeftModel.from_pretrained``).
    resumed_from : int or None
        The checkpoint step this call continued from.
    memory : dict
        Peak memory of the process (:func:`~leanfit.finetune.memory.peak_memory`).
    """

    losses: list[float]
    learning_rates: list[float]
    evals: list[dict[str, float]]
    out_dir: Path
    adapter_path: Path
    resumed_from: int | None = None
    memory: dict[str, float] = field(default_factory=dict)


@dataclass
class _Progress:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Factor applied to the peak learning rate at optimizer step ``step`` (0-based).

    Warmup: ``(step + 1) / warmup_steps`` for ``step < warmup_steps``, reaching 1 on the last
    warmup step. Afterwards, with ``p = (step - warmup_steps) / (total_steps - warmup_steps)``
    in [0, 1): ``constant`` 1, ``linear`` ``1 - p``, ``cosine`` ``(1 + cos(pi p)) / 2``. The
    last step therefore still has a positive rate; no step is wasted at rate 0.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return 1.0 - p
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    raise bad_value("schedule", schedule, f"one of {list(SCHEDULES)}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cuda"`` requires CUDA."""
    check_choice("device", name, DEVICES)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInputError(
            "device is 'cuda' but torch sees no CUDA device; use 'cpu' or 'auto'",
            param="device",
            value=name,
        )
    return torch.device(name)


def total_steps(config: FinetuneConfig, n_examples: int) -> int:
    """Optimizer steps of a run over ``n_examples`` training examples."""
    if config.steps is not None:
        return config.steps
    assert config.epochs is not None  # __post_init__ sets one of steps and epochs
    micro_per_epoch = math.ceil(n_examples / config.batch_size)
    return math.ceil(config.epochs * micro_per_epoch / config.grad_accum)


def _micro_batches(n: int, batch_size: int, seed: int, start: int) -> Iterator[np.ndarray]:
    """Example indices of micro-batches ``start, start + 1, ...`` (see the module docstring)."""
    per_epoch = math.ceil(n / batch_size)
    epoch, position = divmod(start, per_epoch)
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for k in range(position, per_epoch):
            yield order[k * batch_size : (k + 1) * batch_size]
        epoch, position = epoch + 1, 0


def _loss(
    model: torch.nn.Module,
    data: TrainData,
    index: np.ndarray,
    device: torch.device,
    split: CausalLMSplit | None,
) -> torch.Tensor:
    """Mean training loss of one micro-batch (differentiable); causal LMs through ``split``
    (:func:`~leanfit.finetune.losses.causal_lm_loss`, logits a chunk at a time)."""
    if isinstance(data, ClassificationData):
        batch = {key: value.to(device) for key, value in data.batch(index).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if logits.shape[-1] != len(data.label_names):
            raise BadInputError(
                f"model predicts {logits.shape[-1]} classes but train_data has "
                f"{len(data.label_names)} labels {list(data.label_names)}"
            )
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
    assert split is not None  # finetune splits every causal LM
    return causal_lm_loss(split, data[torch.as_tensor(index)].to(device))


def _evaluate(model: torch.nn.Module, data: TrainData, batch_size: int) -> dict[str, float]:
    if isinstance(data, ClassificationData):
        return classification_metrics(model, data, batch_size=batch_size)
    return causal_lm_metrics(model, data, batch_size=batch_size)


def _check_data(name: str, data: object, task: str, max_length: int) -> None:
    if task == "classification":
        if not isinstance(data, ClassificationData):
            raise bad_value(
                name, type(data).__name__, "a ClassificationData for task classification"
            )
        length = data.max_length
    else:
        if not isinstance(data, torch.Tensor) or data.dtype != torch.long or data.ndim != 2:
            raise bad_value(
                name,
                type(data).__name__,
                "a LongTensor of token blocks (n_blocks, block_size) for task causal-lm",
            )
        if data.shape[0] == 0 or data.shape[1] < 2:
            raise bad_value(name, tuple(data.shape), "at least one block of at least 2 tokens")
        length = data.shape[1]
    if length > max_length:
        raise BadInputError(
            f"{name} has sequences of {length} tokens, more than config.max_length ({max_length})",
            param=name,
        )


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise BadInputError("model has no trainable parameters (requires_grad); nothing to train")
    return params


def _optimizer(params: dict[str, torch.nn.Parameter], config: FinetuneConfig) -> torch.optim.AdamW:
    matrices = [p for p in params.values() if p.ndim >= 2]
    vectors = [p for p in params.values() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": config.weight_decay}]
    if vectors:
        groups.append({"params": vectors, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def _save_adapter(model: PeftModel, directory: Path) -> Path:
    """PEFT ``save_pretrained`` of the active adapter; returns the folder holding it.

    ``save_embedding_layers=False``: leanfit never resizes the vocabulary, and the default
    ("auto") would look the base model up on the Hub to find out.
    """
    name = model.active_adapter
    model.save_pretrained(str(directory), selected_adapters=[name], save_embedding_layers=False)
    folder = directory if name == "default" else directory / name
    sort_adapter_targets(folder)
    return folder


def _save_checkpoint(
    run_dir: Path,
    model: PeftModel,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    progress: _Progress,
) -> None:
    final = run_dir / "checkpoints" / f"step-{progress.step}"
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_adapter(model, tmp / "adapter")
    save_file(
        {name: p.detach().cpu().contiguous() for name, p in params.items()},
        tmp / "trainable.safetensors",
    )
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, tmp / "optimizer.safetensors")
    write_json(tmp / "optimizer.json", {"param_groups": state["param_groups"], "scalars": scalars})
    write_json(tmp / "scheduler.json", scheduler.state_dict())
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    save_file(rng, tmp / "rng.safetensors")
    write_json(tmp / "state.json", asdict(progress))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    steps = [
        (int(match.group(1)), path)
        for path in (folder.iterdir() if folder.is_dir() else [])
        if (match := CHECKPOINT.match(path.name)) and path.is_dir()
    ]
    return max(steps)[1] if steps else None


def _load_checkpoint(
    path: Path,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> _Progress:
    try:
        saved = load_file(path / "trainable.safetensors")
        tensors = load_file(path / "optimizer.safetensors")
        rng = load_file(path / "rng.safetensors")
    except (OSError, ValueError, RuntimeError) as err:
        raise CorruptArtifactError(f"checkpoint {path} is unreadable: {err}") from err
    if sorted(saved) != sorted(params):
        raise BadInputError(
            f"checkpoint {path} holds trainable parameters {len(saved)} that do not match the "
            f"model's {len(params)}; resume with the model the run started with"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    meta = read_json(path / "optimizer.json")
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [
        {key: tuple(v) if key == "betas" else v for key, v in group.items()}
        for group in meta["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(read_json(path / "scheduler.json"))
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)
    return _Progress(**read_json(path / "state.json"))


def _start_run(
    run_dir: Path, config: FinetuneConfig, train_data: TrainData, steps: int, resume: bool
) -> Path | None:
    """Prepare ``run_dir``; return the checkpoint to resume from, if any."""
    run = {"train_fingerprint": fingerprint(train_data), "total_steps": steps}
    if resume:
        if not (run_dir / "config.json").is_file():
            raise BadInputError(f"resume: no unfinished run at {run_dir}")
        saved = FinetuneConfig.load(run_dir / "config.json").to_dict()
        differing = sorted(
            key
            for key, value in config.to_dict().items()
            if key != "device" and saved[key] != value
        )
        if differing:
            raise BadInputError(
                f"resume: config differs from the unfinished run's in {differing}; "
                f"saved {[saved[k] for k in differing]}"
            )
        if read_json(run_dir / "run.json") != run:
            raise BadInputError("resume: train_data differs from the unfinished run's")
        for stale in (run_dir / "checkpoints").glob(".step-*.tmp"):  # interrupted while saving
            shutil.rmtree(stale)
        return _latest_checkpoint(run_dir)
    if run_dir.exists():
        warnings.warn(f"discarding the unfinished run in {run_dir}", stacklevel=3)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(config.to_json() + "\n")
    write_json(run_dir / "run.json", run)
    return None


def refuse_existing_run(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing ``out_dir`` unless ``overwrite`` (checked again before anything
    costly by the callers that load a model first).

    Raises
    ------
    BadInputError
        ``out_dir`` exists and ``overwrite`` is false.
    """
    if out_dir.exists() and not overwrite:
        raise BadInputError(
            f"out_dir {str(out_dir)!r} exists; pass --overwrite to replace it",
            param="out_dir",
            value=str(out_dir),
        )


def finetune(
    model: PeftModel,
    train_data: TrainData,
    eval_data: TrainData | None,
    config: FinetuneConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    extra_json: Mapping[str, Any] | None = None,
) -> FinetuneResult:
    """Train a PEFT model's trainable parameters with AdamW; save the adapter and metrics.

    Parameters
    ----------
    model : peft.PeftModel
        Trained in place (moved to the configured device); its train/eval mode is restored.
    train_data, eval_data : token blocks or ClassificationData
        ``LongTensor`` (n_blocks, block_size) for causal LM, :class:`ClassificationData` for
        classification; ``eval_data`` may be ``None`` (no evaluation).
    config : FinetuneConfig
    out_dir : path
        Output directory (layout in the module docstring); the run works in
        ``out_dir.partial`` and renames it at the end.
    resume : bool
        Continue the unfinished run in ``out_dir.partial`` from its latest checkpoint (from
        the start when it has none). Its config (except ``device``) and training data must
        be the same.
    overwrite : bool
        Replace an existing ``out_dir``.
    progress : bool
        Show a tqdm bar with the loss.
    extra_json : mapping, optional
        More files for ``out_dir``, file name -> JSON value, written with the final outputs
        before the rename, so ``out_dir`` appears complete with them or not at all.

    Returns
    -------
    FinetuneResult

    Raises
    ------
    BadInputError
        Not a PeftModel, data not matching the task, no trainable parameters, ``out_dir``
        exists without ``overwrite``, nothing to resume, or a resumed run that differs.
    """
    if not isinstance(model, PeftModel):
        raise bad_value("model", type(model).__name__, "a peft.PeftModel")
    if not isinstance(config, FinetuneConfig):
        raise bad_value("config", type(config).__name__, "a FinetuneConfig")
    _check_data("train_data", train_data, config.task, config.max_length)
    if eval_data is not None:
        _check_data("eval_data", eval_data, config.task, config.max_length)
        if isinstance(train_data, ClassificationData) and isinstance(eval_data, ClassificationData):
            if eval_data.label_names != train_data.label_names:
                raise BadInputError(
                    f"eval_data.label_names {list(eval_data.label_names)} differ from "
                    f"train_data's {list(train_data.label_names)}; encode eval_data with "
                    "label_names=train_data.label_names"
                )
    extra_json = dict(extra_json or {})
    for name in extra_json:
        if not isinstance(name, str) or Path(name).name != name or name in LAYOUT:
            raise bad_value("extra_json", name, f"a plain file name outside the layout {LAYOUT}")
    out_dir = Path(out_dir)
    refuse_existing_run(out_dir, overwrite)
    run_dir = out_dir.with_name(out_dir.name + ".partial")
    device = resolve_device(config.device)
    params = _trainable(model)
    steps = total_steps(config, len(train_data))
    checkpoint = _start_run(run_dir, config, train_data, steps, resume)

    was_training = model.training
    model.to(device)
    if config.frozen_dtype == "bfloat16":
        store_frozen(model, torch.bfloat16)
    split = None
    if not isinstance(train_data, ClassificationData):
        split = split_causal_lm(model, train_data[:1].to(device))
    optimizer = _optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step, total_steps=steps, warmup_steps=config.warmup_steps, schedule=config.schedule
        ),
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), contextlib.ExitStack() as stack:
        stack.enter_context(checkpointing(model, config.gradient_checkpointing))
        torch.manual_seed(config.seed)
        state = _Progress()
        if checkpoint is not None:
            state = _load_checkpoint(checkpoint, params, optimizer, scheduler, device)
        bar = stack.enter_context(
            tqdm(
                total=steps, initial=state.step, disable=not progress, desc="finetune", unit="step"
            )
        )
        step_seconds: list[float] = []  # of this call's steps (not checkpointed)
        batches = _micro_batches(
            len(train_data), config.batch_size, config.seed, state.step * config.grad_accum
        )
        model.train()
        try:
            while state.step < steps:
                started = time.perf_counter()
                state.learning_rates.append(float(scheduler.get_last_lr()[0]))
                total = 0.0
                for _ in range(config.grad_accum):
                    with autocast:
                        loss = _loss(model, train_data, next(batches), device, split)
                    (loss / config.grad_accum).backward()
                    total += float(loss.detach())
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.losses.append(total / config.grad_accum)
                step_seconds.append(round(time.perf_counter() - started, 4))
                bar.update(1)
                bar.set_postfix(loss=f"{state.losses[-1]:.4f}")
                due = config.eval_every and state.step % config.eval_every == 0
                if eval_data is not None and (due or state.step == steps):
                    with autocast:
                        scores = _evaluate(model, eval_data, config.batch_size)
                    state.evals.append({"step": state.step, **scores})
                    model.train()
                if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                    _save_checkpoint(run_dir, model, params, optimizer, scheduler, device, state)
        finally:
            model.train(was_training)

    adapter = _save_adapter(model, run_dir / "adapter")
    resumed_from = None if checkpoint is None else int(checkpoint.name.split("-")[1])
    memory = peak_memory(device)
    metrics = {
        "task": config.task,
        "steps": steps,
        "losses": state.losses,
        "learning_rates": state.learning_rates,
        "step_seconds": step_seconds,
        "evals": state.evals,
        "resumed_from": resumed_from,
        "memory": memory,
    }
    write_json(run_dir / "metrics.json", metrics)
    if isinstance(train_data, ClassificationData):
        write_json(run_dir / "labels.json", list(train_data.label_names))
    for name, value in extra_json.items():
        write_json(run_dir / name, value)
    with atomic_output(out_dir, overwrite=overwrite) as tmp:
        os.replace(run_dir, tmp)
    return FinetuneResult(
        losses=state.losses,
        learning_rates=state.learning_rates,
        evals=state.evals,
        out_dir=out_dir,
        adapter_path=out_dir / adapter.relative_to(run_dir),
        resumed_from=resumed_from,
        memory=memory,
    )
