"""Checkpoint tensor names → the state-dict names of the model transformers builds for them.

A checkpoint stores each tensor under the name it had in the model that saved it. The model
built to load it may name it differently, in two ways that transformers resolves itself when
it loads a checkpoint, and that leanfit resolves the same way:

- renamed modules: transformers 5 renames stored names of some architectures on load (its
  checkpoint conversion mapping); ViT's stored ``vit.encoder.layer.0.attention.attention.query``
  is ``vit.layers.0.attention.q_proj`` in the model, GPT-NeoX's ``embed_out`` is ``lm_head``;
- the base-model prefix (``base_model_prefix``: ``bert``, ``model``, ``transformer``): a
  sentence-transformers checkpoint stores the base model's tensors (``encoder.layer.0...``)
  while its config names a head class whose parameters are ``mpnet.encoder.layer.0...``; a
  task checkpoint loaded as its base model drops the prefix. Like transformers, the prefix is
  added or stripped name by name, when that gives a name of the model.

Conversions that merge or split tensors (transformers' ``WeightConverter``, e.g. the experts of
a mixture-of-experts layer fused into one parameter) are not renamings: :meth:`ModelKeys.fused`
says when a stored name is subject to one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn


def _conversions(model: nn.Module) -> tuple[list[Any], list[Any]]:
    """transformers' renamings and converters for ``model`` (none before transformers 5,
    which loads checkpoints in the model's own names)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
        from transformers.modeling_utils import PreTrainedModel
    except ImportError:
        return [], []
    if not isinstance(model, PreTrainedModel):
        return [], []
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    return renamings, converters


class ModelKeys:
    """The model's state-dict name of each stored tensor name.

    Parameters
    ----------
    model : torch.nn.Module
        The model built (its parameters may be on the meta device).
    keys : iterable of str, optional
        The names to resolve into; default: ``model.state_dict()``'s.
    """

    def __init__(self, model: nn.Module, keys: Iterable[str] | None = None) -> None:
        self.prefix = str(getattr(model, "base_model_prefix", "") or "")
        self.head = bool(self.prefix) and isinstance(getattr(model, self.prefix, None), nn.Module)
        self.keys = set(model.state_dict() if keys is None else keys)
        self._renamings, self._converters = _conversions(model)

    def renamed(self, stored: str) -> str:
        """``stored`` after transformers' renamings (no prefix added or stripped)."""
        if not self._renamings:
            return stored
        from transformers.core_model_loading import rename_source_key

        return str(rename_source_key(stored, self._renamings, [])[0])

    def fused(self, stored: str) -> bool:
        """Whether transformers merges or splits this stored tensor when loading it."""
        if not self._converters:
            return False
        from transformers.core_model_loading import rename_source_key

        return rename_source_key(self.renamed(stored), [], self._converters)[1] is not None

    def __call__(self, stored: str) -> str | None:
        """The model's name of a stored name, or None when the model has no such tensor (a
        head the model built lacks, e.g. the pooler of a checkpoint loaded as a masked LM)."""
        name = self.renamed(stored)
        if name in self.keys:
            return name
        if self.prefix:
            added = f"{self.prefix}.{name}"
            if added in self.keys:
                return added
            stripped = name.removeprefix(self.prefix + ".")
            if stripped != name and stripped in self.keys:
                return stripped
        return None

    def module(self, stored_module: str) -> str | None:
        """The model's name of a stored module, found through its ``.weight``."""
        name = self(stored_module + ".weight")
        return None if name is None else name.removesuffix(".weight")

    def in_base_model(self, name: str) -> bool:
        """Whether a name of the model lies in its base model: under the prefix for a model
        with a head (``bert.``), anywhere for a base model."""
        return not self.head or name.startswith(self.prefix + ".")


def adapter_key_mapping(placed: dict[str, str]) -> dict[str, Any]:
    """PEFT's ``key_mapping`` argument (regex → replacement on the adapter's keys without
    ``base_model.model.``) renaming each stored target to the model's name; none when the
    names agree. The adapter tensors of targets the model lacks match no pattern and stay
    unused."""
    renamed = {stored: name for stored, name in placed.items() if stored != name}
    if not renamed:
        return {}
    return {
        "key_mapping": {
            "^" + re.escape(stored) + r"(?=\.lora_)": name for stored, name in renamed.items()
        }
    }
