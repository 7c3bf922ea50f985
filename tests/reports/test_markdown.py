"""Markdown tables and reports."""

import numpy as np
import pandas as pd
import pytest

from leanfit.exceptions import BadInputError
from leanfit.reports import Image, markdown_table, new_figure, save_figure, write_report


def test_table_of_a_tiny_frame_is_exact():
    frame = pd.DataFrame(
        {
            "method": ["QLoRA", "LoftQ"],
            "bits": [2, 4],
            "error": [0.123456, np.nan],
            "ok": [True, False],
        }
    )
    assert markdown_table(frame, floatfmt=".3f") == (
        "| method | bits | error | ok    |\n"
        "|--------|-----:|------:|-------|\n"
        "| QLoRA  |    2 | 0.123 | True  |\n"
        "| LoftQ  |    4 |       | False |\n"
    )


def test_records_per_column_formats_and_escaping():
    records = [{"rule": "a | b\nc", "mean": -0.5, "n": 3}, {"rule": "x = 1", "mean": 2.0, "n": 10}]
    assert markdown_table(records, floatfmt={"mean": "+.2f"}) == (
        "| rule        |  mean |   n |\n"
        "|-------------|------:|----:|\n"
        "| a \\| b<br>c | -0.50 |   3 |\n"
        "| x = 1       | +2.00 |  10 |\n"
    )


def test_table_rejects_what_it_cannot_render():
    with pytest.raises(BadInputError, match="data"):
        markdown_table("not a table")
    with pytest.raises(BadInputError, match="column"):
        markdown_table(pd.DataFrame(index=[0, 1]))
    with pytest.raises(BadInputError, match="floatfmt"):
        markdown_table([{"a": 1.0}], floatfmt={"b": ".2f"})


def test_report_embeds_images_by_relative_path(tmp_path):
    figure_path = save_figure(new_figure()[0], tmp_path / "figures" / "curve.png")
    report = tmp_path / "report.md"
    write_report(
        report,
        "Trimming on Adult",
        {
            "Summary": "Removing **5 %** helps.",
            "Results": [pd.DataFrame({"budget": [0, 5]}), Image(figure_path, "accuracy curve")],
            "Raw": figure_path,
        },
    )
    assert report.read_text(encoding="utf-8") == (
        "# Trimming on Adult\n\n"
        "## Summary\n\nRemoving **5 %** helps.\n\n"
        "## Results\n\n| budget |\n|-------:|\n|      0 |\n|      5 |\n\n"
        "![accuracy curve](figures/curve.png)\n\n"
        "## Raw\n\n![curve](figures/curve.png)\n"
    )


def test_report_is_not_overwritten_and_checks_images(tmp_path):
    report = tmp_path / "report.md"
    report.write_text("keep me")
    with pytest.raises(BadInputError, match="exists"):
        write_report(report, "t", [("s", "text")])
    assert report.read_text() == "keep me"
    with pytest.raises(BadInputError, match="missing.png"):
        write_report(tmp_path / "other.md", "t", [("s", Image(tmp_path / "missing.png"))])
    assert not (tmp_path / "other.md").exists()
    write_report(report, "t", [("s", "text")], overwrite=True)
    assert report.read_text() == "# t\n\n## s\n\ntext\n"
