"""QuantLinear: a linear layer whose weight is stored packed and dequantized in forward."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leanfit.exceptions import BadInputError, LeanfitError, bad_value
from leanfit.heap import FreedMemory, release_freed_memory
from leanfit.quantization.quantizers import QuantizedTensor, Scratch, empty_state, quantize
from leanfit.quantization.spec import QuantSpec, check_spec

_INPLACE_DUNDERS = frozenset(
    {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__", "__setitem__"}
)


def _mutates(func: Callable[..., Any]) -> bool:
    """True for in-place tensor methods (``add_``, ``copy_``, ``+=`` …) and ``.data = …``."""
    name = getattr(func, "__name__", "")
    if name == "__set__":
        return getattr(getattr(func, "__self__", None), "__name__", "") == "data"
    if name in _INPLACE_DUNDERS:
        return True
    return name.endswith("_") and not name.startswith("_") and name != "requires_grad_"


_memo = threading.local()


def _last_dequantized(layer: QuantLinear) -> Tensor | None:
    """The weight :attr:`QuantLinear.weight` returned last in this thread, if it was
    ``layer``'s and none of ``layer``'s buffers was replaced or changed since."""
    slot = getattr(_memo, "slot", None)
    if slot is None or slot[0] is not layer:
        return None
    buffers, versions, dense = slot[1:]
    current = [b for b in layer._buffers.values() if b is not None]
    same = len(current) == len(buffers) and all(
        b is old and b._version == v for b, old, v in zip(current, buffers, versions, strict=True)
    )
    return dense if same else None


def _remember(layer: QuantLinear, dense: Tensor) -> None:
    """Keep ``dense`` as ``layer``'s last dequantized weight (one slot per thread). The slot
    holds the layer and its buffers themselves, so an identity can never be recycled."""
    buffers = [b for b in layer._buffers.values() if b is not None]
    _memo.slot = (layer, buffers, [b._version for b in buffers], dense)


_freed = threading.local()
_scratch = threading.local()


def _thread_scratch(device: torch.device) -> Scratch | None:
    """This thread's dequantization scratch for CPU tensors (None elsewhere: the CUDA caching
    allocator already reuses its blocks)."""
    if device.type != "cpu":
        return None
    if not hasattr(_scratch, "value"):
        _scratch.value = Scratch()
    return _scratch.value


def _outside_heap(dense: Tensor) -> Tensor:
    """A copy of a CPU tensor in an anonymous memory map of its own, unmapped when freed.

    Copies made one layer after another (transformers initializing, PEFT wrapping a model)
    and freed in between fragment the C heap when small allocations land between them:
    SmolLM2 kept 280 MB of freed memory resident after ``PeftModel.from_pretrained``. A copy
    mapped on its own goes back to the operating system as soon as it is dropped, and the
    heap that served ``dense`` is trimmed every 32 MiB (:class:`~leanfit.heap.FreedMemory`).
    """
    if dense.device.type != "cpu" or dense.numel() == 0:
        return dense
    nbytes = dense.numel() * dense.element_size()
    copy = torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dense.dtype).view(dense.shape)
    copy.copy_(dense)
    del dense
    if not hasattr(_freed, "memory"):
        _freed.memory = FreedMemory()
    _freed.memory.freed(nbytes)
    return copy


def forget_dequantized() -> None:
    """Drop this thread's remembered weight (see :attr:`QuantLinear.weight`)."""
    _memo.slot = None


class DequantizedWeight(torch.Tensor):
    """A dequantized copy of a packed weight that refuses in-place changes.

    Writing into it could only change a temporary copy, so code that tries (merging a LoRA
    adapter with ``merge_and_unload``, ``weight.data += …``) gets an error instead of a
    silently unchanged model. Operations on it return ordinary tensors.

    transformers' weight initializers skip a tensor whose ``_is_hf_initialized`` is true: a
    packed weight loaded with ``from_pretrained`` is never to be re-initialized.
    """

    _is_hf_initialized = True

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if _mutates(func):
            raise LeanfitError(
                "QuantLinear.weight is a dequantized copy of a packed weight and cannot be "
                "changed in place (merging a LoRA adapter into a quantized layer is not "
                "supported); keep the adapter separate, or rebuild the layer with "
                "QuantLinear.from_linear"
            )
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a matrix product with ``x`` runs in: autocast's for ``x``'s device when
    autocast is on there (e.g. bfloat16 under ``torch.autocast("cpu", torch.bfloat16)``),
    else ``x.dtype``."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


_release = threading.local()


def _release_after_backward() -> None:
    """Give the memory freed during this backward pass back to the operating system when the
    pass ends (once per pass; CPU only).

    The activations a step frees stay resident in glibc's heap, fragmented by what the next
    step allocates between them; the peak then grows over the first steps. A LoRA step of a
    0.55B llama at 2 bits (1 × 64 tokens, the plain PEFT loop): 1332 → 1228 MB peak, step
    time unchanged; SmolLM2 at 512 tokens: peak unchanged, and 440 instead of 1575 MB of
    anonymous memory held between steps. :class:`_PackedLinear` asks for it in backward,
    once per layer: only the first request of a pass (told apart by autograd's graph task
    id) queues the release.
    """
    task = torch._C._current_graph_task_id()
    if getattr(_release, "task", None) == task:
        return
    _release.task = task
    torch.autograd.Variable._execution_engine.queue_callback(release_freed_memory)


class _PackedLinear(torch.autograd.Function):
    """``y = x Wᵀ + b`` with W dequantized from a :class:`QuantizedTensor` in forward and
    again in backward, so that autograd keeps only the packed codes and statistics between
    the two passes, never the float W (as bitsandbytes' ``MatMul4Bit`` does).

    Shapes: x (..., in), W (out, in), b (out,) or None, y (..., out). The packed weight is
    frozen: backward gives ``∂L/∂x = (∂L/∂y) W`` and ``∂L/∂b = Σ ∂L/∂y`` over the leading
    dimensions, and no gradient for W; ``x`` itself is not saved (it would serve only W's).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, bias: Tensor | None, quantized: QuantizedTensor) -> Tensor:
        ctx.quantized = quantized  # the packed buffers only, not saved as tensors
        weight = quantized.dequantize(x.dtype, x.device, scratch=_thread_scratch(x.device))
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        grad_x = grad_bias = None
        if grad_y.device.type == "cpu":
            _release_after_backward()
        if ctx.needs_input_grad[0]:
            scratch = _thread_scratch(grad_y.device)
            grad_x = grad_y @ ctx.quantized.dequantize(grad_y.dtype, grad_y.device, scratch=scratch)
        if ctx.needs_input_grad[1]:
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, grad_bias, None


class QuantLinear(nn.Linear):
    """``y = x Wᵀ + b`` with W kept as a :class:`QuantizedTensor` (packed codes + scales).

    The quantized weight lives in buffers named like :meth:`QuantizedTensor.to_state_dict`
    (``packed``, ``scales``, …), so ``state_dict`` holds no float weight; ``bias`` is an
    ordinary parameter. ``forward`` dequantizes to the input's dtype and calls
    :func:`torch.nn.functional.linear`.

    It subclasses :class:`torch.nn.Linear` so that PEFT's LoRA (``get_peft_model``,
    ``PeftModel.from_pretrained``) wraps it like any linear layer: PEFT only calls the layer
    and reads ``in_features``, ``out_features`` and ``weight`` (device and dtype). ``weight``
    is a read-only :class:`DequantizedWeight` computed on access (float32). The float32
    statistics stay float32 under ``module.to(dtype)`` / ``.half()``: only their device follows.

    The product runs in the input's dtype, or autocast's (:func:`compute_dtype`: bfloat16
    under ``torch.autocast(..., dtype=torch.bfloat16)``). Training through the layer keeps no
    float copy of W for backward: W is dequantized again there (:class:`_PackedLinear`).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
        Create a (zero) bias parameter.
    spec : QuantSpec
        Layout of the quantized weight, see :func:`leanfit.quantization.quantize`.
    device : torch.device or str, optional

    The constructor makes an all-zero skeleton to load a ``state_dict`` into; build a
    working layer with :meth:`from_quantized` or :meth:`from_linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        spec: QuantSpec,
        device: torch.device | str | None = None,
    ) -> None:
        nn.Module.__init__(self)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad_value(name, value, "an int >= 1")
        self.in_features = in_features
        self.out_features = out_features
        self.spec = check_spec("spec", spec, QuantSpec)
        state = empty_state((out_features, in_features), spec, device)
        for name, tensor in state.items():
            self.register_buffer(name, tensor)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_quantized(cls, quantized: QuantizedTensor, bias: Tensor | None = None) -> QuantLinear:
        """A layer computing ``x @ dequantize(quantized).T + bias``; the tensors are copied."""
        if len(quantized.shape) != 2:
            raise bad_value("quantized.shape", quantized.shape, "(out_features, in_features)")
        out_features, in_features = quantized.shape
        device = quantized.packed.device
        layer = cls(
            in_features,
            out_features,
            bias is not None,
            spec=quantized.spec,
            device=device,
        )
        tensors = quantized.to_state_dict("")
        if bias is not None:
            if bias.shape != (out_features,):
                raise bad_value("bias", tuple(bias.shape), f"a tensor of shape ({out_features},)")
            tensors["bias"] = bias.detach()
        layer.load_state_dict(tensors)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> QuantLinear:
        """Quantize an :class:`torch.nn.Linear` with ``spec`` (its bias is kept in full
        precision)."""
        if not isinstance(linear, nn.Linear) or isinstance(linear, QuantLinear):
            raise bad_value("linear", type(linear).__name__, "a torch.nn.Linear (not quantized)")
        quantized = quantize(linear.weight, spec)
        return cls.from_quantized(quantized, linear.bias)

    @property
    def quantized(self) -> QuantizedTensor:
        """The stored weight as a :class:`QuantizedTensor` (sharing the buffers)."""
        shape = (self.out_features, self.in_features)
        return QuantizedTensor.from_tensors(dict(self.named_buffers()), "", shape, self.spec)

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The dequantized weight (out × in), float32, read-only.

        Reading it again on the same, unchanged layer returns the same copy: each thread
        remembers the last layer's, so at most one layer's float32 weight is held per
        thread (code that reads ``weight`` for its shape, device or dtype — PEFT about 20
        times per layer while wrapping it — dequantizes once; :func:`forget_dequantized`
        drops it). A layer whose buffers were replaced or changed in place is dequantized
        afresh. The forward pass never reads it."""
        dense = _last_dequantized(self)
        if dense is None:
            forget_dequantized()  # free the previous layer's copy before making this one
            dense = _outside_heap(self.quantized.dequantize(torch.float32))
            dense = dense.as_subclass(DequantizedWeight)
            _remember(self, dense)
        return dense

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point() or x.shape[-1:] != (self.in_features,):
            raise BadInputError(
                f"x must be a floating-point tensor of shape (..., {self.in_features}); "
                f"got {x.dtype} of shape {tuple(x.shape)}"
            )
        dtype = compute_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            return _PackedLinear.apply(x.to(dtype), bias, self.quantized)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> QuantLinear:
        statistics = {
            name: buf
            for name, buf in self._buffers.items()
            if buf is not None and buf.is_floating_point()
        }
        super()._apply(fn, recurse)
        for name, before in statistics.items():
            after = self._buffers[name]
            if after is not None and after.dtype != before.dtype:
                self._buffers[name] = before.to(after.device)
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, bits={self.spec.bits}, method={self.spec.method!r}, "
            f"block_size={self.spec.block_size}, double_quant={self.spec.double_quant}"
        )
