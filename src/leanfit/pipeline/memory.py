"""Memory budget of a quantization run: sizes, the up-front estimate, the refusal message.

The walker holds, at its peak, the working set of one target through the LoftQ loop plus
the backbone shard being filled (and the dequantized shard with ``export_dequantized``);
the adapter is written to disk shard by shard and loaded whole only at the end, when the
shard buffers are empty. The estimate is of *anonymous* memory (resident set minus
file-backed pages: a memory-mapped checkpoint's pages are page cache the kernel can drop)::

    peak ≈ baseline + max( w · max_i ws(tensor_i) + buffer(backbone) [+ buffer(dequantized)],
                           adapter bytes )
    ws(target) = k · 4 · n_out · n_in        k = 20 for LoftQ, 10 for QLoRA (iters = 0)
    ws(other)  = 4 · numel                    one transient copy while it is read as float32
    buffer     = min(max(max_shard_bytes, largest tensor group), total bytes of the writer)

``k`` was measured once, by hand, when these constants were chosen (no script in
``benchmarks/`` reproduces the figures of this paragraph; the test's 0.4–1.0 bound does check
them on every run): the anonymous-memory peak of :func:`loftq_decompose` above its input is
13.6 × the float32 matrix for T = 5 and T = 3 (NF2/NF4, 1024 × 4096 and 2048 × 2048), 9.0 for
T = 1 and 5.9 for QLoRA; one more copy is the tensor as read, and the rest is margin for the
allocator (whole runs measured 0.63–0.87 × the estimated increment; the test checks
0.4–1.0). An untouched tensor is read through one transient copy (SmolLM2's GGUF embedding,
49152 × 576, is dequantized by numpy and then copied: the whole run measured 219 MB over
its start for 226 MB estimated). The baseline is the process's anonymous memory when the
run starts (Python, torch, the opened checkpoint). With ``w`` workers
(:mod:`leanfit.pipeline.parallel`) up to ``w`` targets are in flight, each counted as the
largest.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

from leanfit.checkpoints.targets import Target
from leanfit.exceptions import BadInputError, MemoryBudgetError, bad_value
from leanfit.pipeline.config import LoftQConfig

LOFTQ_WORKSPACE = 20
QLORA_WORKSPACE = 10
UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str, name: str = "size") -> int:
    """Bytes of a size such as ``"4GB"``, ``"500 MB"``, ``"1.5GiB"`` or ``"123456"``.

    KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024 (case-insensitive).
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in UNITS:
        raise bad_value(name, text, "a size such as 4GB, 500MB, 1.5GiB or a number of bytes")
    value = float(match.group(1)) * UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise bad_value(name, text, "a size of at least 1 byte")
    return int(value)


def format_size(nbytes: float) -> str:
    """``nbytes`` in kB, MB or GB (powers of 1000), as :func:`parse_size` reads them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{int(nbytes)} B"


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated anonymous-memory peak of a run, by part (bytes); see the module docstring."""

    baseline: int
    workspace: int
    largest_target: str
    shard_buffer: int
    dequantized_buffer: int
    adapter: int
    min_buffer: int
    workers: int = 1

    @property
    def targets_in_flight(self) -> int:
        """The working sets of ``workers`` targets at once (each counted as the largest)."""
        return self.workers * self.workspace

    @property
    def walk(self) -> int:
        """Working memory while walking: the targets in flight plus the shard buffers."""
        return self.targets_in_flight + self.shard_buffer + self.dequantized_buffer

    @property
    def peak(self) -> int:
        """``baseline + max(walk, adapter)``."""
        return self.baseline + max(self.walk, self.adapter)

    def describe(self) -> str:
        parts = [
            f"baseline {format_size(self.baseline)}",
            f"working set of {self.largest_target!r} {format_size(self.workspace)}"
            + (f" × {self.workers} workers" if self.workers > 1 else ""),
            f"shard buffer {format_size(self.shard_buffer)}",
        ]
        if self.dequantized_buffer:
            parts.append(f"dequantized shard buffer {format_size(self.dequantized_buffer)}")
        if self.adapter > self.walk:  # the peak is the adapter loaded whole at the end
            parts = [parts[0], f"adapter {format_size(self.adapter)}"]
        return f"{format_size(self.peak)} (" + " + ".join(parts) + ")"

    def check(self, budget: int) -> None:
        """Raise :class:`BadInputError` if the estimate is above ``budget``, saying what
        would fit."""
        if self.peak <= budget:
            return
        buffers = 2 if self.dequantized_buffer else 1
        room = (budget - self.baseline - self.targets_in_flight) // buffers
        if room >= self.min_buffer and self.adapter + self.baseline <= budget:
            advice = f"a --max-shard-size of at most {format_size(room)} would fit"
        else:
            need = self.baseline + max(
                self.targets_in_flight + buffers * self.min_buffer, self.adapter
            )
            advice = (
                f"even with the smallest shards it needs about {format_size(need)}; raise "
                "--max-memory, or quantize on a machine with more memory"
            )
        raise BadInputError(
            f"max_memory_bytes must cover the estimated peak memory {self.describe()}; got "
            f"{format_size(budget)}: {advice}",
            param="max_memory_bytes",
            value=budget,
        )


def estimate_memory(
    targets: list[Target],
    shapes: dict[str, tuple[int, ...]],
    plan: dict[str, int],
    config: LoftQConfig,
    *,
    max_shard_bytes: int,
    export_dequantized: bool,
    baseline: int,
    workers: int = 1,
) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of walking tensors ``shapes`` (in order) with these
    targets and bits, ``workers`` targets at a time; ``baseline`` is the anonymous memory
    before the walk."""
    factor = LOFTQ_WORKSPACE if config.lora.iters > 0 else QLORA_WORKSPACE
    rank, block_size = config.lora.rank, config.quant.block_size
    by_name = {t.name: t for t in targets}
    workspace, largest = 0, "(none)"
    groups, halves, adapter = [], [], 0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        target = by_name.get(name)
        if target is None:
            # read as float32 (into the shard buffer) through one transient copy: a GGUF
            # block dequantized by numpy, a bfloat16 tensor cast
            if 4 * numel > workspace:
                workspace, largest = 4 * numel, name
            groups.append(4 * numel)
            halves.append(2 * numel)
            continue
        n_out, n_in = target.matrix_shape
        if factor * 4 * numel > workspace:
            workspace, largest = factor * 4 * numel, name
        # packed codes + per-block float32 scale and offset
        groups.append(math.ceil(numel * plan[name] / 8) + 8 * math.ceil(numel / block_size))
        halves.append(2 * numel)
        adapter += 4 * rank * (n_out + n_in)

    def buffer(sizes: list[int]) -> int:
        return min(max(max_shard_bytes, max(sizes, default=0)), sum(sizes))

    return MemoryEstimate(
        baseline=baseline,
        workspace=workspace,
        largest_target=largest,
        shard_buffer=buffer(groups),
        dequantized_buffer=buffer(halves) if export_dequantized else 0,
        adapter=adapter,
        min_buffer=max(groups, default=0),
        workers=workers,
    )


def check_budget(value: object) -> int | None:
    """Validate ``max_memory_bytes``: None or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_value("max_memory_bytes", value, "an int >= 1 (bytes), or None")
    return value


class PeakMemory:
    """Peak RSS and peak anonymous memory (RSS − file-backed shared pages) of this process,
    sampled every 20 ms by a background thread (psutil)."""

    def __init__(self, budget: int | None = None) -> None:
        self._process = psutil.Process()
        self.rss = self.anon = self.start_rss = self.start_anon = 0
        self.budget = budget
        self.over: int | None = None  # the first anonymous-memory sample above the budget
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        info = self._process.memory_info()
        anon = info.rss - getattr(info, "shared", 0)
        self.rss = max(self.rss, info.rss)
        self.anon = max(self.anon, anon)
        if self.budget is not None and anon > self.budget and self.over is None:
            self.over = anon

    def check(self, done: str) -> None:
        """Raise :class:`MemoryBudgetError` once a sample went over the budget."""
        if self.over is None or self.budget is None:
            return
        raise MemoryBudgetError(
            f"max_memory: the run used {format_size(self.over)} of anonymous memory, over the "
            f"budget of {format_size(self.budget)}, and stopped after {done}; the finished "
            "shards are kept: run again with --resume and a larger --max-memory or a smaller "
            "--max-shard-size"
        )

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    @contextmanager
    def running(self) -> Iterator[PeakMemory]:
        self.sample()
        self.start_rss, self.start_anon = self.rss, self.anon
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.sample()
