"""Load a leanfit backbone with transformers' ``from_pretrained``: quant_method ``"leanfit"``.

``leanfit quantize`` writes, next to the packed shards, a ``quantization_config`` into
``OUT/backbone/config.json``
(:func:`leanfit.checkpoints.layout.transformers_quantization_config`)::

    {"quant_method": "leanfit", "format": "leanfit-loftq", "format_version": 2,
     "groups": [{"kind": "linear", "transposed": false, "bits": 2, "method": "nf",
                 "block_size": 64, "double_quant": false,
                 "modules": ["model.layers.0.mlp.down_proj", ...]}, ...]}

one group per quantizer setting, listing the target modules stored with it. Importing this
module registers :class:`LeanfitConfig` and :class:`LeanfitHfQuantizer` with transformers
under that ``quant_method``; then::

    import leanfit.checkpoints.hf  # registers quant_method "leanfit"
    model = AutoModelForCausalLM.from_pretrained("OUT/backbone")
    model = PeftModel.from_pretrained(model, "OUT/adapter")

builds the model on the meta device, replaces every target by a :class:`QuantLinear` skeleton
before a weight is read, and lets transformers load the packed codes and float32 statistics
into its buffers (and every other tensor as usual). No target is dequantized to a float weight
at load: each one computes ``x ↦ x·dequantize(Q)ᵀ + b`` in its forward, and with the adapter
``x·(Q + (alpha/r)·lora_B·lora_A)ᵀ + b`` — what :func:`leanfit.checkpoints.load` builds.

Targets are placed by the rules ``load`` uses (:class:`~leanfit.checkpoints.keys.ModelKeys`:
transformers' renamings and the base-model prefix). Where the model names a target otherwise
than the checkpoint (ViT in transformers 5, a sentence-transformers checkpoint loaded with a
head class), PEFT needs :func:`peft_arguments` to attach the adapter.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.utils.quantization_config import QuantizationConfigMixin

from leanfit.checkpoints.keys import ModelKeys, adapter_key_mapping
from leanfit.checkpoints.layout import (
    FORMAT,
    FORMAT_VERSION,
    QUANT_METHOD,
    SETTINGS,
    lora_config,
    peft_task_type,
)
from leanfit.checkpoints.swap import quant_linear_skeleton, replace_module
from leanfit.exceptions import BadInputError, CorruptArtifactError, bad_value
from leanfit.quantization.nn import QuantLinear
from leanfit.quantization.spec import QuantSpec

logger = logging.getLogger(__name__)


def _check_group(group: object) -> dict[str, Any]:
    """A group of ``quantization_config``, checked: its settings and a list of module names."""
    if not isinstance(group, dict) or set(group) != {*SETTINGS, "modules"}:
        keys = sorted(group) if isinstance(group, dict) else type(group).__name__
        raise CorruptArtifactError(
            f"a leanfit quantization_config group must hold {sorted({*SETTINGS, 'modules'})}; "
            f"got {keys}"
        )
    try:
        QuantSpec.from_dict(group)
    except CorruptArtifactError as err:
        raise CorruptArtifactError(f"a leanfit quantization_config group: {err}") from err
    if group["kind"] not in ("linear", "conv") or not isinstance(group["transposed"], bool):
        raise CorruptArtifactError(
            "a leanfit quantization_config group must have kind 'linear' or 'conv' and a bool "
            f"transposed; got {[group[k] for k in SETTINGS[:2]]}"
        )
    modules = group["modules"]
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
        raise CorruptArtifactError(
            f"a leanfit quantization_config group must list module names; got {modules!r}"
        )
    return group


class LeanfitConfig(QuantizationConfigMixin):
    """transformers' view of the ``quantization_config`` leanfit writes (quant_method
    ``"leanfit"``): the target modules of a backbone and how each is stored.

    Only read from a backbone's ``config.json`` (``leanfit quantize`` writes it); a model cannot
    be quantized on load with it.

    Raises
    ------
    CorruptArtifactError
        Another format, a newer format version, or an invalid group.
    """

    def __init__(
        self,
        groups: list[dict[str, Any]],
        format: str = FORMAT,
        format_version: int = FORMAT_VERSION,
        quant_method: str = QUANT_METHOD,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise CorruptArtifactError(
                f"a leanfit quantization_config holds groups, format, format_version and "
                f"quant_method; got also {sorted(unknown)}"
            )
        if format != FORMAT or quant_method != QUANT_METHOD:
            raise CorruptArtifactError(
                f"a leanfit quantization_config must have format {FORMAT!r} and quant_method "
                f"{QUANT_METHOD!r}; got {format!r}, {quant_method!r}"
            )
        if isinstance(format_version, bool) or not isinstance(format_version, int):
            raise CorruptArtifactError(f"format_version must be an int; got {format_version!r}")
        if format_version > FORMAT_VERSION:
            raise CorruptArtifactError(
                f"the backbone has format_version {format_version}, newer than the "
                f"{FORMAT_VERSION} this leanfit reads; upgrade leanfit"
            )
        if not isinstance(groups, list) or not groups:
            raise CorruptArtifactError(f"groups must be a non-empty list; got {groups!r}")
        self.quant_method = quant_method  # type: ignore[assignment]
        self.format = format
        self.format_version = format_version
        self.groups = [_check_group(group) for group in groups]

    def settings(self) -> dict[str, dict[str, Any]]:
        """Module name → its group's settings (:data:`SETTINGS`)."""
        return {
            module: {k: group[k] for k in SETTINGS}
            for group in self.groups
            for module in group["modules"]
        }


class LeanfitHfQuantizer(HfQuantizer):
    """Loads a backbone written by ``leanfit quantize``: targets as :class:`QuantLinear`.

    Before the weights are read the linear targets (GPT-2 ``Conv1D`` included) are replaced by
    all-zero :class:`QuantLinear` skeletons whose buffers carry the stored names (``packed``,
    ``scales``, …); transformers then loads the shards into them. The float32 statistics keep
    their dtype whatever ``dtype`` the model is loaded in. Saving the model
    (``save_pretrained``) writes the same packed tensors and this ``quantization_config``, so
    it loads back the same way. ``model.dequantize()`` replaces every :class:`QuantLinear` by
    an ``nn.Linear`` holding its dequantized weight.
    """

    requires_calibration = True  # only a backbone leanfit wrote: no quantization on load
    quantization_config: LeanfitConfig
    module_names: dict[str, str]
    """Stored module name → the model's, for each target the model has (set at load)."""

    def __init__(self, quantization_config: LeanfitConfig, **kwargs: Any) -> None:
        if not kwargs.get("pre_quantized", True):
            raise BadInputError(
                "quant_method 'leanfit' loads only a backbone written by leanfit quantize (its "
                "config.json names it); it cannot quantize a model while loading it: run "
                "`leanfit quantize MODEL OUT`, then from_pretrained('OUT/backbone')"
            )
        super().__init__(quantization_config, **kwargs)

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> None:
        """Swap every target of the config for a :class:`QuantLinear` skeleton, which
        transformers then leaves out of its initialization of missing weights."""
        settings = self.quantization_config.settings()
        conv = sorted(m for m, s in settings.items() if s["kind"] == "conv")
        if conv:
            raise BadInputError(
                f"targets {conv[:3]} are convolutions, which from_pretrained cannot load packed; "
                "load this output with leanfit.checkpoints.load(OUT)"
            )
        keys = ModelKeys(model)
        fused = [module for module in settings if keys.fused(module + ".weight")]
        if fused:
            raise CorruptArtifactError(
                f"targets {fused[:3]} are merged by transformers into another parameter of "
                f"{type(model).__name__} when loaded (e.g. the experts of a mixture-of-experts "
                "layer), which a packed layer cannot be; quantize the other layers (--target)"
            )
        names = {module: keys.module(module) for module in settings}
        absent = sorted(module for module, name in names.items() if name is None)
        if len(absent) == len(names):
            modules = sorted(name for name, _ in model.named_modules())
            raise CorruptArtifactError(
                f"the backbone's targets (e.g. {absent[:3]}) are not modules of the "
                f"{type(model).__name__} built (e.g. {modules[1:4]}): the backbone "
                "does not match the model class"
            )
        if absent:
            logger.warning(
                "%d targets of the backbone are not modules of %s (a part of the saved model "
                "this class lacks, e.g. a pooler) and are not loaded: %s",
                len(absent),
                type(model).__name__,
                absent[:3],
            )
        self.module_names = {module: name for module, name in names.items() if name is not None}
        for module, name in self.module_names.items():
            setting = settings[module]
            original = model.get_submodule(name)
            layer = quant_linear_skeleton(module, original, setting, setting["transposed"])
            # Nothing of it for transformers to initialize: its tensors come from the backbone
            # (a missing one is refused after loading), and initializing it would dequantize
            # its weight for nothing.
            layer._is_hf_initialized = True  # type: ignore[assignment]
            replace_module(model, name, layer)

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        """Refuse a model whose targets' tensors were not all in the backbone's shards."""
        unloaded = [  # transformers flags each tensor it loads (and allocates the others)
            f"{name}.{tensor_name}"
            for name, layer in model.named_modules()
            if isinstance(layer, QuantLinear)
            for tensor_name, tensor in layer.state_dict(keep_vars=True).items()
            if not getattr(tensor, "_is_hf_initialized", False)
        ]
        if unloaded:
            raise CorruptArtifactError(
                f"the backbone's shards lack {len(unloaded)} tensors of its targets, "
                f"e.g. {unloaded[:3]}"
            )
        return model

    def _dequantize(self, model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
        """Replace every :class:`QuantLinear` by an ``nn.Linear`` with its dequantized weight."""
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
        for name, layer in layers:
            linear = nn.Linear(
                layer.in_features,
                layer.out_features,
                layer.bias is not None,
                device=layer.packed.device,
                dtype=dtype,
            )
            with torch.no_grad():
                linear.weight.copy_(layer.quantized.dequantize())
                if layer.bias is not None:
                    linear.bias.copy_(layer.bias)
            replace_module(model, name, linear)
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        """LoRA adapters on the packed layers train (the packed weights stay frozen)."""
        return True


def peft_arguments(model: nn.Module, adapter: str | Path) -> dict[str, Any]:
    """Keyword arguments of ``PeftModel.from_pretrained(model, adapter, **them)`` that attach
    a leanfit adapter to a backbone loaded by ``from_pretrained``.

    The adapter names its targets as the checkpoint does. When the model names some of them
    otherwise (transformers' renamings, e.g. ViT's ``attention.attention.query`` →
    ``attention.q_proj``; or the base-model prefix added, as for a sentence-transformers
    checkpoint loaded with a head class), PEFT needs the adapter's config with the model's
    names (``config``) and a ``key_mapping`` that renames the stored LoRA tensors; otherwise
    nothing is needed and this is ``{}``.

    Parameters
    ----------
    model : torch.nn.Module
        A model ``from_pretrained`` loaded from a leanfit backbone.
    adapter : str or Path
        The adapter directory (``OUT/adapter``).

    Raises
    ------
    BadInputError
        ``model`` was not loaded from a leanfit backbone.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if not isinstance(quantizer, LeanfitHfQuantizer):
        raise bad_value(
            "model",
            type(model).__name__,
            "a model loaded by from_pretrained from a leanfit backbone (quant_method 'leanfit')",
        )
    placed = quantizer.module_names
    if all(stored == name for stored, name in placed.items()):
        return {}
    config = lora_config(Path(adapter), peft_task_type(type(model).__name__), placed.values())
    return {"config": config, **adapter_key_mapping(placed)}


def register() -> None:
    """Register :class:`LeanfitConfig` and :class:`LeanfitHfQuantizer` with transformers under
    quant_method ``"leanfit"`` (done on import; calling it again does nothing)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(LeanfitConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(LeanfitHfQuantizer)


register()
