"""Bit allocation under a budget: exactness, the budget, monotonicity, refusals, end to end."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from leanfit.cli import main
from leanfit.exceptions import BadInputError
from leanfit.pipeline import LoftQConfig, quantize_module
from leanfit.pipeline.allocation import (
    allocate_bits,
    allocate_budget,
    budget_limits,
    measure_errors,
    stored_bits_per_param,
    total_relative_error,
)
from leanfit.quantization import LoraSpec, QuantSpec, loftq_decompose, quantize
from leanfit.quantization.quantizers import stored_nbytes


def random_instance(rng: np.random.Generator, n: int, widths=(2, 3, 4)):
    """Matrices of random sizes whose error falls with the width at a random rate, as LoftQ's
    does (roughly 4× per extra bit), with noise so that the hulls are not all alike."""
    errors, sizes = {}, {}
    for i in range(n):
        numel = int(rng.integers(1, 40)) * 64
        scale = rng.lognormal(0, 1.5)
        errors[f"m{i}"] = {b: scale * 4.0 ** (-b) * rng.uniform(0.5, 1.5) for b in widths}
        sizes[f"m{i}"] = {b: numel * b + numel // 2 for b in widths}
    return errors, sizes


def brute_force(errors, sizes, budget):
    names = list(errors)
    best = math.inf
    for combo in itertools.product(*(sorted(errors[n]) for n in names)):
        if sum(sizes[n][b] for n, b in zip(names, combo, strict=True)) <= budget:
            best = min(best, math.fsum(errors[n][b] for n, b in zip(names, combo, strict=True)))
    return best


@pytest.mark.parametrize(
    ("shape", "bits", "method", "double_quant"),
    [((96, 64), 2, "nf", False), ((33, 7), 3, "uniform", True), ((300, 600), 4, "nf", True)],
)
def test_stored_nbytes_is_what_quantize_stores(shape, bits, method, double_quant):
    spec = QuantSpec(bits, method, 64, double_quant)
    q = quantize(torch.randn(shape), spec)
    assert stored_nbytes(q.numel, spec) == q.nbytes


def test_exact_solver_is_optimal_and_greedy_is_close_on_small_random_instances():
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(60):
        errors, sizes = random_instance(rng, int(rng.integers(2, 8)))
        low = sum(min(s.values()) for s in sizes.values())
        high = sum(max(s.values()) for s in sizes.values())
        budget = int(rng.integers(low, high + 1))
        optimum = brute_force(errors, sizes, budget)
        exact = allocate_bits(errors, sizes, budget, solver="exact")
        greedy = allocate_bits(errors, sizes, budget, solver="greedy")
        for plan in (exact, greedy):
            assert plan.size <= budget
            assert plan.size == sum(sizes[n][b] for n, b in plan.bits.items())
        # HiGHS solves to a zero relative gap; its tolerances allow ~1e-9 of the objective.
        assert exact.solver == "exact" and exact.error == pytest.approx(optimum, rel=1e-9)
        assert greedy.error >= optimum * (1 - 1e-12)
        gaps.append(greedy.error / optimum - 1)
    # Few items leave the greedy stranded with unused budget: on these 60 instances of 2–7
    # matrices its mean excess over the optimum is a few percent (0 on most instances).
    assert np.median(gaps) == 0.0 and np.mean(gaps) < 0.10


def test_more_budget_never_increases_the_error():
    rng = np.random.default_rng(1)
    errors, sizes = random_instance(rng, 30)
    low = sum(min(s.values()) for s in sizes.values())
    high = sum(max(s.values()) for s in sizes.values())
    previous = math.inf
    for budget in np.linspace(low, high, 25).astype(int):
        plan = allocate_bits(errors, sizes, int(budget))
        assert plan.size <= budget and plan.error <= previous
        previous = plan.error
    assert plan.bits == {n: 4 for n in errors}  # the last budget is the all-4-bit size


def test_the_budget_is_the_stored_bits_per_parameter_and_is_respected():
    matrices = [(f"w{i}", torch.randn(48 + 16 * i, 64) * (i + 1)) for i in range(5)]
    measured = measure_errors(matrices, LoftQConfig(rank=4, iters=2), progress=False)
    low, high = budget_limits(measured)
    assert (low, high) == (2.5, 4.5)  # NF, block 64, float32 scales: b + 32/64 bits
    for budget in (2.5, 2.8, 3.3, 4.49, 4.5):
        plan = allocate_budget(measured, budget)
        assert stored_bits_per_param(measured, plan.bits) <= budget
    assert set(allocate_budget(measured, 2.5).bits.values()) == {2}
    assert set(allocate_budget(measured, 4.5).bits.values()) == {4}


@pytest.mark.parametrize("budget", [2.49, 4.51, 0.0, True, math.inf, math.nan])
def test_a_budget_outside_the_all_narrow_to_all_wide_range_is_refused(budget):
    measured = measure_errors(
        [("w", torch.randn(64, 64))], LoftQConfig(rank=2, iters=1), progress=False
    )
    with pytest.raises(BadInputError, match=r"bits_budget must be a number in \[2.5000, 4.5000\]"):
        allocate_budget(measured, budget)


def test_measured_errors_are_those_of_loftq_with_the_walker_seeds():
    matrices = [("a", torch.randn(64, 96)), ("b", torch.randn(128, 64))]
    measured = measure_errors(matrices, LoftQConfig(rank=4, iters=3, seed=5), progress=False)
    for index, ((_, w), m) in enumerate(zip(matrices, measured, strict=True)):
        for bits in (2, 4):
            one = loftq_decompose(w, QuantSpec(bits), LoraSpec(4, iters=1), seed=5 + index)
            three = loftq_decompose(w, QuantSpec(bits), LoraSpec(4, iters=3), seed=5 + index)
            assert m.relative_error(bits, 1) == one.error
            assert m.relative_error(bits) == three.error
            assert m.relative_error(bits, 0) == three.qlora_error
            assert m.squared_error(bits) == pytest.approx((three.error * float(w.norm())) ** 2)


def test_workers_measure_the_same_errors_and_give_the_same_plan(tiny_llama, tmp_path):
    # the package's autouse fixture runs on one torch thread, as every worker does
    matrices = [(f"w{i}", torch.randn(48 + 16 * i, 64)) for i in range(5)]
    one = measure_errors(matrices, LoftQConfig(rank=4, iters=2, seed=1), progress=False)
    assert (
        measure_errors(matrices, LoftQConfig(rank=4, iters=2, seed=1), progress=False, workers=2)
        == one
    )
    config = LoftQConfig(rank=2, iters=2, bits_budget=3.2, seed=3)
    reports = [
        quantize_module(tiny_llama(0), tmp_path / f"w{w}", config, progress=False, workers=w)
        for w in (1, 2)
    ]
    widths = [[m.bits for m in report.matrices] for report in reports]
    assert widths[1] == widths[0] and len(set(widths[0])) > 1  # the same mixed plan
    assert reports[1].allocation["predicted_error"] == reports[0].allocation["predicted_error"]
    assert reports[1].error == reports[0].error


def test_a_weight_moves_bits_to_the_weighted_matrix():
    torch.manual_seed(0)
    matrices = [(f"w{i}", torch.randn(64, 64)) for i in range(4)]
    measured = measure_errors(matrices, LoftQConfig(rank=2, iters=1), progress=False)
    budget = 2.5 + 2 / 4  # room for one matrix at 4 bits
    assert allocate_budget(measured, budget, weights={"w3": 100.0}).bits["w3"] == 4
    assert allocate_budget(measured, budget, weights={"w1": 100.0}).bits["w1"] == 4
    with pytest.raises(BadInputError, match="weights name unknown matrices"):
        allocate_budget(measured, budget, weights={"nope": 1.0})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bits_budget": 3.0, "avg_bits": 2.5}, "give bits_budget or a fixed mixed plan"),
        ({"bits_budget": 3.0, "first_high_layers": 1}, "give bits_budget or a fixed mixed plan"),
        ({"bits_budget": -1.0}, "bits_budget must be a number > 0"),
        ({"bits_budget": 3.0, "bits": 4}, r"high_bits must be greater than bits \(4\)"),
    ],
)
def test_invalid_budget_configs_are_refused(fields, message):
    with pytest.raises(BadInputError, match=message):
        LoftQConfig(**fields)


def test_quantize_module_with_a_budget_gets_the_predicted_error(tiny_llama, tmp_path):
    config = LoftQConfig(rank=2, iters=2, bits_budget=3.2, seed=3)
    report = quantize_module(tiny_llama(0), tmp_path / "out", config, progress=False)
    allocation = report.allocation
    assert allocation is not None and allocation["solver"] == "exact"
    assert report.bits_per_param <= 3.2
    assert report.bits_per_param == pytest.approx(allocation["stored_bits_per_param"], abs=1e-12)
    # Same seeds and settings as the measurement: the run's error is the one predicted (the
    # report weighs by float32 norms, the allocation by float64 ones: ~1e-7 relative).
    assert report.error == pytest.approx(allocation["predicted_error"], rel=1e-6)
    assert len({m.bits for m in report.matrices}) > 1  # a real mix, not one width


def test_cli_bits_budget_records_the_plan(tiny_llama, tmp_path, capsys):
    source = tmp_path / "model"
    tiny_llama(1).save_pretrained(source)
    out = tmp_path / "out"
    args = ["quantize", str(source), "--out", str(out), "--rank", "2", "--iters", "1"]
    assert main([*args, "--bits-budget", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "loftq_report.json").read_text())
    assert "bit allocation (exact solver)" in printed and report["totals"]["bits_per_param"] <= 3
    targets = json.loads((out / "backbone" / "quantization_config.json").read_text())["targets"]
    planned = {m["name"].removesuffix(".weight"): m["bits"] for m in report["matrices"]}
    assert {module: meta["quantized"]["bits"] for module, meta in targets.items()} == planned
    assert set(planned.values()) <= {2, 3, 4} and len(set(planned.values())) > 1
    assert LoftQConfig.load(out / "loftq_config.json").bits_budget == 3.0
    assert main([*args, "--bits-budget", "2.4", "--overwrite"]) == 2
    refused = capsys.readouterr()
    assert "--bits-budget must be a number in [2.5000, 4.5000]" in refused.err
    assert "bit allocation" not in refused.err  # refused before measuring (no progress bar)
    with pytest.raises(SystemExit) as exited:  # argparse's mutually exclusive group
        main([*args, "--bits-budget", "3", "--avg-bits", "3", "--overwrite"])
    assert exited.value.code == 2
    assert "--avg-bits: not allowed with argument --bits-budget" in capsys.readouterr().err


def test_total_relative_error_weighs_matrices_by_their_norms():
    measured = measure_errors(
        [("a", torch.randn(64, 64)), ("b", 10 * torch.randn(64, 64))],
        LoftQConfig(rank=2, iters=1),
        progress=False,
    )
    plan = {"a": 2, "b": 4}
    norms = sum(m.weight_norm**2 for m in measured)
    expected = math.sqrt(sum(m.squared_error(plan[m.name]) for m in measured) / norms)
    assert total_relative_error(measured, plan) == pytest.approx(expected)
    assert total_relative_error(measured, {"a": 4, "b": 2}) > total_relative_error(measured, plan)
