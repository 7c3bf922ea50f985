"""LoftQ on Dask: the targets of a checkpoint quantized by Dask workers, written by the driver.

The driver plans the targets as :func:`~leanfit.pipeline.quantize_checkpoint` does (same
order, same bits, target i seeded with ``config.seed + i`` whichever worker computes it) and
writes the output directory with the same walker, taking the results in checkpoint order.
Only the checkpoint's path and the target's name go to a worker: each worker opens the
checkpoint itself (once per worker process) and reads its one tensor; it sends back the packed
Q and the LoRA factors (about ``bits/32 + r·(n+m)/(n·m)`` of the float32 matrix). The driver
reads the untouched tensors (embeddings, norms) itself. At most ``max_pending`` tasks are
submitted ahead of the writer, which bounds what the driver holds.

The output equals the single-process output (same files, same tensors bit for bit, same
report up to the timings and memory figures) when the workers run torch with as many threads
as the single process: float32 sums in the products and SVDs depend on how they are split
across threads. Dask's worker processes run one thread each (``OMP_NUM_THREADS=1``), like
``leanfit quantize --threads 1``.

Needs the ``distributed`` extra (``dask[distributed]``) and a filesystem that the driver and
every worker see under the same path, with leanfit installed on the workers.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from leanfit.checkpoints.base import Checkpoint, TensorSource
from leanfit.checkpoints.resume import refuse_existing_output
from leanfit.checkpoints.source import open_checkpoint
from leanfit.exceptions import BadInputError, MissingResourceError, bad_value
from leanfit.pipeline.computers import QuantizedTarget, TargetComputer, TargetJob, quantize_target
from leanfit.pipeline.config import LoftQConfig, LoftQReport
from leanfit.pipeline.parallel import in_order
from leanfit.pipeline.walker import DEFAULT_SHARD_BYTES, walk


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - exercised without the extra only
        raise MissingResourceError(
            'leanfit.pipeline.distributed needs Dask: pip install "leanfit[distributed]"'
        ) from err
    return distributed


@functools.lru_cache(maxsize=4)
def _open_cached(path: str, mtime_ns: int) -> Checkpoint:
    """The checkpoint opened once per worker process (reopened if the file changed)."""
    return open_checkpoint(path)


def _quantize_on_worker(
    path: str, mtime_ns: int, job: TargetJob, config: LoftQConfig
) -> QuantizedTarget:
    """A Dask task: read one target from the checkpoint at ``path`` and quantize it."""
    checkpoint = _open_cached(path, mtime_ns)
    tic = time.perf_counter()
    return quantize_target(checkpoint.read(job.target.name), job, config, tic)


def dask_computer(client: Any, path: str | Path, max_pending: int) -> TargetComputer:
    """A :data:`~leanfit.pipeline.computers.TargetComputer` running the jobs on ``client``'s
    workers, each reading its tensor from ``path``; results come back in the jobs' order,
    with at most ``max_pending`` tasks submitted and not yet consumed."""
    path = str(path)
    mtime_ns = os.stat(path).st_mtime_ns

    def compute(
        source: TensorSource, jobs: list[TargetJob], config: LoftQConfig
    ) -> Generator[QuantizedTarget, None, None]:
        def submit(job: TargetJob) -> Any:
            return client.submit(_quantize_on_worker, path, mtime_ns, job, config, pure=False)

        return in_order(submit, jobs, max_pending)

    return compute


@contextmanager
def connected(client: Any) -> Iterator[Any]:
    """The ``distributed.Client`` meant by ``client``, closed on exit if made here.

    ``client`` is a ``Client`` (used as is), ``None`` (the active client,
    ``distributed.default_client()``), ``"local"`` (a new ``LocalCluster`` of one
    single-threaded worker process per CPU) or a scheduler address such as
    ``"tcp://host:8786"``.
    """
    distributed = _distributed()
    if client is None:
        try:
            client = distributed.default_client()
        except ValueError as err:
            raise BadInputError(
                "client must be a distributed.Client, a scheduler address or 'local', or None "
                "while a Client is active; no Client is active"
            ) from err
    if isinstance(client, distributed.Client):
        yield client
        return
    if not isinstance(client, str) or not client:
        raise bad_value(
            "client", client, "a distributed.Client, a scheduler address, 'local' or None"
        )
    if client == "local":
        with (
            distributed.LocalCluster(threads_per_worker=1, dashboard_address=None) as cluster,
            distributed.Client(cluster) as local,
        ):
            yield local
        return
    try:
        remote = distributed.Client(client, timeout=30)
    except (OSError, TimeoutError, ValueError) as err:
        raise BadInputError(f"cannot reach the Dask scheduler at {client!r}: {err}") from err
    with remote:
        yield remote


def quantize_checkpoint_distributed(
    source: str | Path,
    out_dir: str | Path,
    config: LoftQConfig | None = None,
    *,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    export_dequantized: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    max_pending: int | None = None,
    resume: bool = False,
) -> LoftQReport:
    """:func:`~leanfit.pipeline.quantize_checkpoint` with the targets quantized on Dask.

    Parameters
    ----------
    source, out_dir, config, overwrite, progress, export_dequantized, max_shard_bytes, resume
        As :func:`~leanfit.pipeline.quantize_checkpoint`; ``source`` must be readable
        under the same path by every worker.
    client : distributed.Client or str, optional
        Where the targets are quantized (see :func:`connected`): a ``Client``, a scheduler
        address, ``"local"``, or None for the active client.
    max_pending : int, optional
        Most tasks submitted ahead of the writer (>= 1); default twice the workers' threads.

    Returns
    -------
    LoftQReport
        As the single-process run; its memory figures are the driver's.

    Raises
    ------
    BadInputError
        No client, an unreachable scheduler, or what
        :func:`~leanfit.pipeline.quantize_checkpoint` refuses.
    """
    if max_pending is not None and (
        isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
    ):
        raise bad_value("max_pending", max_pending, "an int >= 1, or None")
    config = LoftQConfig() if config is None else config
    path = Path(source).resolve()
    refuse_existing_output(Path(out_dir), overwrite=overwrite, resume=resume)
    with open_checkpoint(path) as checkpoint, connected(client) as dask_client:
        if max_pending is None:
            max_pending = 2 * max(1, sum(dask_client.nthreads().values()))
        return walk(
            checkpoint,
            out_dir,
            config,
            overwrite=overwrite,
            progress=progress,
            export_dequantized=export_dequantized,
            max_shard_bytes=max_shard_bytes,
            source_label=str(source),
            resume=resume,
            compute=dask_computer(dask_client, path, max_pending),
        )
