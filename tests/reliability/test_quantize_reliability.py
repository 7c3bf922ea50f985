"""``leanfit quantize`` is reproducible, survives ``kill -9`` and a full disk.

A tiny llama checkpoint (safetensors, written into ``tmp_path``) is quantized by the real
command line. Two runs give byte-identical files except ``loftq_report.{json,md}``, which
hold the run's time, peak memory and output path. A run killed with SIGKILL at random
moments leaves the checkpoint untouched and no output in place (only the hidden
``.out.partial`` run), and ``--resume`` completes it with the bytes of an uninterrupted run
(more resume cases: ``test_quantize_resume.py``). A full disk while the backbone is written
gives an :class:`OutputWriteError` (exit code 2) and leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from leanfit.cli import main
from leanfit.exceptions import OutputWriteError
from leanfit.pipeline import LoftQConfig, quantize_checkpoint
from tests.reliability.processes import (
    REPORTS,
    check_kills,
    comparable,
    digest,
    quantize_args,
    run_to_end,
    write_llama,
)


def without_reports(folder: Path) -> dict[str, str]:
    """Every file but the two reports (they hold the run's time, memory and output path)."""
    return {name: h for name, h in digest(folder).items() if name not in REPORTS}


def test_quantize_twice_gives_identical_files(tmp_path):
    """Two processes (so two hash seeds: set iteration orders differ between them)."""
    model = write_llama(tmp_path / "model")
    first, second = tmp_path / "first", tmp_path / "second"
    run_to_end(quantize_args(model, first))
    run_to_end(quantize_args(model, second))
    files = without_reports(first)
    assert set(REPORTS) <= set(digest(first))
    assert {"adapter/adapter_model.safetensors", "backbone/quantization_config.json"} <= set(files)
    assert any(name.startswith("backbone/model-") for name in files)
    assert files == without_reports(second)  # every file but the two reports
    assert str(tmp_path) not in (first / "backbone" / "quantization_config.json").read_text()


# -- kill -9 -------------------------------------------------------------------------------


def check_quantize_kills(tmp_path: Path, n_kills: int, seed: int) -> list[tuple]:
    """:func:`check_kills` of ``leanfit quantize``: only the hidden partial run is left
    beside the output, and ``--resume`` completes it with the reference's bytes (reports:
    apart from time and memory)."""
    model = write_llama(tmp_path / "model", layers=6, hidden=96)
    return check_kills(
        lambda out: quantize_args(model, out, "--max-shard-size", "20kB"),
        model,
        tmp_path,
        n_kills=n_kills,
        seed=seed,
        files=comparable,
        resume=("--resume",),
        partial_names={".out.partial"},
    )


def test_kill_9_during_quantize_loses_nothing(tmp_path):
    outcomes = check_quantize_kills(tmp_path, n_kills=3, seed=0)
    assert sum(killed for _, killed, _ in outcomes) >= 2  # most kills hit a running process
    assert any(partials for *_, partials in outcomes)  # the partial output was caught


@pytest.mark.slow
def test_kill_9_during_quantize_at_many_moments(tmp_path):
    outcomes = check_quantize_kills(tmp_path, n_kills=12, seed=1)
    assert sum(killed for _, killed, _ in outcomes) >= 9


# -- full disk -----------------------------------------------------------------------------


def test_full_disk_during_the_backbone_write(tmp_path, monkeypatch, capsys):
    """``save_file`` of the first backbone shard raises ENOSPC."""
    from leanfit.checkpoints import writer

    def save_file(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    model = write_llama(tmp_path / "model")
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(writer, "save_file", save_file)
    with pytest.raises(OutputWriteError, match=r"No space left on device \[ENOSPC\]"):
        quantize_checkpoint(model, runs / "api", LoftQConfig(rank=4, iters=1), progress=False)
    assert list(runs.iterdir()) == []  # neither the output nor a partial
    capsys.readouterr()
    assert main(quantize_args(model, runs / "cli")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("leanfit quantize: error: writing output")
    assert "No space left on device [ENOSPC]" in err[0]
    assert list(runs.iterdir()) == []
