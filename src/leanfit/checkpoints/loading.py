"""Load a LoftQ output directory back (:mod:`leanfit.checkpoints.layout`).

:func:`load` builds the transformers model with ``from_pretrained`` through leanfit's
quantizer (:mod:`leanfit.checkpoints.hf`): the targets are
:class:`~leanfit.quantization.QuantLinear` layers (their full-precision weights are never
materialized), and transformers renames, ties and initializes as for any checkpoint; PEFT
then attaches the adapter. The model it returns computes, in every target,
``x ↦ x·(Q + (alpha/r)·lora_B·lora_A)ᵀ + b``. :func:`load_into` fills a model built by the
caller, tensor by tensor (:mod:`leanfit.checkpoints.assign`), for what ``from_pretrained``
cannot load: a plain torch module, convolution targets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from leanfit.checkpoints.assign import load_packed, read_targets, weight_map
from leanfit.checkpoints.keys import ModelKeys, adapter_key_mapping
from leanfit.checkpoints.layout import (
    ADAPTER,
    BACKBONE,
    TASKS,
    lora_config,
    peft_task_type,
)
from leanfit.exceptions import BadInputError, CorruptArtifactError, LeanfitError, bad_value
from leanfit.quantization.nn import forget_dequantized
from leanfit.quiet import dependency_noise_dropped, transformers_loading_quiet

if TYPE_CHECKING:
    from peft import PeftModel


logger = logging.getLogger(__name__)


def _attach_adapter(
    model: nn.Module,
    adapter: Path,
    placed: dict[str, str],
    dtype: torch.dtype,
    is_trainable: bool,
) -> PeftModel:
    """``model`` in ``dtype`` (the quantization statistics stay float32) with the LoRA
    adapter attached by PEFT under the model's names of the targets (``placed``)."""
    with dependency_noise_dropped():  # PEFT imports bitsandbytes (its CPU kernel notice)
        from peft import PeftModel

        model.to(dtype=dtype)
        config = lora_config(adapter, peft_task_type(type(model).__name__), placed.values())
        peft_model = PeftModel.from_pretrained(
            model,
            str(adapter),
            is_trainable=is_trainable,
            config=config,
            **adapter_key_mapping(placed),
        )
    forget_dequantized()  # PEFT read the last layer's weight: nothing float is kept
    return peft_model


def load_into(
    model: nn.Module,
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    is_trainable: bool = False,
) -> PeftModel:
    """Load a LoftQ output into a model skeleton and attach its LoRA adapter.

    Linear targets (GPT-2 ``Conv1D`` included) are replaced by :class:`QuantLinear` modules
    holding the packed Q; convolution targets get their dequantized kernel (they run in full
    precision); every other tensor is assigned from the backbone, shard by shard. Parameters
    of ``model`` may live on the meta device: they are replaced, never copied into. Stored
    names are matched to the model's as transformers matches them (:mod:`leanfit.checkpoints.keys`:
    its renamings, and the base-model prefix added or stripped); the model must hold exactly
    the backbone's tensors (parameters tied to a stored one, such as tied output embeddings,
    are tied again).

    Parameters
    ----------
    model : torch.nn.Module
        The architecture of the quantized model (e.g. a fresh instance); changed in place.
    directory : str or Path
        Output of :func:`leanfit.pipeline.quantize_checkpoint` or ``quantize_module``.
    device, dtype
        Where the model goes and the dtype of its floating tensors (the packed codes and the
        float32 quantization statistics keep theirs).
    is_trainable : bool
        Passed to ``PeftModel.from_pretrained``: LoRA weights trainable (for fine-tuning).

    Raises
    ------
    BadInputError
        ``directory`` is not a leanfit LoftQ output.
    CorruptArtifactError
        A newer or invalid format, missing shards or tensors, or an adapter whose targets or
        shapes do not match the backbone, or a parameter of ``model`` the backbone lacks.
    """
    if not isinstance(model, nn.Module):
        raise bad_value("model", type(model).__name__, "a torch.nn.Module")
    directory = Path(directory)
    meta, targets = read_targets(directory)
    placed = load_packed(model, directory, targets, meta)
    return _attach_adapter(model, directory / ADAPTER, placed, dtype, is_trainable).to(device)


def model_class(architecture: str | None) -> Any:
    """The transformers class a checkpoint was saved as: ``architecture`` (its
    ``config.architectures[0]``), or ``AutoModel`` when it names none.

    Raises
    ------
    BadInputError
        transformers has no class of that name (e.g. a model with its own code, which
        leanfit never runs): the message names it and suggests ``task``.
    """
    import transformers

    if not architecture:
        return transformers.AutoModel
    cls = getattr(transformers, architecture, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise BadInputError(
            f"the backbone was saved as {architecture!r}, a class transformers "
            f"{transformers.__version__} does not provide (leanfit never runs code shipped with "
            "a checkpoint); load it with the task 'base' (or another task), or build the model "
            "yourself and call load_into(model, directory)"
        )
    return cls


def _task_class(task: str) -> Any:
    import transformers

    return {
        "causal-lm": transformers.AutoModelForCausalLM,
        "base": transformers.AutoModel,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
    }[task]


def load(
    directory: str | Path,
    *,
    task: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    num_labels: int | None = None,
    is_trainable: bool = False,
) -> PeftModel:
    """Load a LoftQ output as a PEFT model on a packed low-bit backbone.

    The backbone is loaded by transformers' ``from_pretrained`` through leanfit's quantizer
    (:mod:`leanfit.checkpoints.hf`: the targets become :class:`QuantLinear` skeletons before a
    weight is read, so no full-precision weight of a target is ever allocated; transformers
    renames, ties and initializes as for any checkpoint); then ``PeftModel.from_pretrained``
    attaches ``adapter/``. Each target then computes ``x·(Q + (alpha/r)·lora_B·lora_A)ᵀ + b``.
    An output with convolution targets, which ``from_pretrained`` cannot load packed, is
    filled tensor by tensor into the model built on the meta device, which must then have
    the backbone's layout (:func:`leanfit.checkpoints.assign.load_packed`).

    Parameters
    ----------
    directory : str or Path
        Output of :func:`leanfit.pipeline.quantize_checkpoint`.
    task : {"auto", "causal-lm", "base", "sequence-classification"}
        ``"auto"``: the class the source was saved as (``config.architectures[0]``: a causal
        or masked LM, a sequence, token or image classifier, a seq2seq or speech model...),
        as transformers' ``from_pretrained`` builds it — also from a checkpoint holding only
        its base model (the sentence-transformers layout), whose head is then initialized.
        The others use ``AutoModelForCausalLM``, ``AutoModel`` or
        ``AutoModelForSequenceClassification``; a head the backbone lacks (the classifier)
        is freshly initialized, and backbone tensors the model lacks (the saved head) are
        dropped, each with a warning.
    device, dtype
        Where the model goes and the dtype of its floating tensors.
    num_labels : int, optional
        Labels of a sequence-classification head.
    is_trainable : bool
        LoRA weights trainable (for fine-tuning).

    Raises
    ------
    BadInputError
        Not a leanfit output, an invalid argument, or (``task="auto"``) a class transformers
        does not provide or cannot build from the config: the message names it.
    CorruptArtifactError
        No ``config.json``, a newer or invalid format, missing tensors, or an adapter that
        does not match the backbone.
    """
    import transformers

    if task not in TASKS:
        raise bad_value("task", task, f"one of {TASKS}")
    if num_labels is not None and (
        isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1
    ):
        raise bad_value("num_labels", num_labels, "an int >= 1, or None")
    directory = Path(directory)
    meta, targets = read_targets(directory)
    backbone = directory / BACKBONE
    if not (backbone / "config.json").is_file():
        raise CorruptArtifactError(
            f"{str(backbone)!r} has no config.json: it was written from a plain torch module "
            "(quantize_module); load it with load_into(model, directory)"
        )
    weight_map(backbone)  # every shard is there
    config = transformers.AutoConfig.from_pretrained(backbone)
    if num_labels is not None:
        config.num_labels = num_labels
    cls = model_class(meta.get("architecture")) if task == "auto" else _task_class(task)
    if any(target.kind == "conv" for target in targets.values()):
        model = _built(cls, config, backbone)
        placed = load_packed(model, directory, targets, meta)
    else:
        model, placed = _from_pretrained(cls, config, backbone, strict=task == "auto")
    return _attach_adapter(model, directory / ADAPTER, placed, dtype, is_trainable).to(device)


def _cannot_build(cls: Any, config: Any, backbone: Path, err: Exception) -> BadInputError:
    return BadInputError(
        f"transformers cannot build {getattr(cls, '__name__', cls)} (model_type "
        f"{config.model_type!r}) from {str(backbone / 'config.json')!r}: {err}"
    )


_BUILD_ERRORS = (ValueError, TypeError, KeyError, AttributeError, ImportError)
"""What transformers raises for a config it cannot build a model of."""


def _built(cls: Any, config: Any, backbone: Path) -> nn.Module:
    """``cls`` built from ``config`` with its parameters on the meta device."""
    from accelerate import init_empty_weights

    try:
        with init_empty_weights():
            return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    except (*_BUILD_ERRORS, RuntimeError) as err:
        raise _cannot_build(cls, config, backbone, err) from err


def _from_pretrained(
    cls: Any, config: Any, backbone: Path, strict: bool
) -> tuple[nn.Module, dict[str, str]]:
    """``cls.from_pretrained(backbone)`` through leanfit's quantizer, and the placed targets
    (stored module -> model module). Transformers' load report and progress bar are replaced
    by leanfit's warnings: backbone tensors the model lacks are dropped, parameters the
    backbone lacks newly initialized. When ``strict`` (the class the backbone was saved as)
    and the model's layout is the backbone's (no base-model prefix added or stripped), both
    are refused as a damaged artifact; otherwise so is a missing tensor of the base model in a
    module whose other tensors the backbone holds."""
    from leanfit.checkpoints.hf import LeanfitHfQuantizer

    try:
        with transformers_loading_quiet():
            model, info = cls.from_pretrained(
                backbone, config=config, use_safetensors=True, output_loading_info=True
            )
    except LeanfitError:
        raise
    except _BUILD_ERRORS as err:
        raise _cannot_build(cls, config, backbone, err) from err
    except RuntimeError as err:
        raise CorruptArtifactError(f"the backbone does not fit {cls.__name__}: {err}") from err
    quantizer = model.hf_quantizer
    if not isinstance(quantizer, LeanfitHfQuantizer):
        raise CorruptArtifactError(
            f"{str(backbone / 'config.json')!r} does not name leanfit's quantization method"
        )
    placed = quantizer.module_names
    keys = ModelKeys(model, ())
    name = type(model).__name__
    dropped, fresh = sorted(info["unexpected_keys"]), sorted(info["missing_keys"])
    same_layout = all(keys.renamed(f"{m}.weight") == f"{placed[m]}.weight" for m in placed)
    lacking = fresh if strict and same_layout else _in_damaged_modules(model, fresh, keys)
    if lacking:
        raise CorruptArtifactError(
            f"the backbone lacks {len(lacking)} tensors of the model, e.g. {lacking[:3]}"
        )
    if strict and same_layout and dropped:
        raise CorruptArtifactError(
            f"backbone tensors {dropped[:3]} are not in the model built ({name})"
        )
    if dropped:
        logger.warning(
            "%d backbone tensors are not part of %s and are not loaded, e.g. %s",
            len(dropped),
            name,
            dropped[:3],
        )
    if fresh:
        logger.warning(
            "%d parameters of %s are not in the backbone and are newly initialized, e.g. %s",
            len(fresh),
            name,
            fresh[:3],
        )
    return model, placed


def _in_damaged_modules(model: nn.Module, missing: list[str], keys: ModelKeys) -> list[str]:
    """The ``missing`` names that no model would lack: in the base model, of a module whose
    other tensors the backbone holds (a new head, or a module the saved class did not have
    such as a pooler, is missing whole)."""
    absent = set(missing)
    present = {name.rpartition(".")[0] for name in model.state_dict() if name not in absent}
    return [
        name for name in missing if keys.in_base_model(name) and name.rpartition(".")[0] in present
    ]
