"""QuantLinear: a linear layer whose weight is stored packed and dequantized in forward."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leanfit.exceptions import BadInputError, LeanfitError, bad_value
from leanfit.quantization.quantizers import QuantizedTensor, empty_state, quantize

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


@contextmanager
def reuse_dequantized_weight() -> Iterator[None]:
    """Within the block, reading :attr:`QuantLinear.weight` again on the same, unchanged layer
    returns the copy dequantized last instead of dequantizing again.

    One slot per thread: at most one layer's float32 weight is held. For code that reads
    ``weight`` many times in a row for its shape, device or dtype — PEFT reads it about 20
    times per layer while wrapping it. A layer whose buffers changed (another ``data_ptr`` or
    version counter) is dequantized afresh.
    """
    _memo.slot = None
    try:
        yield
    finally:
        del _memo.slot


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

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
        Create a (zero) bias parameter.
    bits, method, block_size, double_quant
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
        bits: int = 4,
        method: str = "nf",
        block_size: int = 64,
        double_quant: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        nn.Module.__init__(self)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad_value(name, value, "an int >= 1")
        if not isinstance(double_quant, bool):
            raise bad_value("double_quant", double_quant, "a bool")
        self.in_features = in_features
        self.out_features = out_features
        self.bits, self.method, self.block_size = bits, method, block_size
        self.double_quant = double_quant
        state = empty_state(
            (out_features, in_features), bits, method, block_size, double_quant, device
        )
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
            bits=quantized.bits,
            method=quantized.method,
            block_size=quantized.block_size,
            double_quant=quantized.double_quant,
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
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 4,
        method: str = "nf",
        block_size: int = 64,
        double_quant: bool = False,
    ) -> QuantLinear:
        """Quantize an :class:`torch.nn.Linear` (its bias is kept in full precision)."""
        if not isinstance(linear, nn.Linear) or isinstance(linear, QuantLinear):
            raise bad_value("linear", type(linear).__name__, "a torch.nn.Linear (not quantized)")
        quantized = quantize(linear.weight, bits, method, block_size, double_quant)
        return cls.from_quantized(quantized, linear.bias)

    @property
    def quantized(self) -> QuantizedTensor:
        """The stored weight as a :class:`QuantizedTensor` (sharing the buffers)."""
        meta = {
            "shape": [self.out_features, self.in_features],
            "bits": self.bits,
            "method": self.method,
            "block_size": self.block_size,
            "double_quant": self.double_quant,
        }
        return QuantizedTensor.from_state_dict(dict(self.named_buffers()), "", meta)

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The dequantized weight (out × in), float32, read-only; computed on each access
        (see :func:`reuse_dequantized_weight`)."""
        memo = hasattr(_memo, "slot")
        if memo:
            key = (
                id(self),
                *((b.data_ptr(), b._version) for b in self._buffers.values() if b is not None),
            )
            if _memo.slot is not None and _memo.slot[0] == key:
                return _memo.slot[1]
        dense = self.quantized.dequantize(torch.float32).as_subclass(DequantizedWeight)
        if memo:
            _memo.slot = (key, dense)
        return dense

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point() or x.shape[-1:] != (self.in_features,):
            raise BadInputError(
                f"x must be a floating-point tensor of shape (..., {self.in_features}); "
                f"got {x.dtype} of shape {tuple(x.shape)}"
            )
        weight = self.quantized.dequantize(x.dtype, x.device)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

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
            f"bias={self.bias is not None}, bits={self.bits}, method={self.method!r}, "
            f"block_size={self.block_size}, double_quant={self.double_quant}"
        )
