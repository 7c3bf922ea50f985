"""Load a LoftQ output directory back (:mod:`leanfit.checkpoints.layout`).

:func:`load` builds the transformers model with ``from_pretrained`` through leanfit's
quantizer (:mod:`leanfit.checkpoints.hf`): the targets are
:class:`~leanfit.quantization.QuantLinear` layers (their full-precision weights are never
materialized), and transformers renames, ties and initializes as for any checkpoint; PEFT
then attaches the adapter. The model it returns computes, in every target,
``x ↦ x·(Q + (alpha/r)·lora_B·lora_A)ᵀ + b``. :func:`load_into` fills a model built by the
caller, tensor by tensor, for what ``from_pretrained`` cannot load (a plain torch module,
convolution targets); :func:`merge_into` writes ``Q + (alpha/r)·B·A`` into a float model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from leanfit.checkpoints.base import tied_aliases
from leanfit.checkpoints.keys import ModelKeys, adapter_key_mapping
from leanfit.checkpoints.layout import (
    ADAPTER,
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BACKBONE,
    INDEX_FILE,
    PEFT_PREFIX,
    TASKS,
    lora_config,
    peft_task_type,
    read_adapter_config,
    read_quantization_config,
    target_from_meta,
)
from leanfit.checkpoints.swap import quant_linear_skeleton, replace_module
from leanfit.checkpoints.targets import Target, lora_shapes_for_peft, restore_shape
from leanfit.exceptions import BadInputError, CorruptArtifactError, LeanfitError, bad_value
from leanfit.io import read_json
from leanfit.quantization.nn import forget_dequantized
from leanfit.quantization.quantizers import QuantizedTensor
from leanfit.quiet import dependency_noise_dropped, transformers_loading_quiet

if TYPE_CHECKING:
    from peft import PeftModel


logger = logging.getLogger(__name__)


def _placed_targets(targets: dict[str, Target], keys: ModelKeys, strict: bool) -> dict[str, str]:
    """The model's module name of each target the model built has, ``stored -> model``.

    Raises
    ------
    CorruptArtifactError
        No target is in the model (the artifact is of another model), a target is fused by
        transformers into another tensor, or — when ``strict`` (the model's layout is the
        saved one) — a target is missing from it.
    """
    placed = {module: keys.module(module) for module in targets}
    fused = [module for module in targets if keys.fused(module + ".weight")]
    if fused:
        raise CorruptArtifactError(
            f"targets {fused[:3]} are merged by transformers into another parameter when "
            "loaded (e.g. the experts of a mixture-of-experts layer), which a packed layer "
            "cannot be; quantize the other layers (--target)"
        )
    absent = sorted(module for module, name in placed.items() if name is None)
    if len(absent) == len(targets) or (strict and absent):
        raise CorruptArtifactError(
            f"the backbone's targets {absent[:3]} are not weights of the model built "
            f"(e.g. {sorted(keys.keys)[:3]}); the artifact does not match the model class"
        )
    if absent:
        logger.warning(
            "%d quantized layers are not part of the model built and are not loaded, e.g. %s",
            len(absent),
            absent[:3],
        )
    return {module: name for module, name in placed.items() if name is not None}


def _shards(backbone: Path) -> list[Path]:
    return sorted(set(_weight_map(backbone).values()))


def _decode_convs(
    tensors: dict[str, torch.Tensor], targets: dict[str, Target], meta: dict[str, Any]
) -> None:
    """Replace the packed tensors of convolution targets by their dequantized kernel
    (convolutions have no quantized module: they run dequantized)."""
    for module_name, target in targets.items():
        if target.kind == "conv" and f"{module_name}.packed" in tensors:
            quant = meta["targets"][module_name]["quantized"]
            q = QuantizedTensor.from_state_dict(tensors, module_name + ".", quant)
            for key in q.to_state_dict(module_name + "."):
                del tensors[key]
            tensors[target.name] = restore_shape(q.dequantize(), target)


def _check_adapter(adapter: Path, targets: dict[str, Target]) -> None:
    """The adapter holds exactly lora_A/lora_B of every target, in PEFT's shapes."""
    config_path, weights = adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights.is_file():
        raise CorruptArtifactError(
            f"adapter {str(adapter)!r} must hold {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        )
    config = read_adapter_config(adapter)
    rank, modules = config["r"], config["target_modules"]
    if sorted(modules) != sorted(targets):
        raise CorruptArtifactError(
            f"{str(config_path)!r} targets {len(modules)} modules, the backbone {len(targets)}: "
            f"e.g. {sorted(set(modules) ^ set(targets))[:3]} differ"
        )
    expected = {}
    for module, target in targets.items():
        shape_a, shape_b = lora_shapes_for_peft(target, rank)
        expected[f"{PEFT_PREFIX}{module}.lora_A.weight"] = shape_a
        expected[f"{PEFT_PREFIX}{module}.lora_B.weight"] = shape_b
    try:
        with safe_open(weights, framework="pt") as handle:
            stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except SafetensorError as err:
        raise CorruptArtifactError(f"cannot read {str(weights)!r}: {err}") from err
    if set(stored) != set(expected):
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        raise CorruptArtifactError(
            f"{str(weights)!r} must hold lora_A and lora_B of each target; "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    wrong = [(n, stored[n], shape) for n, shape in expected.items() if stored[n] != tuple(shape)]
    if wrong:
        name, got, shape = wrong[0]
        raise CorruptArtifactError(
            f"adapter tensor {name!r} must have shape {tuple(shape)} (r={rank}); got {got} "
            f"({len(wrong)} tensors have wrong shapes)"
        )


def _tied_in_model(
    model: nn.Module, keys: ModelKeys, backbone: Iterable[str], placed: dict[str, str]
) -> dict[str, str]:
    """The parameters of ``model`` that share their storage with one the backbone holds and
    are not stored themselves (e.g. an output embedding tied to the input one), ``alias ->
    stored``, both in the model's names (:func:`~leanfit.checkpoints.base.tied_aliases`). The
    backbone holds its names (``backbone``, read through ``keys``) and the weights of the
    targets, stored packed (``placed``: stored module -> model module)."""
    in_model = (keys(name) for name in backbone)
    stored = {name for name in in_model if name} | {f"{m}.weight" for m in placed.values()}
    return tied_aliases(model.named_parameters(remove_duplicate=False), stored)


def _retie(model: nn.Module, tied: dict[str, str]) -> set[str]:
    """Make every alias (``tied``, model names) share the stored parameter again
    (assign-loading replaced the stored ones); returns the aliases handled."""
    done = set()
    for alias, stored in tied.items():
        owner, _, attr = alias.rpartition(".")
        try:
            module = model.get_submodule(owner)
            parameter = model.get_parameter(stored)
        except AttributeError:
            continue
        setattr(module, attr, parameter)
        done.add(alias)
    return done


def _packed_skeletons(
    model: nn.Module, targets: dict[str, Target], placed: dict[str, str], meta: dict[str, Any]
) -> None:
    """Replace each linear target of ``model`` by an all-zero :class:`QuantLinear` skeleton."""
    for module, name in placed.items():
        target = targets[module]
        if target.kind != "linear":
            continue
        original = model.get_submodule(name)
        weight = getattr(original, "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != target.shape:
            raise CorruptArtifactError(
                f"target {module!r} has shape {target.shape}; the model built has "
                f"{None if weight is None else tuple(weight.shape)} there"
            )
        setting = meta["targets"][module]["quantized"]
        layer = quant_linear_skeleton(module, original, setting, target.transposed)
        replace_module(model, name, layer)


def _load_packed(
    model: nn.Module, directory: Path, targets: dict[str, Target], meta: dict[str, Any]
) -> dict[str, str]:
    """Fill ``model`` from the backbone, whose layout it must have (every tensor of the one is
    a tensor of the other, under transformers' renamings), shard by shard; returns the placed
    targets (stored module -> model module).

    For what ``from_pretrained`` cannot load: a plain torch module, convolution targets."""
    keys = ModelKeys(model)
    placed = _placed_targets(targets, keys, strict=True)
    tied = _tied_in_model(model, keys, _weight_map(directory / BACKBONE), placed)
    _packed_skeletons(model, targets, placed, meta)
    expected = set(model.state_dict())
    buffers = {name for name, _ in model.named_buffers()}
    keys = ModelKeys(model, expected | buffers)  # now with the packed layers' tensors
    loaded: set[str] = set()
    for shard in _shards(directory / BACKBONE):
        tensors = load_file(shard)
        _decode_convs(tensors, targets, meta)
        renamed = {}
        for name, tensor in tensors.items():
            new = keys(name)
            if new in expected:
                renamed[new] = tensor
            elif new is None and keys.fused(name):
                raise BadInputError(
                    f"transformers merges backbone tensor {name!r} with others into one "
                    f"parameter of {type(model).__name__} when loading (e.g. the experts of a "
                    "mixture-of-experts layer); load_into does not make that merge: load the "
                    "output with load(directory)"
                )
            elif new not in buffers:  # e.g. position_ids, a non-persistent buffer today
                raise CorruptArtifactError(
                    f"backbone tensor {name!r} ({shard.name}) is not in the model built "
                    f"({type(model).__name__})"
                )
        try:
            model.load_state_dict(renamed, strict=False, assign=True)
        except RuntimeError as err:
            raise CorruptArtifactError(
                f"backbone shard {shard.name} does not fit the model: {err}"
            ) from err
        loaded |= set(renamed)
        del tensors, renamed
    missing = expected - loaded - _retie(model, tied)
    lacking = sorted(name for name in missing if name in buffers or _on_meta(model, name))
    if lacking:
        raise CorruptArtifactError(
            f"the backbone lacks {len(lacking)} tensors of the model, e.g. {lacking[:3]}"
        )
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta:
        raise CorruptArtifactError(f"parameters {on_meta[:3]} were not loaded from the backbone")
    return placed


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


def _targets(directory: Path) -> tuple[dict[str, Any], dict[str, Target]]:
    """The backbone's metadata and its targets, the adapter checked against them."""
    meta = read_quantization_config(directory)
    targets = {module: target_from_meta(module, entry) for module, entry in meta["targets"].items()}
    _check_adapter(directory / ADAPTER, targets)
    return meta, targets


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
    meta, targets = _targets(directory)
    placed = _load_packed(model, directory, targets, meta)
    return _attach_adapter(model, directory / ADAPTER, placed, dtype, is_trainable).to(device)


def _on_meta(model: nn.Module, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    tensor = getattr(model.get_submodule(owner), attr, None)
    return not isinstance(tensor, torch.Tensor) or tensor.is_meta


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
            "a checkpoint); load it with task='base' (or another task), or build the model "
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
    loaded into the model built on the meta device (:func:`load_into`).

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
    meta, targets = _targets(directory)
    backbone = directory / BACKBONE
    if not (backbone / "config.json").is_file():
        raise CorruptArtifactError(
            f"{str(backbone)!r} has no config.json: it was written from a plain torch module "
            "(quantize_module); load it with load_into(model, directory)"
        )
    _weight_map(backbone)  # every shard is there
    config = transformers.AutoConfig.from_pretrained(backbone)
    if num_labels is not None:
        config.num_labels = num_labels
    cls = model_class(meta.get("architecture")) if task == "auto" else _task_class(task)
    if any(target.kind == "conv" for target in targets.values()):
        model = _built(cls, config, backbone)
        placed = _load_packed(model, directory, targets, meta)
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
    are refused as a damaged artifact."""
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
    if strict and all(keys.renamed(module) == placed[module] for module in placed):
        if fresh:
            raise CorruptArtifactError(
                f"the backbone lacks {len(fresh)} tensors of the model, e.g. {fresh[:3]}"
            )
        if dropped:
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


def _weight_map(backbone: Path) -> dict[str, Path]:
    """Backbone tensor name → its shard file, from the index (every shard checked to exist)."""
    index = backbone / INDEX_FILE
    try:
        weight_map = read_json(index)["weight_map"]
        paths = {name: backbone / file for name, file in weight_map.items()}
    except (KeyError, TypeError, AttributeError) as err:
        raise CorruptArtifactError(f"{str(index)!r} is missing or invalid: {err}") from err
    outside = sorted({p.name for p in paths.values()} - set(map(str, weight_map.values())))
    if outside:
        raise CorruptArtifactError(
            f"{str(index)!r} must map tensor names to shard files in {str(backbone)!r}; "
            f"got paths {outside[:3]}"
        )
    missing = sorted({p.name for p in paths.values() if not p.is_file()})
    if missing:
        raise CorruptArtifactError(
            f"backbone shards {missing} listed in {str(index)!r} are missing"
        )
    return paths


def merge_into(model: nn.Module, directory: str | Path) -> nn.Module:
    """Set every target weight of a full-precision model to ``Q + (alpha/r)·lora_B·lora_A``.

    The merged LoftQ initialization, computed from the files without PEFT or
    :class:`QuantLinear`: the reference of what :func:`load` computes, and a way to evaluate
    the initialization in full precision. Stored layouts are restored (GPT-2 ``Conv1D``
    transposed, convolution kernels reshaped). Tensors other than the target weights are not
    touched; targets the model lacks (the pooler of a base-model checkpoint built as a masked
    LM) are left out with a warning. Stored names are matched to the model's as :func:`load`
    matches them.

    Parameters
    ----------
    model : torch.nn.Module
        The model the output was made from (same architecture), in any float dtype;
        changed in place.
    directory : str or Path
        A LoftQ output directory.

    Returns
    -------
    torch.nn.Module
        ``model``.
    """
    directory = Path(directory)
    meta = read_quantization_config(directory)
    targets = {module: target_from_meta(module, entry) for module, entry in meta["targets"].items()}
    _check_adapter(directory / ADAPTER, targets)
    adapter = load_file(directory / ADAPTER / ADAPTER_WEIGHTS)
    lora = read_adapter_config(directory / ADAPTER)
    scaling = lora["lora_alpha"] / lora["r"]
    weight_map = _weight_map(directory / BACKBONE)
    placed = _placed_targets(targets, ModelKeys(model), strict=False)
    for module, model_module in placed.items():
        target = targets[module]
        quant = meta["targets"][module]["quantized"]
        tensors = {}
        for name, path in weight_map.items():
            if name.rpartition(".")[0] == module and name != module + ".bias":
                with safe_open(path, framework="pt") as handle:
                    tensors[name] = handle.get_tensor(name)
        q = QuantizedTensor.from_state_dict(tensors, module + ".", quant)
        lora_a = adapter[f"{PEFT_PREFIX}{module}.lora_A.weight"].flatten(1)
        lora_b = adapter[f"{PEFT_PREFIX}{module}.lora_B.weight"].flatten(1)
        merged = restore_shape(q.dequantize() + scaling * (lora_b @ lora_a), target)
        weight = model.get_parameter(model_module + ".weight")
        with torch.no_grad():
            weight.copy_(merged.to(weight.dtype))
    return model
