"""Several targets at a time in threads: ordered results, bounded look-ahead, torch threads
restored, errors passed on; quantize output byte-identical to one thread; the memory estimate
counts every worker."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from leanfit.cli import main
from leanfit.exceptions import BadInputError
from leanfit.pipeline import LoftQConfig, quantize_checkpoint
from leanfit.pipeline.parallel import ordered_map
from leanfit.pipeline.walker import estimate_checkpoint_memory
from tests.pipeline.outputs import assert_same_output, files
from tests.shared import SYNTHETIC


def test_results_come_in_order_with_at_most_workers_items_taken_ahead():
    taken = []

    def items():
        for i in range(12):
            taken.append(i)
            yield i

    def slow_first(i: int) -> tuple[int, str]:
        time.sleep(0.02 if i % 3 == 0 else 0.001)  # later items finish before earlier ones
        return i * i, threading.current_thread().name

    results = []
    for value, thread in ordered_map(slow_first, items(), workers=3):
        # this is result k = len(results); the map has taken at most 3 items beyond it
        assert len(taken) <= len(results) + 1 + 3
        results.append((value, thread))
    assert [value for value, _ in results] == [i * i for i in range(12)]
    assert {thread for _, thread in results} != {threading.current_thread().name}


def test_workers_run_one_torch_thread_and_the_setting_is_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = list(ordered_map(lambda _: torch.get_num_threads(), range(4), workers=2))
        assert seen == [1, 1, 1, 1]
        assert torch.get_num_threads() == 2
        # one worker: the calling thread, threads left as they are
        assert list(ordered_map(lambda _: torch.get_num_threads(), range(2), workers=1)) == [2, 2]
    finally:
        torch.set_num_threads(before)


def test_an_error_in_a_worker_reaches_the_caller_and_restores_threads():
    before = torch.get_num_threads()

    def fails_at_three(i: int) -> int:
        if i == 3:
            raise ValueError("item 3 is bad")
        return i

    got = []
    with pytest.raises(ValueError, match="item 3 is bad"):
        for value in ordered_map(fails_at_three, range(8), workers=2):
            got.append(value)
    assert got == [0, 1, 2]
    assert torch.get_num_threads() == before


def test_bad_workers_is_refused():
    with pytest.raises(BadInputError, match="workers must be an int >= 1; got 0"):
        next(ordered_map(abs, [1], workers=0))


@pytest.mark.parametrize(
    "config",
    [
        LoftQConfig(bits=2, rank=4, iters=3, seed=5),
        LoftQConfig(bits=3, rank=3, init="qlora", double_quant=True, first_high_layers=1),
    ],
    ids=["loftq", "qlora-mixed"],
)
def test_workers_give_the_one_thread_output_byte_for_byte(tmp_path, synthetic_checkpoint, config):
    # the package's autouse fixture runs this module on one torch thread
    single = tmp_path / "single"
    quantize_checkpoint(
        synthetic_checkpoint, single, config, progress=False, max_shard_bytes=50_000
    )
    for workers in (2, 3):
        out = tmp_path / f"workers-{workers}"
        report = quantize_checkpoint(
            synthetic_checkpoint,
            out,
            config,
            progress=False,
            max_shard_bytes=50_000,
            workers=workers,
        )
        assert len(report.matrices) == 7 * SYNTHETIC.num_layers
        assert_same_output(single, out)


def test_cli_workers_gives_the_same_output(tmp_path, synthetic_checkpoint, capsys):
    options = ["--bits", "2", "--rank", "4", "--iters", "2", "--quiet", "--threads", "1"]
    assert (
        main(["quantize", str(synthetic_checkpoint), "--out", str(tmp_path / "a"), *options]) == 0
    )
    command = [
        "quantize",
        str(synthetic_checkpoint),
        "--out",
        str(tmp_path / "b"),
        "--workers",
        "2",
    ]
    assert main([*command, *options]) == 0
    assert "28 matrices" in capsys.readouterr().out
    assert files(tmp_path / "b") == files(tmp_path / "a")


def test_memory_estimate_counts_the_working_set_of_every_worker(synthetic_checkpoint):
    one = estimate_checkpoint_memory(synthetic_checkpoint, LoftQConfig(rank=4))
    three = estimate_checkpoint_memory(synthetic_checkpoint, LoftQConfig(rank=4), workers=3)
    assert three.targets_in_flight == 3 * one.workspace
    # same process, same moment: only the in-flight working sets differ (baselines are
    # sampled separately, so they are compared out of the difference)
    assert three.peak - three.baseline == one.peak - one.baseline + 2 * one.workspace
    assert "× 3 workers" in three.describe()
