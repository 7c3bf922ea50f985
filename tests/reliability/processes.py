"""Helpers shared by the reliability tests that run ``leanfit`` as a real subprocess, kill it
with SIGKILL and compare what it wrote."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def start(args: list[str], cwd: Path | None = None) -> subprocess.Popen:
    """``python -m leanfit.cli ARGS`` with this checkout's sources, in ``cwd``; stderr piped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "leanfit.cli", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd,
    )  # fmt: skip


def run_to_end(args: list[str], cwd: Path | None = None) -> float:
    """Run ``leanfit ARGS`` in a subprocess; check it succeeds; its wall time in seconds."""
    began = time.monotonic()
    process = start(args, cwd)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()
    return time.monotonic() - began


def kill_when(args: list[str], condition: Callable[[float], bool], cwd: Path | None = None) -> bool:
    """Start ``leanfit ARGS`` and SIGKILL it as soon as ``condition(seconds since start)``
    holds (polled every 5 ms); True if it was still running then, False if it ended first."""
    process = start(args, cwd)
    began = time.monotonic()
    while process.poll() is None:
        if condition(time.monotonic() - began):
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            return True
        time.sleep(0.005)
    return False


def kill_at(args: list[str], seconds: float, out: Path, cwd: Path | None = None) -> bool:
    """Start ``leanfit ARGS`` writing ``out`` (relative to ``cwd`` if given) and SIGKILL it
    after ``seconds`` (or, if ``seconds`` is negative, once a hidden partial output
    ``.OUT.partial`` or ``.OUT.*.partial`` appears); True if it was still running when killed."""
    folder = out if cwd is None else cwd / out

    def due(elapsed: float) -> bool:
        if seconds >= 0:
            return elapsed >= seconds
        return any(folder.parent.glob(f".{folder.name}.*partial"))

    return kill_when(args, due, cwd)


def check_kills(
    args_for: Callable[[Path], list[str]],
    sources: Path,
    tmp_path: Path,
    *,
    n_kills: int,
    seed: int,
    files: Callable[[Path], dict] = digest,
    resume: tuple[str, ...] = (),
    partial_names: set[str] | None = None,
) -> list[tuple[float, bool, int]]:
    """Kill ``leanfit`` runs writing ``out`` and check that nothing is lost.

    Every run is started in its own folder and writes the relative path ``out`` there (so
    outputs that record their path agree). A reference run of ``args_for(out)``, then
    ``n_kills`` runs SIGKILLed: the first as soon as its hidden ``.out.*partial`` sibling
    appears, the others at random moments of the reference's duration. After each:
    ``sources`` keep their bytes, ``out`` is absent or complete (``files(out)`` equal to the
    reference's), only hidden ``.out.*.partial`` siblings are left beside it (only
    ``partial_names``, if given), and a rerun with the extra arguments ``resume`` completes
    with the reference's files and removes them.

    Returns
    -------
    list of (seconds, killed, partials)
        The planned moment (-1: at the partial), whether the run was still going when
        killed, and how many partials it left.
    """
    out = Path("out")
    reference = tmp_path / "reference"
    reference.mkdir()
    duration = run_to_end(args_for(out), cwd=reference)
    expected = files(reference / out)
    before = digest(sources)
    times = [-1.0, *np.random.default_rng(seed).uniform(0.1, 1.0, n_kills - 1) * duration]
    outcomes = []
    for index, seconds in enumerate(times):
        runs = tmp_path / f"runs{index}"
        runs.mkdir()
        killed = kill_at(args_for(out), seconds, out, cwd=runs)
        assert digest(sources) == before  # the input is never touched
        left = sorted(p.name for p in runs.iterdir())
        partials = [name for name in left if name != "out"]
        assert all(n.startswith(".out.") and n.endswith(".partial") for n in partials), left
        assert partial_names is None or set(partials) <= partial_names, left
        if (runs / out).exists():  # finished before the kill: complete
            assert files(runs / out) == expected
        else:
            run_to_end([*args_for(out), *resume], cwd=runs)
            assert files(runs / out) == expected  # the rerun completes, identical
            assert sorted(p.name for p in runs.iterdir()) == ["out"]  # partials removed
        outcomes.append((round(seconds, 2), killed, len(partials)))
    return outcomes


def quantize_in(folder: Path, model: Path, config, **options):
    """``quantize_checkpoint`` into ``folder/out``, given as the relative path ``out`` (so the
    reports' ``out_dir`` agree between folders); ``folder`` is created if needed."""
    from leanfit.pipeline import quantize_checkpoint

    with pytest.MonkeyPatch.context() as patch:
        folder.mkdir(exist_ok=True)
        patch.chdir(folder)
        return quantize_checkpoint(model, Path("out"), config, progress=False, **options)


def write_llama(folder: Path, layers: int = 2, hidden: int = 32) -> Path:
    """A random llama (``layers`` blocks, ``hidden`` wide) saved as safetensors."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def quantize_args(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "quantize", str(model), "--out", str(out), "--bits", "2", "--rank", "4",
        "--iters", "2", "--threads", "1", "--quiet", *extra,
    ]  # fmt: skip


# -- comparing LoftQ outputs ---------------------------------------------------------------

RUN_TOTALS = ("seconds", "start_rss_mb", "peak_rss_mb", "start_anon_mb", "peak_anon_mb")
RUN_COLUMNS = ("time (s)", "RSS start → peak (MB)", "anon start → peak (MB)")
REPORTS = ("loftq_report.json", "loftq_report.md")


def report_json_fields(text: str) -> dict:
    """``loftq_report.json`` without what depends on the process rather than the inputs:
    the totals' time and memory (:data:`RUN_TOTALS`) and every matrix's ``seconds``."""
    values = json.loads(text)
    for key in RUN_TOTALS:
        del values["totals"][key]
    for matrix in values["matrices"]:
        del matrix["seconds"]
    return values


def report_markdown_fields(text: str) -> list:
    """``loftq_report.md`` as lines, table rows as cell lists without the columns of
    :data:`RUN_COLUMNS` (column widths follow the cell texts, so they are dropped too)."""
    lines, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            lines.append(line)
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        if all(set(cell) <= set("-:") for cell in cells):
            continue
        lines.append([c for c, h in zip(cells, header, strict=True) if h not in RUN_COLUMNS])
    return lines


def comparable(folder: Path) -> dict[str, object]:
    """What must be equal between two runs of the same inputs: the sha256 of every file,
    except the two reports, which are compared by :func:`report_json_fields` and
    :func:`report_markdown_fields`."""
    files: dict[str, object] = {k: v for k, v in digest(folder).items() if k not in REPORTS}
    files["loftq_report.json"] = report_json_fields((folder / REPORTS[0]).read_text())
    files["loftq_report.md"] = report_markdown_fields((folder / REPORTS[1]).read_text())
    return files


def results_of(run: Path) -> dict:
    """A run's ``metrics.json`` without what measures the run rather than its results
    (seconds per step, peak memory: :data:`leanfit.finetune.training.MEASURED`)."""
    from leanfit.finetune.training import MEASURED

    metrics = json.loads((run / "metrics.json").read_text())
    for name in MEASURED:
        metrics.pop(name)
    return metrics
