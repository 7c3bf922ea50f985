"""Fill a model tensor by tensor from a backbone, for what ``from_pretrained`` cannot load.

:func:`leanfit.checkpoints.load` builds models with transformers' ``from_pretrained``
(:mod:`leanfit.checkpoints.hf`). What that cannot load — an output of ``quantize_module``
(a plain torch module) or one with convolution targets (run dequantized, not packed) — goes
through :func:`load_packed`: the model given must have the backbone's layout (every tensor of
the one a tensor of the other, under transformers' renamings,
:class:`~leanfit.checkpoints.keys.ModelKeys`); the linear targets become
:class:`~leanfit.quantization.QuantLinear` skeletons, each shard is assigned into the model,
and parameters tied to a stored one are tied again. Nothing is initialized.
:func:`merge_into` writes ``Q + (alpha/r)·B·A`` into the target weights of a float model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from leanfit.checkpoints.base import tied_aliases
from leanfit.checkpoints.keys import ModelKeys
from leanfit.checkpoints.layout import (
    ADAPTER,
    ADAPTER_WEIGHTS,
    BACKBONE,
    INDEX_FILE,
    PEFT_PREFIX,
    check_adapter,
    read_adapter_config,
    read_quantization_config,
    target_from_meta,
)
from leanfit.checkpoints.swap import quant_linear_skeleton, replace_module
from leanfit.checkpoints.targets import Target, restore_shape
from leanfit.exceptions import BadInputError, CorruptArtifactError
from leanfit.io import read_json
from leanfit.quantization.quantizers import QuantizedTensor

logger = logging.getLogger(__name__)


def placed_targets(targets: dict[str, Target], keys: ModelKeys, strict: bool) -> dict[str, str]:
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
    return sorted(set(weight_map(backbone).values()))


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


def load_packed(
    model: nn.Module, directory: Path, targets: dict[str, Target], meta: dict[str, Any]
) -> dict[str, str]:
    """Fill ``model`` from the backbone, whose layout it must have (every tensor of the one is
    a tensor of the other, under transformers' renamings), shard by shard; returns the placed
    targets (stored module -> model module).

    For what ``from_pretrained`` cannot load: a plain torch module, convolution targets."""
    keys = ModelKeys(model)
    placed = placed_targets(targets, keys, strict=True)
    tied = _tied_in_model(model, keys, weight_map(directory / BACKBONE), placed)
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


def _on_meta(model: nn.Module, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    tensor = getattr(model.get_submodule(owner), attr, None)
    return not isinstance(tensor, torch.Tensor) or tensor.is_meta


def weight_map(backbone: Path) -> dict[str, Path]:
    """Backbone tensor name → its shard file, from the index: checked to hold what
    transformers reads of it (``metadata``, a non-empty ``weight_map``), and every shard to
    exist."""
    index = backbone / INDEX_FILE
    try:
        content = read_json(index)
        weight_map = content["weight_map"]
        paths = {name: backbone / file for name, file in weight_map.items()}
    except (KeyError, TypeError, AttributeError) as err:
        raise CorruptArtifactError(f"{str(index)!r} is missing or invalid: {err}") from err
    if not paths or not isinstance(content.get("metadata"), dict):
        raise CorruptArtifactError(
            f"{str(index)!r} must hold metadata (an object) and a weight_map naming the "
            f"backbone's tensors; got {len(paths)} names, metadata {content.get('metadata')!r}"
        )
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
    meta, targets = read_targets(directory)
    adapter = load_file(directory / ADAPTER / ADAPTER_WEIGHTS)
    lora = read_adapter_config(directory / ADAPTER)
    scaling = lora["lora_alpha"] / lora["r"]
    shards = weight_map(directory / BACKBONE)
    placed = placed_targets(targets, ModelKeys(model), strict=False)
    for module, model_module in placed.items():
        target = targets[module]
        quant = meta["targets"][module]["quantized"]
        tensors = {}
        for name, path in shards.items():
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


def read_targets(directory: Path) -> tuple[dict[str, Any], dict[str, Target]]:
    """The backbone's metadata (:func:`~leanfit.checkpoints.layout.read_quantization_config`)
    and its targets by stored module name, the adapter checked against them."""
    meta = read_quantization_config(directory)
    targets = {module: target_from_meta(module, entry) for module, entry in meta["targets"].items()}
    check_adapter(directory / ADAPTER, targets)
    return meta, targets
