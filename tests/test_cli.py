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


#: The console script, with an exit handler registered before it runs.
SCRIPT = """
import atexit, sys
atexit.register(lambda: print("exit handler ran", file=sys.stderr))
sys.argv[0] = "leanfit"
from leanfit.cli import script
script()
"""


def run_script(*args):
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, check=False
    )


def test_console_script_keeps_output_exit_code_and_exit_handlers(tmp_path):
    # script() leaves through os._exit: everything printed must still arrive (stdout is a
    # pipe here, so block-buffered), the exit code must be main's, and atexit handlers run.
    listing = run_script("data")
    assert listing.returncode == 0
    assert listing.stdout == run_cli("data").stdout and "adult.data" in listing.stdout
    assert listing.stderr.endswith("exit handler ran\n")
    out = tmp_path / "german.csv"
    out.write_text("keep me")
    refused = run_script("data", "--export", "german", "--out", str(out))
    assert refused.returncode == 2 and "exists; pass --overwrite" in refused.stderr
    assert refused.stderr.endswith("exit handler ran\n")


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, capsys):
    from leanfit.cli import data

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "run", interrupted)
    assert main(["data"]) == 130
    assert capsys.readouterr().err == "leanfit data: interrupted\n"


def test_api_errors_are_said_with_the_options_that_set_them():
    from leanfit.cli import build_parser, in_option_names, option_names, parser_of
    from leanfit.cli.finetune import API_NAMES

    options = option_names(parser_of(build_parser(["finetune"]), "finetune"), API_NAMES)
    assert options["learning_rate"] == "--lr" and options["batch_size"] == "--batch-size"
    cases = {
        "out_dir '/runs/a' exists; pass overwrite=True to replace it":
            "--out '/runs/a' exists; pass --overwrite to replace it",
        "learning_rate must be a finite number > 0; got -1.0":
            "--lr must be a finite number > 0; got -1.0",
        "give steps or epochs, not both; got steps=3, epochs=1.0":
            "give steps or epochs, not both; got --steps 3, --epochs 1.0",
        "task must be one of ['causal-lm']; got 'x'":
            "--task must be one of ['causal-lm']; got 'x'",
        "schedule='cosine' needs steps": "--schedule cosine needs steps",
        # prose, tensor and file names keep their words
        "the seed of model.max_length_head.weight is the steps count":
            "the seed of model.max_length_head.weight is the steps count",
    }  # fmt: skip
    for api, cli in cases.items():
        assert in_option_names(api, options) == cli
