"""``leanfit select``: CSV files and vendored data, the report, refusals and bad input."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from leanfit.cli import main
from leanfit.selection import (
    DemographicParity,
    InfluenceSelector,
    evaluate,
    retrain_and_evaluate,
    split_dataset,
    trim,
)
from leanfit.selection.protocols import split_halves

METRICS = ["accuracy", "dp", "dp_abs", "eop", "eop_abs", "robust_acc"]


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory):
    """German credit as three CSV files (the 60/20/20 split of ``--dataset german``)."""
    folder = tmp_path_factory.mktemp("german-csv")
    split = split_dataset("german")
    paths = {}
    for part in ("train", "val", "test"):
        paths[part] = folder / f"{part}.csv"
        getattr(split, part).frame.to_csv(paths[part], index=False)
    return paths


def csv_args(paths, *, val=True):
    args = ["--train", str(paths["train"]), "--test", str(paths["test"])]
    args += ["--val", str(paths["val"])] if val else []
    return [*args, "--target", "credit", "--sensitive", "sex"]


def run(args, capsys):
    """Run ``leanfit select`` in-process: (exit code, stdout, stderr); argparse errors too."""
    try:
        code = main(["select", *args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_row(report_text, label):
    """The cells of the before / after table row that starts with ``label``."""
    line = next(row for row in report_text.splitlines() if row.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_csv_triple(csv_files, tmp_path, capsys):
    out = tmp_path / "out"
    args = [*csv_args(csv_files), "--positive", "good", "--privileged", "male"]
    code, stdout, stderr = run(
        [*args, "--objective", "fairness", "--seeds", "2", "--out", str(out), "--quiet"], capsys
    )
    assert code == 0, stderr
    assert f"report: {out / 'report.md'}" in stdout and "fairness influence" in stdout
    influence = pd.read_csv(out / "influence.csv")
    assert list(influence.columns) == ["row", "fairness"]
    assert list(influence.row) == list(range(600))  # data rows of train.csv
    assert len(pd.read_csv(out / "trimmed_train_fairness.csv")) == 600 - 30
    config = json.loads((out / "config.json").read_text())
    assert (
        config["data"]["description"] == "train = train.csv, validation = val.csv, test = test.csv."
    )
    assert (config["l2_reg"], config["fit_intercept"], config["seeds"]) == (1.0, True, 2)
    assert "trimming curve" not in stderr  # --quiet: no progress bars


def test_dataset_german_report_equals_the_python_api(tmp_path, capsys):
    out = tmp_path / "german"
    args = ["--dataset", "german", "--objective", "utility,fairness", "--budget", "40"]
    code, _, stderr = run([*args, "--seeds", "2", "--out", str(out), "--quiet"], capsys)
    assert code == 0, stderr
    # The same computation through the Python API.
    split = split_dataset("german")
    selector = InfluenceSelector(1.0, fit_intercept=True).fit(split.train.X, split.train.y)
    # The workflow's fairness objective is the absolute demographic parity gap.
    objectives = ["utility", DemographicParity(absolute=True)]
    influence = selector.influence(
        split.val.X, split.val.y, sensitive_features=split.val.s, objective=objectives
    ).set_axis(["utility", "fairness"], axis=1)
    groups = {"sensitive_features": split.test.s.to_numpy()}
    text = (out / "report.md").read_text()
    expected = {
        "untrimmed": evaluate(
            selector.model_, selector.transform(split.test.X), split.test.y, **groups
        )
    }
    for name in ("utility", "fairness"):
        keep = trim(influence[name], 40)
        expected[f"{name} influence"] = retrain_and_evaluate(
            selector, keep, split.test.X, split.test.y, **groups
        )
    for label, metrics in expected.items():
        # The report rounds to 4 decimals; the computations are the same, so the rounded
        # values are equal.
        assert table_row(text, label)[2:] == [f"{metrics[m]:.4f}" for m in METRICS]
    assert table_row(text, "fairness influence")[1] == "40"
    assert table_row(text, "random (2 seeds)")[1] == "40"
    assert "stratified by label × sex (seed 42000)" in text
    assert (
        "![trimming curves](trimming_curves.png)" in text and (out / "tree_fairness.png").is_file()
    )
    assert {"rules_utility.md", "rules_fairness.md", "rules_utility.csv"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "rules_eop.md").exists()  # only the objectives asked for


def test_without_val_the_test_file_is_split_in_halves(csv_files, tmp_path, capsys):
    out = tmp_path / "halves"
    args = [*csv_args(csv_files, val=False), "--positive", "good", "--privileged", "male"]
    code, _, stderr = run(
        [
            *args,
            "--objective",
            "utility",
            "--seeds",
            "0",
            "--seed",
            "7",
            "--out",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, stderr
    config = json.loads((out / "config.json").read_text())
    test_val = split_halves(pd.read_csv(csv_files["test"]), 7)
    assert (config["data"]["n_test"], config["data"]["n_val"]) == tuple(map(len, test_val))
    assert "validation and test = the halves of test.csv (seed 7)" in config["data"]["description"]
    assert "random" not in pd.read_csv(out / "metrics.csv").model.tolist()  # --seeds 0


def test_existing_output_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "leanfit.cli", "select", "--dataset", "german", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "exists; pass --overwrite" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "1.5"], "--budget must be auto, a fraction in (0, 1) or a whole count >= 1"),
        (["--budget", "0"], "--budget must be"),
        (["--budget", "five"], "--budget must be"),
        (["--budget", "600"], "--budget must be a count in [1, 599]"),
        (["--objective", "speed"], "--objective must be one of"),
        (["--seeds", "-1"], "--seeds must be an int >= 0"),
        (["--l2", "-1"], "--l2 must be a finite number > 0"),
        (["--target", "credit"], "--dataset excludes"),
        (["--target-dp", "0.05"], "--target-dp chooses the budget: use it with the budget 'auto'"),
        (["--budget", "auto", "--max-accuracy-drop", "2"], "--max-accuracy-drop must be a number"),
        (
            ["--budget", "auto", "--objective", "utility"],
            "--objective must be a list with 'fairness'",
        ),
    ],
)
def test_bad_input_on_a_dataset(args, message, tmp_path, capsys):
    code, _, stderr = run(["--dataset", "german", *args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--target", "nope"], "--target 'nope' is not a column"),
        (["--target", "purpose"], "target column 'purpose' must have exactly two distinct values"),
        (["--sensitive", "nope"], "--sensitive 'nope' is not a column"),
        (["--positive", "great"], "--positive must be one of ['bad', 'good']; got 'great'"),
        (["--categorical", "nope"], "--categorical must be columns of"),
    ],
)
def test_bad_input_on_csv_files(csv_files, change, message, tmp_path, capsys):
    args = [*csv_args(csv_files), "--positive", "good", "--privileged", "male", *change]
    code, _, stderr = run([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_data_arguments_are_required(csv_files, tmp_path, capsys):
    code, _, stderr = run(["--train", str(csv_files["train"])], capsys)
    assert code == 2 and "missing ['--test', '--target', '--sensitive']" in stderr
    missing_file = ["--train", str(tmp_path / "none.csv"), "--test", str(csv_files["test"])]
    code, _, stderr = run([*missing_file, "--target", "credit", "--sensitive", "sex"], capsys)
    assert code == 2 and "no such file" in stderr


def test_auto_budget_and_strategy_without_positive_or_privileged(csv_files, tmp_path, capsys):
    """German credit's good / bad and male / female need no --positive / --privileged: the
    run assumes them, says so, and chooses the budget on the validation file."""
    out = tmp_path / "auto"
    args = [*csv_args(csv_files), "--objective", "fairness", "--budget", "auto"]
    args += ["--strategy", "pareto", "--max-accuracy-drop", "0.02", "--target-dp", "0.05"]
    code, stdout, stderr = run([*args, "--seeds", "1", "--out", str(out), "--quiet"], capsys)
    assert code == 0, stderr
    assert "assumed: target `credit`: good taken as the favourable outcome" in stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["data"]["positive"], config["data"]["privileged"]) == ("good", "male")
    assert config["budget"] == "auto" and config["strategy"] == "pareto"
    assert (config["max_accuracy_drop"], config["target_dp"]) == (0.02, 0.05)
    assert config["budget_choice"]["n_removed"] == config["n_removed"]
    text = (out / "report.md").read_text()
    assert "Assumed (no option given): target `credit`: good taken as the favourable" in text
    assert "sensitive `sex`: male taken as the privileged group" in text
    assert "## Budget chosen on the validation set" in text
    models = pd.read_csv(out / "metrics.csv").model.tolist()
    assert models == [
        "untrimmed",
        "fairness influence (pareto)",
        "fairness influence (plain)",
        "random",
    ]


def test_method_options_are_the_config_fields_with_no_default_of_their_own():
    import dataclasses

    from leanfit.cli import build_parser, config_from_args, config_option, parser_of
    from leanfit.selection import Budget, SelectionConfig

    parser = parser_of(build_parser(["select"]), "select")
    by_dest = {action.dest: action for action in parser._actions}
    exposed = [f for f in dataclasses.fields(SelectionConfig) if "help" in f.metadata]
    assert {f.name for f in exposed} == {
        "objectives", "budget", "strategy", "max_accuracy_drop", "target_dp", "seeds",
        "max_categories",
    }  # fmt: skip
    for field in exposed:
        action = by_dest[field.name]
        assert action.option_strings == [config_option(field)]
        assert action.help.startswith(field.metadata["help"])
        # the parser has no default of its own: the field's, or none for a repeatable option
        # (a tuple field), which then keeps the field's default
        assert action.default is (None if isinstance(field.default, tuple) else field.default)
    args = parser.parse_args(["--dataset", "german"])
    config = config_from_args(SelectionConfig, args)
    assert config == SelectionConfig()
    args = parser.parse_args(
        ["--dataset", "german", "--objective", "eop,utility", "--objective", "fairness",
         "--budget", "auto", "--max-accuracy-drop", "0.02", "--seeds", "0"]
    )  # fmt: skip
    config = config_from_args(SelectionConfig, args)
    assert config.objectives == ("utility", "fairness", "eop")
    assert (config.budget, config.max_accuracy_drop, config.seeds) == (Budget(), 0.02, 0)


def test_the_module_imports_no_heavy_library_at_top_level():
    import ast
    from pathlib import Path

    from leanfit.cli import select as cli

    tree = ast.parse(Path(cli.__file__).read_text())
    top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    modules = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    heavy = ("numpy", "pandas", "sklearn", "torch", "leanfit.selection", "leanfit.datasets")
    # leanfit.selection.config declares the method options and, with its defaults, imports
    # nothing heavy
    # (tests/test_cli_imports.py runs the command and lists what it imported)
    light = ("leanfit.selection.config", "leanfit.selection.defaults")
    assert modules and not [m for m in modules if m.startswith(heavy) and m not in light]


def test_every_option_is_documented_with_an_example():
    from pathlib import Path

    from leanfit.cli import build_parser

    parser = build_parser()
    select = parser._subparsers._group_actions[0].choices["select"]
    options = [s for a in select._actions for s in a.option_strings if s.startswith("--")]
    options.remove("--help")
    text = (Path(__file__).parents[1] / "docs" / "selection.md").read_text(encoding="utf-8")
    examples = [line for line in text.splitlines() if line.startswith("leanfit select")]
    for option in options:
        assert f"`{option}" in text, option  # a heading or a mention in backquotes
        assert any(option in line.split() for line in examples), option  # and an example
