"""Smoke tests of the ``leanfit`` command, run as a real subprocess where it matters."""

import subprocess
import sys

import pandas as pd
import pytest

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
    from leanfit.cli import build_parser, in_command_words, option_table, parser_of
    from leanfit.exceptions import BadInputError, MissingResourceError, bad_value

    options = option_table(parser_of(build_parser(["finetune"]), "finetune"))
    assert options["learning_rate"] == "--lr" and options["batch_size"] == "--batch-size"
    assert options["out_dir"] == "--out" and options["directory"] == "DIR"
    cases = [
        (bad_value("learning_rate", -1.0, "a finite number > 0"),
         "--lr must be a finite number > 0; got -1.0"),
        (BadInputError("out_dir '/runs/a' exists; pass --overwrite to replace it",
                       param="out_dir"),
         "--out '/runs/a' exists; pass --overwrite to replace it"),
        (BadInputError("give steps or epochs, not both; got steps 3 and epochs 1",
                       param="epochs"),
         "--epochs: give steps or epochs, not both; got steps 3 and epochs 1"),
        (MissingResourceError("task data is not there", param="task"),
         "--task data is not there"),
        # no parameter, or one the command has no option for: the message as it is
        (BadInputError("the seed of model.max_length_head.weight is the steps count"),
         "the seed of model.max_length_head.weight is the steps count"),
        (bad_value("weight_decay", -1, "a finite number >= 0"),
         "weight_decay must be a finite number >= 0; got -1"),
    ]  # fmt: skip
    for err, cli in cases:
        assert in_command_words(err, options) == cli


def test_config_options_write_each_default_once():
    import argparse
    import dataclasses

    from leanfit.cli import add_config_options, config_from_args
    from leanfit.finetune.options import FinetuneConfig

    parser = argparse.ArgumentParser()
    add_config_options(parser, FinetuneConfig)
    assert config_from_args(FinetuneConfig, parser.parse_args([])) == FinetuneConfig()
    args = parser.parse_args(["--lr", "0.01", "--no-gradient-checkpointing", "--steps", "3"])
    config = config_from_args(FinetuneConfig, args)
    assert (config.learning_rate, config.gradient_checkpointing) == (0.01, False)
    assert (config.steps, config.epochs) == (3, None)
    text = parser.format_help()
    assert "peak learning rate (default 0.0002)" in " ".join(text.split())
    exposed = [f for f in dataclasses.fields(FinetuneConfig) if "help" in f.metadata]
    assert {f.name for f in dataclasses.fields(FinetuneConfig)} - {f.name for f in exposed} == {
        "weight_decay",
        "max_grad_norm",
    }
    with pytest.raises(SystemExit):  # one group: --steps and --epochs exclude each other
        parser.parse_args(["--steps", "3", "--epochs", "1"])
