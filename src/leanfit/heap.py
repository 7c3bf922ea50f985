"""Giving memory that tensors let go back to the operating system (glibc's heap).

glibc serves large blocks from its heap once its mmap threshold has grown, and keeps freed
heap pages resident while smaller live blocks sit between them. Code that makes and drops
one large tensor after another (the quantize walker, one tensor per step; dequantized
weights read one layer after another) then grows its resident memory far beyond what it
holds. Both shared halves use :class:`FreedMemory` to trim the heap now and then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    function = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return function


def release_freed_memory() -> None:
    """Give the memory freed by the last tensor back to the operating system (glibc only).

    glibc serves large blocks from its heap once its mmap threshold has grown, and keeps
    freed heap pages: walking SmolLM2-135M, resident memory then grew by 420 MB (one
    tensor's worth after another). ``malloc_trim(0)`` after each tensor keeps the growth to
    what is really held (the shard being filled and the adapter): 70–90 MB.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


TRIM_EVERY_BYTES = 32 * 2**20
"""How many bytes of tensors :class:`FreedMemory` lets go between two releases."""


class FreedMemory:
    """Calls :func:`release_freed_memory` once every ``every_bytes`` of tensors let go.

    Each call costs about 2 ms (glibc walks its heap): after each of BERT-base's 199 tensors,
    0.4 s. Once every 32 MiB, the memory not yet given back stays below that much.
    """

    def __init__(self, every_bytes: int = TRIM_EVERY_BYTES) -> None:
        self.every_bytes = every_bytes
        self.pending = 0

    def freed(self, nbytes: int) -> None:
        """Count ``nbytes`` let go; give the memory back once ``every_bytes`` are pending."""
        self.pending += nbytes
        if self.pending >= self.every_bytes:
            release_freed_memory()
            self.pending = 0
