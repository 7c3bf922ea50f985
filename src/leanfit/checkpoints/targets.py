"""Which weights are quantized, and how each is seen as a matrix.

LoftQ treats the linear layers of the attention and MLP blocks; embeddings, norms and the
output head (``lm_head``) stay in full precision. By default (:func:`target_rule`) the targets
of a model type with a table (:data:`DEFAULT_PATTERNS`) are its table's; every other model gets
all linear layers of its repeated blocks, found by module type in the model transformers
builds from the checkpoint's config (:func:`linear_layers`; PEFT's ``all-linear`` idea): never
the output head, a classifier or a pooler, never an embedding or a patch-embedding
convolution. A weight is handled as a matrix of shape ``n_out × n_in``:

- ``torch.nn.Linear``: the stored ``(out, in)`` weight itself;
- GPT-2's ``Conv1D`` (a linear layer despite its name) stores ``(in, out)``: it is
  transposed (``Target.transposed``);
- ``torch.nn.Conv1d/2d/3d`` (only with ``include_conv=True``): ``(out, in, *kernel)`` is
  flattened to ``(out, in·prod(kernel))``, the layout in which PEFT's LoRA for convolutions
  composes ``lora_B ∘ lora_A`` (see :func:`to_peft_lora`).

Patterns follow PEFT's ``target_modules`` rule: a pattern selects a module (weight name
minus ``.weight``) equal to it, ending with ``"." + pattern``, or matching it as a whole
regular expression.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from leanfit.exceptions import BadInputError, bad_value

_PREFIX = r"(?:.*\.)?"
_ENCODER_DENSE = _PREFIX + r"layer\.\d+\.(?:attention\.output|intermediate|output)\.dense"
_POOLER = _PREFIX + r"pooler\.dense"
_LLAMA = (
    _PREFIX + r"layers\.\d+\.self_attn\.(?:q|k|v|o)_proj",
    _PREFIX + r"layers\.\d+\.mlp\.(?:gate|up|down)_proj",
)

DEFAULT_PATTERNS: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gpt2": (_PREFIX + r"h\.\d+\.(?:attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)",),
    "bert": (
        _PREFIX + r"layer\.\d+\.attention\.self\.(?:query|key|value)",
        _ENCODER_DENSE,
        _POOLER,
    ),
    "roberta": (
        _PREFIX + r"layer\.\d+\.attention\.self\.(?:query|key|value)",
        _ENCODER_DENSE,
        _POOLER,
    ),
    "deberta-v2": (
        _PREFIX + r"layer\.\d+\.attention\.self\.(?:query|key|value)_proj",
        _ENCODER_DENSE,
        _POOLER,
    ),
    "mpnet": (
        _PREFIX + r"layer\.\d+\.attention\.attn\.(?:q|k|v|o)",
        _PREFIX + r"layer\.\d+\.(?:intermediate|output)\.dense",
        _POOLER,
    ),
    "bart": (
        _PREFIX + r"layers\.\d+\.(?:self_attn|encoder_attn)\.(?:q|k|v|out)_proj",
        _PREFIX + r"layers\.\d+\.fc[12]",
    ),
    "t5": (
        _PREFIX + r"block\.\d+\.layer\.\d+\.(?:SelfAttention|EncDecAttention)\.(?:q|k|v|o)",
        _PREFIX + r"block\.\d+\.layer\.\d+\.DenseReluDense\.(?:wi|wi_0|wi_1|wo)",
    ),
}
"""Default target modules per ``model_type``, as whole-name regular expressions.

Attention projections and MLP layers of every block. For the encoders (BERT, RoBERTa,
DeBERTa-v2, MPNet) the pooler's dense layer is included: it belongs to the pretrained
backbone (``BertModel`` has it; all-MiniLM-L6-v2 has 36 block matrices + 1 pooler = 37), and
the LoftQ reference's DeBERTa target list (``query_proj, key_proj, value_proj, dense``)
selects it too. Task heads added on top (``classifier``, ``lm_head``) are never targets.
"""

TRANSPOSED_MODEL_TYPES = frozenset({"gpt2"})
"""Model types whose linear layers are ``Conv1D`` modules storing the weight as in × out (used
when the model's modules are not known, see :class:`LinearLayer`)."""

ALL_LINEAR = "all linear layers of the blocks"
"""The default rule of a model type without a table."""
GIVEN = "the patterns given (--target)"
"""The rule when target patterns are given."""

_NEVER = re.compile(
    r"(?:^|.*\.)(?:lm_head(?:\..*)?|embed_\w*|\w*embeddings?|wte|wpe|shared|relative_attention_bias)"
)
"""Module names that are never quantized, even when a user pattern matches them."""

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|block)\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class Target:
    """A weight selected for quantization.

    Attributes
    ----------
    name : str
        Tensor name in the checkpoint, ending with ``.weight``.
    module : str
        The module's name: ``name`` without ``.weight`` (what PEFT's ``target_modules`` sees).
    shape : tuple of int
        Stored shape: ``(out, in)`` for Linear, ``(in, out)`` for GPT-2 Conv1D,
        ``(out, in, *kernel)`` for a convolution.
    layer_index : int or None
        Block number parsed from the first ``layers.N`` / ``layer.N`` / ``h.N`` / ``block.N``
        in the name (in T5's ``block.3.layer.1``, 3); None outside the blocks (a pooler).
    transposed : bool
        The stored weight is the transpose of the ``n_out × n_in`` matrix (GPT-2 Conv1D).
    kind : {"linear", "conv"}
        ``"conv"`` for 3-D to 5-D convolution kernels.
    """

    name: str
    module: str
    shape: tuple[int, ...]
    layer_index: int | None
    transposed: bool
    kind: Literal["linear", "conv"]

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(n_out, n_in)`` of the matrix view: the shape a quantizer and LoRA work on."""
        if self.kind == "conv":
            return self.shape[0], math.prod(self.shape[1:])
        if self.transposed:
            return self.shape[1], self.shape[0]
        return self.shape[0], self.shape[1]


@dataclass(frozen=True)
class LinearLayer:
    """A linear layer of a model, as its module type says.

    Attributes
    ----------
    transposed : bool
        A transformers ``Conv1D`` (GPT-2 and others), which stores its weight as in × out.
    in_block : bool
        Inside a repeated block: the module's name runs through a numbered child of a
        ``ModuleList`` (``model.layers.3.mlp.up_proj``, ``h.0.attn.c_attn``).
    """

    transposed: bool
    in_block: bool


def linear_layers(model: nn.Module) -> dict[str, LinearLayer]:
    """Every ``torch.nn.Linear`` and transformers ``Conv1D`` of ``model`` by module name, but
    the output embeddings (``model.get_output_embeddings()``, e.g. ``lm_head``).

    The model may be on the meta device: only module types and names are read.
    """
    from transformers.pytorch_utils import Conv1D

    lists = {name for name, module in model.named_modules() if isinstance(module, nn.ModuleList)}
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    layers = {}
    for name, module in model.named_modules():
        if module is output or not isinstance(module, nn.Linear | Conv1D):
            continue
        parts = name.split(".")
        in_block = any(
            part.isdigit() and ".".join(parts[:i]) in lists for i, part in enumerate(parts)
        )
        layers[name] = LinearLayer(transposed=isinstance(module, Conv1D), in_block=in_block)
    return layers


def target_rule(model_type: str, patterns: Sequence[str] | None = None) -> str:
    """Which rule chooses the targets: :data:`GIVEN` with ``patterns``, else
    ``"table for <model_type>"`` for a type of :data:`DEFAULT_PATTERNS`, else
    :data:`ALL_LINEAR`."""
    if patterns is not None:
        return GIVEN
    if model_type in DEFAULT_PATTERNS:
        return f"table for {model_type}"
    return ALL_LINEAR


def needs_model_layers(model_type: str) -> bool:
    """Whether :func:`select_targets` needs the model's linear layers for ``model_type``.

    For a type without a table they are the default targets (:data:`ALL_LINEAR`) and say
    which weights are stored transposed; a type with a table has both in
    :data:`DEFAULT_PATTERNS` and :data:`TRANSPOSED_MODEL_TYPES`, so its model (whose code
    takes seconds to import) need not be built.
    """
    return model_type not in DEFAULT_PATTERNS


def default_target_patterns(model_type: str) -> tuple[str, ...]:
    """The target table of a model type (see :data:`DEFAULT_PATTERNS`).

    Raises
    ------
    BadInputError
        A model type without a table; the message lists those with one.
    """
    if model_type not in DEFAULT_PATTERNS:
        raise BadInputError(
            f"model_type must be one of {sorted(DEFAULT_PATTERNS)} to have a target table; "
            f"got {model_type!r} (its default targets are {ALL_LINEAR}, found in the model)"
        )
    return DEFAULT_PATTERNS[model_type]


def matches(module: str, pattern: str) -> bool:
    """PEFT's ``target_modules`` rule: equal, a ``.``-suffix, or a whole-name regex match."""
    if module == pattern or module.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, module) is not None
    except re.error as err:
        raise BadInputError(
            f"target pattern must be a module name or a regular expression; got {pattern!r} ({err})"
        ) from err


def layer_index(name: str) -> int | None:
    """Block number of a tensor name: the first ``layers.N``, ``layer.N``, ``h.N`` or
    ``block.N``; None when there is none."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def select_targets(
    checkpoint_names: Sequence[str],
    shapes: Mapping[str, Sequence[int]],
    model_type: str,
    patterns: Sequence[str] | None = None,
    include_conv: bool = False,
    layers: Mapping[str, LinearLayer] | None = None,
) -> list[Target]:
    """Choose the weights to quantize, by the rule :func:`target_rule` names.

    With patterns (given, or the model type's table), a tensor is a target when its name ends
    with ``.weight``, its module matches a pattern (:func:`matches`), it is not an embedding
    or output head, and it is 2-D — or 3-D to 5-D with ``include_conv`` (a convolution
    kernel). Matched convolutions without ``include_conv`` are skipped with a warning. Without
    patterns nor table, the targets are the 2-D weights of the linear layers in blocks
    (``layers``).

    Parameters
    ----------
    checkpoint_names : sequence of str
        Tensor names, in checkpoint order (kept in the result).
    shapes : mapping of str to sequence of int
        Stored shape of each name.
    model_type : str
        ``config.model_type``; chooses the table, and whether weights are transposed when
        ``layers`` does not say (:data:`TRANSPOSED_MODEL_TYPES`).
    patterns : sequence of str, optional
        Target patterns replacing the default rule.
    include_conv : bool
        Also quantize convolution kernels, as ``out × (in·prod(kernel))`` matrices.
    layers : mapping of str to LinearLayer, optional
        The linear layers of the model by stored weight name (``….weight``), e.g.
        :meth:`leanfit.checkpoints.base.Checkpoint.linear_layers`.

    Raises
    ------
    BadInputError
        No rule applies (no table, no patterns, no ``layers``), an empty or invalid pattern,
        no tensor matched, or a matched matrix with a dimension below 2 (e.g. zero-size).
    """
    rule = target_rule(model_type, patterns)
    if rule == ALL_LINEAR and layers is None:
        raise BadInputError(
            f"the default targets of model_type {model_type!r} ({ALL_LINEAR}) are found in the "
            "model transformers builds from the checkpoint's config, and it builds none here; "
            "pass the layers to quantize with --target (in Python: patterns), "
            "e.g. --target q_proj --target v_proj"
        )
    if patterns is None and rule != ALL_LINEAR:
        patterns = default_target_patterns(model_type)
    elif patterns is not None and (isinstance(patterns, str) or not patterns):
        raise bad_value("patterns", patterns, "a non-empty list of module names or regexes")
    layers = layers or {}
    targets: list[Target] = []
    skipped_conv: list[str] = []
    not_matrices: list[str] = []
    for name in checkpoint_names:
        module, _, suffix = name.rpartition(".")
        if suffix != "weight" or _NEVER.fullmatch(module):
            continue
        if patterns is None:
            layer = layers.get(name)
            if layer is None or not layer.in_block:
                continue
        elif not any(matches(module, pattern) for pattern in patterns):
            continue
        shape = tuple(int(n) for n in shapes[name])
        if len(shape) == 2:
            kind: Literal["linear", "conv"] = "linear"
        elif 3 <= len(shape) <= 5 and include_conv:
            kind = "conv"
        else:
            (skipped_conv if 3 <= len(shape) <= 5 else not_matrices).append(name)
            continue
        layer = layers.get(name)
        transposed = kind == "linear" and (
            layer.transposed if layer is not None else model_type in TRANSPOSED_MODEL_TYPES
        )
        target = Target(name, module, shape, layer_index(name), transposed, kind)
        if min(target.matrix_shape) < 2:
            raise BadInputError(
                f"tensor {name!r} matches the target patterns but its matrix is "
                f"{target.matrix_shape[0]} × {target.matrix_shape[1]}; a target needs both "
                "dimensions >= 2 (LoRA rank >= 1 below both): leave it out of the patterns"
            )
        targets.append(target)
    if skipped_conv:
        warnings.warn(
            f"{len(skipped_conv)} convolution weights match the target patterns but are skipped "
            f"(pass include_conv=True / --include-conv to quantize them): {skipped_conv[:3]}",
            stacklevel=2,
        )
    if not targets:
        matrices = (
            f"; {len(not_matrices)} matching tensors are not matrices (e.g. {not_matrices[:3]})"
            if not_matrices
            else ""
        )
        chosen = ALL_LINEAR if patterns is None else f"the target patterns {list(patterns)}"
        raise BadInputError(
            f"no weight matched {chosen} among "
            f"{len(checkpoint_names)} tensors (e.g. {list(checkpoint_names)[:3]}){matrices}; "
            "pass patterns naming 2-D weights (--target)"
        )
    return targets


def _check_shape(
    tensor: torch.Tensor, expected: tuple[int, ...], what: str, target: Target
) -> None:
    if tuple(tensor.shape) != expected:
        raise BadInputError(
            f"{what} of {target.name!r} must have shape {expected}; got {tuple(tensor.shape)}"
        )


def matrix_view(tensor: torch.Tensor, target: Target) -> torch.Tensor:
    """The stored weight as the ``n_out × n_in`` matrix (:attr:`Target.matrix_shape`).

    Linear: unchanged; GPT-2 Conv1D: transposed (a view); convolution ``(out, in, *k)``:
    reshaped to ``(out, in·prod(k))`` with ``(in, *k)`` flattened in row-major order.
    """
    _check_shape(tensor, target.shape, "the weight", target)
    if target.kind == "conv":
        return tensor.reshape(target.matrix_shape)
    return tensor.t() if target.transposed else tensor


def restore_shape(matrix: torch.Tensor, target: Target) -> torch.Tensor:
    """Inverse of :func:`matrix_view`: an ``n_out × n_in`` matrix in the stored shape."""
    _check_shape(matrix, target.matrix_shape, "the matrix", target)
    if target.kind == "conv":
        return matrix.reshape(target.shape)
    return matrix.t() if target.transposed else matrix


def lora_shapes_for_peft(target: Target, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of PEFT's ``lora_A`` and ``lora_B`` weights for a target at rank ``r``.

    Linear (also GPT-2 Conv1D, whose PEFT LoRA works in the ``out × in`` space):
    ``(r, n_in)`` and ``(n_out, r)``. Convolution ``(out, in, *k)``: ``lora_A`` is a
    convolution with the same kernel, ``(r, in, *k)``, and ``lora_B`` a 1×…×1 convolution,
    ``(out, r, 1, …)``.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise bad_value("rank", rank, "a positive integer")
    n_out, n_in = target.matrix_shape
    if target.kind == "conv":
        kernel = target.shape[2:]
        return (rank, target.shape[1], *kernel), (n_out, rank, *(1 for _ in kernel))
    return (rank, n_in), (n_out, rank)


def to_peft_lora(
    lora_a: torch.Tensor, lora_b: torch.Tensor, target: Target
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape low-rank factors of the matrix view into PEFT's ``lora_A`` / ``lora_B`` weights.

    Parameters
    ----------
    lora_a : Tensor, shape (r, n_in)
    lora_b : Tensor, shape (n_out, r)
        Factors with ``lora_b @ lora_a`` the update of the ``n_out × n_in`` matrix view. PEFT
        adds ``(alpha/r)·lora_B·lora_A``: divide one factor by ``alpha/r`` beforehand for the
        update to be exactly ``lora_b @ lora_a``.

    Returns
    -------
    (Tensor, Tensor)
        Weights for PEFT's ``lora_A`` and ``lora_B`` modules (:func:`lora_shapes_for_peft`).
        For a convolution, PEFT's update ``lora_B ∘ lora_A`` is the kernel
        ``Σ_r lora_B[o, r]·lora_A[r, i, *k]``, i.e. ``restore_shape(lora_b @ lora_a)``.
    """
    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
        raise BadInputError(
            "lora_a must be r × n_in and lora_b n_out × r with the same r; got shapes "
            f"{tuple(lora_a.shape)} and {tuple(lora_b.shape)}"
        )
    shape_a, shape_b = lora_shapes_for_peft(target, int(lora_a.shape[0]))
    _check_shape(lora_a, (shape_a[0], target.matrix_shape[1]), "lora_a", target)
    _check_shape(lora_b, (target.matrix_shape[0], shape_b[1]), "lora_b", target)
    return lora_a.reshape(shape_a), lora_b.reshape(shape_b)
