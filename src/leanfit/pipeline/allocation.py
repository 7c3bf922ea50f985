"""Bit allocation under a memory budget: each matrix's width chosen to minimize the total error.

LQ-LoRA's idea applied to LoftQ. Every target matrix ``W_i`` (``n_i`` parameters) can be
stored at a width ``b`` from a small set (2, 3, 4 bits); at width ``b`` it costs ``s_i(b)``
stored bits (packed codes plus block statistics, as :attr:`QuantizedTensor.nbytes` counts
them) and leaves the LoftQ error ``e_i(b) = ‖W_i − Q_i − L_i R_i‖_F²``. For an average budget
``β`` bits per parameter, the plan solves the multiple-choice knapsack::

    minimize    Σ_i  w_i · e_i(b_i)
    subject to  Σ_i  s_i(b_i)  <=  ⌊β · Σ_i n_i⌋

with per-matrix weights ``w_i`` (1 by default: the weight error; a calibrated, activation-aware
error can be plugged in through them or through the error table itself). Minimizing the sum
of squared errors is minimizing the total relative error ``sqrt(Σ e_i) / sqrt(Σ ‖W_i‖²)`` that
:class:`leanfit.pipeline.config.LoftQReport` reports.

Two solvers: an exact one (a 0/1 integer program, ``scipy.optimize.milp``) and the classic
greedy for this knapsack (upgrades along each matrix's lower convex hull of (size, error),
taken in order of error removed per extra stored bit while they fit). The cost is in
:func:`measure_errors`: one LoftQ decomposition per matrix and width.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm

from leanfit.checkpoints.base import TensorSource
from leanfit.checkpoints.targets import Target
from leanfit.exceptions import BadInputError, bad_value
from leanfit.pipeline.computers import decompose_target
from leanfit.pipeline.config import LoftQConfig
from leanfit.pipeline.parallel import ordered_map
from leanfit.quantization.quantizers import stored_nbytes
from leanfit.quantization.spec import METHODS

SOLVERS = ("auto", "exact", "greedy")


@dataclass(frozen=True)
class MatrixErrors:
    """LoftQ errors of one matrix at every candidate width.

    Attributes
    ----------
    name : str
    numel : int
        Parameters of the matrix.
    weight_norm : float
        ``‖W‖_F``.
    nbytes : dict of int to int
        Stored bytes at each width (codes + statistics).
    qlora_errors : dict of int to float
        ``‖W − quantize_b(W)‖_F / ‖W‖_F`` at each width.
    errors : dict of int to tuple of float
        Relative LoftQ error after each step that ran, at each width (empty when measured
        with T = 0).
    """

    name: str
    numel: int
    weight_norm: float
    nbytes: dict[int, int]
    qlora_errors: dict[int, float]
    errors: dict[int, tuple[float, ...]]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(self.nbytes))

    def relative_error(self, bits: int, iters: int | None = None) -> float:
        """Relative error at ``bits`` after ``iters`` LoftQ steps (the best iterate).

        ``iters=None``: all the steps measured; ``0``: the QLoRA error. Fewer steps than
        measured give exactly what a run with that T gives (same seeds, the loop is a prefix).
        """
        if bits not in self.nbytes:
            raise bad_value("bits", bits, f"one of the measured widths {self.widths}")
        steps = self.errors[bits]
        if iters == 0 or not steps:
            return self.qlora_errors[bits]
        if iters is not None and (isinstance(iters, bool) or not isinstance(iters, int)):
            raise bad_value("iters", iters, "an int >= 0, or None")
        if iters is not None and iters < 0:
            raise bad_value("iters", iters, "an int >= 0, or None")
        return min(steps[:iters] if iters is not None else steps)

    def squared_error(self, bits: int, iters: int | None = None) -> float:
        """``‖W − Q − L R‖_F²`` at ``bits`` (see :meth:`relative_error`)."""
        return (self.relative_error(bits, iters) * self.weight_norm) ** 2


def measure_errors(
    matrices: Iterable[tuple[str, Tensor]],
    config: LoftQConfig,
    *,
    progress: bool = True,
    total: int | None = None,
    workers: int = 1,
) -> list[MatrixErrors]:
    """LoftQ-decompose every matrix at every width and record the errors (the costly step).

    Parameters
    ----------
    matrices : iterable of (str, Tensor)
        ``(name, W)`` pairs, W of shape ``(n_out, n_in)``; consumed one at a time, so a
        generator reading a checkpoint keeps one matrix in memory.
    config : LoftQConfig
        The run's settings: each matrix is measured at every :func:`config_widths` width
        with the config's quantizer and LoRA setting (``init="qlora"`` measures the QLoRA
        error only, with no SVD: the cheapest proxy). Matrix ``i`` (0-based, in iteration
        order) is decomposed as the run's target ``i``
        (:func:`leanfit.pipeline.computers.decompose_target`: seed ``config.seed + i``), so
        the error measured at the chosen width is the error the quantized model gets.
    progress : bool
        tqdm bar over the matrices.
    total : int, optional
        Number of matrices, for the bar.
    workers : int
        Matrices measured at a time, each on one torch thread
        (:func:`leanfit.pipeline.parallel.ordered_map`); the errors do not depend on it
        (as a run under ``torch.set_num_threads(1)``).

    Returns
    -------
    list of MatrixErrors
        In the order of ``matrices``.
    """
    widths = config_widths(config)

    def measure(item: tuple[int, tuple[str, Tensor]]) -> MatrixErrors:
        index, (name, matrix) = item
        qlora, steps = {}, {}
        for bits in widths:
            result = decompose_target(matrix, index, bits, config, name)
            qlora[bits], steps[bits] = result.qlora_error, tuple(result.errors)
            del result
        numel = matrix.numel()
        nbytes = {b: stored_nbytes(numel, config.quant.with_bits(b)) for b in widths}
        norm = float(matrix.double().norm())
        return MatrixErrors(name, numel, norm, nbytes, qlora, steps)

    measured = []
    with tqdm(total=total, unit="matrix", desc="bit allocation", disable=not progress) as bar:
        for errors in ordered_map(measure, enumerate(matrices), workers):
            measured.append(errors)
            bar.update()
    return measured


@dataclass(frozen=True)
class Allocation:
    """A width per matrix, and what it costs.

    Attributes
    ----------
    bits : dict of str to int
        The plan, in the order of the input.
    error : float
        ``Σ_i cost_i(bits_i)``: the (weighted) objective.
    size : int
        Stored bits of the plan.
    budget : int
        The largest allowed ``size``.
    solver : {"exact", "greedy"}
        The solver whose plan this is.
    greedy_error : float
        The greedy plan's objective (equals ``error`` when the greedy plan is kept).
    """

    bits: dict[str, int]
    error: float
    size: int
    budget: int
    solver: str
    greedy_error: float

    def counts(self) -> dict[int, int]:
        """Number of matrices at each width."""
        widths = sorted(set(self.bits.values()))
        return {b: sum(1 for v in self.bits.values() if v == b) for b in widths}


def _check_table(
    errors: Mapping[str, Mapping[int, float]], sizes: Mapping[str, Mapping[int, int]]
) -> list[str]:
    names = list(errors)
    if not names:
        raise bad_value("errors", dict(errors), "a non-empty mapping name -> {bits: error}")
    if set(names) != set(sizes):
        missing = sorted(set(names) ^ set(sizes))[:3]
        raise BadInputError(f"errors and sizes must have the same matrices; differ in {missing}")
    for name in names:
        options_e, options_s = errors[name], sizes[name]
        if not options_e or set(options_e) != set(options_s):
            raise BadInputError(
                f"errors and sizes of {name!r} must give the same non-empty widths; got "
                f"{sorted(options_e)} and {sorted(options_s)}"
            )
        for bits in options_e:
            e, s = options_e[bits], options_s[bits]
            if isinstance(e, bool) or not isinstance(e, int | float) or not 0 <= e < math.inf:
                raise bad_value(f"errors[{name!r}][{bits}]", e, "a finite number >= 0")
            if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0:
                raise bad_value(f"sizes[{name!r}][{bits}]", s, "an int >= 0 (stored bits)")
    return names


def _lower_hull(options: Mapping[int, float], sizes: Mapping[int, int]) -> list[int]:
    """Widths on the lower convex hull of (size, error), from the smallest size: every step
    to the next one buys error at a lower rate than the step before (dominated ones dropped)."""
    order = sorted(options, key=lambda b: (sizes[b], options[b]))
    hull: list[int] = []
    for b in order:
        if hull and options[b] >= options[hull[-1]]:
            continue  # no smaller error for a size at least as large: dominated
        while len(hull) >= 2:
            a, m = hull[-2], hull[-1]
            rate_am = (options[a] - options[m]) / (sizes[m] - sizes[a])
            rate_mb = (options[m] - options[b]) / (sizes[b] - sizes[m])
            if rate_mb < rate_am:
                break
            hull.pop()  # m lies on or above the chord from a to b
        hull.append(b)
    return hull


def _greedy(
    names: list[str],
    errors: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, Mapping[int, int]],
    budget: int,
) -> dict[str, int]:
    hulls = {name: _lower_hull(errors[name], sizes[name]) for name in names}
    choice = {name: hulls[name][0] for name in names}
    used = sum(sizes[name][choice[name]] for name in names)
    steps = []
    for position, name in enumerate(names):
        hull = hulls[name]
        for k in range(1, len(hull)):
            low, high = hull[k - 1], hull[k]
            gain = errors[name][low] - errors[name][high]
            rate = gain / (sizes[name][high] - sizes[name][low])
            steps.append((-rate, position, k))
    for _, position, k in sorted(steps):
        name = names[position]
        hull = hulls[name]
        if choice[name] != hull[k - 1]:
            continue  # an earlier upgrade of this matrix did not fit
        extra = sizes[name][hull[k]] - sizes[name][hull[k - 1]]
        if used + extra <= budget:
            choice[name] = hull[k]
            used += extra
    return choice


def _exact(
    names: list[str],
    errors: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, Mapping[int, int]],
    budget: int,
    time_limit: float,
) -> dict[str, int] | None:
    """Optimal plan by a 0/1 integer program (HiGHS through ``scipy.optimize.milp``); None if
    it finds none within ``time_limit`` seconds."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    columns = [(i, b) for i, name in enumerate(names) for b in sorted(errors[name])]
    cost = np.array([errors[names[i]][b] for i, b in columns], dtype=float)
    cost /= max(float(cost.max()), 1e-300)  # objective of order 1 for the solver's tolerances
    size = np.array([sizes[names[i]][b] for i, b in columns], dtype=float)
    scale = max(float(size.max()), 1.0)
    one_per_matrix = coo_array(
        (np.ones(len(columns)), ([i for i, _ in columns], np.arange(len(columns)))),
        shape=(len(names), len(columns)),
    )
    limit = budget
    for _ in range(5):
        result = milp(
            cost,
            integrality=np.ones(len(columns)),
            bounds=Bounds(0, 1),
            constraints=[
                LinearConstraint(one_per_matrix, 1, 1),
                LinearConstraint(size[None, :] / scale, -np.inf, limit / scale),
            ],
            options={"time_limit": time_limit, "mip_rel_gap": 0.0},
        )
        if result.status != 0 or result.x is None:
            return None
        choice: dict[str, int] = {}
        for i, name in enumerate(names):
            picks = [(result.x[j], b) for j, (k, b) in enumerate(columns) if k == i]
            choice[name] = max(picks)[1]
        used = sum(sizes[name][choice[name]] for name in names)
        if used <= budget:
            return choice
        limit -= used - budget  # the solver's feasibility tolerance let it overshoot: tighten
    return None


def allocate_bits(
    errors: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, Mapping[int, int]],
    budget: int,
    *,
    solver: str = "auto",
    time_limit: float = 60.0,
) -> Allocation:
    """Choose one width per matrix minimizing the summed error within a size budget.

    Parameters
    ----------
    errors : mapping of str to (mapping of int to float)
        ``errors[name][bits]``: the cost of storing ``name`` at ``bits`` (e.g. the squared
        LoftQ error, weighted); >= 0.
    sizes : mapping of str to (mapping of int to int)
        ``sizes[name][bits]``: its stored size, in bits (same names and widths as ``errors``).
    budget : int
        The largest total stored size, in bits.
    solver : {"auto", "exact", "greedy"}
        ``"exact"``: the integer program (``scipy.optimize.milp``), falling back to the greedy
        plan if it finds no solution within ``time_limit`` seconds; ``"greedy"``: the convex
        hull greedy only; ``"auto"``: both, keeping the better (the exact one unless it failed).

    Returns
    -------
    Allocation
        ``size <= budget`` always.

    Raises
    ------
    BadInputError
        Inconsistent tables, an unknown solver, or a budget below the smallest plan.
    """
    if solver not in SOLVERS:
        raise bad_value("solver", solver, f"one of {SOLVERS}")
    names = _check_table(errors, sizes)
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        raise bad_value("budget", budget, "an int (stored bits)")
    smallest = sum(min(sizes[name].values()) for name in names)
    if budget < smallest:
        raise bad_value(
            "budget", budget, f"at least {smallest} bits (every matrix at its smallest width)"
        )

    def objective(choice: dict[str, int]) -> float:
        return math.fsum(errors[name][choice[name]] for name in names)

    greedy = _greedy(names, errors, sizes, int(budget))
    best, used_solver = greedy, "greedy"
    if solver != "greedy":
        exact = _exact(names, errors, sizes, int(budget), time_limit)
        if exact is not None and objective(exact) <= objective(greedy):
            best, used_solver = exact, "exact"
    return Allocation(
        bits=best,
        error=objective(best),
        size=sum(sizes[name][best[name]] for name in names),
        budget=int(budget),
        solver=used_solver,
        greedy_error=objective(greedy),
    )


def budget_limits(measured: Sequence[MatrixErrors]) -> tuple[float, float]:
    """Stored bits per parameter with every matrix at its narrowest and at its widest width."""
    params = sum(m.numel for m in measured)
    low = sum(8 * min(m.nbytes.values()) for m in measured) / params
    high = sum(8 * max(m.nbytes.values()) for m in measured) / params
    return low, high


def _total_budget(
    bits_budget: object, nbytes: Sequence[Mapping[int, int]], numels: Sequence[int]
) -> int:
    """``⌊bits_budget · Σ n_i⌋`` stored bits, ``bits_budget`` read as the decimal it prints
    as; refused outside [all narrowest, all widest]."""
    params = sum(numels)
    smallest = sum(8 * min(n.values()) for n in nbytes)
    largest = sum(8 * max(n.values()) for n in nbytes)
    widths = sorted(nbytes[0])
    allowed = (
        f"a number in [{smallest / params:.4f}, {largest / params:.4f}]: stored bits per "
        f"parameter (codes and block statistics) with every matrix at {widths[0]} bits and at "
        f"{widths[-1]} bits"
    )
    if (
        isinstance(bits_budget, bool)
        or not isinstance(bits_budget, int | float)
        or not math.isfinite(bits_budget)
    ):
        raise bad_value("bits_budget", bits_budget, allowed)
    budget = math.floor(Decimal(repr(float(bits_budget))) * params)
    if not smallest <= budget <= largest:
        raise bad_value("bits_budget", bits_budget, allowed)
    return budget


def allocate_budget(
    measured: Sequence[MatrixErrors],
    bits_budget: float,
    *,
    iters: int | None = None,
    weights: Mapping[str, float] | None = None,
    solver: str = "auto",
) -> Allocation:
    """The width of every measured matrix under an average budget of stored bits per parameter.

    Parameters
    ----------
    measured : sequence of MatrixErrors
        From :func:`measure_errors`.
    bits_budget : float
        Average stored bits per parameter over the matrices: packed codes plus block
        statistics, as :attr:`LoftQReport.bits_per_param` counts them (NF, block 64,
        float32 scales: ``b + 0.5`` for width b). The plan stores at most
        ``⌊bits_budget · Σ n_i⌋`` bits, ``bits_budget`` read as the decimal it prints as.
    iters : int, optional
        Which measured error to minimize: after ``iters`` LoftQ steps (0: the QLoRA error);
        default all the steps measured.
    weights : mapping of str to float, optional
        ``w_i`` multiplying each matrix's squared error (default 1): the hook for a
        calibrated error.
    solver : {"auto", "exact", "greedy"}
        See :func:`allocate_bits`.

    Raises
    ------
    BadInputError
        ``bits_budget`` below the all-narrowest or above the all-widest stored size (the
        message gives both), invalid weights.
    """
    if not measured:
        raise bad_value("measured", list(measured), "a non-empty list of MatrixErrors")
    budget = _total_budget(bits_budget, [m.nbytes for m in measured], [m.numel for m in measured])
    names = [m.name for m in measured]
    if weights is None:
        weights = {}
    elif unknown := sorted(set(weights) - set(names)):
        raise BadInputError(f"weights name unknown matrices: {unknown[:3]}")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < math.inf:
            raise bad_value(f"weights[{name!r}]", w, "a finite number >= 0")
    errors = {
        m.name: {b: weights.get(m.name, 1.0) * m.squared_error(b, iters) for b in m.widths}
        for m in measured
    }
    sizes = {m.name: {b: 8 * n for b, n in m.nbytes.items()} for m in measured}
    return allocate_bits(errors, sizes, budget, solver=solver)


def total_relative_error(
    measured: Sequence[MatrixErrors], plan: Mapping[str, int], iters: int | None = None
) -> float:
    """``sqrt(Σ_i e_i(plan_i)) / sqrt(Σ_i ‖W_i‖²)``: the relative error of all matrices together."""
    norms = math.fsum(m.weight_norm**2 for m in measured) or 1.0
    return math.sqrt(math.fsum(m.squared_error(plan[m.name], iters) for m in measured) / norms)


def stored_bits_per_param(measured: Sequence[MatrixErrors], plan: Mapping[str, int]) -> float:
    """Stored bits per parameter of a plan."""
    params = sum(m.numel for m in measured)
    return sum(8 * m.nbytes[plan[m.name]] for m in measured) / params


def config_widths(config: LoftQConfig) -> tuple[int, ...]:
    """The candidate widths of a config: every width of its method from ``bits`` to
    ``high_bits`` (2, 3 and 4 by default)."""
    return tuple(b for b in METHODS[config.method] if config.bits <= b <= config.high_bits)


def measure_targets(
    source: TensorSource,
    targets: Sequence[Target],
    config: LoftQConfig,
    *,
    progress: bool = True,
    workers: int = 1,
) -> list[MatrixErrors]:
    """:func:`measure_errors` of a checkpoint's targets, read one at a time: the error
    measured at a width is the error a run at that width gets."""
    from leanfit.checkpoints.targets import matrix_view

    return measure_errors(
        ((t.name, matrix_view(source.read(t.name), t)) for t in targets),
        config,
        progress=progress,
        total=len(targets),
        workers=workers,
    )


def allocate_for_config(
    source: TensorSource,
    targets: Sequence[Target],
    config: LoftQConfig,
    *,
    progress: bool = True,
    workers: int = 1,
) -> tuple[Allocation, dict[str, Any]]:
    """Measure the targets of a checkpoint (:func:`measure_targets`) and allocate
    ``config.bits_budget`` among them (:func:`allocate_budget`).

    Returns
    -------
    Allocation, dict
        The plan, and a JSON summary of it for the report (``predicted_error``: the total
        relative error the run will report).
    """
    if config.bits_budget is None:
        raise bad_value("config.bits_budget", None, "a number")
    widths = config_widths(config)
    numels = [math.prod(t.matrix_shape) for t in targets]
    specs = {b: config.quant.with_bits(b) for b in widths}
    nbytes = [{b: stored_nbytes(n, spec) for b, spec in specs.items()} for n in numels]
    _total_budget(config.bits_budget, nbytes, numels)  # refuse a bad budget before measuring
    tic = time.perf_counter()
    measured = measure_targets(source, targets, config, progress=progress, workers=workers)
    allocation = allocate_budget(measured, config.bits_budget)
    norms = math.fsum(m.weight_norm**2 for m in measured) or 1.0
    summary = {
        "bits_budget": config.bits_budget,
        "widths": list(widths),
        "solver": allocation.solver,
        "stored_bits_per_param": stored_bits_per_param(measured, allocation.bits),
        "predicted_error": total_relative_error(measured, allocation.bits),
        "greedy_predicted_error": math.sqrt(allocation.greedy_error / norms),
        "matrices_per_width": {str(b): n for b, n in allocation.counts().items()},
        "measure_seconds": time.perf_counter() - tic,
    }
    return allocation, summary
