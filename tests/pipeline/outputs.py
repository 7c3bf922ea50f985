"""Comparing two quantize output directories: every file byte for byte, the reports' errors."""

from __future__ import annotations

import json
from pathlib import Path

REPORTS = {"loftq_report.json", "loftq_report.md"}  # timings and memory differ between runs


def files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in REPORTS
    }


def report_matrices(directory: Path) -> list[dict]:
    matrices = json.loads((directory / "loftq_report.json").read_text())["matrices"]
    return [{k: v for k, v in m.items() if k != "seconds"} for m in matrices]


def assert_same_output(a: Path, b: Path) -> None:
    expected, got = files(a), files(b)
    assert list(got) == list(expected)
    assert any(name.startswith("backbone/model-00002") for name in got)  # several shards
    for name, content in expected.items():
        assert got[name] == content, name  # bytes: every tensor bit for bit
    assert report_matrices(b) == report_matrices(a)  # errors of every iteration, exactly
