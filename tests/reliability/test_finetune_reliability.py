"""``leanfit finetune`` killed with SIGKILL resumes where its last checkpoint left off and
ends with the files of an uninterrupted run.

A real subprocess fine-tunes a quantized tiny llama (48 steps, a checkpoint every 8) and is
killed right after a checkpoint appears in ``RUN.partial/checkpoints``. The quantized input
keeps its bytes, ``RUN`` does not exist (the run works in ``RUN.partial``), and ``leanfit
finetune --resume`` in a new process continues from the last checkpoint: the checkpoints
written before the kill are not rewritten, and every file of the finished run — adapter,
checkpoints, optimizer states, evaluations — has the bytes of an uninterrupted run, except
``metrics.json``, which records ``resumed_from``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import FINETUNE_STEPS, finetune_args
from tests.reliability.processes import digest, kill_when, results_of, run_to_end


def saved_steps(run: Path) -> list[int]:
    """Steps of the complete checkpoints of an unfinished run (``.step-N.tmp`` excluded)."""
    folder = run / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*")) if run.exists() else []


def same_as_reference(out: Path, reference: Path, resumed_from: int | None) -> None:
    """Every file of ``out`` has the reference's bytes; ``metrics.json`` differs at most in
    ``resumed_from``."""
    got, want = digest(out), digest(reference)
    assert set(got) == set(want)
    assert [name for name in want if got[name] != want[name]] in ([], ["metrics.json"])
    metrics = results_of(out)
    assert metrics.pop("resumed_from") == resumed_from
    expected = results_of(reference)
    assert expected.pop("resumed_from") is None
    assert metrics == expected  # losses, learning rates and evaluations, bit for bit


def test_kill_9_after_a_checkpoint_then_resume_equals_the_uninterrupted_run(
    tiny_causal_loftq, finetune_reference, tmp_path
):
    inputs = digest(tiny_causal_loftq)
    out, run = tmp_path / "run", tmp_path / "run.partial"
    killed = kill_when(finetune_args(tiny_causal_loftq, out), lambda _: bool(saved_steps(run)))
    killed_at = time.time_ns()
    assert killed  # 48 steps take seconds; the first checkpoint comes after 8
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run.partial"]
    assert digest(tiny_causal_loftq) == inputs
    before = saved_steps(run)
    assert before and before[-1] < FINETUNE_STEPS, before

    run_to_end(finetune_args(tiny_causal_loftq, out, "--resume"))
    assert not run.exists() and digest(tiny_causal_loftq) == inputs
    same_as_reference(out, finetune_reference, resumed_from=before[-1])
    # The step counter went on from the checkpoint: the resumed process wrote only the later
    # checkpoints (a restart from step 0 would have rewritten the earlier ones).
    for step in range(8, FINETUNE_STEPS + 1, 8):
        written = (out / "checkpoints" / f"step-{step}" / "state.json").stat().st_mtime_ns
        assert (written < killed_at) == (step <= before[-1]), (step, before)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(tiny_causal_loftq, finetune_reference, tmp_path):
    """Kills anywhere, from start-up to the final rename: the output is absent or complete,
    and rerunning (with ``--resume`` when an unfinished run with its config is left)
    ends with the reference's files."""
    inputs = digest(tiny_causal_loftq)
    duration = run_to_end(finetune_args(tiny_causal_loftq, tmp_path / "timed"))
    outcomes = []
    for index, seconds in enumerate(np.random.default_rng(0).uniform(0.2, 1.0, 8) * duration):
        folder = tmp_path / f"kill{index}"
        out, run = folder / "run", folder / "run.partial"
        killed = kill_when(finetune_args(tiny_causal_loftq, out), lambda t, s=seconds: t >= s)
        assert digest(tiny_causal_loftq) == inputs
        if out.exists():  # finished (or killed after the final rename): complete
            assert not run.exists()
            same_as_reference(out, finetune_reference, resumed_from=None)
            outcomes.append((round(seconds, 1), killed, "complete"))
            continue
        steps = saved_steps(run)
        resume = ["--resume"] if (run / "config.json").is_file() else []
        run_to_end(finetune_args(tiny_causal_loftq, out, *resume))
        same_as_reference(out, finetune_reference, resumed_from=steps[-1] if steps else None)
        outcomes.append((round(seconds, 1), killed, steps[-1] if steps else "no checkpoint"))
    print(outcomes)
    assert sum(killed for _, killed, _ in outcomes) >= 6
    assert any(isinstance(last, int) for *_, last in outcomes)  # some resumed mid-run
