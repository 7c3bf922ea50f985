"""Load a LoftQ output directory back (:mod:`leanfit.checkpoints.layout`).

:func:`load` rebuilds the transformers model with the targets as
:class:`~leanfit.quantization.QuantLinear` (never materializing their full-precision
weights) and attaches the adapter with PEFT. The model it returns computes, in every target,
``x ↦ x·(Q + (alpha/r)·lora_B·lora_A)ᵀ + b``. :func:`load_into` fills a model built by the
caller; :func:`merge_into` writes ``Q + (alpha/r)·B·A`` into a float model.
"""

from __future__ import annotations

import inspect
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
    peft_task_type,
    read_adapter_config,
    read_quantization_config,
    target_from_meta,
)
from leanfit.checkpoints.targets import Target, lora_shapes_for_peft, restore_shape
from leanfit.exceptions import BadInputError, CorruptArtifactError, bad_value
from leanfit.io import read_json
from leanfit.quantization.nn import QuantLinear, forget_dequantized
from leanfit.quantization.quantizers import QuantizedTensor
from leanfit.quantization.spec import QuantSpec
from leanfit.quiet import dependency_noise_dropped

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


def _swap_quantized_linears(
    model: nn.Module, targets: dict[str, Target], placed: dict[str, str], meta: dict[str, Any]
) -> None:
    """Replace each linear target by an all-zero :class:`QuantLinear` skeleton (no float weight)."""
    for module_name, name in placed.items():
        target = targets[module_name]
        if target.kind != "linear":
            continue
        original = model.get_submodule(name)
        weight = getattr(original, "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != target.shape:
            raise CorruptArtifactError(
                f"target {module_name!r} has shape {target.shape}; the model built has "
                f"{None if weight is None else tuple(weight.shape)} there"
            )
        n_out, n_in = target.matrix_shape
        spec = QuantSpec.from_dict(meta["targets"][module_name]["quantized"])
        layer = QuantLinear(n_in, n_out, getattr(original, "bias", None) is not None, spec=spec)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)


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


def _tie_weights(model: nn.Module, missing: set[str]) -> None:
    """transformers' own ties of the model built, as ``from_pretrained`` makes them after
    loading (``tie_weights``; from transformers 5 told which tensors the backbone lacked, so
    that a missing tensor — even one just initialized — is tied to the present one): e.g. the
    output embeddings of a masked-LM head built on a checkpoint of its base model."""
    tie_weights = getattr(model, "tie_weights", None)
    if not callable(tie_weights):
        return
    if "missing_keys" in inspect.signature(tie_weights).parameters:
        tie_weights(missing_keys=missing)
    else:
        tie_weights()


def _new_parameters(missing: set[str], loaded: set[str], keys: ModelKeys) -> set[str]:
    """The ``missing`` names to initialize when the model's layout is not the backbone's:
    those outside the base model (a new task head), and those of modules none of whose
    tensors was ``loaded`` (a module the saved class did not have, e.g. a pooler)."""
    present = {name.rpartition(".")[0] for name in loaded}
    return {
        name
        for name in missing
        if not keys.in_base_model(name) or name.rpartition(".")[0] not in present
    }


def _initialize(model: nn.Module, names: Iterable[str]) -> None:
    """Materialize and initialize the parameters the backbone lacks (a new task head), with
    the model's own initializer (transformers' ``_init_weights``) on each module owning one,
    else the module's ``reset_parameters``. Only parameters still on the meta device are
    replaced (by new tensors: never written in place, so nothing they might share is)."""
    model_init = getattr(model, "_init_weights", None)
    for owner in sorted({name.rpartition(".")[0] for name in names}):
        module = model.get_submodule(owner)
        for attr, tensor in list(module.named_parameters(recurse=False)):
            if tensor.is_meta:
                fresh = torch.empty_like(tensor, device="cpu")
                setattr(module, attr, nn.Parameter(fresh, requires_grad=tensor.requires_grad))
        reset = getattr(module, "reset_parameters", None)
        if callable(model_init):
            model_init(module)
        elif callable(reset):
            reset()
        else:
            raise BadInputError(f"module {owner!r} is not in the backbone and has no initializer")


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
    its renamings, and the base-model prefix added or stripped).

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
    return _load_into(model, Path(directory), device, dtype, is_trainable, same_class=True)


def _load_into(
    model: nn.Module,
    directory: Path,
    device: torch.device | str,
    dtype: torch.dtype,
    is_trainable: bool,
    same_class: bool,
) -> PeftModel:
    """:func:`load_into`. When the model's layout differs from the backbone's (``same_class``
    false: another task than the saved one; or the base-model prefix added or stripped: a
    checkpoint of a base model saved under a head class), tensors are handled as transformers
    handles them: backbone tensors the model lacks (the saved model's head, a pooler) are
    dropped with a warning, and the parameters the backbone lacks are initialized with a
    warning when they lie outside the base model (a new task head) or in a module of it the
    backbone lacks entirely (the pooler of a masked-LM checkpoint loaded as a classifier). A
    module the backbone holds only in part, and anything missing when the layouts agree, are
    refused as a damaged artifact."""
    with dependency_noise_dropped():  # PEFT imports bitsandbytes (its CPU kernel notice)
        from peft import LoraConfig, PeftModel

    if not isinstance(model, nn.Module):
        raise bad_value("model", type(model).__name__, "a torch.nn.Module")
    meta = read_quantization_config(directory)
    targets = {module: target_from_meta(module, entry) for module, entry in meta["targets"].items()}
    _check_adapter(directory / ADAPTER, targets)
    keys = ModelKeys(model)
    relayout = any(keys(t.name) not in (None, keys.renamed(t.name)) for t in targets.values())
    strict = same_class and not relayout
    placed = _placed_targets(targets, keys, strict)
    tied = _tied_in_model(model, keys, _weight_map(directory / BACKBONE), placed)
    _swap_quantized_linears(model, targets, placed, meta)
    expected = set(model.state_dict())
    buffers = {name for name, _ in model.named_buffers()}
    keys = ModelKeys(model, expected | buffers)  # now with the packed layers' tensors
    loaded: set[str] = set()
    dropped: list[str] = []
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
                    "mixture-of-experts layer); leanfit's load does not make that merge"
                )
            elif new is None and not strict:
                dropped.append(name)  # a head of the saved model that the model built lacks
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
    if dropped:
        logger.warning(
            "%d backbone tensors are not part of %s and are not loaded, e.g. %s",
            len(dropped),
            type(model).__name__,
            dropped[:3],
        )
    missing = expected - loaded - _retie(model, tied)
    head = set() if strict else _new_parameters(missing, loaded, keys)
    _initialize(model, head)
    _tie_weights(model, missing)
    parameters = model.named_parameters(remove_duplicate=False)
    present = {id(parameter) for name, parameter in parameters if name in loaded}
    fresh = sorted(name for name in head if id(model.get_parameter(name)) not in present)
    if fresh:
        logger.warning(
            "%d parameters of %s are not in the backbone and are newly initialized, e.g. %s",
            len(fresh),
            type(model).__name__,
            fresh[:3],
        )
    lacking = {name for name in missing - head if name in buffers or _on_meta(model, name)}
    if lacking:
        raise CorruptArtifactError(
            f"the backbone lacks {len(lacking)} tensors of the model, e.g. {sorted(lacking)[:3]}"
        )
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta:
        raise CorruptArtifactError(f"parameters {on_meta[:3]} were not loaded from the backbone")
    model.to(dtype=dtype)
    saved = read_adapter_config(directory / ADAPTER)
    lora = LoraConfig(
        r=saved["r"],
        lora_alpha=saved["lora_alpha"],
        target_modules=sorted(placed.values()),  # the model's names
        task_type=peft_task_type(type(model).__name__),  # the model built, maybe another
        lora_dropout=0.0,
        bias="none",
    )
    with dependency_noise_dropped():
        peft_model = PeftModel.from_pretrained(
            model,
            str(directory / ADAPTER),
            is_trainable=is_trainable,
            config=lora,
            **adapter_key_mapping(placed),
        )
    forget_dequantized()  # PEFT read the last layer's weight: nothing float is kept
    return peft_model.to(device)


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

    The transformers model is built from ``backbone/config.json`` with its parameters on the
    meta device (no full-precision weights are allocated), the targets are swapped for
    :class:`QuantLinear` and every tensor is loaded from the backbone (:func:`load_into`);
    then ``PeftModel.from_pretrained`` attaches ``adapter/``. Each target then computes
    ``x·(Q + (alpha/r)·lora_B·lora_A)ᵀ + b``.

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
        is freshly initialized.
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
    from accelerate import init_empty_weights

    if task not in TASKS:
        raise bad_value("task", task, f"one of {TASKS}")
    if num_labels is not None and (
        isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1
    ):
        raise bad_value("num_labels", num_labels, "an int >= 1, or None")
    directory = Path(directory)
    meta = read_quantization_config(directory)
    backbone = directory / BACKBONE
    if not (backbone / "config.json").is_file():
        raise CorruptArtifactError(
            f"{str(backbone)!r} has no config.json: it was written from a plain torch module "
            "(quantize_module); load it with load_into(model, directory)"
        )
    config = transformers.AutoConfig.from_pretrained(backbone)
    if num_labels is not None:
        config.num_labels = num_labels
    cls = model_class(meta.get("architecture")) if task == "auto" else _task_class(task)
    try:
        with init_empty_weights():
            model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    except (ValueError, TypeError, KeyError, AttributeError, ImportError, RuntimeError) as err:
        raise BadInputError(
            f"transformers cannot build {getattr(cls, '__name__', cls)} (model_type "
            f"{config.model_type!r}) from {str(backbone / 'config.json')!r}: {err}"
        ) from err
    return _load_into(model, directory, device, dtype, is_trainable, same_class=task == "auto")


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
