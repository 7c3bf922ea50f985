"""Smoke tests of the ``leanfit`` command, run as a real subprocess where it matters."""

import subprocess
import sys

import pandas as pd

from leanfit import __version__
from leanfit.cli import main


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "leanfit.cli", *args], capture_output=True, text=True, check=False
    )


def test_version_and_help():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"leanfit {__version__}"
    result = run_cli("--help")
    assert result.returncode == 0 and "data" in result.stdout


def test_data_lists_and_exports(tmp_path, capsys):
    assert main(["data"]) == 0
    assert "adult.data" in capsys.readouterr().out
    out = tmp_path / "german.csv"
    assert main(["data", "--export", "german", "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 1000


def test_existing_output_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "german.csv"
    out.write_text("keep me")
    result = run_cli("data", "--export", "german", "--out", str(out))
    assert result.returncode == 2
    assert "exists; pass --overwrite" in result.stderr and "Traceback" not in result.stderr
    assert out.read_text() == "keep me"
