"""What the walker reads: a source of tensors in Hugging Face names and layout.

:class:`TensorSource` is the protocol; :class:`Checkpoint` the base of the file readers
(:mod:`leanfit.checkpoints.source` for safetensors, :mod:`leanfit.checkpoints.gguf_source`
for GGUF), with the helpers they share; :class:`ModuleSource` an in-memory model.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from leanfit.checkpoints.keys import ModelKeys
from leanfit.checkpoints.targets import LinearLayer, linear_layers
from leanfit.exceptions import (
    BadInputError,
    CorruptArtifactError,
    LeanfitError,
    bad_value,
)


@dataclass(frozen=True)
class ModelStructure:
    """What the model built from a checkpoint's config says of its stored tensors.

    Attributes
    ----------
    tied : dict of str to str
        ``alias -> stored name`` (:func:`tied_aliases`).
    layers : dict of str to LinearLayer, or None
        The linear layers by stored weight name (:func:`stored_linear_layers`); None when
        transformers builds no model for the config.
    """

    tied: dict[str, str]
    layers: dict[str, LinearLayer] | None


def model_structure(model: nn.Module | None, stored: Iterable[str]) -> ModelStructure:
    """The :class:`ModelStructure` of ``model`` (None: no model) for the ``stored`` names."""
    if model is None:
        return ModelStructure({}, None)
    stored = list(stored)
    return ModelStructure(
        tied_aliases(model.named_parameters(remove_duplicate=False), stored),
        stored_linear_layers(model, stored),
    )


class Checkpoint(abc.ABC):
    """A checkpoint read tensor by tensor; tensors are in Hugging Face names and layout.

    The model transformers builds from the config (on the meta device) tells :attr:`tied` and
    :meth:`linear_layers`. It is built on first use only: importing a model's code costs
    about 2 s, which a walk with a target table never needs.

    Attributes
    ----------
    path : Path
        The directory or GGUF file opened.
    config : transformers.PretrainedConfig
        The model configuration.
    """

    def __init__(self, path: Path, config: PretrainedConfig) -> None:
        self.path = path
        self.config = config
        self._structure: ModelStructure | None = None
        self._closed = False

    @property
    def model_type(self) -> str:
        """The configuration's ``model_type``, e.g. ``"llama"`` or ``"bert"``."""
        return str(self.config.model_type)

    def names(self) -> list[str]:
        """Names of the stored tensors, in file order (shard by shard for sharded files)."""
        self._check_open()
        return list(self._stored_names())

    @property
    def tied(self) -> dict[str, str]:
        """Parameters of the model that share the storage of a stored tensor and are not stored
        themselves, ``alias -> stored name`` (e.g. ``{"lm_head.weight":
        "model.embed_tokens.weight"}`` with tied embeddings). ``names() ∪ tied`` are the
        state-dict keys of the model built by ``from_pretrained``; ``read`` accepts aliases."""
        return self._model_structure().tied

    def linear_layers(self) -> dict[str, LinearLayer] | None:
        """The linear layers of the model transformers builds from the config, by stored weight
        name (``….weight``; see :func:`stored_linear_layers`); None when transformers builds
        no model for it (a class it does not provide)."""
        return self._model_structure().layers

    def _model_structure(self) -> ModelStructure:
        if self._structure is None:
            self._check_open()
            self._structure = self._build_structure()
        return self._structure

    @abc.abstractmethod
    def _build_structure(self) -> ModelStructure:
        """What the model built from the config says of the stored tensors."""

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a tensor in Hugging Face layout (a Linear weight is out × in)."""
        return self._shape(self._resolve(name))

    def read(self, name: str) -> torch.Tensor:
        """Materialize one tensor in Hugging Face layout.

        Floating-point tensors (including dequantized GGUF blocks) come back as float32;
        integer tensors (e.g. BERT's ``position_ids``) keep their dtype. Each call returns a
        new tensor that owns its memory: it may be changed in place, and stays valid after
        :meth:`close`. Only this one tensor is materialized.
        """
        tensor = self._read(self._resolve(name))
        return tensor.float() if tensor.is_floating_point() else tensor

    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer, loaded by transformers without running its code.

        Raises
        ------
        BadInputError
            The checkpoint holds no tokenizer.
        CorruptArtifactError
            It holds one that cannot be read.
        """

    @abc.abstractmethod
    def save_config_and_tokenizer(self, out_dir: str | Path) -> list[Path]:
        """Write ``config.json`` and the tokenizer files into ``out_dir`` (created if missing).

        Returns
        -------
        list of Path
            The files written, sorted.
        """

    def close(self) -> None:
        """Release the memory maps; further reads raise :class:`LeanfitError`."""
        self._closed = True
        self._release()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._stored_names())} tensors"
        return f"{type(self).__name__}({str(self.path)!r}, model_type={self.model_type!r}, {state})"

    def _resolve(self, name: str) -> str:
        self._check_open()
        stored = name if name in self._stored_names() else self.tied.get(name, name)
        if stored not in self._stored_names():
            examples = ", ".join(list(self._stored_names())[:3])
            raise BadInputError(
                f"tensor {name!r} is not in checkpoint {str(self.path)!r} "
                f"({len(self._stored_names())} tensors, e.g. {examples})"
            )
        return stored

    def _check_open(self) -> None:
        if self._closed:
            raise LeanfitError(f"checkpoint {str(self.path)!r} is closed")

    @abc.abstractmethod
    def _stored_names(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _shape(self, name: str) -> tuple[int, ...]: ...

    @abc.abstractmethod
    def _read(self, name: str) -> torch.Tensor: ...

    @abc.abstractmethod
    def _release(self) -> None: ...


def meta_model(build: Any, config: PretrainedConfig) -> torch.nn.Module:
    """The model ``build(config)`` on the meta device: parameter names and sharing, no memory."""
    with torch.device("meta"):
        return build(config)


def stored_linear_layers(model: nn.Module, stored: Iterable[str]) -> dict[str, LinearLayer]:
    """The linear layers of ``model`` (:func:`~leanfit.checkpoints.targets.linear_layers`) by
    the stored name of their weight, stored names matched to the model's as transformers
    matches them when loading (:class:`~leanfit.checkpoints.keys.ModelKeys`: its renamings,
    the base-model prefix)."""
    keys = ModelKeys(model)
    layers = linear_layers(model)
    found = {}
    for name in stored:
        model_name = keys(name) if name.endswith(".weight") else None
        layer = None if model_name is None else layers.get(model_name.removesuffix(".weight"))
        if layer is not None:
            found[name] = layer
    return found


def tied_aliases(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]], stored: Iterable[str]
) -> dict[str, str]:
    """Map each parameter that shares its storage with a stored one to that stored name.

    Parameters
    ----------
    named_parameters : iterable of (str, Parameter)
        ``module.named_parameters(remove_duplicate=False)``: tied parameters appear under
        every name, as the same object.
    stored : iterable of str
        The names present in the checkpoint.

    Returns
    -------
    dict of str to str
        ``alias -> stored name`` for the aliases absent from ``stored``.
    """
    stored = set(stored)
    groups: dict[int, list[str]] = {}
    for name, parameter in named_parameters:
        groups.setdefault(id(parameter), []).append(name)
    aliases = {}
    for names in groups.values():
        present = [name for name in names if name in stored]
        if present:
            aliases.update({name: present[0] for name in names if name not in stored})
    return aliases


def guarded(path: Path, action: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``; any error but a LeanfitError becomes a
    :class:`CorruptArtifactError` saying that ``path`` could not be used to ``action``.

    The parsers of untrusted files (gguf-py, transformers) raise whatever their code hits on
    bad bytes (ValueError, KeyError, IndexError, UnicodeDecodeError, struct.error, ...).
    """
    try:
        return function(*args, **kwargs)
    except (LeanfitError, MemoryError):
        raise
    except Exception as err:
        reason = " ".join(str(err).split())
        raise CorruptArtifactError(
            f"checkpoint {str(path)!r} is damaged or not supported: cannot {action} "
            f"({type(err).__name__}: {reason})"
        ) from err


def load_config(directory: Path, source: Path, **kwargs: Any) -> PretrainedConfig:
    """The model configuration read by transformers, never running code from the checkpoint."""
    try:
        return AutoConfig.from_pretrained(directory, trust_remote_code=False, **kwargs)
    except (LeanfitError, MemoryError):
        raise
    except Exception as err:
        if source.suffix == ".json" and '"auto_map"' in source.read_text(errors="replace"):
            reason = (
                "it names custom code (auto_map), which leanfit never runs "
                "(trust_remote_code=False); use a model type transformers supports"
            )
        else:
            reason = f"{type(err).__name__}: {' '.join(str(err).split())}"
        raise CorruptArtifactError(
            f"the configuration of {str(source)!r} cannot be read by transformers ({reason})"
        ) from err


class TensorSource(Protocol):
    """What the walker reads: a :class:`leanfit.checkpoints.base.Checkpoint` or a
    :class:`ModuleSource`."""

    @property
    def model_type(self) -> str: ...

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str) -> torch.Tensor: ...

    def save_config_and_tokenizer(self, out_dir: str | Path) -> list[Path]: ...

    def linear_layers(self) -> dict[str, LinearLayer] | None: ...


class ModuleSource:
    """An in-memory :class:`torch.nn.Module` seen as a checkpoint: its state-dict tensors.

    Parameters sharing storage are stored under their first name; the others are listed in
    :attr:`tied`. ``model_type`` is the transformers config's, or ``"module"``.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise bad_value("model", type(model).__name__, "a torch.nn.Module")
        self.model = model
        self._state: dict[str, torch.Tensor] = {}
        self.tied: dict[str, str] = {}
        first: dict[tuple[int, int, tuple[int, ...]], str] = {}
        for name, tensor in model.state_dict(keep_vars=False).items():
            key = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
            )
            if key in first and tensor.numel():
                self.tied[name] = first[key]
            else:
                first.setdefault(key, name)
                self._state[name] = tensor

    @property
    def model_type(self) -> str:
        config = getattr(self.model, "config", None)
        return str(getattr(config, "model_type", None) or "module")

    def names(self) -> list[str]:
        return list(self._state)

    def linear_layers(self) -> dict[str, LinearLayer]:
        """The module's linear layers (:func:`~leanfit.checkpoints.targets.linear_layers`)
        by weight name."""
        return {f"{name}.weight": layer for name, layer in linear_layers(self.model).items()}

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[self.tied.get(name, name)].shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (tied ones once), as the model holds them."""
        return self._state

    def read(self, name: str) -> torch.Tensor:
        tensor = self._state[self.tied.get(name, name)].detach()
        return (tensor.float() if tensor.is_floating_point() else tensor).to("cpu", copy=True)

    def save_config_and_tokenizer(self, out_dir: str | Path) -> list[Path]:
        """Write the transformers config (with ``architectures``) if the model has one."""
        config = getattr(self.model, "config", None)
        if config is None or not hasattr(config, "save_pretrained"):
            return []
        config = type(config).from_dict(config.to_dict())
        config.architectures = [type(self.model).__name__]
        config.save_pretrained(out_dir)
        return [Path(out_dir) / "config.json"]
