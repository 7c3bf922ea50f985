"""LoftQ on Dask: the output equals the single-process output bit for bit, whichever worker
quantizes which target; the CLI's --scheduler; refusals."""

import pytest

distributed = pytest.importorskip("distributed")

from leanfit.checkpoints.source import open_checkpoint  # noqa: E402
from leanfit.cli import main  # noqa: E402
from leanfit.exceptions import BadInputError  # noqa: E402
from leanfit.pipeline import LoftQConfig, quantize_checkpoint  # noqa: E402
from leanfit.pipeline.computers import TargetJob  # noqa: E402
from leanfit.pipeline.distributed import (  # noqa: E402
    dask_computer,
    quantize_checkpoint_distributed,
)
from leanfit.pipeline.walker import walk  # noqa: E402
from tests.pipeline.outputs import assert_same_output, files  # noqa: E402
from tests.shared import SYNTHETIC  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """Two in-process workers of one thread each (threads share torch's one-thread setting,
    so their float32 sums are split as in the single process)."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        yield client


@pytest.mark.parametrize(
    "config",
    [
        LoftQConfig(bits=2, rank=4, iters=3, seed=5),
        LoftQConfig(bits=3, rank=3, init="qlora", double_quant=True, first_high_layers=1),
    ],
    ids=["loftq", "qlora-mixed"],
)
def test_distributed_output_equals_the_single_process_output(
    tmp_path, cluster, synthetic_checkpoint, config
):
    single = tmp_path / "single"
    quantize_checkpoint(
        synthetic_checkpoint, single, config, progress=False, max_shard_bytes=50_000
    )
    # max_pending=1: one task at a time, so workers take targets in another pattern than with
    # the default window; seeds follow the target's position, not the worker.
    for max_pending in (1, None):
        out = tmp_path / f"dask-{max_pending}"
        report = quantize_checkpoint_distributed(
            synthetic_checkpoint,
            out,
            config,
            client=cluster,
            progress=False,
            max_shard_bytes=50_000,
            max_pending=max_pending,
        )
        assert len(report.matrices) == 7 * SYNTHETIC.num_layers
        assert_same_output(single, out)


def test_tasks_carry_the_path_not_the_tensors(tmp_path, cluster, synthetic_checkpoint):
    """Each task gets the checkpoint's path and one target's name; the worker reads the
    tensor itself, so no weight goes through the scheduler."""
    sent = []

    class Recording:
        def submit(self, function, *args, **kwargs):
            sent.append(args)
            return cluster.submit(function, *args, **kwargs)

    config = LoftQConfig(bits=2, rank=2, iters=1)
    with open_checkpoint(synthetic_checkpoint) as source:
        compute = dask_computer(Recording(), synthetic_checkpoint, max_pending=3)
        walk(source, tmp_path / "out", config, progress=False, compute=compute)
    assert len(sent) == 7 * SYNTHETIC.num_layers
    for path, _mtime, job, task_config in sent:
        assert (
            path == str(synthetic_checkpoint)
            and isinstance(job, TargetJob)
            and task_config == config
        )
    assert sorted(job.index for _, _, job, _ in sent) == list(range(len(sent)))
    assert not cluster.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))


def test_cli_scheduler_address_gives_the_same_output(
    tmp_path, cluster, synthetic_checkpoint, capsys
):
    options = ["--bits", "2", "--rank", "4", "--iters", "2", "--quiet"]
    assert (
        main(["quantize", str(synthetic_checkpoint), "--out", str(tmp_path / "a"), *options]) == 0
    )
    address = cluster.scheduler.address
    command = [
        "quantize",
        str(synthetic_checkpoint),
        "--out",
        str(tmp_path / "b"),
        "--scheduler",
        address,
    ]
    assert main([*command, *options]) == 0
    assert "28 matrices" in capsys.readouterr().out
    assert files(tmp_path / "b") == files(tmp_path / "a")


def test_refusals(tmp_path, synthetic_checkpoint, cluster):
    config = LoftQConfig(bits=2, rank=2, iters=1)
    with pytest.raises(BadInputError, match="max_pending must be an int >= 1, or None; got 0"):
        quantize_checkpoint_distributed(synthetic_checkpoint, tmp_path / "o", config, max_pending=0)
    with pytest.raises(BadInputError, match="client must be a distributed.Client, a scheduler"):
        quantize_checkpoint_distributed(synthetic_checkpoint, tmp_path / "o", config, client=3)
    calibrated = LoftQConfig(bits=2, rank=2, iters=1, calibration="pride_and_prejudice")
    with pytest.raises(BadInputError, match="calibration runs block by block.* cannot be distrib"):
        quantize_checkpoint_distributed(
            synthetic_checkpoint, tmp_path / "o", calibrated, client=cluster
        )
    assert not (tmp_path / "o").exists()


def test_no_active_client_is_refused(tmp_path, synthetic_checkpoint):
    with pytest.raises(BadInputError, match="no Client is active"):
        quantize_checkpoint_distributed(synthetic_checkpoint, tmp_path / "o", LoftQConfig(rank=2))


def test_an_existing_output_is_refused_before_connecting(tmp_path, synthetic_checkpoint):
    # No client is active: had it tried to connect, the error would be "no Client is active"
    # (with "local", a whole Dask cluster would have started first).
    (tmp_path / "o").mkdir()
    with pytest.raises(BadInputError, match="exists; pass --overwrite"):
        quantize_checkpoint_distributed(synthetic_checkpoint, tmp_path / "o", LoftQConfig(rank=2))
