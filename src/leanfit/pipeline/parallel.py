"""Several tensors quantized at once on one machine: an ordered map over worker threads.

Most of a LoftQ step on a transformer-sized matrix is small operations (ℓ × ℓ eigen-
decompositions, Cholesky factors, per-block statistics) and element-wise passes that torch's
intra-op threads split poorly. Running ``workers`` matrices side by side, each on one torch
thread, keeps every core busy instead: torch releases the GIL inside its operators. On the
2-core benchmark machine two workers decompose the matrices of MiniLM and SmolLM2 1.4–1.9×
faster than one thread (``benchmarks/loftq_speed.py``: its whole-machine and one-thread
tables).

The results do not depend on ``workers``: each matrix is computed by one thread, with one torch
thread, exactly as a sequential run with ``torch.set_num_threads(1)`` computes it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from leanfit.exceptions import bad_value

Item = TypeVar("Item")
Result = TypeVar("Result")


def check_workers(workers: object) -> int:
    """Validate a number of worker threads: an int >= 1."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise bad_value("workers", workers, "an int >= 1")
    return workers


def in_order(
    submit: Callable[[Item], Any], items: Iterable[Item], window: int
) -> Generator[Any, None, None]:
    """The results of ``submit(item)`` futures, in the items' order, with at most ``window``
    submitted and not yet consumed.

    ``submit`` returns a future with ``result()`` and ``cancel()`` (``concurrent.futures`` or
    Dask). The next item is submitted when a result is taken; the futures still pending when
    the iterator is closed are cancelled.
    """
    waiting = iter(items)
    pending: deque[Any] = deque()

    def submit_next() -> None:
        for item in waiting:
            pending.append(submit(item))
            return

    try:
        for _ in range(window):
            submit_next()
        while pending:
            result = pending.popleft().result()
            submit_next()
            yield result
    finally:
        for future in pending:
            future.cancel()


def ordered_map(
    function: Callable[[Item], Result], items: Iterable[Item], workers: int
) -> Generator[Result, None, None]:
    """``map(function, items)`` computed by ``workers`` threads, each on one torch thread.

    Results come in the items' order. At most ``workers`` items are taken from ``items`` ahead
    of the result being consumed, so a lazy iterable (tensors read from a checkpoint) holds at
    most ``workers`` of them in memory, plus the finished results waiting for an earlier one.
    While the iterator runs, torch's intra-op threads are set to 1 (restored when it ends or
    is closed); ``workers=1`` computes in the calling thread with the threads left as they are.
    """
    workers = check_workers(workers)
    if workers == 1:
        yield from map(function, items)
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="leanfit-worker") as pool:
            yield from in_order(lambda item: pool.submit(function, item), items, workers)
    finally:
        torch.set_num_threads(previous)
