"""The LoftQ output directory's format: file names, and readers of its metadata.

Written by :mod:`leanfit.checkpoints.writer`, loaded by :mod:`leanfit.checkpoints.loading`.
Layout (see :mod:`leanfit.pipeline.walker`)::

    OUT/backbone/model-0000i-of-0000n.safetensors + model.safetensors.index.json
        a target module ``m`` is stored as ``m.packed``, ``m.scales`` (``m.offsets`` for
        uniform; ``*_dq_scales``, ``*_dq_mean`` with double quantization), its bias as
        ``m.bias``; every other tensor under its own name, as read (float32 or integer)
    OUT/backbone/quantization_config.json   format version and per-target metadata
    OUT/backbone/config.json, tokenizer files
    OUT/adapter/adapter_config.json, adapter_model.safetensors   a PEFT LoRA adapter
    OUT/dequantized/   optional: config, tokenizer, float16 weights with Q dequantized
    OUT/loftq_config.json, loftq_report.json, loftq_report.md

A reader of these files validates them (:func:`read_quantization_config`,
:func:`read_adapter_config`): they are untrusted input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from leanfit._version import __version__
from leanfit.checkpoints.targets import Target, lora_shapes_for_peft
from leanfit.exceptions import BadInputError, CorruptArtifactError
from leanfit.io import read_json, write_json
from leanfit.quantization.spec import QuantSpec

if TYPE_CHECKING:
    from peft import LoraConfig

FORMAT = "leanfit-loftq"
FORMAT_VERSION = 2
"""Version 2 dropped the ``tied`` map of version 1 (``load`` finds the ties in the model it
builds); version 1 outputs still load."""
BACKBONE, ADAPTER, DEQUANTIZED = "backbone", "adapter", "dequantized"
QUANTIZATION_CONFIG = "quantization_config.json"
LOFTQ_CONFIG = "loftq_config.json"
REPORT_JSON, REPORT_MD = "loftq_report.json", "loftq_report.md"
INDEX_FILE = "model.safetensors.index.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

QUANT_METHOD = "leanfit"
SETTINGS = ("kind", "transposed", "bits", "method", "block_size", "double_quant")
"""The keys of a group besides ``modules``: the target kind and its quantizer."""


def transformers_quantization_config(targets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``quantization_config`` of ``backbone/config.json`` for the targets of an output.

    Parameters
    ----------
    targets : mapping
        Module name → its entry of ``backbone/quantization_config.json`` (``kind``,
        ``transposed`` and the quantizer settings under ``quantized``).

    Returns
    -------
    dict
        ``{"quant_method": "leanfit", "format", "format_version", "groups"}``: the modules
        grouped by setting, groups and modules sorted (the same targets give the same bytes).
    """
    groups: dict[tuple[Any, ...], list[str]] = {}
    for module in sorted(targets):
        entry, quantized = targets[module], targets[module]["quantized"]
        key = (entry["kind"], entry["transposed"], *(quantized[k] for k in SETTINGS[2:]))
        groups.setdefault(key, []).append(module)
    return {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "groups": [
            {**dict(zip(SETTINGS, key, strict=True)), "modules": modules}
            for key, modules in sorted(groups.items(), key=lambda group: group[1][0])
        ],
    }


TASKS = ("auto", "causal-lm", "base", "sequence-classification")


def shard_file(number: int) -> str:
    """The name of shard ``number`` (1-based) before :meth:`ShardWriter.close` renames it."""
    return f"model-{number:05d}.safetensors"


def final_shard_file(number: int, count: int) -> str:
    """The name of shard ``number`` of ``count`` (1-based), as transformers names shards."""
    return f"model-{number:05d}-of-{count:05d}.safetensors"


def edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    values = json.loads(path.read_text())
    edit(values)
    write_json(path, values)


def _sort_target_modules(values: dict[str, Any]) -> None:
    if isinstance(values.get("target_modules"), list):  # a str is a regular expression
        values["target_modules"] = sorted(values["target_modules"])


def sort_adapter_targets(adapter: Path) -> None:
    """Rewrite ``adapter/adapter_config.json`` with its ``target_modules`` sorted.

    PEFT keeps ``target_modules`` as a set, so the order it writes follows the hash seed of
    the process; sorted, two runs write the same bytes.
    """
    edit_json(adapter / ADAPTER_CONFIG, _sort_target_modules)


def write_adapter_config(
    adapter: Path,
    *,
    rank: int,
    alpha: float,
    target_modules: list[str],
    task_type: str | None,
) -> None:
    """Write ``adapter/adapter_config.json``, a PEFT LoRA config, without importing PEFT.

    Only the fields leanfit sets are written (``target_modules`` sorted); PEFT gives every
    other field its default when it reads the file, the value ``LoraConfig.save_pretrained``
    would have written. (Importing PEFT, and bitsandbytes through it, took longer than
    quantizing a small model.)
    """
    values = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted(target_modules),
        "task_type": task_type,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
    }
    adapter.mkdir(parents=True, exist_ok=True)
    write_json(adapter / ADAPTER_CONFIG, values)


# --- reading -----------------------------------------------------------------------------


def read_quantization_config(directory: str | Path) -> dict[str, Any]:
    """Validate a LoftQ output directory and return its ``backbone/quantization_config.json``.

    Raises
    ------
    BadInputError
        ``directory`` is not a leanfit LoftQ output (no ``backbone/quantization_config.json``).
    CorruptArtifactError
        The file is unreadable, of another format, of a newer format version, or incomplete.
    """
    directory = Path(directory)
    path = directory / BACKBONE / QUANTIZATION_CONFIG
    if not path.is_file():
        found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "nothing"
        raise BadInputError(
            f"directory must be a leanfit quantize output (with {BACKBONE}/{QUANTIZATION_CONFIG}); "
            f"got {str(directory)!r} holding {found}"
        )
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptArtifactError(f"{str(path)!r} is not a {FORMAT!r} file")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CorruptArtifactError(f"{str(path)!r} has no valid format_version; got {version!r}")
    if version > FORMAT_VERSION:
        raise CorruptArtifactError(
            f"{str(path)!r} has format_version {version}, newer than the {FORMAT_VERSION} this "
            f"leanfit {__version__} reads; upgrade leanfit"
        )
    targets = meta.get("targets")
    if not isinstance(targets, dict) or not targets:
        raise CorruptArtifactError(f"{str(path)!r} lists no targets")
    if not isinstance(meta.get("architecture"), str | None):
        raise CorruptArtifactError(
            f"{str(path)!r}: architecture must be a class name or null; "
            f"got {meta['architecture']!r}"
        )
    return meta


def target_from_meta(module: str, entry: dict[str, Any]) -> Target:
    """The :class:`Target` of a ``quantization_config.json`` entry, its quantizer checked."""
    try:
        name, shape, layer = entry["name"], entry["shape"], entry["layer_index"]
        if not isinstance(name, str) or name.rpartition(".")[0] != module:
            raise BadInputError(f"name must be the module's weight; got {name!r}")
        if not (isinstance(shape, list) and 2 <= len(shape) <= 5 and all(_count(n) for n in shape)):
            raise BadInputError(f"shape must be a list of 2 to 5 sizes >= 1; got {shape!r}")
        if not (layer is None or _count(layer, minimum=0)):
            raise BadInputError(f"layer_index must be null or an int >= 0; got {layer!r}")
        if entry["kind"] not in ("linear", "conv") or not isinstance(entry["transposed"], bool):
            raise BadInputError(
                "kind must be 'linear' or 'conv' and transposed a bool; "
                f"got {entry['kind']!r}, {entry['transposed']!r}"
            )
        target = Target(name, module, tuple(shape), layer, entry["transposed"], entry["kind"])
        quant = entry["quantized"]
        QuantSpec.from_dict(quant)
        if list(quant["shape"]) != list(target.matrix_shape):
            raise BadInputError(
                f"quantized shape {quant['shape']} is not the matrix shape {target.matrix_shape}"
            )
    except (KeyError, TypeError, BadInputError, CorruptArtifactError) as err:
        raise CorruptArtifactError(f"target {module!r} has invalid metadata: {err!r}") from err
    return target


def _count(value: object, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    """The LoRA settings leanfit reads from ``adapter/adapter_config.json``, checked.

    Only ``r`` (int >= 1), ``lora_alpha`` (finite number > 0) and ``target_modules`` (a
    list of module names) are read; the other fields are PEFT's, which leanfit always
    writes with their defaults and never passes on (a field such as ``megatron_core``
    would make PEFT import the module it names).

    Raises
    ------
    CorruptArtifactError
        The file is missing, unreadable, or a field is missing or of the wrong type.
    """
    path = adapter / ADAPTER_CONFIG
    config = read_json(path)
    if not isinstance(config, dict):
        raise CorruptArtifactError(f"{str(path)!r} is not a LoRA adapter config (a JSON object)")
    rank, alpha, modules = (config.get(k) for k in ("r", "lora_alpha", "target_modules"))
    alpha_ok = (
        isinstance(alpha, int | float)
        and not isinstance(alpha, bool)
        and math.isfinite(alpha)
        and alpha > 0
    )
    if not _count(rank) or not alpha_ok:
        raise CorruptArtifactError(
            f"{str(path)!r} must hold r (an int >= 1) and lora_alpha (a number > 0); "
            f"got r {rank!r} and lora_alpha {alpha!r}"
        )
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise CorruptArtifactError(
            f"{str(path)!r}: target_modules must be a list of module names; got {modules!r}"
        )
    return {"r": rank, "lora_alpha": alpha, "target_modules": modules}


def peft_task_type(architecture: str | None) -> str | None:
    """PEFT's ``task_type`` for a model class name: ``"CAUSAL_LM"`` for causal LMs (so that
    ``from_pretrained`` returns a ``PeftModelForCausalLM`` with ``generate``), else None."""
    causal = architecture is not None and architecture.endswith(("ForCausalLM", "LMHeadModel"))
    return "CAUSAL_LM" if causal else None


def lora_config(
    adapter: Path, task_type: str | None, target_modules: Iterable[str] | None = None
) -> LoraConfig:
    """PEFT's config of a leanfit adapter: its rank and alpha (:func:`read_adapter_config`),
    no dropout, no bias, nothing else of the file passed on.

    Parameters
    ----------
    adapter : Path
        The adapter directory (``OUT/adapter``).
    task_type : str or None
        PEFT's task type (e.g. ``"CAUSAL_LM"``, :func:`peft_task_type`).
    target_modules : iterable of str, optional
        The model's names of the targets; default: the adapter's (the checkpoint's names).
    """
    from leanfit.quiet import dependency_noise_dropped

    with dependency_noise_dropped():  # PEFT imports bitsandbytes (its CPU kernel notice)
        from peft import LoraConfig

    saved = read_adapter_config(adapter)
    modules = saved["target_modules"] if target_modules is None else target_modules
    return LoraConfig(
        r=saved["r"],
        lora_alpha=saved["lora_alpha"],
        target_modules=sorted(modules),
        task_type=task_type,
        lora_dropout=0.0,
        bias="none",
    )


def check_adapter(adapter: Path, targets: dict[str, Target]) -> None:
    """Check that the adapter holds exactly lora_A and lora_B of every target, in PEFT's
    shapes.

    Raises
    ------
    CorruptArtifactError
        A file is missing or unreadable, the adapter targets other modules than the
        backbone, or a tensor is missing, unexpected or of the wrong shape.
    """
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
            f"adapter tensor {name!r} must have shape {tuple(shape)} (rank {rank}); got {got} "
            f"({len(wrong)} tensors have wrong shapes)"
        )
