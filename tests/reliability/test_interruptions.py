"""Interrupted and failing writes lose nothing.

``leanfit select`` is killed with SIGKILL at random moments of a real run: the input files
keep their bytes, the output path holds nothing or the complete output, at most hidden
``.NAME.<pid>.*.partial`` siblings are left, and a rerun removes them and writes the same
bytes as an uninterrupted run. A full disk (``OSError(ENOSPC)`` injected into a write
inside :func:`leanfit.io.atomic_output`) gives an :class:`OutputWriteError` / exit code 2
and leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from leanfit.cli import main
from leanfit.exceptions import OutputWriteError
from leanfit.io import atomic_output, stale_partials
from tests.reliability.conftest import table
from tests.reliability.processes import check_kills


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    table(400, 0).to_csv(folder / "train.csv", index=False)
    table(200, 1).to_csv(folder / "test.csv", index=False)
    return folder


def select_args(inputs: Path, out: Path) -> list[str]:
    return [
        "select", "--train", str(inputs / "train.csv"), "--test", str(inputs / "test.csv"),
        "--target", "y", "--sensitive", "g", "--privileged", "M", "--objective", "utility",
        "--seeds", "1", "--out", str(out), "--quiet",
    ]  # fmt: skip


def check_select_kills(inputs: Path, tmp_path: Path, n_kills: int, seed: int) -> list[tuple]:
    return check_kills(
        lambda out: select_args(inputs, out), inputs, tmp_path, n_kills=n_kills, seed=seed
    )


def test_kill_9_during_select_loses_nothing(inputs, tmp_path):
    outcomes = check_select_kills(inputs, tmp_path, n_kills=3, seed=0)
    assert sum(killed for _, killed, _ in outcomes) >= 2  # most kills hit a running process
    assert any(partials for *_, partials in outcomes)  # the partial output was caught


@pytest.mark.slow
def test_kill_9_at_many_moments(inputs, tmp_path):
    outcomes = check_select_kills(inputs, tmp_path, n_kills=12, seed=1)
    assert sum(killed for _, killed, _ in outcomes) >= 9


# -- disk faults ---------------------------------------------------------------------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_output_turns_enospc_into_output_write_error(tmp_path, monkeypatch):
    out = tmp_path / "table.csv"
    monkeypatch.setattr(pd.DataFrame, "to_csv", enospc)
    with pytest.raises(OutputWriteError, match=r"table\.csv.*No space left on device \[ENOSPC\]"):
        with atomic_output(out) as partial:
            pd.DataFrame({"a": [1]}).to_csv(partial)
    assert list(tmp_path.iterdir()) == []
    assert isinstance(OutputWriteError("x"), OSError)  # `except OSError` still catches it


def test_select_on_a_full_disk_exits_2_and_leaves_nothing(inputs, tmp_path, monkeypatch, capsys):
    """The disk fills up while the report's last file is written."""
    real_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "config.json":
            enospc()
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    runs = tmp_path / "runs"
    runs.mkdir()
    code = main(select_args(inputs, runs / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("leanfit select: error: writing output")
    assert "No space left on device [ENOSPC]" in err[0]
    assert list(runs.iterdir()) == []  # neither the output nor a partial


def test_data_export_on_a_full_disk_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pd.DataFrame, "to_csv", enospc)
    code = main(["data", "--export", "german", "--out", str(tmp_path / "german.csv")])
    assert code == 2
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- what a killed process leaves ----------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # reaped: no process has this id until it is reused


def test_stale_partials_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / f".out.{dead_pid()}.abc.partial"
    stale.mkdir()
    (stale / "half.csv").write_text("a,b\n1,")
    live = tmp_path / f".out.{os.getpid()}.def.partial"
    live.mkdir()
    assert stale_partials(out) == [stale]
    with atomic_output(out) as partial:
        partial.write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]


def test_directory_moved_aside_by_a_killed_replacement_is_restored(tmp_path):
    """Killed between the two renames of a replacement: the old output is put back."""
    backup = tmp_path / ".out.old"
    backup.mkdir()
    (backup / "report.md").write_text("previous")
    with pytest.raises(Exception, match="exists; pass --overwrite"):
        with atomic_output(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "report.md").read_text() == "previous"
    assert not backup.exists()
