"""The experiment harness (summaries, files written) and the ``leanfit experiment`` command."""

import json

import numpy as np
import pandas as pd
import pytest

from leanfit.cli import main
from leanfit.cli.experiment import SCENARIO_NAMES
from leanfit.exceptions import BadInputError
from leanfit.selection.scenarios._common import load_table
from leanfit.selection.scenarios.experiment import (
    SCENARIOS,
    ExperimentResult,
    result_from_record,
    result_record,
    summarize,
    summary_table,
    write_experiment,
)
from leanfit.selection.scenarios.shift import ShiftConfig, make_shift


def test_cli_lists_every_scenario():
    assert SCENARIO_NAMES == tuple(SCENARIOS)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_configs_round_trip_through_json(name):
    config_type = SCENARIOS[name].config_type
    for config in (config_type(), config_type.quick()):
        record = json.loads(json.dumps(config.to_dict()))
        assert config_type.from_dict(record) == config


def test_configs_name_the_bad_field():
    with pytest.raises(BadInputError, match="budget"):
        ShiftConfig(budget=0.3)
    with pytest.raises(BadInputError, match="dataset"):
        ShiftConfig(dataset="mnist")
    with pytest.raises(BadInputError, match="train_csv, val_csv and test_csv"):
        ShiftConfig(train_csv="a.csv")
    with pytest.raises(BadInputError, match="values"):
        ShiftConfig.from_dict({"colour": "blue"})


def fake_rows():
    """Two seeds × two methods × three steps; accuracy = 0.7 + 0.1·step + 0.01·seed."""
    return pd.DataFrame([
        {"method": m, "seed": seed, "round": step, "accuracy": 0.7 + 0.1 * step + 0.01 * seed}
        for m in ("random", "influence") for seed in (0, 1) for step in (0, 1, 2)
    ])  # fmt: skip


def test_summarize_gives_mean_and_sample_std_over_seeds():
    summary = summarize(fake_rows(), ("method", "round"), ("accuracy", "absent"))
    assert list(summary.columns) == ["method", "round", "n_seeds", "accuracy_mean", "accuracy_std"]
    first = summary.iloc[0]
    assert (first["method"], first["round"], first["n_seeds"]) == ("random", 0, 2)
    # mean of 0.70 and 0.71; sample std of two values a, b is |a − b|/√2 (float rounding)
    assert first["accuracy_mean"] == pytest.approx(0.705, abs=1e-12)
    assert first["accuracy_std"] == pytest.approx(0.01 / np.sqrt(2), abs=1e-12)


def test_write_experiment_writes_json_markdown_and_plots(tmp_path):
    rows = fake_rows()
    scenario = SCENARIOS["active"]
    result = ExperimentResult("active", scenario.config_type.quick(), (0, 1), True, rows,
                              summarize(rows, scenario.keys, scenario.metrics), 1.0)  # fmt: skip
    out = write_experiment(result, tmp_path / "run")
    record = json.loads((out / "results.json").read_text())
    assert record["scenario"] == "active" and record["seeds"] == [0, 1]
    assert len(record["rows"]) == 12 and record["config"]["n_pool"] == 5000
    report = (out / "results.md").read_text()
    assert "0.705 ± 0.007" in report  # the table of mean ± std (pivoted by round)
    assert "![" in report and (out / "active_accuracy.png").stat().st_size > 1000
    table = summary_table(result)
    assert list(table["method"]) == ["random", "influence"]
    with pytest.raises(BadInputError, match="exists"):
        write_experiment(result, out)


def test_cli_runs_a_scenario_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "poisoning"
    code = main(["experiment", "poisoning", "--seeds", "1", "--quiet", "--out", str(out),
                 "--set", "budgets=[0.05]"])  # fmt: skip
    assert code == 0
    assert "defended-val" in capsys.readouterr().out
    record = json.loads((out / "results.json").read_text())
    assert record["config"]["budgets"] == [0.05]
    assert {r["method"] for r in record["rows"]} == {
        "clean",
        "poisoned",
        "defended",
        "defended-val",
        "random",
    }
    assert main(["experiment", "poisoning", "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_cli_shift_accepts_the_users_csv_files(tmp_path, capsys):
    parts = make_shift(load_table("german"), kind="age", strength=1.0, seed=0)
    paths = {}
    for name, part in zip(("train", "val", "test"), parts, strict=True):
        paths[name] = tmp_path / f"{name}.csv"
        part.frame.to_csv(paths[name], index=False)
    out = tmp_path / "shift"
    code = main([
        "experiment", "shift", "--quiet", "--seeds", "1", "--out", str(out),
        "--train", str(paths["train"]), "--val", str(paths["val"]), "--test", str(paths["test"]),
        "--target", "credit", "--sensitive", "sex", "--positive", "good", "--privileged", "male",
    ])  # fmt: skip
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    assert record["config"]["train_csv"] == str(paths["train"])
    assert {"none", "reweighing", "influence", "random"} <= {r["method"] for r in record["rows"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "a.csv"], "apply to the shift scenario only"),
        (["--set", "nonsense"], "FIELD=VALUE"),
        (["--set", "colour=1"], "colour"),
        (["--seeds", "0"], "--seeds"),
    ],
)
def test_cli_errors_name_the_option(tmp_path, capsys, args, message):
    code = main(["experiment", "active", "--out", str(tmp_path / "x"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_saved_record_gives_back_the_same_table():
    rows = fake_rows().assign(budget=[np.nan if i % 2 else 0.1 for i in range(12)])
    scenario = SCENARIOS["active"]
    result = ExperimentResult("active", scenario.config_type(), (0, 1), False, rows,
                              summarize(rows, scenario.keys, scenario.metrics), 2.0)  # fmt: skip
    again = result_from_record(json.loads(json.dumps(result_record(result))))
    assert again.config == result.config and again.seeds == (0, 1)
    pd.testing.assert_frame_equal(summary_table(again), summary_table(result))
    assert again.rows["budget"].isna().sum() == 6
