"""Memory of a fine-tuning run: gradient checkpointing, frozen tensors stored in bfloat16,
and the peak memory the run reports."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from leanfit.quiet import dependency_noise_dropped

with dependency_noise_dropped():  # PEFT imports bitsandbytes (its CPU kernel notice)
    from peft import PeftModel


def store_frozen(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Convert the frozen floating-point parameters to ``dtype`` in place (tied ones once);
    buffers (packed codes and their float32 statistics, rotary tables) are left alone."""
    for parameter in model.parameters():
        if not parameter.requires_grad and parameter.is_floating_point():
            parameter.data = parameter.data.to(dtype)


@contextlib.contextmanager
def checkpointing(model: PeftModel, enabled: bool) -> Iterator[None]:
    """transformers' gradient checkpointing (non-reentrant) on ``model``'s base for the body;
    the base's previous setting is restored afterwards. A model that does not support it
    trains without, with a warning. (transformers 5.25 renamed the methods
    ``activation_checkpointing_*``; older versions have only ``gradient_checkpointing_*``.)"""
    base: Any = model.get_base_model()
    before = bool(
        getattr(base, "is_activation_checkpointing", None)
        if hasattr(base, "activation_checkpointing_enable")
        else getattr(base, "is_gradient_checkpointing", False)
    )
    if not enabled or before:
        yield
        return
    if not getattr(base, "supports_gradient_checkpointing", False):
        warnings.warn(
            f"{type(base).__name__} does not support gradient checkpointing; training without "
            "it (more activation memory)",
            stacklevel=4,
        )
        yield
        return
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable({"use_reentrant": False})
        disable = base.activation_checkpointing_disable
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        disable = base.gradient_checkpointing_disable
    config: Any = getattr(base, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache:  # no generation cache while training (transformers says so at every call)
        config.use_cache = False
    try:
        yield
    finally:
        disable()
        if use_cache:
            config.use_cache = use_cache


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory of this process so far, in MB (10⁶ bytes).

    ``peak_rss_mb``: the kernel's high-water mark of the resident set (``VmHWM``; on other
    systems ``ru_maxrss``); with CUDA also ``peak_cuda_allocated_mb``
    (``torch.cuda.max_memory_allocated``).
    """
    status = Path("/proc/self/status")
    kib = None
    if status.is_file():
        kib = next(
            (
                int(line.split()[1])
                for line in status.read_text().splitlines()
                if line.startswith("VmHWM:")
            ),
            None,
        )
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux and BSDs
    peak = {"peak_rss_mb": round(kib * 1024 / 1e6, 1)}
    if device.type == "cuda":
        peak["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 1e6, 1)
    return peak
