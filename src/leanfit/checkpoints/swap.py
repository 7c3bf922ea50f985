"""Put packed layers into a model: the module swap and the :class:`QuantLinear` skeleton that
both loading paths (:mod:`leanfit.checkpoints.loading`, :mod:`leanfit.checkpoints.hf`) use."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leanfit.exceptions import CorruptArtifactError
from leanfit.quantization.nn import QuantLinear
from leanfit.quantization.spec import QuantSpec


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of ``model``'s submodule ``name`` (a dotted path)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def quant_linear_skeleton(
    module: str, original: nn.Module, setting: dict[str, Any], transposed: bool
) -> QuantLinear:
    """An all-zero :class:`QuantLinear` to stand for the linear module ``original`` of stored
    target ``module``, on its device (usually meta), with no float weight.

    Parameters
    ----------
    module : str
        The target's stored name (for messages).
    original : torch.nn.Module
        The model's linear layer there (``nn.Linear``, or GPT-2's ``Conv1D``).
    setting : dict
        How the target is stored: ``bits``, ``method``, ``block_size``, ``double_quant``.
    transposed : bool
        Stored as ``(in, out)`` (a GPT-2 ``Conv1D``): the layer's matrix ``(out, in)`` is the
        transposed weight.

    Raises
    ------
    CorruptArtifactError
        ``original`` has no 2-d weight, or is an ``nn.Linear`` while the target is stored
        transposed.
    """
    weight = getattr(original, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise CorruptArtifactError(
            f"target {module!r} must be a linear layer of the model; got "
            f"{type(original).__name__} with weight "
            f"{None if weight is None else tuple(weight.shape)}"
        )
    if transposed and isinstance(original, nn.Linear):
        raise CorruptArtifactError(
            f"target {module!r} is stored transposed (a GPT-2 Conv1D), but the model's module "
            "there is an nn.Linear"
        )
    n_out, n_in = weight.shape[::-1] if transposed else weight.shape
    return QuantLinear(
        n_in,
        n_out,
        getattr(original, "bias", None) is not None,
        spec=QuantSpec.from_dict(setting),
        device=weight.device,
    )
